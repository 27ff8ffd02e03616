//! Softmax on the GPU: the checked launch wrappers of kernels/reduce.cu's softmax kernels, and
//! the CUDA side of [`SoftmaxKernels`].

use super::{OP, SoftmaxKernels, View};
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, grid_per_item, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Storage, Tensor};

impl SoftmaxKernels for Cuda {
    fn softmax_fwd(&self, x: &Tensor, view: View) -> Result<Storage> {
        let dev = device(OP, x)?;
        let mut y = dev.alloc(x.numel())?;
        let sx = x.storage();
        softmax_fwd(&dev, sx.as_cuda(OP)?, &mut y, view.outer, view.dim, view.inner)?;
        Ok(Storage::Cuda(y))
    }

    fn softmax_bwd(&self, y: &Tensor, dy: &Tensor, view: View) -> Result<Tensor> {
        let dev = device(OP, y)?;
        let mut dx = dev.alloc(y.numel())?;
        let (sy, sg) = (y.storage(), dy.storage());
        softmax_bwd(&dev, sy.as_cuda(OP)?, sg.as_cuda(OP)?, &mut dx, view.outer, view.dim, view.inner)?;
        tensor(dx, y.shape().clone())
    }
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
