//! Dense CRF refinement of the network's lesion masks (Krähenbühl and Koltun, NeurIPS 2011), as
//! pydensecrf computes it: mean-field inference with Potts compatibility and two Gaussian edge
//! kernels (smoothness on position, appearance on position and intensity), message passing by
//! filtering on the permutohedral lattice.
//!
//! Layers, bottom up (each step a separate function; `cuda` mirrors all but `exact` on the GPU):
//! - `hash`: lattice keys -> vertex ids, used only while building a lattice;
//! - `lattice`: embed features, then splat / blur / slice over flat arrays;
//! - `exact`: the O(N^2) Gaussian filter the lattice approximates (the tests' reference);
//! - `kernel`: features, symmetric normalisation and Potts weight of one pairwise term;
//! - `meanfield`: `DenseCrf`, unaries from probabilities, the iteration;
//! - here: the binary lesion case with pydensecrf's parameters, one image or a batch;
//! - `cuda`: the same on a CUDA device (kernels/crf.cu), a batch of same-size images per set of
//!   launches; `refine_batch_on` picks the device.

mod hash;

pub mod cuda;
pub mod exact;
pub mod kernel;
pub mod lattice;
pub mod meanfield;

pub use exact::ExactGaussian;
pub use kernel::{FilterMethod, PairwiseKernel, clear_smoothness_cache};
pub use lattice::Lattice;
pub use meanfield::DenseCrf;

use crate::backend::cuda::CudaDevice;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::Image;
use rayon::prelude::*;

/// The parameters as pydensecrf users know them, with the values of its usual call
/// (`addPairwiseGaussian(sxy=3, compat=3)`, `addPairwiseBilateral(sxy=80, srgb=13, compat=10)`,
/// 5 iterations).
/// Also the `[eval.crf_params]` table of a training config (same names, unknown keys refused).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrfParams {
    pub gauss_sxy: f32,
    pub gauss_compat: f32,
    pub bilateral_sxy: f32,
    pub bilateral_srgb: f32,
    pub bilateral_compat: f32,
    pub iters: usize,
}

impl Default for CrfParams {
    fn default() -> Self {
        CrfParams {
            gauss_sxy: 3.0,
            gauss_compat: 3.0,
            bilateral_sxy: 80.0,
            bilateral_srgb: 13.0,
            bilateral_compat: 10.0,
            iters: 5,
        }
    }
}

/// Builds the two-label CRF (background, lesion) for one image: unaries from the lesion
/// probability `prob` (1 channel, values in [0, 1]), both kernels on `image` (1 or 3 channels).
pub fn binary_crf(
    image: &Image<u8>,
    prob: &Image<f32>,
    params: &CrfParams,
    method: FilterMethod,
) -> Result<DenseCrf> {
    if prob.channels != 1 {
        return Err(Error::invalid(
            "crf",
            format!(
                "lesion probability has {} channels; expected 1",
                prob.channels
            ),
        ));
    }
    if (image.width, image.height) != (prob.width, prob.height) {
        return Err(Error::shape(
            "crf",
            format!(
                "image is {}x{} but the probability map is {}x{}",
                image.width, image.height, prob.width, prob.height
            ),
        ));
    }
    let mut crf = DenseCrf::new(image.width, image.height, 2)?.with_method(method);
    let planes: Vec<f32> = prob
        .data
        .iter()
        .map(|p| 1.0 - p)
        .chain(prob.data.iter().copied())
        .collect();
    crf.set_unary_from_probs(&planes)?;
    crf.add_pairwise_gaussian(params.gauss_sxy, params.gauss_compat)?;
    crf.add_pairwise_bilateral(
        params.bilateral_sxy,
        params.bilateral_srgb,
        image,
        params.bilateral_compat,
    )?;
    Ok(crf)
}

/// Refines one lesion probability map: returns the lesion marginal after mean field (1 channel).
pub fn refine(image: &Image<u8>, prob: &Image<f32>, params: &CrfParams) -> Result<Image<f32>> {
    let crf = binary_crf(image, prob, params, FilterMethod::Lattice)?;
    let q = crf.inference(params.iters)?;
    let n = crf.pixels();
    Ok(Image::new(image.width, image.height, 1, q[n..].to_vec()))
}

/// `refine` over a batch, images in parallel; an error names the item at fault.
pub fn refine_batch(
    images: &[Image<u8>],
    probs: &[Image<f32>],
    params: &CrfParams,
) -> Result<Vec<Image<f32>>> {
    if images.len() != probs.len() {
        return Err(Error::shape(
            "crf batch",
            format!(
                "{} images but {} probability maps",
                images.len(),
                probs.len()
            ),
        ));
    }
    let bar = crate::progress::bar(images.len() as u64, "crf");
    let out = images
        .par_iter()
        .zip(probs)
        .enumerate()
        .map(|(i, (img, p))| {
            let r = refine(img, p, params)
                .map_err(|e| Error::invalid("crf batch", format!("item {i}: {e}")));
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    out
}

/// Most pixels one device batch holds (64 images of 128x128): bounds the lattices' memory
/// (about 0.4 GB for the appearance lattice's hash table, sized for the worst case).
pub const GPU_BATCH_PIXELS: usize = 1 << 20;

/// `refine_batch` on `device`. On a CUDA device, images of one size and channel count run as one
/// batch (one set of launches, up to `GPU_BATCH_PIXELS` pixels); mixed sizes run as one batch per
/// size, the results in input order. On the CPU, `refine_batch`.
pub fn refine_batch_on(
    device: Device,
    images: &[Image<u8>],
    probs: &[Image<f32>],
    params: &CrfParams,
) -> Result<Vec<Image<f32>>> {
    let Device::Cuda(ordinal) = device else {
        return refine_batch(images, probs, params);
    };
    if images.len() != probs.len() {
        return refine_batch(images, probs, params); // the CPU path names the mismatch
    }
    let dev = CudaDevice::get(ordinal)?;
    let mut groups: Vec<((usize, usize, usize), Vec<usize>)> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let key = (img.width, img.height, img.channels);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, items)) => items.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut out: Vec<Option<Image<f32>>> = vec![None; images.len()];
    for ((w, h, _), items) in groups {
        let per_batch = (GPU_BATCH_PIXELS / (w * h).max(1)).max(1);
        for chunk in items.chunks(per_batch) {
            let imgs: Vec<&Image<u8>> = chunk.iter().map(|&i| &images[i]).collect();
            let ps: Vec<&Image<f32>> = chunk.iter().map(|&i| &probs[i]).collect();
            for (&i, q) in chunk.iter().zip(cuda::refine_group(&dev, &imgs, &ps, chunk, params)?) {
                out[i] = Some(q);
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// The lesion mask of a lesion marginal: 255 where the lesion is the more likely label, else 0
/// (a tie goes to background, as densecrf's argmax does).
pub fn mask_from_marginal(q: &Image<f32>) -> Image<u8> {
    Image::new(
        q.width,
        q.height,
        1,
        q.data
            .iter()
            .map(|&p| if p > 1.0 - p { 255 } else { 0 })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_the_item_at_fault() {
        let img = Image::new(4, 4, 1, (0..16u8).collect());
        let ok = Image::new(4, 4, 1, vec![0.3f32; 16]);
        let nan = Image::new(4, 4, 1, vec![f32::NAN; 16]);
        let small = Image::new(3, 4, 1, vec![0.3f32; 12]);
        let p = CrfParams::default();
        let e = refine_batch(&[img.clone(), img.clone()], &[ok.clone(), nan], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("item 1") && e.contains("NaN"), "{e}");
        let e = refine_batch(std::slice::from_ref(&img), &[small], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("item 0") && e.contains("3x4"), "{e}");
        assert!(refine_batch(&[img], &[], &p).is_err());
    }
}
