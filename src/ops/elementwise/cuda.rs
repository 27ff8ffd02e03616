//! Element-wise ops on the GPU: nd.cu's any-rank maps and broadcasting binary kernel, and the
//! scalar affine map of elementwise.cu.

use super::{BinaryOp, ElementwiseKernels};
use crate::backend::cuda::elementwise as ew;
use crate::backend::cuda::nd::{self, MapOp};
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};

impl ElementwiseKernels for Cuda {
    /// Numpy alignment from the right, any rank.
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out: &Shape) -> Result<Storage> {
        let name = op.name();
        let dev = device(name, a)?;
        let (sa, sb) = (a.shape().broadcast_strides(out), b.shape().broadcast_strides(out));
        let g = nd::geometry(name, out.dims(), &sa, &sb, 0, 0)?;
        let (ba, bb) = (a.storage(), b.storage());
        let mut y = dev.alloc(out.numel())?;
        nd::binary(&dev, op, ba.as_cuda(name)?, bb.as_cuda(name)?, &mut y, &g)?;
        Ok(Storage::Cuda(y))
    }

    fn affine(&self, op: &'static str, x: &Tensor, mul: f32, add: f32) -> Result<Storage> {
        let dev = device(op, x)?;
        let sx = x.storage();
        let mut y = dev.alloc(x.numel())?;
        ew::affine(&dev, sx.as_cuda(op)?, &mut y, mul, add)?;
        Ok(Storage::Cuda(y))
    }

    fn map(&self, op: &'static str, x: &Tensor, f: MapOp) -> Result<Storage> {
        let dev = device(op, x)?;
        let sx = x.storage();
        let mut y = dev.alloc(x.numel())?;
        nd::map_fwd(&dev, f, sx.as_cuda(op)?, &mut y)?;
        Ok(Storage::Cuda(y))
    }

    fn map_grad(&self, op: &'static str, x: &Tensor, y: &Tensor, g: &Tensor, f: MapOp) -> Result<Tensor> {
        let dev = device(op, x)?;
        let (sx, sy, sg) = (x.storage(), y.storage(), g.storage());
        let mut dx = dev.alloc(x.numel())?;
        nd::map_bwd(&dev, f, sx.as_cuda(op)?, sy.as_cuda(op)?, sg.as_cuda(op)?, &mut dx)?;
        tensor(dx, x.shape().clone())
    }
}
