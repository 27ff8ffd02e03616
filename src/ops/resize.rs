//! Bilinear resizing of (N,C,H,W) planes, `align_corners = false`, exactly as PyTorch's
//! `F.interpolate(mode="bilinear", size=...)`.

use super::for_each_plane;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use std::sync::Arc;

/// For each output index along one axis: the two source indices and their weights.
/// PyTorch: src = (dst + 0.5) * in/out - 0.5, clamped at 0 below; i1 = min(i0 + 1, in - 1).
pub(crate) fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

impl Tensor {
    /// Resizes (N,C,H,W) to (N,C,out_h,out_w) by bilinear interpolation (align_corners=false).
    pub fn resize_bilinear(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        const OP: &str = "resize_bilinear";
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
        let device = self.device();
        if let Device::Cuda(_) = device {
            let storage = super::gpu::resize_fwd(OP, self, out_h, out_w)?;
            let in_shape = self.shape().clone();
            return Ok(Tensor::from_storage_op(
                OP,
                Arc::new(storage),
                Shape::from([n, c, out_h, out_w]),
                &[self],
                move |g, _| Ok(vec![Some(super::gpu::resize_bwd(OP, g, &in_shape)?)]),
            ));
        }
        let (rows, cols) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
        let (ip, op) = (h * w, out_h * out_w);
        let sx = self.storage();
        let x = sx.as_cpu(OP)?;
        let mut y = vec![0f32; n * c * op];
        let forward = |(yp, xp): (&mut [f32], &[f32])| {
            for (i, &(r0, r1, a0, a1)) in rows.iter().enumerate() {
                let (x0, x1) = (&xp[r0 * w..(r0 + 1) * w], &xp[r1 * w..(r1 + 1) * w]);
                for (j, &(c0, c1, b0, b1)) in cols.iter().enumerate() {
                    yp[i * out_w + j] =
                        a0 * (b0 * x0[c0] + b1 * x0[c1]) + a1 * (b0 * x1[c0] + b1 * x1[c1]);
                }
            }
        };
        for_each_plane(&mut y, op, x, ip, forward);
        let in_shape = self.shape().clone();
        Tensor::from_op(
            OP,
            y,
            Shape::from([n, c, out_h, out_w]),
            device,
            &[self],
            move |g, _| {
                let sg = g.storage();
                let gv = sg.as_cpu(OP)?;
                let mut dx = vec![0f32; in_shape.numel()];
                let scatter = |(dp, gp): (&mut [f32], &[f32])| {
                    for (i, &(r0, r1, a0, a1)) in rows.iter().enumerate() {
                        for (j, &(c0, c1, b0, b1)) in cols.iter().enumerate() {
                            let gval = gp[i * out_w + j];
                            dp[r0 * w + c0] += a0 * b0 * gval;
                            dp[r0 * w + c1] += a0 * b1 * gval;
                            dp[r1 * w + c0] += a1 * b0 * gval;
                            dp[r1 * w + c1] += a1 * b1 * gval;
                        }
                    }
                };
                for_each_plane(&mut dx, ip, gv, op, scatter);
                Ok(vec![Some(Tensor::from_vec(
                    dx,
                    in_shape.clone(),
                    g.device(),
                )?)])
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for &(h, w, oh, ow) in &[
            (5, 7, 16, 11),
            (16, 16, 128, 128),
            (13, 9, 4, 5),
            (6, 6, 6, 6),
        ] {
            let x = Tensor::randn([1, 2, h, w], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
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
