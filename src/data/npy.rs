//! A tiny reader/writer for NumPy `.npy` files holding little-endian float32 arrays in C order
//! (what `numpy.save` writes for `float32` arrays): lesion embeddings [N, D], crops
//! [N, 3, S, S]. Versions 1.0 and 2.0 of the format are read; 1.0 is written.

use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes `data` with `shape` as a version 1.0 .npy file, creating parent folders.
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::shape("write_npy_f32", format!("shape {shape:?} holds {n} values, got {}", data.len())));
    }
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad with spaces so that magic + version + length + header (incl. '\n') is a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    crate::io::write_atomic(path, &out)
}

/// Reads a little-endian float32, C-order .npy file.
pub fn read_npy_f32(path: impl AsRef<Path>) -> Result<NpyF32> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::format(path, None, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(format!(".npy version {v} is not supported (1, 2 or 3)"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad(format!("header of {hlen} bytes runs past the end of the file")))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| bad(format!("header lacks '{key}': {header}")))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    if !descr.starts_with("'<f4'") {
        return Err(bad(format!("dtype {} is not little-endian float32 ('<f4')", descr.split(',').next().unwrap_or(""))));
    }
    if field("fortran_order")?.starts_with("True") {
        return Err(bad("Fortran-order arrays are not supported; save with C order".into()));
    }
    let shape_s = field("shape")?;
    let close = shape_s.find(')').ok_or_else(|| bad(format!("unreadable shape in {header}")))?;
    let shape = shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(format!("shape entry '{s}' is not a size"))))
        .collect::<Result<Vec<_>>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != n * 4 {
        return Err(bad(format!("shape {shape:?} needs {} data bytes, file has {}", n * 4, body.len())));
    }
    let data = body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(NpyF32 { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn round_trip_and_rejects() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let dir = std::env::temp_dir().join(format!("coseg-npy-{}", std::process::id()));
        for shape in [vec![7usize, 5], vec![3, 3, 4, 4], vec![11]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-10.0..10.0)).collect();
            let p = dir.join("a.npy");
            write_npy_f32(&p, &shape, &data).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            assert_eq!(read_npy_f32(&p).unwrap(), NpyF32 { shape: shape.clone(), data });
        }
        assert!(write_npy_f32(dir.join("b.npy"), &[2, 2], &[1.0; 3]).is_err());
        // A float64 file as numpy writes it.
        let mut f8 = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }          \n";
        f8.extend_from_slice(&(h.len() as u16).to_le_bytes());
        f8.extend_from_slice(h.as_bytes());
        f8.extend_from_slice(&1.0f64.to_le_bytes());
        std::fs::write(dir.join("f8.npy"), f8).unwrap();
        let e = read_npy_f32(dir.join("f8.npy")).unwrap_err().to_string();
        assert!(e.contains("f8.npy") && e.contains("float32"), "{e}");
        let p = dir.join("a.npy");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(dir.join("t.npy"), &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_npy_f32(dir.join("t.npy")).unwrap_err().to_string().contains("data bytes"));
        std::fs::remove_dir_all(dir).ok();
    }
}
