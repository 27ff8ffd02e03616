//! Bilinear resizing of (N,C,H,W) planes, `align_corners = false`, exactly as PyTorch's
//! `F.interpolate(mode="bilinear", size=...)`.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`ResizeKernels`]; this file checks the inputs
//! and records the node.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};

const OP: &str = "resize_bilinear";

/// Bilinear resizing on one side (CPU or CUDA).
pub(crate) trait ResizeKernels: Sync {
    /// `x` (N,C,H,W) resized to (N,C,out_h,out_w).
    fn resize_fwd(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Storage>;
    /// dx (shaped `in_shape`) from the upstream gradient `dy` (N,C,out_h,out_w).
    fn resize_bwd(&self, dy: &Tensor, in_shape: &Shape) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn ResizeKernels {
    kernels_for(device, &Cpu, &Cuda)
}

impl Tensor {
    /// Resizes (N,C,H,W) to (N,C,out_h,out_w) by bilinear interpolation (align_corners=false).
    pub fn resize_bilinear(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.shape().expect_rank(OP, 4, "(N,C,H,W)")?;
        let &[n, c, h, w] = self.dims() else {
            unreachable!("rank checked")
        };
        if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "cannot resize {} to {out_h}x{out_w}: empty plane",
                    self.shape()
                ),
            ));
        }
        let storage = kernels(self.device()).resize_fwd(self, out_h, out_w)?;
        let in_shape = self.shape().clone();
        Ok(Tensor::from_storage_unary(OP, storage, Shape::from([n, c, out_h, out_w]), self, move |g, _| {
            kernels(g.device()).resize_bwd(g, &in_shape)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rng, randn};

    /// PyTorch's upsample_bilinear2d (align_corners=False) written out per output pixel, in f64.
    fn naive(x: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
        let src = |o: usize, i: usize, n: usize| -> (usize, usize, f64) {
            let s = ((o as f64 + 0.5) * (i as f64 / n as f64) - 0.5).max(0.0);
            let i0 = s.floor() as usize;
            let i1 = if i0 < i - 1 { i0 + 1 } else { i0 };
            (i0, i1, s - i0 as f64)
        };
        let mut y = Vec::new();
        for r in 0..oh {
            let (h0, h1, lh) = src(r, h, oh);
            for c in 0..ow {
                let (w0, w1, lw) = src(c, w, ow);
                let v = |a: usize, b: usize| x[a * w + b] as f64;
                y.push(
                    (1.0 - lh) * ((1.0 - lw) * v(h0, w0) + lw * v(h0, w1))
                        + lh * ((1.0 - lw) * v(h1, w0) + lw * v(h1, w1)),
                );
            }
        }
        y
    }

    #[test]
    fn matches_pytorch_formula_up_and_down() {
        let mut rng = rng(12);
        for &(h, w, oh, ow) in &[
            (5, 7, 16, 11),
            (16, 16, 128, 128),
            (13, 9, 4, 5),
            (6, 6, 6, 6),
        ] {
            let x = randn([1, 2, h, w], 0.0, 1.0, &mut rng);
            let y = x.resize_bilinear(oh, ow).unwrap().to_vec().unwrap();
            let xv = x.to_vec().unwrap();
            for p in 0..2 {
                let want = naive(&xv[p * h * w..(p + 1) * h * w], h, w, oh, ow);
                for (a, e) in y[p * oh * ow..(p + 1) * oh * ow].iter().zip(&want) {
                    assert!(
                        (*a as f64 - e).abs() < 1e-5,
                        "{h}x{w} -> {oh}x{ow}: {a} vs {e}"
                    );
                }
            }
        }
        // Hand value: 2 -> 4 upsampling of [0, 1]: src = -0.25 (clamped to 0), 0.25, 0.75, 1.25
        let x = Tensor::from_vec(vec![0.0, 1.0], [1, 1, 1, 2], Device::Cpu).unwrap();
        assert_eq!(
            x.resize_bilinear(1, 4).unwrap().to_vec().unwrap(),
            vec![0.0, 0.25, 0.75, 1.0]
        );
    }
}
