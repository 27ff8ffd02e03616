//! CT slices in Hounsfield units: DeepLesion stores HU + 32768 in 16-bit PNG.

use super::dl_info::LesionRecord;
use crate::error::{Error, Result};
use crate::io::{read_gray16, write_gray16_with, Image};
use std::path::Path;

/// DeepLesion's PNG offset: stored value = HU + 32768.
pub const HU_OFFSET: i32 = 32768;

/// A single-channel slice in HU.
pub type HuSlice = Image<i16>;

/// Reads a DeepLesion slice PNG as HU. 8-bit or truncated files are errors naming the file.
pub fn load_hu(path: impl AsRef<Path>) -> Result<HuSlice> {
    let img = read_gray16(path)?;
    let data = img.data.iter().map(|&v| (v as i32 - HU_OFFSET) as i16).collect();
    Ok(Image::new(img.width, img.height, 1, data))
}

/// Writes a slice in HU as a DeepLesion PNG (fast deflate: writers produce many slices).
pub fn save_hu(path: impl AsRef<Path>, hu: &HuSlice) -> Result<()> {
    let data = hu.data.iter().map(|&v| (v as i32 + HU_OFFSET) as u16).collect();
    write_gray16_with(path, &Image::new(hu.width, hu.height, 1, data), png::Compression::Fast)
}

/// The three channels of a lesion: slices key-1, key, key+1. A neighbour that cannot be used,
/// missing or damaged alike, is replaced by the key slice and flagged, with why.
///
/// Policy: a missing and a truncated neighbour are treated the same, by falling back to the key
/// slice, never by dropping the lesion. DeepLesion is often used from its key slices alone, and
/// the network already trains with that fallback; a damaged neighbour carries no more or less
/// information than an absent one, and the key slice (whose damage is an error) is what the
/// marks were drawn on. Callers count and name the fallbacks.
#[derive(Clone, Debug)]
pub struct LesionSlices {
    /// [key-1, key, key+1]
    pub channels: [HuSlice; 3],
    /// Whether key-1 and key+1 were read from their own files.
    pub has_neighbour: [bool; 2],
    /// Each neighbour replaced by the key slice: its file and why (missing, or the read error).
    pub fallbacks: Vec<String>,
}

/// Loads the key slice of `rec` (an error if missing or unreadable) and its neighbours when
/// they can be read; checks the image size against the row's Image_size.
pub fn load_lesion_slices(root: &Path, rec: &LesionRecord) -> Result<LesionSlices> {
    let key_path = rec.slice_path(root, 0);
    let key = load_hu(&key_path)?;
    let [w, h] = rec.image_size;
    if key.width != w as usize || key.height != h as usize {
        return Err(Error::format(
            &key_path,
            Some(rec.row),
            format!("image is {}x{}, DL_info row says Image_size {w}x{h}", key.width, key.height),
        ));
    }
    let mut fallbacks = Vec::new();
    let [below, above] = [-1, 1].map(|offset| {
        if rec.key_slice as i64 + offset as i64 >= 0 {
            load_neighbour(&rec.slice_path(root, offset), &key, Some(rec.row)).map_err(|why| fallbacks.push(why)).ok()
        } else {
            None
        }
    });
    let has_neighbour = [below.is_some(), above.is_some()];
    let (below, above) = (below.unwrap_or_else(|| key.clone()), above.unwrap_or_else(|| key.clone()));
    Ok(LesionSlices { channels: [below, key, above], has_neighbour, fallbacks })
}

/// A neighbour of `key` (slice key-1 or key+1) from `path`, or why it cannot be used (naming the
/// file, and the DL_info row when given): missing, unreadable or truncated, or of another size
/// than the key slice. See [`LesionSlices`] for why all of these are treated alike.
pub fn load_neighbour(path: &Path, key: &HuSlice, row: Option<usize>) -> std::result::Result<HuSlice, String> {
    if !path.exists() {
        return Err(format!("{}: missing", path.display()));
    }
    let n = load_hu(path).map_err(|e| e.to_string())?;
    if n.width != key.width || n.height != key.height {
        return Err(Error::format(path, row, format!("neighbour is {}x{}, key slice is {}x{}", n.width, n.height, key.width, key.height)).to_string());
    }
    Ok(n)
}

/// Maps HU to [0, 1] through the window [lo, hi] (clamped outside).
#[inline]
pub fn window_unit(hu: f32, window: [f32; 2]) -> f32 {
    ((hu - window[0]) / (window[1] - window[0])).clamp(0.0, 1.0)
}

/// A slice windowed to 8-bit grey, for viewing and for GrabCut colour models.
pub fn window_u8(hu: &HuSlice, window: [f32; 2]) -> Image<u8> {
    let data = hu.data.iter().map(|&v| (window_unit(v as f32, window) * 255.0).round() as u8).collect();
    Image::new(hu.width, hu.height, 1, data)
}
