//! What the network is fed: the data stage's lesion crop (key-1, key, key+1 windowed to
//! [0, 1], S x S) normalised per channel with ImageNet's mean and standard deviation, which
//! torchvision's pretrained ResNets expect. `coseg crops` writes exactly this, and training,
//! evaluation and `coseg embed` feed exactly this.

use crate::data::{CropParams, LesionCrop, LesionRecord, lesion_crop};
use crate::error::Result;
use std::path::Path;

/// ImageNet's per-channel mean and standard deviation (torchvision's `Normalize`).
pub const INPUT_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const INPUT_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(x - mean) / std` per channel of a channel-major 3 x S x S image, in place.
pub fn normalise(image: &mut [f32]) {
    let plane = image.len() / 3;
    for (c, chunk) in image.chunks_mut(plane.max(1)).enumerate().take(3) {
        for v in chunk {
            *v = (*v - INPUT_MEAN[c]) / INPUT_STD[c];
        }
    }
}

/// The network input of one lesion crop: 3 x S x S, channel-major, normalised.
pub fn crop_input(crop: &LesionCrop) -> Vec<f32> {
    let mut image = crop.channels.concat();
    normalise(&mut image);
    image
}

/// Loads, crops and normalises the lesion of `rec` under `root`: one row of `coseg crops`.
pub fn lesion_input(root: &Path, rec: &LesionRecord, params: &CropParams) -> Result<Vec<f32>> {
    Ok(crop_input(&lesion_crop(root, rec, params)?))
}
