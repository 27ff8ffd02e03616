//! Lesion crops: a square around the RECIST box with context, resampled to S x S, and the
//! mappings slice <-> crop for points (RECIST marks) and masks (pasting a crop mask back).
//!
//! Coordinates: pixel centres sit at integer coordinates in both the slice and the crop. A crop
//! box covers the slice square `[x0 - 0.5, x0 - 0.5 + side]` (pixel edges), so crop pixel `j`
//! has its centre at slice coordinate `x0 + (j + 0.5) * side / S - 0.5`.

use super::dl_info::LesionRecord;
use super::slice::{load_lesion_slices, window_unit, HuSlice};
use crate::error::{Error, Result};
use crate::io::Image;
use std::path::Path;

/// The largest crop side accepted anywhere (config, `crops --size`): checked before the
/// S x S planes are allocated, since a failed allocation aborts instead of returning an error.
pub const MAX_CROP_SIZE: usize = 4096;

/// HU used for crop pixels that fall outside the slice (air).
pub const PAD_HU: f32 = -1024.0;

/// How to cut a crop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropParams {
    /// Output side S in pixels.
    pub size: usize,
    /// Context added on each side, as a fraction of the RECIST box's longer side.
    pub context: f32,
    /// Smallest crop side in slice pixels (tiny lesions still get some surroundings).
    pub min_side_px: f32,
    /// Window for normalised crops; None uses the row's DICOM window.
    pub window: Option<[f32; 2]>,
}

impl Default for CropParams {
    fn default() -> Self {
        CropParams { size: 128, context: 0.5, min_side_px: 8.0, window: None }
    }
}

/// A square region of a slice and its S x S sampling grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Slice coordinate of the top-left pixel centre's corner origin (see module docs).
    pub x0: f32,
    pub y0: f32,
    /// Side of the square in slice pixels.
    pub side: f32,
    /// Output side S in pixels.
    pub size: usize,
}

impl CropBox {
    /// The crop square centred on the RECIST box of `rec`.
    pub fn around(rec: &LesionRecord, params: &CropParams) -> Result<CropBox> {
        Self::around_box(rec.recist_box(), params)
    }

    /// The crop square centred on box x0, y0, x1, y1: longer side + 2 * context * longer side,
    /// at least `min_side_px`.
    pub fn around_box(b: [f32; 4], params: &CropParams) -> Result<CropBox> {
        if params.size == 0 || params.size > MAX_CROP_SIZE {
            return Err(Error::invalid("crop", format!("crop size {} is outside 1..={MAX_CROP_SIZE}", params.size)));
        }
        if !b.iter().all(|v| v.is_finite()) || b[2] < b[0] || b[3] < b[1] {
            return Err(Error::invalid("crop", format!("box {b:?} is not x0 <= x1, y0 <= y1")));
        }
        if !(params.context >= 0.0) || !(params.min_side_px > 0.0) {
            return Err(Error::invalid("crop", format!("context {} / min side {} must be >= 0 / > 0", params.context, params.min_side_px)));
        }
        let long = (b[2] - b[0]).max(b[3] - b[1]) + 1.0; // +1: the marks are pixel centres
        let side = (long * (1.0 + 2.0 * params.context)).max(params.min_side_px);
        let cx = (b[0] + b[2]) / 2.0;
        let cy = (b[1] + b[3]) / 2.0;
        Ok(CropBox { x0: cx - side / 2.0 + 0.5, y0: cy - side / 2.0 + 0.5, side, size: params.size })
    }

    /// Slice pixels per crop pixel.
    pub fn scale(&self) -> f32 {
        self.side / self.size as f32
    }

    /// Slice point -> crop point.
    pub fn to_crop(&self, p: [f32; 2]) -> [f32; 2] {
        let s = self.scale();
        [(p[0] - self.x0 + 0.5) / s - 0.5, (p[1] - self.y0 + 0.5) / s - 0.5]
    }

    /// Crop point -> slice point.
    pub fn to_slice(&self, p: [f32; 2]) -> [f32; 2] {
        let s = self.scale();
        [self.x0 + (p[0] + 0.5) * s - 0.5, self.y0 + (p[1] + 0.5) * s - 0.5]
    }

    /// RECIST marks of `rec` in crop coordinates.
    pub fn recist_in_crop(&self, rec: &LesionRecord) -> [[f32; 2]; 4] {
        rec.recist.map(|p| self.to_crop(p))
    }

    /// Resamples a single-channel plane (row-major, `w` x `h`) into the S x S crop, bilinear,
    /// with `fill` outside the plane. When the crop shrinks the slice by more than 1.5x, each
    /// crop pixel averages a 2x2 grid of bilinear samples so small structures do not alias.
    pub fn sample(&self, plane: &[f32], w: usize, h: usize, fill: f32) -> Vec<f32> {
        self.sample_by(|i| plane[i], w, h, fill)
    }

    /// As [`CropBox::sample`], reading pixel `i` (row-major index) through `get`, so integer
    /// slices and masks are sampled without converting the whole plane first.
    pub fn sample_by(&self, get: impl Fn(usize) -> f32, w: usize, h: usize, fill: f32) -> Vec<f32> {
        let s = self.scale();
        let sub: &[f32] = if s > 1.5 { &[-0.25, 0.25] } else { &[0.0] };
        let n = (sub.len() * sub.len()) as f32;
        let mut out = Vec::with_capacity(self.size * self.size);
        for j in 0..self.size {
            for i in 0..self.size {
                let mut acc = 0.0;
                for dy in sub {
                    for dx in sub {
                        let [x, y] = self.to_slice([i as f32 + dx, j as f32 + dy]);
                        acc += bilinear_by(&get, w, h, x, y, fill);
                    }
                }
                out.push(acc / n);
            }
        }
        out
    }

    /// A crop of a slice in HU (values as f32, PAD_HU outside).
    pub fn crop_hu(&self, hu: &HuSlice) -> Vec<f32> {
        self.sample_by(|i| hu.data[i] as f32, hu.width, hu.height, PAD_HU)
    }

    /// A crop of a 0/255 slice mask, thresholded back to 0/255.
    pub fn crop_mask(&self, mask: &Image<u8>) -> Vec<u8> {
        self.sample_by(|i| mask.data[i] as f32, mask.width, mask.height, 0.0)
            .into_iter()
            .map(|v| if v >= 127.5 { 255 } else { 0 })
            .collect()
    }

    /// Pastes an S x S crop mask (0..255) back into a `w` x `h` slice mask: every slice pixel
    /// inside the box takes the bilinear crop value, thresholded at 127.5; pixels outside stay 0.
    pub fn paste_mask(&self, crop_mask: &[u8], w: usize, h: usize) -> Result<Image<u8>> {
        if crop_mask.len() != self.size * self.size {
            return Err(Error::shape(
                "paste_mask",
                format!("crop mask has {} values, expected {}x{}", crop_mask.len(), self.size, self.size),
            ));
        }
        let mut out = vec![0u8; w * h];
        let lo_x = (self.x0 - 0.5).floor().max(0.0) as usize;
        let lo_y = (self.y0 - 0.5).floor().max(0.0) as usize;
        let hi_x = ((self.x0 - 0.5 + self.side).ceil().max(0.0) as usize).min(w);
        let hi_y = ((self.y0 - 0.5 + self.side).ceil().max(0.0) as usize).min(h);
        for y in lo_y..hi_y {
            for x in lo_x..hi_x {
                let [cx, cy] = self.to_crop([x as f32, y as f32]);
                if bilinear_by(|i| crop_mask[i] as f32, self.size, self.size, cx, cy, 0.0) >= 127.5 {
                    out[y * w + x] = 255;
                }
            }
        }
        Ok(Image::new(w, h, 1, out))
    }
}

/// Bilinear sample at (x, y) with pixel centres at integers; `fill` beyond the border
/// half-pixel (edge pixels extend half a pixel outward).
#[inline]
pub fn bilinear(plane: &[f32], w: usize, h: usize, x: f32, y: f32, fill: f32) -> f32 {
    bilinear_by(|i| plane[i], w, h, x, y, fill)
}

/// As [`bilinear`], reading pixel `i` (row-major index) through `get`.
#[inline]
pub fn bilinear_by(get: impl Fn(usize) -> f32, w: usize, h: usize, x: f32, y: f32, fill: f32) -> f32 {
    if !(x >= -0.5 && y >= -0.5 && x <= w as f32 - 0.5 && y <= h as f32 - 0.5) {
        return fill;
    }
    let xc = x.clamp(0.0, (w - 1) as f32);
    let yc = y.clamp(0.0, (h - 1) as f32);
    let x0 = xc.floor() as usize;
    let y0 = yc.floor() as usize;
    let x1 = (x0 + 1).min(w - 1);
    let y1 = (y0 + 1).min(h - 1);
    let fx = xc - x0 as f32;
    let fy = yc - y0 as f32;
    let a = get(y0 * w + x0) * (1.0 - fx) + get(y0 * w + x1) * fx;
    let b = get(y1 * w + x0) * (1.0 - fx) + get(y1 * w + x1) * fx;
    a * (1.0 - fy) + b * fy
}

/// A lesion ready for the network: 3 windowed channels (key-1, key, key+1) in [0, 1], S x S,
/// and the RECIST marks in crop coordinates.
#[derive(Clone, Debug)]
pub struct LesionCrop {
    pub crop_box: CropBox,
    /// Channel-major \[3\]\[S*S\], values in \[0, 1\] after windowing.
    pub channels: [Vec<f32>; 3],
    pub recist: [[f32; 2]; 4],
    /// Whether key-1 / key+1 came from their own files (else the key slice was repeated).
    pub has_neighbour: [bool; 2],
    /// Each neighbour replaced by the key slice, with why (`LesionSlices::fallbacks`).
    pub fallbacks: Vec<String>,
}

/// Loads and crops the lesion of `rec` under data root `root`.
pub fn lesion_crop(root: &Path, rec: &LesionRecord, params: &CropParams) -> Result<LesionCrop> {
    // Records built in memory never went through the reader: check them as it would.
    let at = |col: &str, why: String| Error::format(root.join("DL_info.csv"), Some(rec.row), format!("{} column {col}: {why}", rec.file_name));
    rec.validate().map_err(|(col, why)| at(col, why))?;
    if let Some(w) = params.window {
        super::recist::check_window(w).map_err(|why| Error::invalid("crop", why))?;
    }
    let slices = load_lesion_slices(root, rec)?;
    let crop_box = CropBox::around(rec, params)?;
    let window = params.window.unwrap_or(rec.window);
    let channels = slices
        .channels
        .each_ref()
        .map(|s| crop_box.crop_hu(s).into_iter().map(|v| window_unit(v, window)).collect());
    Ok(LesionCrop { crop_box, channels, recist: crop_box.recist_in_crop(rec), has_neighbour: slices.has_neighbour, fallbacks: slices.fallbacks })
}
