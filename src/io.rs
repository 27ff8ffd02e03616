//! PNG reading and writing shared by every stage (DeepLesion slices, masks, CRF inputs, overlays),
//! and [`write_atomic`], the one way coseg writes a file (`crate::output` decides where it may).
//! Errors name the file and say what was found instead of what was expected.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// A decoded image: row-major, channels interleaved.
#[derive(Clone, Debug, PartialEq)]
pub struct Image<T> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Image<T> {
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), width * height * channels, "Image::new: data length");
        Image { width, height, channels, data }
    }
    pub fn get(&self, x: usize, y: usize, c: usize) -> T {
        self.data[(y * self.width + x) * self.channels + c]
    }
}

/// The most bytes a decoded PNG may take (a 16384 x 16384 RGBA 16-bit image is 2 GiB; a CT slice
/// is 0.5 MiB). A damaged or hostile header can promise exabytes, and a failed allocation aborts
/// the process instead of returning an error, so the size is checked before allocating.
pub const MAX_DECODED_BYTES: usize = 1 << 30;

fn decode(path: &Path) -> Result<(png::OutputInfo, Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // Keep 16-bit samples as they are; expand palettes and sub-byte depths to 8 bits.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| Error::format(path, None, format!("not a readable PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::format(path, None, "PNG too large to decode"))?;
    if size > MAX_DECODED_BYTES {
        let info = reader.info();
        return Err(Error::format(
            path,
            None,
            format!("the PNG header declares {}x{} pixels ({size} bytes decoded), over the {MAX_DECODED_BYTES}-byte limit", info.width, info.height),
        ));
    }
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::format(path, None, format!("truncated or corrupt PNG: {e}")))?;
    buf.truncate(info.buffer_size());
    Ok((info, buf))
}

fn channels_of(ct: png::ColorType) -> usize {
    match ct {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => 3, // expanded
    }
}

/// A 16-bit single-channel PNG, as DeepLesion stores its slices (pixel = HU + 32768).
/// Any other depth or colour type is an error naming what was found.
pub fn read_gray16(path: impl AsRef<Path>) -> Result<Image<u16>> {
    let path = path.as_ref();
    let (info, buf) = decode(path)?;
    if info.bit_depth != png::BitDepth::Sixteen || info.color_type != png::ColorType::Grayscale {
        return Err(Error::format(
            path,
            None,
            format!(
                "expected a 16-bit greyscale PNG, found {:?} {}-bit",
                info.color_type, info.bit_depth as u8
            ),
        ));
    }
    let data = buf.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
    Ok(Image::new(info.width as usize, info.height as usize, 1, data))
}

/// An 8-bit PNG with 1 (grey) or 3 (RGB) channels; alpha is dropped, 16-bit samples are scaled
/// to 8 bits. Use for masks, probability maps and CRF guide images.
pub fn read_u8(path: impl AsRef<Path>) -> Result<Image<u8>> {
    let path = path.as_ref();
    let (info, buf) = decode(path)?;
    let ch = channels_of(info.color_type);
    let samples: Vec<u8> = if info.bit_depth == png::BitDepth::Sixteen {
        buf.chunks_exact(2).map(|b| b[0]).collect()
    } else {
        buf
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let keep = if ch >= 3 { 3 } else { 1 };
    let data = if keep == ch {
        samples
    } else {
        samples.chunks_exact(ch).flat_map(|px| px[..keep].to_vec()).collect()
    };
    Ok(Image::new(w, h, keep, data))
}

/// Reads an 8-bit grey PNG (RGB is converted by averaging the channels).
pub fn read_gray8(path: impl AsRef<Path>) -> Result<Image<u8>> {
    let img = read_u8(path)?;
    if img.channels == 1 {
        return Ok(img);
    }
    let data = img
        .data
        .chunks_exact(3)
        .map(|p| ((p[0] as u32 + p[1] as u32 + p[2] as u32 + 1) / 3) as u8)
        .collect();
    Ok(Image::new(img.width, img.height, 1, data))
}

fn encode(
    path: &Path,
    w: usize,
    h: usize,
    ct: png::ColorType,
    depth: png::BitDepth,
    bytes: &[u8],
    compression: png::Compression,
) -> Result<()> {
    // Encoded in memory, then written through a temporary name and a rename: a killed run
    // never leaves half a PNG.
    let mut encoded = Vec::new();
    let mut enc = png::Encoder::new(&mut encoded, w as u32, h as u32);
    enc.set_color(ct);
    enc.set_depth(depth);
    enc.set_compression(compression);
    let mut writer = enc
        .write_header()
        .map_err(|e| Error::format(path, None, format!("PNG header: {e}")))?;
    writer
        .write_image_data(bytes)
        .map_err(|e| Error::format(path, None, format!("PNG write: {e}")))?;
    writer.finish().map_err(|e| Error::format(path, None, format!("PNG finish: {e}")))?;
    write_atomic(path, &encoded)
}

/// Writes an 8-bit grey (channels = 1) or RGB (channels = 3) PNG, creating parent folders.
pub fn write_u8(path: impl AsRef<Path>, img: &Image<u8>) -> Result<()> {
    let ct = match img.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => return Err(Error::invalid("write_u8", format!("{c} channels; expected 1, 3 or 4"))),
    };
    encode(path.as_ref(), img.width, img.height, ct, png::BitDepth::Eight, &img.data, png::Compression::default())
}

/// Writes a 16-bit grey PNG (DeepLesion's slice format), creating parent folders.
pub fn write_gray16(path: impl AsRef<Path>, img: &Image<u16>) -> Result<()> {
    write_gray16_with(path, img, png::Compression::default())
}

/// As [`write_gray16`] with a chosen deflate effort (bulk writers such as `coseg synth` use
/// `Fast`: deflate dominates their run time otherwise).
pub fn write_gray16_with(path: impl AsRef<Path>, img: &Image<u16>, compression: png::Compression) -> Result<()> {
    if img.channels != 1 {
        return Err(Error::invalid("write_gray16", format!("{} channels; expected 1", img.channels)));
    }
    let bytes: Vec<u8> = img.data.iter().flat_map(|v| v.to_be_bytes()).collect();
    encode(path.as_ref(), img.width, img.height, png::ColorType::Grayscale, png::BitDepth::Sixteen, &bytes, compression)
}

/// The folder `path` lies in, None for a bare file name (the current folder).
pub(crate) fn parent_of(path: &Path) -> Option<&Path> {
    path.parent().filter(|d| !d.as_os_str().is_empty())
}

/// The temporary name `path` is written under before the rename: hidden, in the same folder (a
/// rename across file systems is not atomic), with the process id so that two runs never share it.
pub fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = format!(".{name}.{}.coseg-tmp", std::process::id());
    match parent_of(path) {
        Some(d) => d.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, creating parent folders.
/// On failure the temporary file is removed and whatever was at `path` before is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = parent_of(path) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = temporary_name(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        std::fs::remove_file(&tmp).ok();
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gray16_round_trip_keeps_every_value() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let data: Vec<u16> = (0..37 * 23).map(|_| rng.random()).collect();
        let img = Image::new(37, 23, 1, data);
        let dir = std::env::temp_dir().join(format!("coseg-io-{}", std::process::id()));
        let p = dir.join("a/b.png");
        write_gray16(&p, &img).unwrap();
        assert_eq!(read_gray16(&p).unwrap(), img);
        // A 16-bit file is not an 8-bit mask and vice versa: errors, not garbage.
        let m = Image::new(5, 4, 1, (0..20u8).collect());
        let q = dir.join("m.png");
        write_u8(&q, &m).unwrap();
        assert_eq!(read_gray8(&q).unwrap(), m);
        let err = read_gray16(&q).unwrap_err().to_string();
        assert!(err.contains("m.png") && err.contains("16-bit"), "{err}");
        std::fs::write(dir.join("t.png"), &std::fs::read(&p).unwrap()[..60]).unwrap();
        assert!(read_gray16(dir.join("t.png")).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn write_atomic_replaces_whole_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("coseg-io-atomic-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        let p = d.join("sub/a.bin");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (a, b): (Vec<u8>, Vec<u8>) = ((0..5000).map(|_| rng.random()).collect(), (0..300).map(|_| rng.random()).collect());
        write_atomic(&p, &a).unwrap();
        write_atomic(&p, &b).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b);
        let names: Vec<_> = std::fs::read_dir(d.join("sub")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["a.bin"]);
        // A write that cannot complete (the target is a folder) keeps what was there and leaves
        // no temporary file.
        std::fs::create_dir_all(d.join("dir/x")).unwrap();
        assert!(write_atomic(&d.join("dir/x"), &a).is_err());
        assert!(d.join("dir/x").is_dir());
        assert_eq!(std::fs::read_dir(d.join("dir")).unwrap().count(), 1);
        std::fs::remove_dir_all(d).ok();
    }
}
