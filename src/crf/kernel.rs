//! Pairwise terms of the dense CRF: a Gaussian kernel over per-pixel features with Potts
//! compatibility, normalised as pydensecrf does by default (NORMALIZE_SYMMETRIC):
//!
//! ```text
//! norm_i     = 1 / sqrt(K(1)_i + 1e-20)
//! message_i  = compat * norm_i * K(norm * Q)_i          (added to -unary before the softmax)
//! ```
//!
//! densecrf's PottsCompatibility(w) maps the filtered Q to -w * K(Q), which inference subtracts,
//! so a positive compat rewards agreeing with similar pixels.
//!
//! Features follow densecrf's DenseCRF2D: smoothness (x/sxy, y/sxy) and appearance
//! (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb), x the column and y the row.

use super::exact::ExactGaussian;
use super::lattice::{FilterWorkspace, Lattice};
use crate::error::{Error, Result};
use crate::io::Image;

/// How a kernel filters: the permutohedral lattice (fast, approximate; what pydensecrf does) or
/// the exact O(N^2) sum (for tests and small images).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterMethod {
    #[default]
    Lattice,
    Exact,
}

fn check_width(op: &'static str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("{name} must be a positive width, got {v}")))
    }
}

/// Smoothness features (x/sxy, y/sxy) for a width x height image, point after point in raster order.
pub fn gaussian_features(width: usize, height: usize, sxy: f32) -> Result<Vec<f32>> {
    check_width("gaussian features", "sxy", sxy)?;
    let mut f = Vec::with_capacity(width * height * 2);
    for y in 0..height {
        for x in 0..width {
            f.extend_from_slice(&[x as f32 / sxy, y as f32 / sxy]);
        }
    }
    Ok(f)
}

/// Appearance features (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb). A 1-channel image is used as the
/// RGB image with r = g = b, which is what pydensecrf users pass for a grey image, so results
/// match theirs.
pub fn bilateral_features(image: &Image<u8>, sxy: f32, srgb: f32) -> Result<Vec<f32>> {
    check_width("bilateral features", "sxy", sxy)?;
    check_width("bilateral features", "srgb", srgb)?;
    if image.channels != 1 && image.channels != 3 {
        return Err(Error::invalid(
            "bilateral features",
            format!("guide image has {} channels; expected 1 (grey) or 3 (RGB)", image.channels),
        ));
    }
    if image.data.len() != image.width * image.height * image.channels {
        return Err(Error::shape(
            "bilateral features",
            format!(
                "{}x{}x{} image holds {} values",
                image.width,
                image.height,
                image.channels,
                image.data.len()
            ),
        ));
    }
    let mut f = Vec::with_capacity(image.width * image.height * 5);
    for y in 0..image.height {
        for x in 0..image.width {
            let px = &image.data[(y * image.width + x) * image.channels..][..image.channels];
            let rgb = if image.channels == 1 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
            f.extend_from_slice(&[x as f32 / sxy, y as f32 / sxy]);
            f.extend(rgb.iter().map(|&c| c as f32 / srgb));
        }
    }
    Ok(f)
}

enum Filter {
    /// The lattice with the normalisation and compat folded into its splat and slice weights:
    /// splat_w = barycentric * norm_i, slice_w = barycentric * alpha * norm_i * compat.
    /// `total` is the message of a label held by every pixel, compat * norm * K(norm): as the
    /// labels' Q sum to 1 and the filter is linear, the last label's message is `total` less
    /// the others', so only labels - 1 channels go through the lattice (one for a lesion mask).
    Lattice { lattice: Lattice, splat_w: Vec<f32>, slice_w: Vec<f32>, total: Vec<f32> },
    Exact(ExactGaussian),
}

/// One Gaussian edge kernel with its Potts weight, ready to pass messages.
pub struct PairwiseKernel {
    points: usize,
    compat: f32,
    norm: Vec<f32>,
    filter: Filter,
}

/// Buffers one kernel needs per message pass; allocate once per inference.
#[derive(Default)]
pub struct KernelWorkspace {
    lattice: FilterWorkspace,
    scaled: Vec<f32>,
    filtered: Vec<f32>,
}

impl PairwiseKernel {
    /// `features`: points x dim (scaled by 1/width); `compat`: the Potts weight.
    pub fn new(features: &[f32], dim: usize, compat: f32, method: FilterMethod) -> Result<Self> {
        if !compat.is_finite() {
            return Err(Error::invalid("pairwise kernel", format!("compat must be finite, got {compat}")));
        }
        let ones_count = features.len() / dim.max(1);
        let ones = vec![1.0f32; ones_count];
        let mut density = vec![0.0f32; ones_count];
        let filter = match method {
            FilterMethod::Lattice => {
                let lattice = Lattice::new(features, dim)?;
                lattice.filter(&ones, 1, &mut density)?;
                Filter::Lattice { lattice, splat_w: Vec::new(), slice_w: Vec::new(), total: Vec::new() }
            }
            FilterMethod::Exact => {
                let exact = ExactGaussian::new(features, dim)?;
                exact.filter(&ones, 1, &mut density)?;
                Filter::Exact(exact)
            }
        };
        let norm: Vec<f32> = density.iter().map(|&k| 1.0 / (k + 1e-20).sqrt()).collect();
        let mut kernel = PairwiseKernel { points: ones_count, compat, norm, filter };
        if let Filter::Lattice { lattice, splat_w, slice_w, total } = &mut kernel.filter {
            let d1 = lattice.dim() + 1;
            let alpha = lattice.alpha();
            *splat_w = lattice
                .barycentric()
                .chunks_exact(d1)
                .zip(&kernel.norm)
                .flat_map(|(w, &n)| w.iter().map(move |w| w * n))
                .collect();
            *slice_w = splat_w.iter().map(|w| w * alpha * compat).collect();
            *total = vec![0.0; ones_count];
            lattice.filter_add(splat_w, slice_w, &ones, 1, total, &mut FilterWorkspace::default());
        }
        Ok(kernel)
    }

    pub fn points(&self) -> usize {
        self.points
    }

    /// The symmetric normalisation 1/sqrt(K(1)), one per point.
    pub fn norm(&self) -> &[f32] {
        &self.norm
    }

    /// The lattice, when this kernel uses one (for inspection and benchmarks).
    pub fn lattice(&self) -> Option<&Lattice> {
        match &self.filter {
            Filter::Lattice { lattice, .. } => Some(lattice),
            Filter::Exact(_) => None,
        }
    }

    /// Adds this kernel's messages compat * norm * K(norm * q) to `acc` (both points x labels).
    pub(crate) fn add_messages(&self, q: &[f32], labels: usize, acc: &mut [f32], ws: &mut KernelWorkspace) {
        debug_assert_eq!(q.len(), self.points * labels);
        debug_assert_eq!(acc.len(), q.len());
        match &self.filter {
            Filter::Lattice { lattice, splat_w, slice_w, total } => {
                let free = labels - 1;
                ws.scaled.resize(self.points * free, 0.0);
                ws.filtered.clear();
                ws.filtered.resize(self.points * free, 0.0);
                match labels {
                    2 => gather_free::<2>(q, 2, &mut ws.scaled),
                    l => gather_free::<0>(q, l, &mut ws.scaled),
                }
                lattice.filter_add(splat_w, slice_w, &ws.scaled, free, &mut ws.filtered, &mut ws.lattice);
                match labels {
                    2 => add_with_last::<2>(&ws.filtered, total, 2, acc),
                    l => add_with_last::<0>(&ws.filtered, total, l, acc),
                }
            }
            Filter::Exact(exact) => {
                ws.scaled.clear();
                ws.scaled.extend(q.chunks_exact(labels).zip(&self.norm).flat_map(|(q, &n)| q.iter().map(move |v| v * n)));
                ws.filtered.resize(q.len(), 0.0);
                exact
                    .filter(&ws.scaled, labels, &mut ws.filtered)
                    .expect("buffers sized from the kernel's own point count");
                for ((a, f), &n) in acc.chunks_exact_mut(labels).zip(ws.filtered.chunks_exact(labels)).zip(&self.norm) {
                    for (a, f) in a.iter_mut().zip(f) {
                        *a += self.compat * n * f;
                    }
                }
            }
        }
    }
}

/// Copies the first labels - 1 channels of `q` (pixels x labels) into `out`. `L`: the label
/// count as a constant where known (0: read `labels`).
#[inline(always)]
fn gather_free<const L: usize>(q: &[f32], labels: usize, out: &mut [f32]) {
    let labels = if L == 0 { labels } else { L };
    for (o, q) in out.chunks_exact_mut(labels - 1).zip(q.chunks_exact(labels)) {
        for l in 0..labels - 1 {
            o[l] = q[l];
        }
    }
}

/// acc += the messages of the first labels - 1 labels (`filtered`) and, for the last label,
/// `total` less their sum.
#[inline(always)]
fn add_with_last<const L: usize>(filtered: &[f32], total: &[f32], labels: usize, acc: &mut [f32]) {
    let labels = if L == 0 { labels } else { L };
    let free = labels - 1;
    for ((a, m), &t) in acc.chunks_exact_mut(labels).zip(filtered.chunks_exact(free)).zip(total) {
        let mut others = 0.0;
        for l in 0..free {
            a[l] += m[l];
            others += m[l];
        }
        a[free] += t - others;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_densecrf_layout() {
        let f = gaussian_features(3, 2, 2.0).unwrap();
        // Point (x=2, y=1) is the 6th in raster order.
        assert_eq!(&f[5 * 2..6 * 2], &[1.0, 0.5]);
        let img = Image::new(2, 1, 3, vec![10, 20, 30, 40, 50, 60]);
        let b = bilateral_features(&img, 4.0, 10.0).unwrap();
        assert_eq!(&b[5..], &[0.25, 0.0, 4.0, 5.0, 6.0]);
        let grey = Image::new(2, 1, 1, vec![10, 40]);
        assert_eq!(&bilateral_features(&grey, 4.0, 10.0).unwrap()[5..], &[0.25, 0.0, 4.0, 4.0, 4.0]);
    }

    #[test]
    fn widths_must_be_positive_and_finite() {
        for bad in [0.0, -3.0, f32::NAN, f32::INFINITY] {
            let e = gaussian_features(4, 4, bad).unwrap_err().to_string();
            assert!(e.contains("sxy"), "{e}");
            let img = Image::new(1, 1, 1, vec![5]);
            let e = bilateral_features(&img, 3.0, bad).unwrap_err().to_string();
            assert!(e.contains("srgb"), "{e}");
        }
        let two = Image::new(1, 1, 2, vec![5, 6]);
        assert!(bilateral_features(&two, 3.0, 3.0).unwrap_err().to_string().contains("2 channels"));
        let f = gaussian_features(4, 4, 3.0).unwrap();
        assert!(PairwiseKernel::new(&f, 2, f32::NAN, FilterMethod::Lattice).is_err());
    }
}
