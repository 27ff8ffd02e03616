//! Softmax on the CPU: one task per (dim, inner) block.

use super::{OP, SoftmaxKernels, View};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large, for_each_plane};
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;

/// Softmax over the middle axis of an (outer, d, inner) view; each block of d*inner is one task.
fn softmax_cpu(x: &[f32], d: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let block = d * inner;
    if block == 0 {
        return y;
    }
    let body = |(yb, xb): (&mut [f32], &[f32])| {
        let mut max = vec![f32::NEG_INFINITY; inner];
        for row in xb.chunks(inner) {
            for (m, &v) in max.iter_mut().zip(row) {
                // NaN wins, so a NaN anywhere in a slice makes that slice NaN.
                if v > *m || v.is_nan() {
                    *m = v;
                }
            }
        }
        let mut sum = vec![0f32; inner];
        for (yr, xr) in yb.chunks_mut(inner).zip(xb.chunks(inner)) {
            for (((y, &v), &m), s) in yr.iter_mut().zip(xr).zip(&max).zip(sum.iter_mut()) {
                *y = (v - m).exp();
                *s += *y;
            }
        }
        for yr in yb.chunks_mut(inner) {
            for (y, &s) in yr.iter_mut().zip(&sum) {
                *y /= s;
            }
        }
    };
    for_each_plane(&mut y, block, x, block, body);
    y
}

impl SoftmaxKernels for Cpu {
    fn softmax_fwd(&self, x: &Tensor, view: View) -> Result<Storage> {
        Ok(Storage::Cpu(softmax_cpu(x.storage().as_cpu(OP)?, view.dim, view.inner)))
    }

    fn softmax_bwd(&self, y: &Tensor, g: &Tensor, view: View) -> Result<Tensor> {
        let View { dim: d, inner, .. } = view;
        // dx = y * (g - sum_axis(g * y))
        let (sg, sy) = (g.storage(), y.storage());
        let (gv, yv) = (sg.as_cpu(OP)?, sy.as_cpu(OP)?);
        let mut dx = vec![0f32; gv.len()];
        let block = d * inner;
        let body = |((db, gb), yb): ((&mut [f32], &[f32]), &[f32])| {
            let mut dot = vec![0f32; inner];
            for (gr, yr) in gb.chunks(inner).zip(yb.chunks(inner)) {
                for ((s, &gv), &yv) in dot.iter_mut().zip(gr).zip(yr) {
                    *s += gv * yv;
                }
            }
            for ((dr, gr), yr) in db
                .chunks_mut(inner)
                .zip(gb.chunks(inner))
                .zip(yb.chunks(inner))
            {
                for (((dv, &gv), &yv), &s) in dr.iter_mut().zip(gr).zip(yr).zip(&dot) {
                    *dv = yv * (gv - s);
                }
            }
        };
        if block > 0 {
            let work = dx.len();
            let blocks = dx.par_chunks_mut(block).zip(gv.par_chunks(block)).zip(yv.par_chunks(block));
            for_each_par_if_large(work, blocks, body);
        }
        Tensor::from_vec(dx, y.shape().clone(), Device::Cpu)
    }
}
