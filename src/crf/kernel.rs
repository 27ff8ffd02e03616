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
use std::sync::{Arc, Mutex};

/// How a kernel filters: the permutohedral lattice (fast, approximate; what pydensecrf does) or
/// the exact O(N^2) sum (for tests and small images).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterMethod {
    #[default]
    Lattice,
    Exact,
}

pub(crate) fn check_width(op: &'static str, name: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("{name} must be a positive width, got {v}"),
        ))
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
            format!(
                "guide image has {} channels; expected 1 (grey) or 3 (RGB)",
                image.channels
            ),
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
            let rgb = if image.channels == 1 {
                [px[0]; 3]
            } else {
                [px[0], px[1], px[2]]
            };
            f.extend_from_slice(&[x as f32 / sxy, y as f32 / sxy]);
            f.extend(rgb.iter().map(|&c| c as f32 / srgb));
        }
    }
    Ok(f)
}

enum Filter {
    Lattice(Lattice),
    Exact(ExactGaussian),
}

impl Filter {
    /// K(input), input and out points x channels (sized by the caller).
    fn apply(
        &self,
        input: &[f32],
        channels: usize,
        out: &mut [f32],
        ws: &mut FilterWorkspace,
    ) -> Result<()> {
        match self {
            Filter::Lattice(lattice) => {
                lattice.filter_with(input, channels, out, ws);
                Ok(())
            }
            Filter::Exact(exact) => exact.filter(input, channels, out),
        }
    }
}

/// One Gaussian edge kernel with its Potts weight, ready to pass messages. Cloning shares the
/// built lattice and normalisation (they are read-only once built).
#[derive(Clone)]
pub struct PairwiseKernel {
    points: usize,
    compat: f32,
    norm: Arc<[f32]>,
    /// The message of a label that every pixel holds, compat * norm * K(norm). As the labels'
    /// Q sum to 1 and K is linear, the last label's message is `total` less the others', so
    /// only labels - 1 channels are filtered (one for a lesion mask).
    total: Arc<[f32]>,
    filter: Arc<Filter>,
}

/// What a smoothness kernel depends on: image size, sxy and compat (bit patterns), its method.
type SmoothnessKey = (usize, usize, u32, u32, FilterMethod);

/// Smoothness kernels built lately. They depend only on the image size and widths, so a batch of
/// same-size crops (and every later call) builds the lattice once; a few sizes are kept, the
/// oldest dropped first, to bound memory (about 9 MB for a 512x512 kernel).
static SMOOTHNESS_CACHE: Mutex<Vec<(SmoothnessKey, PairwiseKernel)>> = Mutex::new(Vec::new());
const SMOOTHNESS_CACHE_LEN: usize = 4;

fn smoothness_cache() -> std::sync::MutexGuard<'static, Vec<(SmoothnessKey, PairwiseKernel)>> {
    // The cache holds only finished kernels, so a panic elsewhere cannot leave it half-written.
    SMOOTHNESS_CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops the cached smoothness kernels (frees their memory; the next CRF rebuilds them).
pub fn clear_smoothness_cache() {
    smoothness_cache().clear();
}

/// Buffers one kernel needs per message pass; allocate once per inference.
#[derive(Default)]
pub struct KernelWorkspace {
    filter: FilterWorkspace,
    scaled: Vec<f32>,
    filtered: Vec<f32>,
}

impl PairwiseKernel {
    /// The smoothness kernel (features x/sxy, y/sxy) of a width x height image, from the cache
    /// when one with the same size, widths and method was built lately.
    pub fn smoothness(
        width: usize,
        height: usize,
        sxy: f32,
        compat: f32,
        method: FilterMethod,
    ) -> Result<Self> {
        let key = (width, height, sxy.to_bits(), compat.to_bits(), method);
        if let Some((_, k)) = smoothness_cache().iter().find(|(k, _)| *k == key) {
            return Ok(k.clone());
        }
        // Built outside the lock: threads of a batch may build the same kernel once each at
        // first, but never wait on each other.
        let kernel = Self::new(&gaussian_features(width, height, sxy)?, 2, compat, method)?;
        let mut cache = smoothness_cache();
        if !cache.iter().any(|(k, _)| *k == key) {
            if cache.len() == SMOOTHNESS_CACHE_LEN {
                cache.remove(0);
            }
            cache.push((key, kernel.clone()));
        }
        Ok(kernel)
    }

    /// `features`: points x dim (scaled by 1/width); `compat`: the Potts weight.
    pub fn new(features: &[f32], dim: usize, compat: f32, method: FilterMethod) -> Result<Self> {
        if !compat.is_finite() {
            return Err(Error::invalid(
                "pairwise kernel",
                format!("compat must be finite, got {compat}"),
            ));
        }
        let filter = match method {
            FilterMethod::Lattice => Filter::Lattice(Lattice::new(features, dim)?),
            FilterMethod::Exact => Filter::Exact(ExactGaussian::new(features, dim)?),
        };
        let points = features.len() / dim;
        let mut ws = FilterWorkspace::default();
        let mut density = vec![0.0f32; points];
        filter.apply(&vec![1.0; points], 1, &mut density, &mut ws)?;
        let norm: Arc<[f32]> = density.iter().map(|&k| 1.0 / (k + 1e-20).sqrt()).collect();
        let mut total = vec![0.0f32; points];
        filter.apply(&norm, 1, &mut total, &mut ws)?;
        for (t, n) in total.iter_mut().zip(norm.iter()) {
            *t *= compat * n;
        }
        Ok(PairwiseKernel {
            points,
            compat,
            norm,
            total: total.into(),
            filter: Arc::new(filter),
        })
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
        match &*self.filter {
            Filter::Lattice(lattice) => Some(lattice),
            Filter::Exact(_) => None,
        }
    }

    /// Adds this kernel's messages compat * norm * K(norm * q) to `acc` (both points x labels),
    /// as densecrf's NORMALIZE_SYMMETRIC DenseKernel then PottsCompatibility do (with the
    /// inference's sign flip): filter labels - 1 channels, derive the last from `total`.
    pub(crate) fn add_messages(
        &self,
        q: &[f32],
        labels: usize,
        acc: &mut [f32],
        ws: &mut KernelWorkspace,
    ) {
        debug_assert_eq!(q.len(), self.points * labels);
        debug_assert_eq!(acc.len(), q.len());
        let free = labels - 1;
        ws.scaled.resize(self.points * free, 0.0);
        ws.filtered.resize(self.points * free, 0.0);
        match labels {
            2 => scale_free_labels::<2>(q, &self.norm, 2, &mut ws.scaled),
            l => scale_free_labels::<0>(q, &self.norm, l, &mut ws.scaled),
        }
        self.filter
            .apply(&ws.scaled, free, &mut ws.filtered, &mut ws.filter)
            .expect("buffers sized from the kernel's own point count");
        match labels {
            2 => add_with_last::<2>(&ws.filtered, &self.norm, self.compat, &self.total, 2, acc),
            l => add_with_last::<0>(&ws.filtered, &self.norm, self.compat, &self.total, l, acc),
        }
    }
}

/// out = norm * q over the first labels - 1 channels of `q` (pixels x labels). `L`: the label
/// count as a constant where known (0: read `labels`), so two labels unroll.
#[inline(always)]
fn scale_free_labels<const L: usize>(q: &[f32], norm: &[f32], labels: usize, out: &mut [f32]) {
    let labels = if L == 0 { labels } else { L };
    for ((o, q), &n) in out
        .chunks_exact_mut(labels - 1)
        .zip(q.chunks_exact(labels))
        .zip(norm)
    {
        for l in 0..labels - 1 {
            o[l] = n * q[l];
        }
    }
}

/// acc += compat * norm * filtered for the first labels - 1 labels and, for the last label,
/// `total` less their sum.
#[inline(always)]
fn add_with_last<const L: usize>(
    filtered: &[f32],
    norm: &[f32],
    compat: f32,
    total: &[f32],
    labels: usize,
    acc: &mut [f32],
) {
    let labels = if L == 0 { labels } else { L };
    let free = labels - 1;
    let rows = acc
        .chunks_exact_mut(labels)
        .zip(filtered.chunks_exact(free));
    for ((a, m), (&n, &t)) in rows.zip(norm.iter().zip(total)) {
        let c = compat * n;
        let mut others = 0.0;
        for l in 0..free {
            let message = c * m[l];
            a[l] += message;
            others += message;
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
        assert_eq!(
            &bilateral_features(&grey, 4.0, 10.0).unwrap()[5..],
            &[0.25, 0.0, 4.0, 4.0, 4.0]
        );
    }

    #[test]
    fn cached_smoothness_kernel_is_the_one_built_for_that_size_and_width() {
        // Sizes no other test uses, so the shared cache holds only what this test put there.
        let (w, h) = (23, 17);
        let fresh = |sxy| {
            PairwiseKernel::new(
                &gaussian_features(w, h, sxy).unwrap(),
                2,
                3.0,
                FilterMethod::Lattice,
            )
            .unwrap()
        };
        let a = PairwiseKernel::smoothness(w, h, 3.0, 3.0, FilterMethod::Lattice).unwrap();
        let b = PairwiseKernel::smoothness(w, h, 3.0, 3.0, FilterMethod::Lattice).unwrap();
        assert!(
            Arc::ptr_eq(&a.norm, &b.norm),
            "second call must reuse the first kernel"
        );
        assert_eq!(&a.norm[..], &fresh(3.0).norm[..]);
        assert_eq!(&a.total[..], &fresh(3.0).total[..]);
        // Another width or size is another kernel.
        let c = PairwiseKernel::smoothness(w, h, 1.5, 3.0, FilterMethod::Lattice).unwrap();
        assert_eq!(&c.norm[..], &fresh(1.5).norm[..]);
        assert_ne!(&c.norm[..], &a.norm[..]);
        let d = PairwiseKernel::smoothness(h, w, 3.0, 3.0, FilterMethod::Lattice).unwrap();
        assert_eq!(d.points(), w * h);
        assert!(!Arc::ptr_eq(&a.norm, &d.norm));
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
        assert!(
            bilateral_features(&two, 3.0, 3.0)
                .unwrap_err()
                .to_string()
                .contains("2 channels")
        );
        let f = gaussian_features(4, 4, 3.0).unwrap();
        assert!(PairwiseKernel::new(&f, 2, f32::NAN, FilterMethod::Lattice).is_err());
    }
}
