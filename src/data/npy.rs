//! NumPy `.npy` files of float32 arrays (lesion embeddings [N, D], crops [N, 3, S, S]), read
//! and written with the `npyz` crate (header versions 1-3, either byte order); what coseg adds
//! is the checks that name the file: float32 only, C order, the data exactly the shape's size.

use crate::error::{Error, Result};
use npyz::WriterBuilder;
use std::io::Cursor;
use std::path::Path;

/// A float32 array and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes `data` with `shape` as a little-endian, C-order .npy file, creating parent folders.
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::shape("write_npy_f32", format!("shape {shape:?} holds {n} values, got {}", data.len())));
    }
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::with_capacity(128 + data.len() * 4);
    let encode = |out: &mut Vec<u8>| -> std::io::Result<()> {
        let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(&dims).writer(out).begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()
    };
    encode(&mut out).map_err(|e| Error::io(path, e))?;
    crate::io::write_atomic(path, &out)
}

/// Reads a float32, C-order .npy file.
pub fn read_npy_f32(path: impl AsRef<Path>) -> Result<NpyF32> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::format(path, None, msg);
    let mut cursor = Cursor::new(&bytes[..]);
    let npy = npyz::NpyFile::new(&mut cursor).map_err(|e| bad(format!("not a readable .npy file: {e}")))?;
    let descr = npy.dtype().descr();
    if !matches!(descr.trim_matches('\''), "<f4" | ">f4") {
        return Err(bad(format!("dtype {descr} is not float32 ('<f4' or '>f4')")));
    }
    if npy.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-order arrays are not supported; save with C order".into()));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let want = shape.iter().product::<usize>() * 4;
    let data = npy
        .into_vec::<f32>()
        .map_err(|e| bad(format!("shape {shape:?} needs {want} data bytes: {e}")))?;
    let extra = bytes.len() as u64 - cursor.position();
    if extra != 0 {
        return Err(bad(format!("shape {shape:?} needs {want} data bytes, file has {extra} more")));
    }
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
        // Big-endian float32, as numpy writes `astype('>f4')`: read as the same values.
        let mut be = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 1), }     \n";
        be.extend_from_slice(&(h.len() as u16).to_le_bytes());
        be.extend_from_slice(h.as_bytes());
        for v in [1.5f32, -0.25] {
            be.extend_from_slice(&v.to_be_bytes());
        }
        std::fs::write(dir.join("be.npy"), &be).unwrap();
        assert_eq!(read_npy_f32(dir.join("be.npy")).unwrap(), NpyF32 { shape: vec![2, 1], data: vec![1.5, -0.25] });
        be.extend_from_slice(&[0; 4]);
        std::fs::write(dir.join("long.npy"), &be).unwrap();
        assert!(read_npy_f32(dir.join("long.npy")).unwrap_err().to_string().contains("4 more"));
        let p = dir.join("a.npy");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(dir.join("t.npy"), &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_npy_f32(dir.join("t.npy")).unwrap_err().to_string().contains("data bytes"));
        std::fs::remove_dir_all(dir).ok();
    }
}
