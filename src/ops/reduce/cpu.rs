//! Sums and broadcasts on the CPU.

use super::ReduceKernels;
use crate::error::Result;
use crate::ops::elementwise::cpu::broadcast_binary_cpu;
use crate::ops::{Cpu, PAR_MIN, Walk, for_each_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

/// Sums `src` (shape `src_shape`) down to `dst_shape`, which must broadcast to `src_shape`.
/// Accumulates in f64 so long sums (means over a batch of images) stay accurate.
fn sum_to_cpu(src: &[f32], src_shape: &Shape, dst_shape: &Shape) -> Vec<f32> {
    let walk = Walk::new(
        src_shape.dims(),
        vec![src_shape.strides(), dst_shape.broadcast_strides(src_shape)],
    );
    let inner = walk.inner();
    let rows = walk.rows();
    let outer_kept = walk.strides[1][..walk.dims.len() - 1]
        .iter()
        .all(|&s| s != 0);
    if walk.inner_stride(1) == 0 && outer_kept {
        // Trailing reduction: row r is the contiguous block summed into dst[r].
        let sum_row = |r: usize| -> f32 {
            let row = &src[r * inner..(r + 1) * inner];
            if rows < rayon::current_num_threads() && inner >= PAR_MIN {
                row.par_chunks(PAR_MIN / 4)
                    .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
                    .sum::<f64>() as f32
            } else {
                row.iter().map(|&v| v as f64).sum::<f64>() as f32
            }
        };
        let mut out = vec![0f32; rows];
        let work = src.len();
        for_each_par_if_large(work, out.par_iter_mut().enumerate(), |(r, o)| *o = sum_row(r));
        return out;
    }
    let mut acc = vec![0f64; dst_shape.numel()];
    let sd = walk.inner_stride(1);
    for r in 0..rows {
        let od = walk.row_offset(1, r);
        let row = &src[r * inner..(r + 1) * inner];
        if sd == 0 {
            acc[od] += row.iter().map(|&v| v as f64).sum::<f64>();
        } else {
            for (i, &v) in row.iter().enumerate() {
                acc[od + i * sd] += v as f64;
            }
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

impl ReduceKernels for Cpu {
    fn sum_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
        Ok(Storage::Cpu(sum_to_cpu(x.storage().as_cpu(op)?, x.shape(), dst)))
    }

    fn broadcast_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
        let s = x.storage();
        let scalar = Shape::from(());
        Ok(Storage::Cpu(broadcast_binary_cpu(s.as_cpu(op)?, x.shape(), &[0.0], &scalar, dst, |a, _| a)))
    }
}
