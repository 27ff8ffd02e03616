//! Batch norm on the GPU (PyTorch BatchNorm2d semantics), NCHW: the checked launch wrappers of
//! kernels/batchnorm.cu, and the CUDA side of [`NormKernels`].

use super::{BnCall, BnGrads, BnPartials, BnSaved, NormKernels, OP};
use crate::backend::cuda::elementwise::numel;
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, grid_per_item, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Storage, Tensor};
use cudarc::driver::DeviceRepr;

impl NormKernels for Cuda {
    /// In training the batch statistics are computed and the running ones updated in place,
    /// otherwise the running ones are used (copied, so a later update cannot change what the
    /// backward sees).
    fn batch_norm_fwd(&self, x: &Tensor, params: [&Tensor; 4], call: BnCall, partials: Option<&BnPartials>, residual: Option<&Tensor>) -> Result<(Storage, BnSaved)> {
        let [gamma, beta, ..] = params;
        let BnCall { shape, opts, .. } = call;
        let dev = device(OP, x)?;
        let (mean, var) = forward_stats(&dev, x, params, call, partials)?;
        let (sx, sg, sb) = (x.storage(), gamma.storage(), beta.storage());
        let sr = residual.map(Tensor::storage);
        let res = sr.as_ref().map(|s| s.as_cuda(OP)).transpose()?;
        let mut y = dev.alloc(x.numel())?;
        bn_fwd(&dev, sx.as_cuda(OP)?, shape, &mean, &var, sg.as_cuda(OP)?, sb.as_cuda(OP)?, res, &mut y, opts.eps, opts.relu)?;
        let c = shape[1];
        let saved = BnSaved { mean: tensor(mean, [c])?, var: tensor(var, [c])?, call };
        Ok((Storage::Cuda(y), saved))
    }

    fn batch_norm_bwd(&self, x: &Tensor, gamma: &Tensor, dy: &Tensor, out: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        let BnCall { shape, opts, residual } = saved.call;
        let dev = device(OP, x)?;
        let c = shape[1];
        let (sx, sgam, sdy, sout) = (x.storage(), gamma.storage(), dy.storage(), out.storage());
        let relu = if opts.relu { ReluMask::Output(sout.as_cuda(OP)?) } else { ReluMask::None };
        let (smean, svar) = (saved.mean.storage(), saved.var.storage());
        let mut dx = dev.alloc(x.numel())?;
        let (mut dgamma, mut dbeta) = (dev.alloc(c)?, dev.alloc(c)?);
        // Behind a ReLU the residual's gradient is the masked dy, which the reduce writes; without
        // one it is dy itself.
        let mut masked = if residual && opts.relu { Some(dev.alloc(x.numel())?) } else { None };
        let stats = (smean.as_cuda(OP)?, svar.as_cuda(OP)?);
        bn_bwd(
            &dev,
            sx.as_cuda(OP)?,
            sdy.as_cuda(OP)?,
            relu,
            shape,
            stats.0,
            stats.1,
            sgam.as_cuda(OP)?,
            opts.eps,
            opts.training,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            masked.as_mut(),
        )?;
        let dresidual = match masked {
            Some(g) => Some(tensor(g, x.shape().clone())?),
            None if residual => Some(dy.clone()),
            None => None,
        };
        Ok(BnGrads { dx: tensor(dx, x.shape().clone())?, dgamma: tensor(dgamma, [c])?, dbeta: tensor(dbeta, [c])?, dresidual })
    }
}

/// The (mean, var) a forward of `call` normalises `x` with: in training the batch's (from
/// `partials` when given, else a pass over x), the running statistics updated in place; otherwise
/// copies of the running ones (so a later update cannot change what the backward sees).
/// `params` are gamma, beta, running_mean, running_var.
pub(crate) fn forward_stats(dev: &CudaDevice, x: &Tensor, params: [&Tensor; 4], call: BnCall, partials: Option<&BnPartials>) -> Result<(GpuBuffer, GpuBuffer)> {
    let [_, _, running_mean, running_var] = params;
    let BnCall { shape, opts, .. } = call;
    let c = shape[1];
    if !opts.training {
        let (rm, rv) = (running_mean.storage(), running_var.storage());
        return Ok((dev.dtod(rm.as_cuda(OP)?)?, dev.dtod(rv.as_cuda(OP)?)?));
    }
    if running_mean.id() == running_var.id() {
        return Err(Error::invalid(OP, "running_mean and running_var are the same tensor"));
    }
    let sx = x.storage();
    let xb = sx.as_cuda(OP)?;
    let (mut mean, mut var) = (dev.alloc(c)?, dev.alloc(c)?);
    running_mean.update_storage(|rm| {
        running_var.update_storage(|rv| {
            let running = Some((rm.as_cuda_mut(OP)?, rv.as_cuda_mut(OP)?));
            match partials {
                Some(p) => {
                    let sums = p.sums.as_cuda(OP)?;
                    let count = shape[0] * shape[2] * shape[3];
                    bn_stats_partials(dev, sums, [p.slots, p.width], c, count, &mut mean, &mut var, running, opts.momentum)
                }
                None => bn_stats(dev, xb, shape, &mut mean, &mut var, running, opts.momentum),
            }
        })
    })?;
    Ok((mean, var))
}

fn check(op: &'static str, x: &GpuBuffer, shape: [usize; 4], per_channel: &[(&str, &GpuBuffer)]) -> Result<(i32, i32, i32)> {
    let [n, c, h, w] = shape;
    if n * h * w == 0 || c == 0 {
        return Err(Error::invalid(op, format!("empty input {shape:?}")));
    }
    check_len(op, "x", x.len(), numel(shape), &shape)?;
    for (name, b) in per_channel {
        check_len(op, name, b.len(), c, &[c])?;
    }
    to_i32(op, "elements", numel(shape))?;
    Ok((n as i32, c as i32, (h * w) as i32))
}

/// The running statistics' pointers (checked to hold `c` values), or null pointers for none.
fn running_ptrs(op: &'static str, running: Option<(&mut GpuBuffer, &mut GpuBuffer)>, c: usize) -> Result<(u64, u64)> {
    let Some((rm, rv)) = running else { return Ok((0, 0)) };
    check_len(op, "running_mean", rm.len(), c, &[c])?;
    check_len(op, "running_var", rv.len(), c, &[c])?;
    Ok((rm.ptr_mut(), rv.ptr_mut()))
}

/// Training statistics: per-channel mean and biased variance of x, written to `mean` and `var`;
/// `running` (mean, var) is updated with `momentum` (unbiased variance), when given.
pub fn bn_stats(
    dev: &CudaDevice,
    x: &GpuBuffer,
    shape: [usize; 4],
    mean: &mut GpuBuffer,
    var: &mut GpuBuffer,
    running: Option<(&mut GpuBuffer, &mut GpuBuffer)>,
    momentum: f32,
) -> Result<()> {
    let op = k::BN_STATS.name;
    let (n, c, hw) = check(op, x, shape, &[("mean", mean), ("var", var)])?;
    let (rm, rv) = running_ptrs(op, running, shape[1])?;
    let args = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(mean.ptr_mut()),
        Arg::Ptr(var.ptr_mut()),
        Arg::Ptr(rm),
        Arg::Ptr(rv),
        Arg::I32(n),
        Arg::I32(c),
        Arg::I32(hw),
        Arg::F32(momentum),
    ];
    launch(dev, k::BN_STATS, grid_per_item(dev, shape[1]), &args)
}

/// [`bn_stats`] from a convolution's partial statistics (`BnPartials`): `sums` holds, per channel,
/// `slots` slot sums, then per channel the slots' sums of squared deviations from their means;
/// a slot covers `width` of the channel's `count` values (the last one fewer).
#[allow(clippy::too_many_arguments)]
pub fn bn_stats_partials(
    dev: &CudaDevice,
    sums: &GpuBuffer,
    [slots, width]: [usize; 2],
    c: usize,
    count: usize,
    mean: &mut GpuBuffer,
    var: &mut GpuBuffer,
    running: Option<(&mut GpuBuffer, &mut GpuBuffer)>,
    momentum: f32,
) -> Result<()> {
    let op = k::BN_STATS_PARTIALS.name;
    if slots == 0 || width == 0 || c == 0 || count == 0 || slots * width < count {
        return Err(Error::invalid(op, format!("{c} channels of {slots} partial sums of {width} values cannot hold {count} values")));
    }
    check_len(op, "partial sums", sums.len(), 2 * c * slots, &[2, c, slots])?;
    for (name, b) in [("mean", &*mean), ("var", &*var)] {
        check_len(op, name, b.len(), c, &[c])?;
    }
    let (rm, rv) = running_ptrs(op, running, c)?;
    let args = [
        Arg::Ptr(sums.ptr()),
        Arg::I32(to_i32(op, "slots", slots)?),
        Arg::I32(to_i32(op, "slot width", width)?),
        Arg::Ptr(mean.ptr_mut()),
        Arg::Ptr(var.ptr_mut()),
        Arg::Ptr(rm),
        Arg::Ptr(rv),
        Arg::I32(to_i32(op, "channels", c)?),
        Arg::I32(to_i32(op, "values per channel", count)?),
        Arg::F32(momentum),
    ];
    launch(dev, k::BN_STATS_PARTIALS, grid_per_item(dev, c), &args)
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, with batch or running statistics; plus
/// `residual` when given, then max(., 0) when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn bn_fwd(
    dev: &CudaDevice,
    x: &GpuBuffer,
    shape: [usize; 4],
    mean: &GpuBuffer,
    var: &GpuBuffer,
    gamma: &GpuBuffer,
    beta: &GpuBuffer,
    residual: Option<&GpuBuffer>,
    y: &mut GpuBuffer,
    eps: f32,
    relu: bool,
) -> Result<()> {
    let op = k::BN_FWD.name;
    let (_, c, hw) = check(op, x, shape, &[("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)])?;
    check_len(op, "y", y.len(), x.len(), &shape)?;
    if let Some(r) = residual {
        check_len(op, "residual", r.len(), x.len(), &shape)?;
    }
    let args = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(mean.ptr()),
        Arg::Ptr(var.ptr()),
        Arg::Ptr(gamma.ptr()),
        Arg::Ptr(beta.ptr()),
        Arg::Ptr(residual.map_or(0, GpuBuffer::ptr)),
        Arg::Ptr(y.ptr_mut()),
        Arg::I32(x.len() as i32),
        Arg::I32(c),
        Arg::I32(hw),
        Arg::F32(eps),
        Arg::I32(i32::from(relu)),
    ];
    launch(dev, k::BN_FWD, grid_1d(dev, x.len()), &args)
}

/// Where a fused ReLU's gradient passes (kernels/batchnorm.cu `ReluMask`): nowhere masked (no
/// ReLU), where the forward's output is > 0, or where batch norm's value recomputed from the
/// input is > 0 (no output was kept: a convolution applied batch norm and the ReLU as its
/// prologue), with the forward's gamma and beta.
#[derive(Clone, Copy)]
pub enum ReluMask<'a> {
    None,
    Output(&'a GpuBuffer),
    FromInput { gamma: &'a GpuBuffer, beta: &'a GpuBuffer },
}

/// The kernels' `struct ReluMask`: three device pointers, null where unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ReluMaskArg {
    out: u64,
    gamma: u64,
    beta: u64,
}

// SAFETY: a plain #[repr(C)] struct of three u64 device addresses, the kernels' `struct ReluMask`.
unsafe impl DeviceRepr for ReluMaskArg {}

impl ReluMask<'_> {
    /// The kernel argument, each buffer checked to hold `len` (the output) or `c` values.
    fn arg(&self, op: &'static str, shape: [usize; 4]) -> Result<ReluMaskArg> {
        let c = shape[1];
        Ok(match *self {
            ReluMask::None => ReluMaskArg::default(),
            ReluMask::Output(out) => {
                check_len(op, "relu_out", out.len(), numel(shape), &shape)?;
                ReluMaskArg { out: out.ptr(), ..Default::default() }
            }
            ReluMask::FromInput { gamma, beta } => {
                check_len(op, "gamma", gamma.len(), c, &[c])?;
                check_len(op, "beta", beta.len(), c, &[c])?;
                ReluMaskArg { out: 0, gamma: gamma.ptr(), beta: beta.ptr() }
            }
        })
    }
}

/// Gradients of batch norm: dx, dgamma, dbeta. `training` = the forward used batch statistics
/// (then `mean`/`var` are those, and dx flows through them); otherwise running statistics.
/// `relu`: where a fused ReLU passes the gradient; `masked`, when given, receives that masked dy
/// (a residual's gradient) and the dx pass reads it.
#[allow(clippy::too_many_arguments)]
pub fn bn_bwd(
    dev: &CudaDevice,
    x: &GpuBuffer,
    dy: &GpuBuffer,
    relu: ReluMask<'_>,
    shape: [usize; 4],
    mean: &GpuBuffer,
    var: &GpuBuffer,
    gamma: &GpuBuffer,
    eps: f32,
    training: bool,
    dx: &mut GpuBuffer,
    dgamma: &mut GpuBuffer,
    dbeta: &mut GpuBuffer,
    mut masked: Option<&mut GpuBuffer>,
) -> Result<()> {
    let op = "bn_bwd_f32";
    let (n, c, hw) = check(op, x, shape, &[("mean", mean), ("var", var), ("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)])?;
    check_len(op, "dy", dy.len(), x.len(), &shape)?;
    check_len(op, "dx", dx.len(), x.len(), &shape)?;
    let mask = relu.arg(op, shape)?;
    if let Some(m) = masked.as_deref() {
        check_len(op, "masked dy", m.len(), x.len(), &shape)?;
    }
    let masked_ptr = masked.as_deref_mut().map_or(0, GpuBuffer::ptr_mut);
    let reduce = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(dy.ptr()),
        Arg::Struct(&mask),
        Arg::Ptr(mean.ptr()),
        Arg::Ptr(var.ptr()),
        Arg::Ptr(dbeta.ptr_mut()),
        Arg::Ptr(dgamma.ptr_mut()),
        Arg::Ptr(masked_ptr),
        Arg::I32(n),
        Arg::I32(c),
        Arg::I32(hw),
        Arg::F32(eps),
    ];
    launch(dev, k::BN_BWD_REDUCE, grid_per_item(dev, shape[1]), &reduce)?;
    // The dx pass reads the masked dy where the reduce wrote it (then there is no mask left to apply).
    let (upstream, mask) = if masked_ptr != 0 { (masked_ptr, ReluMaskArg::default()) } else { (dy.ptr(), mask) };
    let dxa = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(upstream),
        Arg::Struct(&mask),
        Arg::Ptr(mean.ptr()),
        Arg::Ptr(var.ptr()),
        Arg::Ptr(gamma.ptr()),
        Arg::Ptr(dbeta.ptr()),
        Arg::Ptr(dgamma.ptr()),
        Arg::Ptr(dx.ptr_mut()),
        Arg::I32(x.len() as i32),
        Arg::I32(c),
        Arg::I32(hw),
        Arg::I32(n * hw),
        Arg::F32(eps),
        Arg::I32(i32::from(training)),
    ];
    launch(dev, k::BN_BWD_DX, grid_1d(dev, x.len()), &dxa)
}
