//! Mean-field inference for a fully connected CRF (Krähenbühl and Koltun 2011), step for step as
//! densecrf's `DenseCRF::inference`:
//!
//! ```text
//! Q = softmax(-unary)
//! repeat iters:  Q = softmax(-unary + sum_k compat_k * norm_k * K_k(norm_k * Q))
//! ```
//!
//! Public arrays are label-major planes (labels x height x width, like a network's softmax
//! output); inside, values are pixel-major (pixels x labels) so the lattice moves all labels of a
//! vertex together.

use super::kernel::{FilterMethod, KernelWorkspace, PairwiseKernel, bilateral_features};
use crate::error::{Error, Result};
use crate::io::Image;

/// Probabilities below this become this before the log, as pydensecrf's `unary_from_softmax`.
pub const PROB_CLIP: f32 = 1e-5;

/// How far a pixel's probabilities may sum from 1 before they are rejected.
pub const PROB_SUM_TOLERANCE: f32 = 1e-3;

/// A dense CRF over a width x height image with `labels` labels.
pub struct DenseCrf {
    width: usize,
    height: usize,
    labels: usize,
    method: FilterMethod,
    /// pixels x labels, -log p.
    unary: Option<Vec<f32>>,
    kernels: Vec<PairwiseKernel>,
}

impl DenseCrf {
    pub fn new(width: usize, height: usize, labels: usize) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::shape(
                "dense crf",
                format!("empty image {width}x{height}"),
            ));
        }
        if labels < 2 {
            return Err(Error::invalid(
                "dense crf",
                format!("{labels} labels; a CRF needs at least 2"),
            ));
        }
        Ok(DenseCrf {
            width,
            height,
            labels,
            method: FilterMethod::Lattice,
            unary: None,
            kernels: Vec::new(),
        })
    }

    /// Chooses how kernels added from now on filter (default: the lattice).
    pub fn with_method(mut self, method: FilterMethod) -> Self {
        self.method = method;
        self
    }

    pub fn pixels(&self) -> usize {
        self.width * self.height
    }

    pub fn labels(&self) -> usize {
        self.labels
    }

    pub fn kernels(&self) -> &[PairwiseKernel] {
        &self.kernels
    }

    /// Unary energies -log(max(p, 1e-5)) from label-major probabilities (labels planes of
    /// height x width). Each pixel's probabilities must lie in [0, 1] and sum to 1.
    pub fn set_unary_from_probs(&mut self, probs: &[f32]) -> Result<()> {
        self.unary = Some(unary_from_probs(
            probs,
            self.width,
            self.height,
            self.labels,
        )?);
        Ok(())
    }

    /// Unary energies given directly, label-major; any finite values.
    pub fn set_unary_energy(&mut self, energy: &[f32]) -> Result<()> {
        let n = self.pixels();
        self.check_planes("unary energy", energy.len())?;
        if let Some(i) = energy.iter().position(|v| !v.is_finite()) {
            let (l, p) = (i / n, i % n);
            return Err(Error::invalid(
                "unary energy",
                format!(
                    "label {l} at (x {}, y {}) is {}",
                    p % self.width,
                    p / self.width,
                    energy[i]
                ),
            ));
        }
        self.unary = Some(to_pixel_major(energy, n, self.labels));
        Ok(())
    }

    fn check_planes(&self, op: &'static str, len: usize) -> Result<()> {
        if len != self.pixels() * self.labels {
            return Err(Error::shape(
                op,
                format!(
                    "{len} values for {} labels x {}x{} pixels (expected {})",
                    self.labels,
                    self.width,
                    self.height,
                    self.pixels() * self.labels
                ),
            ));
        }
        Ok(())
    }

    /// densecrf's addPairwiseGaussian: smoothness kernel on position, width sxy, Potts weight compat.
    pub fn add_pairwise_gaussian(&mut self, sxy: f32, compat: f32) -> Result<()> {
        self.kernels.push(PairwiseKernel::smoothness(
            self.width,
            self.height,
            sxy,
            compat,
            self.method,
        )?);
        Ok(())
    }

    /// densecrf's addPairwiseBilateral: appearance kernel on position (sxy) and colour (srgb) of
    /// `image` (1 or 3 channels, same size as the CRF).
    pub fn add_pairwise_bilateral(
        &mut self,
        sxy: f32,
        srgb: f32,
        image: &Image<u8>,
        compat: f32,
    ) -> Result<()> {
        if image.width != self.width || image.height != self.height {
            return Err(Error::shape(
                "bilateral kernel",
                format!(
                    "guide image is {}x{}, the CRF is {}x{}",
                    image.width, image.height, self.width, self.height
                ),
            ));
        }
        let f = bilateral_features(image, sxy, srgb)?;
        self.kernels
            .push(PairwiseKernel::new(&f, 5, compat, self.method)?);
        Ok(())
    }

    /// Any Gaussian kernel over custom features (pixels x dim, already divided by the widths).
    pub fn add_pairwise_energy(&mut self, features: &[f32], dim: usize, compat: f32) -> Result<()> {
        if dim == 0 || features.len() != self.pixels() * dim {
            return Err(Error::shape(
                "pairwise energy",
                format!(
                    "{} feature values for {} pixels x {dim} dimensions",
                    features.len(),
                    self.pixels()
                ),
            ));
        }
        self.kernels
            .push(PairwiseKernel::new(features, dim, compat, self.method)?);
        Ok(())
    }

    /// Marginals after `iters` mean-field iterations, label-major (labels x height x width).
    pub fn inference(&self, iters: usize) -> Result<Vec<f32>> {
        Ok(to_label_major(
            &self.inference_pixel_major(iters)?,
            self.pixels(),
            self.labels,
        ))
    }

    /// The most likely label of each pixel after `iters` iterations (ties go to the lower label).
    pub fn map(&self, iters: usize) -> Result<Vec<u8>> {
        if self.labels > 256 {
            return Err(Error::invalid(
                "dense crf map",
                format!("{} labels do not fit a u8 label map", self.labels),
            ));
        }
        let q = self.inference_pixel_major(iters)?;
        Ok(q.chunks_exact(self.labels)
            .map(argmax)
            .map(|l| l as u8)
            .collect())
    }

    fn inference_pixel_major(&self, iters: usize) -> Result<Vec<f32>> {
        let unary = self.unary.as_ref().ok_or_else(|| {
            Error::invalid(
                "dense crf inference",
                "no unary set: call set_unary_from_probs first",
            )
        })?;
        let labels = self.labels;
        let mut q = vec![0f32; unary.len()];
        let mut logits: Vec<f32> = unary.iter().map(|u| -u).collect();
        exp_normalize(&logits, labels, &mut q);
        let mut workspaces: Vec<KernelWorkspace> = self
            .kernels
            .iter()
            .map(|_| KernelWorkspace::default())
            .collect();
        for _ in 0..iters {
            mean_field_step(
                unary,
                &self.kernels,
                &q,
                labels,
                &mut logits,
                &mut workspaces,
            );
            exp_normalize(&logits, labels, &mut q);
        }
        Ok(q)
    }
}

/// One iteration's logits: -unary plus every kernel's messages from the current Q.
pub fn mean_field_step(
    unary: &[f32],
    kernels: &[PairwiseKernel],
    q: &[f32],
    labels: usize,
    logits: &mut [f32],
    workspaces: &mut [KernelWorkspace],
) {
    for (l, u) in logits.iter_mut().zip(unary) {
        *l = -u;
    }
    for (k, ws) in kernels.iter().zip(workspaces) {
        k.add_messages(q, labels, logits, ws);
    }
}

/// Per-pixel softmax of `logits` (pixels x labels) into `q`, shifted by the max for stability.
pub fn exp_normalize(logits: &[f32], labels: usize, q: &mut [f32]) {
    match labels {
        2 => exp_normalize_impl::<2>(logits, 2, q),
        3 => exp_normalize_impl::<3>(logits, 3, q),
        l => exp_normalize_impl::<0>(logits, l, q),
    }
}

/// `L`: the label count as a constant (0: read `labels`), so the two-label case unrolls.
#[inline(always)]
fn exp_normalize_impl<const L: usize>(logits: &[f32], labels: usize, q: &mut [f32]) {
    let labels = if L == 0 { labels } else { L };
    if L == 2 {
        // The logistic of the difference: one exp per pixel.
        for (x, out) in logits.chunks_exact(2).zip(q.chunks_exact_mut(2)) {
            let e = (-(x[0] - x[1]).abs()).exp();
            let (big, small) = (1.0 / (1.0 + e), e / (1.0 + e));
            // A tie gives 0.5 each either way.
            (out[0], out[1]) = if x[0] >= x[1] {
                (big, small)
            } else {
                (small, big)
            };
        }
        return;
    }
    for (x, out) in logits.chunks_exact(labels).zip(q.chunks_exact_mut(labels)) {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - m).exp();
            s += *o;
        }
        let inv = 1.0 / s;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

fn argmax(q: &[f32]) -> usize {
    q.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > q[best] { i } else { best })
}

/// pydensecrf's `unary_from_softmax` (clip 1e-5): -log(max(p, 1e-5)), pixel-major out of
/// label-major `probs`. Rejects NaN, values outside [0, 1] and pixels whose sum is not 1,
/// naming the pixel.
pub fn unary_from_probs(
    probs: &[f32],
    width: usize,
    height: usize,
    labels: usize,
) -> Result<Vec<f32>> {
    let n = width * height;
    if probs.len() != n * labels {
        return Err(Error::shape(
            "unary from probabilities",
            format!(
                "{} values for {labels} labels x {width}x{height} pixels (expected {})",
                probs.len(),
                n * labels
            ),
        ));
    }
    let at = |p: usize| format!("(x {}, y {})", p % width, p / width);
    if let Some(i) = probs.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(Error::invalid(
            "unary from probabilities",
            format!(
                "label {} at {} has probability {}; expected [0, 1]",
                i / n,
                at(i % n),
                probs[i]
            ),
        ));
    }
    let pm = to_pixel_major(probs, n, labels);
    for (p, px) in pm.chunks_exact(labels).enumerate() {
        let s: f32 = px.iter().sum();
        if (s - 1.0).abs() > PROB_SUM_TOLERANCE {
            return Err(Error::invalid(
                "unary from probabilities",
                format!("probabilities at {} sum to {s}, not 1 ({px:?})", at(p)),
            ));
        }
    }
    Ok(pm.into_iter().map(|p| -p.max(PROB_CLIP).ln()).collect())
}

/// Label-major planes (labels x pixels) to pixel-major values (pixels x labels).
fn to_pixel_major(planes: &[f32], pixels: usize, labels: usize) -> Vec<f32> {
    transpose(planes, labels, pixels)
}

/// Pixel-major values (pixels x labels) to label-major planes (labels x pixels).
fn to_label_major(values: &[f32], pixels: usize, labels: usize) -> Vec<f32> {
    transpose(values, pixels, labels)
}

/// `src` (rows x cols, row-major) as cols x rows.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_is_clipped_negative_log() {
        // 2x1 image, 2 labels, label-major: label 0 = [1, 0.25], label 1 = [0, 0.75].
        let u = unary_from_probs(&[1.0, 0.25, 0.0, 0.75], 2, 1, 2).unwrap();
        let want = [0.0, -PROB_CLIP.ln(), -0.25f32.ln(), -0.75f32.ln()];
        for (a, b) in u.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{u:?}");
        }
    }

    #[test]
    fn bad_probabilities_are_named() {
        let e = unary_from_probs(&[0.5, 0.5, 0.6, 0.5], 2, 1, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(x 0, y 0)") && e.contains("sum to 1.1"), "{e}");
        let e = unary_from_probs(&[0.5, f32::NAN, 0.5, 0.5], 2, 1, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(x 1, y 0)") && e.contains("NaN"), "{e}");
        let e = unary_from_probs(&[0.5, 0.5, 0.5], 2, 1, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 values"), "{e}");
        assert!(unary_from_probs(&[1.5, -0.5, 0.5, 0.5], 2, 1, 2).is_err());
    }

    #[test]
    fn softmax_is_normalised_and_ordered() {
        let logits = [0.0, 1.0, -2.0, 3.0, 3.0, 3.0];
        let mut q = [0.0; 6];
        exp_normalize(&logits, 3, &mut q);
        let e = [1.0f32, 1f32.exp(), (-2f32).exp()];
        let s: f32 = e.iter().sum();
        for (a, b) in q[..3].iter().zip(e) {
            assert!((a - b / s).abs() < 1e-6, "{q:?}");
        }
        assert!(q[3..].iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn inference_needs_unary_and_matching_shapes() {
        let mut crf = DenseCrf::new(4, 3, 2).unwrap();
        assert!(
            crf.inference(1)
                .unwrap_err()
                .to_string()
                .contains("no unary")
        );
        let img = Image::new(3, 4, 1, vec![7u8; 12]);
        let e = crf
            .add_pairwise_bilateral(80.0, 13.0, &img, 10.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3x4") && e.contains("4x3"), "{e}");
        assert!(crf.set_unary_energy(&[0.0; 23]).is_err());
        assert!(DenseCrf::new(4, 3, 1).is_err());
        assert!(DenseCrf::new(0, 3, 2).is_err());
    }

    #[test]
    fn zero_iterations_return_the_unary_softmax() {
        let mut crf = DenseCrf::new(2, 1, 2).unwrap();
        crf.set_unary_from_probs(&[0.3, 0.9, 0.7, 0.1]).unwrap();
        crf.add_pairwise_gaussian(3.0, 3.0).unwrap();
        let q = crf.inference(0).unwrap();
        for (a, b) in q.iter().zip([0.3, 0.9, 0.7, 0.1]) {
            assert!((a - b).abs() < 1e-6, "{q:?}");
        }
    }
}
