//! Sums on the GPU: the checked launch wrappers of kernels/reduce.cu's sums, the geometry struct
//! they share with it, and the CUDA side of [`ReduceKernels`].

use super::ReduceKernels;
use crate::backend::cuda::elementwise::numel;
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, grid_per_item, launch, split_reduction, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::ops::cuda_common::{device, full};
use crate::ops::Cuda;
use crate::ops::layout::cuda::gather;
use crate::tensor::{Shape, Storage, Tensor};
use cudarc::driver::DeviceRepr;

/// Reduction geometry of reduce.cu (`struct Red4`): input dims, 1 where the axis is kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Red4 {
    pub dims: [i32; 4],
    pub keep: [i32; 4],
}

// SAFETY: a plain #[repr(C)] struct of i32 whose layout matches reduce.cu's `struct Red4`.
unsafe impl DeviceRepr for Red4 {}

impl ReduceKernels for Cuda {
    fn sum_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
        sum_to_gpu(op, x, dst)
    }

    fn broadcast_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
        gather(op, x, dst.dims(), &x.shape().broadcast_strides(dst), 0)
    }
}

/// Sums `x` down to `dst` (which broadcasts to x's shape). The kernels reduce a 4-D view: dims
/// are merged into runs of kept and summed axes, and when more than four runs remain the
/// innermost three are reduced first.
fn sum_to_gpu(op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
    let dev = device(op, x)?;
    let s = x.storage();
    let src = s.as_cuda(op)?;
    if x.numel() == 0 {
        return Ok(Storage::Cuda(full(&dev, dst.numel(), 0.0)?));
    }
    let lead = x.rank() - dst.rank();
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for (i, &d) in x.dims().iter().enumerate() {
        let keep = i >= lead && dst.dims()[i - lead] == d;
        push_run(&mut runs, d, keep);
    }
    if runs.iter().all(|r| r.1) {
        return Ok(Storage::Cuda(dev.dtod(src)?));
    }
    // Stage until at most four runs remain; `owned` holds the intermediate.
    let mut owned: Option<GpuBuffer> = None;
    while runs.len() > 4 {
        let split = runs.len() - 3;
        let prefix: usize = runs[..split].iter().map(|r| r.0).product();
        let tail = &runs[split..];
        let dims = [prefix, tail[0].0, tail[1].0, tail[2].0];
        let keep = [true, tail[0].1, tail[1].1, tail[2].1];
        let out_len: usize = dims
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(d, _)| d)
            .product();
        let mut y = dev.alloc(out_len)?;
        sum_axes(&dev, owned.as_ref().unwrap_or(src), dims, keep, &mut y, 1.0)?;
        let mut next: Vec<(usize, bool)> = Vec::new();
        for &(d, k) in runs[..split].iter().chain(tail.iter().filter(|r| r.1)) {
            push_run(&mut next, d, k);
        }
        runs = next;
        owned = Some(y);
    }
    let mut dims = [1usize; 4];
    let mut keep = [true; 4];
    let pad = 4 - runs.len();
    for (i, &(d, k)) in runs.iter().enumerate() {
        dims[pad + i] = d;
        keep[pad + i] = k;
    }
    let mut y = dev.alloc(dst.numel())?;
    sum_axes(&dev, owned.as_ref().unwrap_or(src), dims, keep, &mut y, 1.0)?;
    Ok(Storage::Cuda(y))
}

/// Appends a dim to a list of (size, kept) runs, merging it into the last run when both are kept
/// or both summed; size-1 dims change nothing.
fn push_run(runs: &mut Vec<(usize, bool)>, d: usize, keep: bool) {
    if d == 1 {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.1 == keep => last.0 *= d,
        _ => runs.push((d, keep)),
    }
}

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
    cfg.grid_dim.1 = splits as u32;
    into_split_slices(dev, splits, y, |dst| {
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(dst), Arg::I32(n_out as i32), Arg::I32(n_red as i32), Arg::Struct(&g), Arg::F32(scale), Arg::I32(chunk as i32)];
        launch(dev, kernel, cfg, &args)
    })
}

/// Runs `launch` (given the device pointer to write) for a reduction split `splits` ways over
/// blocks: unsplit, straight into `out`; split, each split into its own slice of a scratch buffer
/// (`splits` x out's length), then [`sum_splits`] into `out`. No atomics, so the same bits every
/// run; the sums here and the convolutions' weight gradient share it.
pub fn into_split_slices(dev: &CudaDevice, splits: usize, out: &mut GpuBuffer, launch: impl FnOnce(u64) -> Result<()>) -> Result<()> {
    if splits <= 1 {
        return launch(out.ptr_mut());
    }
    let mut parts = dev.alloc(splits * out.len())?;
    launch(parts.ptr_mut())?;
    sum_splits(dev, &parts, splits, out)
}

/// out = the sum, in order, of the `splits` slices of `parts` (each out's length): the second pass
/// of a reduction split over blocks, deterministic where atomics would not be.
pub fn sum_splits(dev: &CudaDevice, parts: &GpuBuffer, splits: usize, out: &mut GpuBuffer) -> Result<()> {
    let op = k::SUM_SPLITS.name;
    check_len(op, "parts", parts.len(), splits * out.len(), &[splits, out.len()])?;
    let args = [Arg::Ptr(parts.ptr()), Arg::Ptr(out.ptr_mut()), Arg::I32(to_i32(op, "splits", splits)?), Arg::I32(to_i32(op, "elements", out.len())?)];
    launch(dev, k::SUM_SPLITS, grid_1d(dev, out.len()), &args)
}

/// How many ways to split each output's reduction so that the launch fills the card: about 8
/// blocks per SM (a block per output) or 2048 threads per SM (a thread per output), never
/// below 4096 (block) or 256 (thread) elements per split. Returns (splits, chunk).
pub fn reduction_split(n_out: usize, n_red: usize, by_block: bool, sm_count: usize) -> (usize, usize) {
    let (wanted, least) = if by_block { (8 * sm_count, 4096) } else { (2048 * sm_count, 256) };
    split_reduction(n_out, wanted, n_red, least, 1)
}
