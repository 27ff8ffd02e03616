//! The CUDA side of the ops: each function takes tensors on a CUDA device and returns the new
//! storage (or tensor) from the kernels' checked wrappers in `backend::cuda`. The op files keep
//! one `match device` per op that picks this or the CPU loop; everything here runs in order on
//! the device's one stream, so nothing waits for the host.

use crate::backend::cuda::elementwise::{self as ew, Binary};
use crate::backend::cuda::nd::{self, MapOp};
use crate::backend::cuda::GpuBuffer;
use crate::error::Result;
use crate::tensor::{Shape, Storage, Tensor};
use super::cuda_common::{alloc, device, tensor};

/// y = f(x) element-wise.
pub(crate) fn map(op: &'static str, x: &Tensor, f: MapOp) -> Result<Storage> {
    let dev = device(op, x)?;
    let sx = x.storage();
    let mut y = alloc(&dev, x.numel())?;
    nd::map_fwd(&dev, f, sx.as_cuda(op)?, &mut y)?;
    Ok(Storage::Cuda(y))
}

/// dx = f'(x, y) * g element-wise (the backward of [`map`]).
pub(crate) fn map_grad(
    op: &'static str,
    x: &Tensor,
    y: &Tensor,
    g: &Tensor,
    f: MapOp,
) -> Result<Tensor> {
    let dev = device(op, x)?;
    let (sx, sy, sg) = (x.storage(), y.storage(), g.storage());
    let mut dx = alloc(&dev, x.numel())?;
    nd::map_bwd(
        &dev,
        f,
        sx.as_cuda(op)?,
        sy.as_cuda(op)?,
        sg.as_cuda(op)?,
        &mut dx,
    )?;
    tensor(dx, x.shape().clone())
}

/// y = x * mul + add.
pub(crate) fn affine(op: &'static str, x: &Tensor, mul: f32, add: f32) -> Result<Storage> {
    let dev = device(op, x)?;
    let sx = x.storage();
    let mut y = alloc(&dev, x.numel())?;
    ew::affine(&dev, sx.as_cuda(op)?, &mut y, mul, add)?;
    Ok(Storage::Cuda(y))
}

/// a op b broadcast to `out` (numpy alignment from the right, any rank).
pub(crate) fn binary(
    op: &'static str,
    f: Binary,
    a: &Tensor,
    b: &Tensor,
    out: &Shape,
) -> Result<Storage> {
    let dev = device(op, a)?;
    let g = nd::geometry(
        op,
        out.dims(),
        &a.shape().broadcast_strides(out),
        &b.shape().broadcast_strides(out),
        0,
        0,
    )?;
    let (sa, sb) = (a.storage(), b.storage());
    let mut y = alloc(&dev, out.numel())?;
    nd::binary(&dev, f, sa.as_cuda(op)?, sb.as_cuda(op)?, &mut y, &g)?;
    Ok(Storage::Cuda(y))
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
    let mut y = alloc(&dev, out.numel())?;
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
