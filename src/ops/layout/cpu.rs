//! The layout copies on the CPU: row copies, parallel when large.

use super::{Band, LayoutKernels};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, PAR_MIN, Walk, for_each_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

/// Copies `src` read with `src_strides` over `dims` into a new contiguous buffer.
fn strided_copy_cpu(src: &[f32], dims: &[usize], src_strides: Vec<usize>) -> Vec<f32> {
    let out_shape = Shape::from(dims);
    let walk = Walk::new(dims, vec![out_shape.strides(), src_strides]);
    let n = out_shape.numel();
    let mut y = vec![0f32; n];
    if n == 0 {
        return y;
    }
    let inner = walk.inner();
    let s = walk.inner_stride(1);
    let row = |(r, yr): (usize, &mut [f32])| {
        let o = walk.row_offset(1, r);
        if s == 1 {
            yr.copy_from_slice(&src[o..o + inner]);
        } else {
            for (i, y) in yr.iter_mut().enumerate() {
                *y = src[o + i * s];
            }
        }
    };
    let rows = y.par_chunks_mut(inner).enumerate().with_min_len((PAR_MIN / 4 / inner).max(1));
    for_each_par_if_large(n, rows, row);
    y
}

/// Rows of `rows` blocks: copies block `[from, from+len)` of each source row of width `src_w`
/// into destination rows of width `dst_w` at `to`.
#[allow(clippy::too_many_arguments)]
fn copy_blocks(
    src: &[f32],
    src_w: usize,
    from: usize,
    dst: &mut [f32],
    dst_w: usize,
    to: usize,
    len: usize,
    rows: usize,
) {
    if len == 0 || rows == 0 {
        return;
    }
    let body = |(r, d): (usize, &mut [f32])| {
        d[to..to + len].copy_from_slice(&src[r * src_w + from..r * src_w + from + len])
    };
    for_each_par_if_large(rows * len, dst.par_chunks_mut(dst_w).enumerate(), body);
}

impl LayoutKernels for Cpu {
    fn strided_copy(&self, op: &'static str, x: &Tensor, dims: &[usize], src_strides: &[usize]) -> Result<Storage> {
        Ok(Storage::Cpu(strided_copy_cpu(x.storage().as_cpu(op)?, dims, src_strides.to_vec())))
    }

    fn concat(&self, op: &'static str, tensors: &[&Tensor], axis: usize, out: &Shape) -> Result<Storage> {
        let outer: usize = out.dims()[..axis].iter().product();
        let inner: usize = out.dims()[axis + 1..].iter().product();
        let row_w = out.dims()[axis] * inner;
        let mut y = vec![0f32; outer * row_w];
        let mut at = 0;
        for t in tensors {
            let w = t.dims()[axis] * inner;
            copy_blocks(t.storage().as_cpu(op)?, w, 0, &mut y, row_w, at, w, outer);
            at += w;
        }
        Ok(Storage::Cpu(y))
    }

    fn narrow(&self, op: &'static str, x: &Tensor, b: Band) -> Result<Storage> {
        let mut y = vec![0f32; b.outer * b.len * b.inner];
        let (src_w, from, w) = (b.size * b.inner, b.start * b.inner, b.len * b.inner);
        copy_blocks(x.storage().as_cpu(op)?, src_w, from, &mut y, w, 0, w, b.outer);
        Ok(Storage::Cpu(y))
    }

    fn narrow_bwd(&self, op: &'static str, g: &Tensor, in_shape: &Shape, b: Band) -> Result<Tensor> {
        let mut dx = vec![0f32; in_shape.numel()];
        let (dst_w, to, w) = (b.size * b.inner, b.start * b.inner, b.len * b.inner);
        copy_blocks(g.storage().as_cpu(op)?, w, 0, &mut dx, dst_w, to, w, b.outer);
        Tensor::from_vec(dx, in_shape.clone(), Device::Cpu)
    }
}
