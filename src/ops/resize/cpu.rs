//! Bilinear resizing on the CPU: one task per (n, c) plane.

use super::{OP, ResizeKernels};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_plane};
use crate::tensor::{Shape, Storage, Tensor};

/// For each output index along one axis: the two source indices and their weights.
/// PyTorch: src = (dst + 0.5) * in/out - 0.5, clamped at 0 below; i1 = min(i0 + 1, in - 1).
fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
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

impl ResizeKernels for Cpu {
    fn resize_fwd(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Storage> {
        let &[n, c, h, w] = x.dims() else {
            unreachable!("rank checked by resize_bilinear")
        };
        let (rows, cols) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
        let (ip, op) = (h * w, out_h * out_w);
        let sx = x.storage();
        let xv = sx.as_cpu(OP)?;
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
        for_each_plane(&mut y, op, xv, ip, forward);
        Ok(Storage::Cpu(y))
    }

    fn resize_bwd(&self, dy: &Tensor, in_shape: &Shape) -> Result<Tensor> {
        let (&[_, _, h, w], &[_, _, out_h, out_w]) = (in_shape.dims(), dy.dims()) else {
            unreachable!("rank checked by resize_bilinear")
        };
        let (rows, cols) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
        let (ip, op) = (h * w, out_h * out_w);
        let sg = dy.storage();
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
        Tensor::from_vec(dx, in_shape.clone(), Device::Cpu)
    }
}
