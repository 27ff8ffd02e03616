//! Elementwise ops on the GPU that nd.rs's any-rank maps do not cover: the scalar affine map and
//! fills.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::kernels as k;
use super::launch::{Arg, grid_1d, launch, to_i32};
use crate::error::{Error, Result};

/// The binary ops of nd.cu's `binary_nd_fwd_f32`, passed to it by value: the ops' own enum.
pub use crate::ops::elementwise::BinaryOp;

pub(crate) fn numel(shape: [usize; 4]) -> usize {
    shape.iter().product()
}

fn same_len(op: &'static str, bufs: &[(&str, &GpuBuffer)]) -> Result<i32> {
    let n = bufs[0].1.len();
    for (name, b) in bufs {
        if b.len() != n {
            return Err(Error::shape(op, format!("{name} has {} elements, {} has {n}", b.len(), bufs[0].0)));
        }
    }
    to_i32(op, "elements", n)
}

pub fn fill(dev: &CudaDevice, y: &mut GpuBuffer, value: f32) -> Result<()> {
    dev.check_buffer("fill", y)?;
    let n = to_i32("fill", "elements", y.len())?;
    launch(dev, k::FILL_FWD, grid_1d(dev, y.len()), &[Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::F32(value)])
}

/// y = alpha * x + beta.
pub fn affine(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, alpha: f32, beta: f32) -> Result<()> {
    let n = same_len("affine_fwd_f32", &[("x", x), ("y", y)])?;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::F32(alpha), Arg::F32(beta)];
    launch(dev, k::AFFINE_FWD, grid_1d(dev, x.len()), &args)
}

