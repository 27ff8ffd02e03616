//! Sums and means over axes, and softmax, on the GPU.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::elementwise::{fill, numel};
use super::kernels as k;
use super::launch::{Arg, Red4, check_len, grid_1d, grid_per_item, launch, to_i32};
use crate::error::{Error, Result};

fn red4(op: &'static str, dims: [usize; 4], keep: [bool; 4]) -> Result<Red4> {
    to_i32(op, "elements", numel(dims))?;
    Ok(Red4 { dims: dims.map(|d| d as i32), keep: keep.map(i32::from) })
}

fn kept(dims: [usize; 4], keep: [bool; 4]) -> [usize; 4] {
    std::array::from_fn(|i| if keep[i] { dims[i] } else { 1 })
}

/// y = scale * (sum of x over the axes where `keep` is false); y has the kept dims' element count.
pub fn sum_axes(dev: &CudaDevice, x: &GpuBuffer, dims: [usize; 4], keep: [bool; 4], y: &mut GpuBuffer, scale: f32) -> Result<()> {
    let op = "reduce_sum_f32";
    let out = kept(dims, keep);
    check_len(op, "x", x.len(), numel(dims), &dims)?;
    check_len(op, "y", y.len(), numel(out), &out)?;
    let g = red4(op, dims, keep)?;
    let (n_out, n_red) = (numel(out), numel(dims) / numel(out).max(1));
    if numel(dims) == 0 {
        return Err(Error::invalid(op, format!("empty input {dims:?}")));
    }
    // Coalesced reads need consecutive threads on the innermost non-trivial axis: a thread per
    // output when that axis is kept, a block per output when it is summed.
    let innermost = (0..4).rev().find(|&i| dims[i] > 1).unwrap_or(3);
    let by_block = !keep[innermost];
    let (mut cfg, kernel) = if by_block {
        (grid_per_item(dev, n_out), k::REDUCE_SUM_BLOCK)
    } else {
        (grid_1d(dev, n_out), k::REDUCE_SUM_THREAD)
    };
    let (splits, chunk) = reduction_split(n_out, n_red, by_block, dev.sm_count() as usize);
    if splits > 1 {
        fill(dev, y, 0.0)?; // partial sums are added atomically
    }
    cfg.grid_dim.1 = splits as u32;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n_out as i32), Arg::I32(n_red as i32), Arg::Struct(&g), Arg::F32(scale), Arg::I32(chunk as i32)];
    launch(dev, kernel, cfg, &args)
}

/// How many ways to split each output's reduction so that the launch fills the card: about 8
/// blocks per SM (a block per output) or 2048 threads per SM (a thread per output), never
/// below 4096 (block) or 256 (thread) elements per split. Returns (splits, chunk).
pub fn reduction_split(n_out: usize, n_red: usize, by_block: bool, sm_count: usize) -> (usize, usize) {
    let (parallel, wanted, least) = if by_block { (n_out, 8 * sm_count, 4096) } else { (n_out, 2048 * sm_count, 256) };
    let splits = wanted.div_ceil(parallel.max(1)).clamp(1, (n_red / least).clamp(1, 65535));
    let chunk = n_red.div_ceil(splits).max(1);
    (n_red.div_ceil(chunk).max(1), chunk)
}

fn softmax_view(op: &'static str, len: usize, outer: usize, dim: usize, inner: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::invalid(op, "softmax over an empty axis"));
    }
    check_len(op, "x", len, outer * dim * inner, &[outer, dim, inner])?;
    to_i32(op, "elements", len).map(|_| ())
}

/// Softmax over the middle axis of an (outer, dim, inner) view.
pub fn softmax_fwd(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, outer: usize, dim: usize, inner: usize) -> Result<()> {
    softmax_view("softmax_fwd_f32", x.len(), outer, dim, inner)?;
    check_len("softmax_fwd_f32", "y", y.len(), x.len(), &[outer, dim, inner])?;
    if inner == 1 {
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(outer as i32), Arg::I32(dim as i32)];
        launch(dev, k::SOFTMAX_ROWS_FWD, grid_per_item(dev, outer), &args)
    } else {
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(outer as i32), Arg::I32(dim as i32), Arg::I32(inner as i32)];
        launch(dev, k::SOFTMAX_FWD, grid_1d(dev, outer * inner), &args)
    }
}

/// dx = y * (dy - sum(dy * y)) over the softmax axis, from the forward's output y.
pub fn softmax_bwd(dev: &CudaDevice, y: &GpuBuffer, dy: &GpuBuffer, dx: &mut GpuBuffer, outer: usize, dim: usize, inner: usize) -> Result<()> {
    let op = "softmax_bwd_f32";
    softmax_view(op, y.len(), outer, dim, inner)?;
    check_len(op, "dy", dy.len(), y.len(), &[outer, dim, inner])?;
    check_len(op, "dx", dx.len(), y.len(), &[outer, dim, inner])?;
    if inner == 1 {
        let args = [Arg::Ptr(y.ptr()), Arg::Ptr(dy.ptr()), Arg::Ptr(dx.ptr_mut()), Arg::I32(outer as i32), Arg::I32(dim as i32)];
        launch(dev, k::SOFTMAX_ROWS_BWD, grid_per_item(dev, outer), &args)
    } else {
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(dx.ptr_mut()),
            Arg::I32(outer as i32),
            Arg::I32(dim as i32),
            Arg::I32(inner as i32),
        ];
        launch(dev, k::SOFTMAX_BWD, grid_1d(dev, outer * inner), &args)
    }
}
