//! Max pooling on the CPU: one task per (n, c) plane.

use super::{OP, PoolKernels, Window, Winners, pool_out};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

impl PoolKernels for Cpu {
    fn max_pool_fwd(&self, x: &Tensor, win: Window) -> Result<(Storage, Winners)> {
        let &[n, c, h, w] = x.dims() else {
            unreachable!("rank checked by max_pool2d")
        };
        let Window { kernel, stride, padding } = win;
        let (oh, ow) = pool_out(OP, h, w, kernel, stride, padding)?;
        let sx = x.storage();
        let xv = sx.as_cpu(OP)?;
        let (ip, op) = (h * w, oh * ow);
        let mut y = vec![0f32; n * c * op];
        let mut arg = vec![0u32; n * c * op];
        let plane = |((xp, yp), ap): ((&[f32], &mut [f32]), &mut [u32])| {
            for i in 0..oh {
                let h0 = (i * stride) as isize - padding as isize;
                let (hs, he) = (h0.max(0) as usize, ((h0 + kernel as isize) as usize).min(h));
                for j in 0..ow {
                    let w0 = (j * stride) as isize - padding as isize;
                    let (ws, we) = (w0.max(0) as usize, ((w0 + kernel as isize) as usize).min(w));
                    let (mut best, mut at) = (f32::NEG_INFINITY, hs * w + ws);
                    'win: for hh in hs..he {
                        for ww in ws..we {
                            let v = xp[hh * w + ww];
                            if v > best || v.is_nan() {
                                best = v;
                                at = hh * w + ww;
                                if v.is_nan() {
                                    break 'win;
                                }
                            }
                        }
                    }
                    yp[i * ow + j] = best;
                    // In range: max_pool2d refuses planes beyond u32 (winner_offsets_fit).
                    ap[i * ow + j] = at as u32;
                }
            }
        };
        if op > 0 {
            let planes = xv.par_chunks(ip).zip(y.par_chunks_mut(op)).zip(arg.par_chunks_mut(op));
            for_each_par_if_large(xv.len(), planes, plane);
        }
        Ok((Storage::Cpu(y), Winners::Cpu(arg)))
    }

    fn max_pool_bwd(&self, dy: &Tensor, winners: &Winners, in_shape: &Shape, _win: Window) -> Result<Tensor> {
        let &[_, _, h, w] = in_shape.dims() else {
            unreachable!("rank checked by max_pool2d")
        };
        let Winners::Cpu(arg) = winners else {
            return Err(winners.elsewhere_than(dy));
        };
        let sg = dy.storage();
        let gv = sg.as_cpu(OP)?;
        let (ip, op) = (h * w, dy.dims()[2] * dy.dims()[3]);
        let mut dx = vec![0f32; in_shape.numel()];
        let scatter = |((dp, gp), ap): ((&mut [f32], &[f32]), &[u32])| {
            for (&gval, &a) in gp.iter().zip(ap) {
                dp[a as usize] += gval;
            }
        };
        if op > 0 {
            let planes = dx.par_chunks_mut(ip).zip(gv.par_chunks(op)).zip(arg.par_chunks(op));
            for_each_par_if_large(in_shape.numel(), planes, scatter);
        }
        Tensor::from_vec(dx, in_shape.clone(), Device::Cpu)
    }
}
