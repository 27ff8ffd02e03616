//! Bilinear resizing on the GPU: the checked launch wrappers of kernels/pool.cu's resize
//! kernels, and the CUDA side of [`ResizeKernels`].

use super::{OP, ResizeKernels};
use crate::backend::cuda::elementwise::numel;
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};

impl ResizeKernels for Cuda {
    fn resize_fwd(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Storage> {
        let dev = device(OP, x)?;
        let d = x.shape().nchw();
        let mut y = dev.alloc(d[0] * d[1] * out_h * out_w)?;
        let sx = x.storage();
        resize_fwd(&dev, sx.as_cuda(OP)?, d, out_h, out_w, &mut y)?;
        Ok(Storage::Cuda(y))
    }

    fn resize_bwd(&self, dy: &Tensor, in_shape: &Shape) -> Result<Tensor> {
        let dev = device(OP, dy)?;
        let (oh, ow) = (dy.dims()[2], dy.dims()[3]);
        let mut dx = dev.alloc(in_shape.numel())?;
        let sg = dy.storage();
        resize_bwd(&dev, sg.as_cuda(OP)?, in_shape.nchw(), oh, ow, &mut dx)?;
        tensor(dx, in_shape.clone())
    }
}

fn resize_args(op: &'static str, shape: [usize; 4], oh: usize, ow: usize) -> Result<[Arg<'static>; 7]> {
    let [n, c, h, w] = shape;
    if numel(shape) == 0 || oh == 0 || ow == 0 {
        return Err(Error::invalid(op, format!("resize {shape:?} to {oh}x{ow}: empty")));
    }
    to_i32(op, "elements", numel(shape).max(n * c * oh * ow))?;
    // PyTorch's scale for a given output size: in / out.
    Ok([
        Arg::I32((n * c) as i32),
        Arg::I32(h as i32),
        Arg::I32(w as i32),
        Arg::I32(oh as i32),
        Arg::I32(ow as i32),
        Arg::F32(h as f32 / oh as f32),
        Arg::F32(w as f32 / ow as f32),
    ])
}

/// Bilinear resize (align_corners = false) of x (`shape`) to (oh, ow).
pub fn resize_fwd(dev: &CudaDevice, x: &GpuBuffer, shape: [usize; 4], oh: usize, ow: usize, y: &mut GpuBuffer) -> Result<()> {
    let op = k::RESIZE_FWD.name;
    let tail = resize_args(op, shape, oh, ow)?;
    check_len(op, "x", x.len(), numel(shape), &shape)?;
    check_len(op, "y", y.len(), shape[0] * shape[1] * oh * ow, &[shape[0], shape[1], oh, ow])?;
    let mut args = vec![Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut())];
    args.extend(tail);
    launch(dev, k::RESIZE_FWD, grid_1d(dev, y.len()), &args)
}

/// dx (input `shape`) from dy (oh, ow); dx is overwritten.
pub fn resize_bwd(dev: &CudaDevice, dy: &GpuBuffer, shape: [usize; 4], oh: usize, ow: usize, dx: &mut GpuBuffer) -> Result<()> {
    let op = k::RESIZE_BWD.name;
    let tail = resize_args(op, shape, oh, ow)?;
    check_len(op, "dy", dy.len(), shape[0] * shape[1] * oh * ow, &[shape[0], shape[1], oh, ow])?;
    check_len(op, "dx", dx.len(), numel(shape), &shape)?;
    let mut args = vec![Arg::Ptr(dy.ptr()), Arg::Ptr(dx.ptr_mut())];
    args.extend(tail);
    launch(dev, k::RESIZE_BWD, grid_1d(dev, dx.len()), &args) // one thread per dx cell (a gather)
}
