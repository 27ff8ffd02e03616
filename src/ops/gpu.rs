//! The CUDA side of the ops: each function takes tensors on a CUDA device and returns the new
//! storage (or tensor) from the kernels' checked wrappers in `backend::cuda`. The op files keep
//! one `match device` per op that picks this or the CPU loop; everything here runs in order on
//! the device's one stream, so nothing waits for the host.

use super::BatchNormOptions;
use crate::backend::cuda::conv::{self, Conv2dShape};
use crate::backend::cuda::elementwise::{self as ew, Binary};
use crate::backend::cuda::nd::{self, MapOp};
use crate::backend::cuda::{CudaDevice, GpuBuffer, batchnorm, blas, loss, pool, reduce};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

/// The CUDA device a tensor lives on.
pub(crate) fn device(op: &'static str, t: &Tensor) -> Result<Arc<CudaDevice>> {
    match t.device() {
        Device::Cuda(n) => CudaDevice::get(n),
        Device::Cpu => Err(Error::Device(format!(
            "{op}: expected a tensor on a CUDA device, found one on the cpu"
        ))),
    }
}

/// A new (uninitialised) buffer of `len` elements on `dev`.
pub(crate) fn alloc(dev: &CudaDevice, len: usize) -> Result<GpuBuffer> {
    dev.alloc(len)
}

/// A tensor from a buffer the kernels filled (not recorded in the graph).
pub(crate) fn tensor(buf: GpuBuffer, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    if buf.len() != shape.numel() {
        return Err(Error::shape(
            "gpu tensor",
            format!("buffer of {} elements for shape {shape}", buf.len()),
        ));
    }
    Ok(Tensor::from_storage(Storage::Cuda(buf), shape))
}

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

/// A buffer of `len` elements set to `value`.
pub(crate) fn full(dev: &CudaDevice, len: usize, value: f32) -> Result<GpuBuffer> {
    let mut y = alloc(dev, len)?;
    ew::fill(dev, &mut y, value)?;
    Ok(y)
}

/// Sums `x` down to `dst` (which broadcasts to x's shape). The kernels reduce a 4-D view: dims
/// are merged into runs of kept and summed axes, and when more than four runs remain the
/// innermost three are reduced first.
pub(crate) fn sum_to(op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage> {
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
        let mut y = alloc(&dev, out_len)?;
        reduce::sum_axes(&dev, owned.as_ref().unwrap_or(src), dims, keep, &mut y, 1.0)?;
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
    let mut y = alloc(&dev, dst.numel())?;
    reduce::sum_axes(&dev, owned.as_ref().unwrap_or(src), dims, keep, &mut y, 1.0)?;
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

// ---- matrix products ----

/// One operand of [`gemm`]: transposed?, tensor, elements between batch entries.
pub(crate) type GemmOperand<'a> = (bool, &'a Tensor, usize);

/// `batch` row-major products op(A_i) op(B_i) (m x n) on cuBLAS.
pub(crate) fn gemm(
    op: &'static str,
    batch: usize,
    a: GemmOperand,
    b: GemmOperand,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Storage> {
    let dev = device(op, a.1)?;
    let (sa, sb) = (a.1.storage(), b.1.storage());
    let mut c = alloc(&dev, batch * m * n)?;
    blas::sgemm(
        &dev,
        batch,
        (a.0, sa.as_cuda(op)?, a.2),
        (b.0, sb.as_cuda(op)?, b.2),
        m,
        n,
        k,
        &mut c,
    )?;
    Ok(Storage::Cuda(c))
}

// ---- convolutions ----

pub(crate) fn conv2d_fwd(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    sh: &Conv2dShape,
) -> Result<Storage> {
    let dev = device(op, x)?;
    let (sx, sw) = (x.storage(), w.storage());
    let sb = bias.map(|b| b.storage());
    let bb = sb.as_ref().map(|s| s.as_cuda(op)).transpose()?;
    let mut y = alloc(&dev, sh.output_len())?;
    conv::conv2d_fwd(&dev, sh, dev.precision(), sx.as_cuda(op)?, sw.as_cuda(op)?, bb, &mut y)?;
    Ok(Storage::Cuda(y))
}

pub(crate) fn conv2d_bwd_input(
    op: &'static str,
    dy: &Tensor,
    w: &Tensor,
    sh: &Conv2dShape,
) -> Result<Tensor> {
    let dev = device(op, dy)?;
    let (sg, sw) = (dy.storage(), w.storage());
    let mut dx = alloc(&dev, sh.input_len())?;
    conv::conv2d_bwd_input(&dev, sh, dev.precision(), sg.as_cuda(op)?, sw.as_cuda(op)?, &mut dx)?;
    tensor(dx, [sh.n, sh.c, sh.h, sh.w])
}

pub(crate) fn conv2d_bwd_weight(
    op: &'static str,
    x: &Tensor,
    dy: &Tensor,
    sh: &Conv2dShape,
) -> Result<Tensor> {
    let dev = device(op, x)?;
    let (sx, sg) = (x.storage(), dy.storage());
    let mut dw = alloc(&dev, sh.weight_len())?;
    conv::conv2d_bwd_weight(&dev, sh, dev.precision(), sx.as_cuda(op)?, sg.as_cuda(op)?, &mut dw)?;
    tensor(dw, [sh.k, sh.c, sh.r, sh.s])
}

/// ECA's channel convolution of x viewed as (n, c).
pub(crate) fn conv1d_fwd(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    n: usize,
    c: usize,
) -> Result<Storage> {
    let dev = device(op, x)?;
    let (sx, sw) = (x.storage(), w.storage());
    let mut y = alloc(&dev, n * c)?;
    conv::conv1d_fwd(&dev, sx.as_cuda(op)?, n, c, sw.as_cuda(op)?, &mut y)?;
    Ok(Storage::Cuda(y))
}

/// (dx, dw) of the channel convolution, shaped as x and w.
pub(crate) fn conv1d_bwd(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    n: usize,
    c: usize,
) -> Result<(Tensor, Tensor)> {
    let dev = device(op, x)?;
    let (sx, sw, sg) = (x.storage(), w.storage(), dy.storage());
    let mut dx = alloc(&dev, n * c)?;
    let mut dw = alloc(&dev, w.numel())?;
    conv::conv1d_bwd(
        &dev,
        sx.as_cuda(op)?,
        sg.as_cuda(op)?,
        n,
        c,
        sw.as_cuda(op)?,
        &mut dx,
        &mut dw,
    )?;
    Ok((
        tensor(dx, x.shape().clone())?,
        tensor(dw, w.shape().clone())?,
    ))
}

// ---- batch norm ----

/// What the batch norm backward reads: the statistics the forward normalised with.
pub(crate) struct BnSaved {
    pub mean: GpuBuffer,
    pub var: GpuBuffer,
}

/// Forward of batch norm on x viewed as (n, c, p, 1); in training the batch statistics are
/// computed and the running ones updated in place, otherwise the running ones are used (copied,
/// so a later update cannot change what the backward sees).
pub(crate) fn batch_norm_fwd(
    op: &'static str,
    x: &Tensor,
    [gamma, beta, running_mean, running_var]: [&Tensor; 4],
    shape: [usize; 4],
    opts: BatchNormOptions,
) -> Result<(Storage, BnSaved)> {
    let dev = device(op, x)?;
    let c = shape[1];
    let sx = x.storage();
    let xb = sx.as_cuda(op)?;
    let saved = if opts.training {
        if running_mean.id() == running_var.id() {
            return Err(Error::invalid(
                op,
                "running_mean and running_var are the same tensor",
            ));
        }
        let (mut mean, mut var) = (alloc(&dev, c)?, alloc(&dev, c)?);
        running_mean.update_storage(|rm| {
            running_var.update_storage(|rv| {
                let running = Some((rm.as_cuda_mut(op)?, rv.as_cuda_mut(op)?));
                batchnorm::bn_stats(&dev, xb, shape, &mut mean, &mut var, running, opts.momentum)
            })
        })?;
        BnSaved { mean, var }
    } else {
        let (rm, rv) = (running_mean.storage(), running_var.storage());
        BnSaved {
            mean: dev.dtod(rm.as_cuda(op)?)?,
            var: dev.dtod(rv.as_cuda(op)?)?,
        }
    };
    let (sg, sb) = (gamma.storage(), beta.storage());
    let mut y = alloc(&dev, x.numel())?;
    batchnorm::bn_fwd(
        &dev,
        xb,
        shape,
        &saved.mean,
        &saved.var,
        sg.as_cuda(op)?,
        sb.as_cuda(op)?,
        &mut y,
        opts.eps,
    )?;
    Ok((Storage::Cuda(y), saved))
}

/// (dx, dgamma, dbeta) of batch norm.
pub(crate) fn batch_norm_bwd(
    op: &'static str,
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    shape: [usize; 4],
    saved: &BnSaved,
    opts: BatchNormOptions,
) -> Result<[Tensor; 3]> {
    let dev = device(op, x)?;
    let c = shape[1];
    let (sx, sgam, sdy) = (x.storage(), gamma.storage(), dy.storage());
    let mut dx = alloc(&dev, x.numel())?;
    let (mut dgamma, mut dbeta) = (alloc(&dev, c)?, alloc(&dev, c)?);
    batchnorm::bn_bwd(
        &dev,
        sx.as_cuda(op)?,
        sdy.as_cuda(op)?,
        shape,
        &saved.mean,
        &saved.var,
        sgam.as_cuda(op)?,
        opts.eps,
        opts.training,
        &mut dx,
        &mut dgamma,
        &mut dbeta,
    )?;
    Ok([
        tensor(dx, x.shape().clone())?,
        tensor(dgamma, [c])?,
        tensor(dbeta, [c])?,
    ])
}

// ---- pooling, resize, softmax ----

/// Max pool of (N,C,H,W): the output and the winners' offsets (i32 bits, kept as a tensor for
/// the backward).
pub(crate) fn max_pool_fwd(
    op: &'static str,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<(Storage, Tensor)> {
    let dev = device(op, x)?;
    let d = dims4(x);
    let (oh, ow) = pool::pool_out(op, d[2], d[3], kernel, stride, pad)?;
    let len = d[0] * d[1] * oh * ow;
    let (mut y, mut idx) = (alloc(&dev, len)?, alloc(&dev, len)?);
    let sx = x.storage();
    pool::maxpool_fwd(
        &dev,
        sx.as_cuda(op)?,
        d,
        kernel,
        stride,
        pad,
        &mut y,
        &mut idx,
    )?;
    Ok((Storage::Cuda(y), tensor(idx, [len])?))
}

pub(crate) fn max_pool_bwd(
    op: &'static str,
    dy: &Tensor,
    idx: &Tensor,
    in_shape: &Shape,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let dev = device(op, dy)?;
    let (sg, si) = (dy.storage(), idx.storage());
    let mut dx = alloc(&dev, in_shape.numel())?;
    pool::maxpool_bwd(
        &dev,
        sg.as_cuda(op)?,
        si.as_cuda(op)?,
        shape4(in_shape),
        kernel,
        stride,
        pad,
        &mut dx,
    )?;
    tensor(dx, in_shape.clone())
}

pub(crate) fn resize_fwd(op: &'static str, x: &Tensor, oh: usize, ow: usize) -> Result<Storage> {
    let dev = device(op, x)?;
    let d = dims4(x);
    let mut y = alloc(&dev, d[0] * d[1] * oh * ow)?;
    let sx = x.storage();
    pool::resize_fwd(&dev, sx.as_cuda(op)?, d, oh, ow, &mut y)?;
    Ok(Storage::Cuda(y))
}

pub(crate) fn resize_bwd(op: &'static str, dy: &Tensor, in_shape: &Shape) -> Result<Tensor> {
    let dev = device(op, dy)?;
    let (oh, ow) = (dy.dims()[2], dy.dims()[3]);
    let mut dx = alloc(&dev, in_shape.numel())?;
    let sg = dy.storage();
    pool::resize_bwd(&dev, sg.as_cuda(op)?, shape4(in_shape), oh, ow, &mut dx)?;
    tensor(dx, in_shape.clone())
}

/// Softmax over the middle axis of x viewed as (outer, dim, inner).
pub(crate) fn softmax_fwd(
    op: &'static str,
    x: &Tensor,
    outer: usize,
    dim: usize,
    inner: usize,
) -> Result<Storage> {
    let dev = device(op, x)?;
    let mut y = alloc(&dev, x.numel())?;
    let sx = x.storage();
    reduce::softmax_fwd(&dev, sx.as_cuda(op)?, &mut y, outer, dim, inner)?;
    Ok(Storage::Cuda(y))
}

pub(crate) fn softmax_bwd(
    op: &'static str,
    y: &Tensor,
    dy: &Tensor,
    outer: usize,
    dim: usize,
    inner: usize,
) -> Result<Tensor> {
    let dev = device(op, y)?;
    let mut dx = alloc(&dev, y.numel())?;
    let (sy, sg) = (y.storage(), dy.storage());
    reduce::softmax_bwd(
        &dev,
        sy.as_cuda(op)?,
        sg.as_cuda(op)?,
        &mut dx,
        outer,
        dim,
        inner,
    )?;
    tensor(dx, y.shape().clone())
}

fn dims4(x: &Tensor) -> [usize; 4] {
    shape4(x.shape())
}

fn shape4(s: &Shape) -> [usize; 4] {
    let d = s.dims();
    [d[0], d[1], d[2], d[3]]
}

// ---- losses ----

/// Two-class cross-entropy: the mean loss (one element, on the device) and the counted-pixel
/// total, read back because an empty count is an error, as on the CPU.
pub(crate) fn ce2_fwd(
    op: &'static str,
    z: &Tensor,
    t: &Tensor,
    m: Option<&Tensor>,
    nhw: [usize; 3],
) -> Result<(Storage, f32)> {
    let dev = device(op, z)?;
    let (sz, st) = (z.storage(), t.storage());
    let sm = m.map(|m| m.storage());
    let mb = sm.as_ref().map(|s| s.as_cuda(op)).transpose()?;
    let out = loss::ce2_fwd(&dev, sz.as_cuda(op)?, st.as_cuda(op)?, mb, nhw)?;
    let count = dev.dtoh(&out.count)?[0];
    Ok((Storage::Cuda(out.loss), count))
}

/// dlogits of the cross-entropy given the upstream gradient `g` (one element, on the device).
pub(crate) fn ce2_bwd(
    op: &'static str,
    z: &Tensor,
    t: &Tensor,
    m: Option<&Tensor>,
    nhw: [usize; 3],
    count: f32,
    g: &Tensor,
) -> Result<Tensor> {
    let dev = device(op, z)?;
    let (sz, st, sg) = (z.storage(), t.storage(), g.storage());
    let sm = m.map(|m| m.storage());
    let mb = sm.as_ref().map(|s| s.as_cuda(op)).transpose()?;
    let count_buf = dev.htod(&[count])?;
    let mut dz = alloc(&dev, z.numel())?;
    loss::ce2_bwd(
        &dev,
        sz.as_cuda(op)?,
        st.as_cuda(op)?,
        mb,
        nhw,
        &count_buf,
        sg.as_cuda(op)?,
        &mut dz,
    )?;
    tensor(dz, z.shape().clone())
}

pub(crate) fn bce_fwd(op: &'static str, x: &Tensor, t: &Tensor) -> Result<Storage> {
    let dev = device(op, x)?;
    let (sx, st) = (x.storage(), t.storage());
    Ok(Storage::Cuda(loss::bce_fwd(
        &dev,
        sx.as_cuda(op)?,
        st.as_cuda(op)?,
    )?))
}

pub(crate) fn bce_bwd(op: &'static str, x: &Tensor, t: &Tensor, g: &Tensor) -> Result<Tensor> {
    let dev = device(op, x)?;
    let (sx, st, sg) = (x.storage(), t.storage(), g.storage());
    let mut dx = alloc(&dev, x.numel())?;
    loss::bce_bwd(
        &dev,
        sx.as_cuda(op)?,
        st.as_cuda(op)?,
        sg.as_cuda(op)?,
        &mut dx,
    )?;
    tensor(dx, x.shape().clone())
}
