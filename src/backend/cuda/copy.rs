//! Block copies on the GPU: concat / slice along an axis and batched 2-D transpose.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::kernels as k;
use super::launch::{Arg, check_len, grid_1d, launch, to_i32};
use crate::error::{Error, Result};
use cudarc::driver::LaunchConfig;

/// Where a slice copy reads and writes, both tensors seen as (outer, mid, inner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceCopy {
    pub outer: usize,
    pub inner: usize,
    pub src_mid: usize,
    pub dst_mid: usize,
    pub src_off: usize,
    pub dst_off: usize,
    pub count: usize,
}

/// dst[.., dst_off + m, ..] = src[.., src_off + m, ..] for m < count. Concat along channels of
/// NCHW: outer = N, inner = H*W, one call per input; its backward reads the slices back.
pub fn copy_slice(dev: &CudaDevice, src: &GpuBuffer, dst: &mut GpuBuffer, c: SliceCopy) -> Result<()> {
    let op = k::COPY_SLICE.name;
    if c.src_off + c.count > c.src_mid || c.dst_off + c.count > c.dst_mid {
        return Err(Error::invalid(
            op,
            format!("slice {}..{} of {} into {}..{} of {}", c.src_off, c.src_off + c.count, c.src_mid, c.dst_off, c.dst_off + c.count, c.dst_mid),
        ));
    }
    check_len(op, "src", src.len(), c.outer * c.src_mid * c.inner, &[c.outer, c.src_mid, c.inner])?;
    check_len(op, "dst", dst.len(), c.outer * c.dst_mid * c.inner, &[c.outer, c.dst_mid, c.inner])?;
    to_i32(op, "elements", src.len().max(dst.len()))?;
    let args = [
        Arg::Ptr(src.ptr()),
        Arg::Ptr(dst.ptr_mut()),
        Arg::I32(c.outer as i32),
        Arg::I32(c.src_mid as i32),
        Arg::I32(c.dst_mid as i32),
        Arg::I32(c.inner as i32),
        Arg::I32(c.src_off as i32),
        Arg::I32(c.dst_off as i32),
        Arg::I32(c.count as i32),
    ];
    launch(dev, k::COPY_SLICE, grid_1d(dev, c.outer * c.count * c.inner), &args)
}

/// y[b] = x[b]^T for `batch` row-major (rows x cols) matrices.
pub fn transpose(dev: &CudaDevice, x: &GpuBuffer, batch: usize, rows: usize, cols: usize, y: &mut GpuBuffer) -> Result<()> {
    let op = k::TRANSPOSE_FWD.name;
    check_len(op, "x", x.len(), batch * rows * cols, &[batch, rows, cols])?;
    check_len(op, "y", y.len(), batch * rows * cols, &[batch, cols, rows])?;
    to_i32(op, "elements", x.len())?;
    if batch == 0 || rows == 0 || cols == 0 {
        return Ok(());
    }
    if batch > 65535 {
        return Err(Error::invalid(op, format!("batch {batch} exceeds the grid's z limit 65535")));
    }
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(32) as u32, rows.div_ceil(32) as u32, batch as u32),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    launch(dev, k::TRANSPOSE_FWD, cfg, &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(rows as i32), Arg::I32(cols as i32)])
}
