//! The layout copies on the GPU: nd.cu's strided copy, read side (gather) or write side
//! (scatter).

use super::{Band, LayoutKernels};
use crate::backend::cuda::{GpuBuffer, nd};
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, full, tensor};
use crate::tensor::{Shape, Storage, Tensor};

impl LayoutKernels for Cuda {
    fn strided_copy(&self, op: &'static str, x: &Tensor, dims: &[usize], src_strides: &[usize]) -> Result<Storage> {
        gather(op, x, dims, src_strides, 0)
    }

    /// Each input lands in the output's strides, shifted along `axis`.
    fn concat(&self, op: &'static str, tensors: &[&Tensor], axis: usize, out: &Shape) -> Result<Storage> {
        let inner: usize = out.dims()[axis + 1..].iter().product();
        let dev = device(op, tensors[0])?;
        let mut y = dev.alloc(out.numel())?;
        let out_strides = out.strides();
        let mut at = 0;
        for t in tensors {
            scatter(op, t, &mut y, &out_strides, at * inner)?;
            at += t.dims()[axis];
        }
        Ok(Storage::Cuda(y))
    }

    fn narrow(&self, op: &'static str, x: &Tensor, b: Band) -> Result<Storage> {
        let mut dims = x.dims().to_vec();
        dims[b.axis] = b.len;
        gather(op, x, &dims, &x.shape().strides(), b.start * b.inner)
    }

    fn narrow_bwd(&self, op: &'static str, g: &Tensor, in_shape: &Shape, b: Band) -> Result<Tensor> {
        let dev = device(op, g)?;
        let mut dx = full(&dev, in_shape.numel(), 0.0)?;
        scatter(op, g, &mut dx, &in_shape.strides(), b.start * b.inner)?;
        tensor(dx, in_shape.clone())
    }
}

/// A dense copy of `x` read over `dims` with strides `sx` from offset `ox` (broadcast_to,
/// permute, narrow).
pub(crate) fn gather(
    op: &'static str,
    x: &Tensor,
    dims: &[usize],
    sx: &[usize],
    ox: usize,
) -> Result<Storage> {
    let dev = device(op, x)?;
    let out = Shape::from(dims);
    let g = nd::geometry(op, dims, sx, &out.strides(), ox, 0)?;
    let s = x.storage();
    let mut y = dev.alloc(out.numel())?;
    nd::copy(&dev, s.as_cuda(op)?, &mut y, &g)?;
    Ok(Storage::Cuda(y))
}

/// Writes dense `x` into `y` over `x`'s dims at strides `sy` from offset `oy` (concat, the
/// backward of narrow).
pub(crate) fn scatter(
    op: &'static str,
    x: &Tensor,
    y: &mut GpuBuffer,
    sy: &[usize],
    oy: usize,
) -> Result<()> {
    let dev = device(op, x)?;
    let g = nd::geometry(op, x.dims(), &x.shape().strides(), sy, 0, oy)?;
    let s = x.storage();
    nd::copy(&dev, s.as_cuda(op)?, y, &g)
}
