//! The exact dense Gaussian filter, out_i = sum_j exp(-|f_i - f_j|^2 / 2) in_j over all pairs
//! (self included, as the lattice includes it): O(N^2 d), the reference the lattice approximates.
//! Usable for small images (tests, checking a parameter choice); accumulates in f64.

use super::lattice::check_features;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct ExactGaussian {
    dim: usize,
    features: Vec<f32>,
}

impl ExactGaussian {
    /// `features`: points x dim, already scaled by 1/width (the same input as `Lattice::new`).
    pub fn new(features: &[f32], dim: usize) -> Result<Self> {
        check_features("exact gaussian", features, dim)?;
        Ok(ExactGaussian {
            dim,
            features: features.to_vec(),
        })
    }

    pub fn points(&self) -> usize {
        self.features.len() / self.dim
    }

    /// `input` and `out`: points x channels.
    pub fn filter(&self, input: &[f32], channels: usize, out: &mut [f32]) -> Result<()> {
        let n = self.points();
        if input.len() != n * channels || out.len() != input.len() {
            return Err(Error::shape(
                "exact gaussian filter",
                format!(
                    "{n} points x {channels} channels; got input {} and output {}",
                    input.len(),
                    out.len()
                ),
            ));
        }
        let d = self.dim;
        let mut acc = vec![0f64; channels];
        for (i, fi) in self.features.chunks_exact(d).enumerate() {
            acc.fill(0.0);
            for (fj, x) in self
                .features
                .chunks_exact(d)
                .zip(input.chunks_exact(channels))
            {
                let dist2: f32 = fi.iter().zip(fj).map(|(a, b)| (a - b) * (a - b)).sum();
                let w = (-0.5 * dist2 as f64).exp();
                for (a, &x) in acc.iter_mut().zip(x) {
                    *a += w * x as f64;
                }
            }
            for (o, a) in out[i * channels..(i + 1) * channels].iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_weights() {
        // Three points on a line at 0, 1, 3 (in width units): weights exp(-d^2/2).
        let g = ExactGaussian::new(&[0.0, 1.0, 3.0], 1).unwrap();
        let mut out = [0.0; 3];
        g.filter(&[1.0, 2.0, 4.0], 1, &mut out).unwrap();
        let k = |d: f64| (-d * d / 2.0).exp();
        let want = [
            1.0 + 2.0 * k(1.0) + 4.0 * k(3.0),
            k(1.0) + 2.0 + 4.0 * k(2.0),
            k(3.0) + 2.0 * k(2.0) + 4.0,
        ];
        for (o, w) in out.iter().zip(want) {
            assert!((*o as f64 - w).abs() < 1e-5, "{out:?} vs {want:?}");
        }
        assert!(g.filter(&[1.0, 2.0], 1, &mut out).is_err());
    }
}
