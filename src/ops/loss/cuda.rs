//! Losses on the GPU: the checked launch wrappers of kernels/loss.cu, and the CUDA side of
//! [`LossKernels`]. The loss and the count of counted pixels stay on the device (one-element
//! buffers) and the backward reads them and the upstream gradient from device memory. The checked
//! forward ([`Checks::Values`]) waits for the device: the NaN check reads back the logits' sum, the
//! targets (and mask) are checked on the host, and with a mask the count comes back to refuse
//! an empty one. The trusted forward (the training step's) reads nothing back.

use super::{BCE, CE, Checks, LossKernels, NOTHING_COUNTED, refuse_bad_labels, refuse_bad_probabilities, refuse_nan};
use crate::backend::cuda::elementwise::BinaryOp;
use crate::backend::cuda::kernels::{self as k, Kernel};
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, launch, to_i32};
use crate::ops::reduce::cuda::sum_axes;
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};

/// The same check for logits on the GPU: their sum is NaN when any logit is (one value comes
/// back); only then are the logits copied to locate it.
fn refuse_nan_gpu(op: &'static str, z: &Tensor) -> Result<()> {
    let total = crate::autograd::no_grad(|| z.sum_all()?.to_scalar())?;
    if total.is_nan() {
        refuse_nan(op, &z.to_vec()?, z.shape())
    } else {
        Ok(())
    }
}


impl LossKernels for Cuda {
    /// Checked: labels on the host (small), and with a mask the one count value that says whether
    /// anything was counted. Trusted: nothing comes back.
    fn ce2_fwd(&self, z: &Tensor, t: &Tensor, m: Option<&Tensor>, nhw: [usize; 3], checks: Checks) -> Result<(Storage, Storage)> {
        if checks == Checks::Values {
            refuse_nan_gpu(CE, z)?;
            let mv = m.map(|m| m.to_vec()).transpose()?;
            refuse_bad_labels(CE, &t.to_vec()?, &Shape::from(nhw), mv.as_deref())?;
        }
        let dev = device(CE, z)?;
        let (sz, st) = (z.storage(), t.storage());
        let sm = m.map(|m| m.storage());
        let mb = sm.as_ref().map(|s| s.as_cuda(CE)).transpose()?;
        let out = ce2_fwd(&dev, sz.as_cuda(CE)?, st.as_cuda(CE)?, mb, nhw)?;
        // Without a mask every pixel counts (the shape check refused an empty target).
        if checks == Checks::Values && m.is_some() && dev.dtoh(&out.count)?[0] == 0.0 {
            return Err(Error::invalid(CE, NOTHING_COUNTED));
        }
        Ok((Storage::Cuda(out.loss), Storage::Cuda(out.count)))
    }

    fn ce2_bwd(&self, z: &Tensor, t: &Tensor, m: Option<&Tensor>, nhw: [usize; 3], count: &Storage, g: &Tensor) -> Result<Tensor> {
        let dev = device(CE, z)?;
        let (sz, st, sg) = (z.storage(), t.storage(), g.storage());
        let sm = m.map(|m| m.storage());
        let mb = sm.as_ref().map(|s| s.as_cuda(CE)).transpose()?;
        let mut dz = dev.alloc(z.numel())?;
        let (zb, tb, gb) = (sz.as_cuda(CE)?, st.as_cuda(CE)?, sg.as_cuda(CE)?);
        ce2_bwd(&dev, zb, tb, mb, nhw, count.as_cuda(CE)?, gb, &mut dz)?;
        tensor(dz, z.shape().clone())
    }

    fn bce_fwd(&self, x: &Tensor, t: &Tensor) -> Result<Storage> {
        refuse_nan_gpu(BCE, x)?;
        refuse_bad_probabilities(BCE, &t.to_vec()?, t.shape())?;
        let dev = device(BCE, x)?;
        let (sx, st) = (x.storage(), t.storage());
        Ok(Storage::Cuda(bce_fwd(&dev, sx.as_cuda(BCE)?, st.as_cuda(BCE)?)?))
    }

    fn bce_bwd(&self, x: &Tensor, t: &Tensor, g: &Tensor) -> Result<Tensor> {
        let dev = device(BCE, x)?;
        let (sx, st, sg) = (x.storage(), t.storage(), g.storage());
        let mut dx = dev.alloc(x.numel())?;
        bce_bwd(&dev, sx.as_cuda(BCE)?, st.as_cuda(BCE)?, sg.as_cuda(BCE)?, &mut dx)?;
        tensor(dx, x.shape().clone())
    }
}

/// Sum of all of `x` times `scale`, into a new one-element buffer.
fn total(dev: &CudaDevice, x: &GpuBuffer, scale: f32) -> Result<GpuBuffer> {
    let mut out = dev.alloc(1)?;
    sum_axes(dev, x, [1, 1, 1, x.len()], [false; 4], &mut out, scale)?;
    Ok(out)
}

/// What the two-class cross-entropy's backward needs from its forward.
pub struct Ce2Output {
    /// The mean loss over counted pixels (one element; 0 when no pixel counts).
    pub loss: GpuBuffer,
    /// The number of counted pixels (one element).
    pub count: GpuBuffer,
}

fn ce2_check(op: &'static str, logits: &GpuBuffer, target: &GpuBuffer, mask: Option<&GpuBuffer>, nhw: [usize; 3]) -> Result<(i32, i32)> {
    let [n, h, w] = nhw;
    if n * h * w == 0 {
        return Err(Error::invalid(op, format!("empty target {nhw:?}")));
    }
    check_len(op, "logits", logits.len(), n * 2 * h * w, &[n, 2, h, w])?;
    check_len(op, "target", target.len(), n * h * w, &nhw)?;
    if let Some(m) = mask {
        check_len(op, "mask", m.len(), n * h * w, &nhw)?;
    }
    to_i32(op, "elements", logits.len())?;
    Ok((n as i32, (h * w) as i32))
}

/// Pixel-wise cross-entropy over 2 classes: logits (N,2,H,W), target (N,H,W) in {0,1}, optional
/// mask (N,H,W), 1 = counted. Mean over counted pixels.
pub fn ce2_fwd(dev: &CudaDevice, logits: &GpuBuffer, target: &GpuBuffer, mask: Option<&GpuBuffer>, nhw: [usize; 3]) -> Result<Ce2Output> {
    let op = k::CE2_FWD.name;
    let (n, hw) = ce2_check(op, logits, target, mask, nhw)?;
    let mut loss_px = dev.alloc(target.len())?;
    let mut w_px = dev.alloc(target.len())?;
    launch_ce2(dev, k::CE2_FWD, [logits, target], mask, &[loss_px.ptr_mut(), w_px.ptr_mut()], [n, hw])?;
    let sum = total(dev, &loss_px, 1.0)?;
    let count = total(dev, &w_px, 1.0)?;
    // With no counted pixel both are 0; 0/max(count, tiny) keeps the loss 0 instead of NaN.
    let mut safe_count = dev.alloc(1)?;
    crate::backend::cuda::elementwise::affine(dev, &count, &mut safe_count, 1.0, f32::MIN_POSITIVE)?;
    let mut loss = dev.alloc(1)?;
    let one = crate::backend::cuda::nd::geometry("ce2_fwd_f32", &[1], &[1], &[1], 0, 0)?;
    crate::backend::cuda::nd::binary(dev, BinaryOp::Div, &sum, &safe_count, &mut loss, &one)?;
    Ok(Ce2Output { loss, count })
}

/// dlogits (N,2,H,W) given the upstream gradient `dout` (one element).
#[allow(clippy::too_many_arguments)]
pub fn ce2_bwd(
    dev: &CudaDevice,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    mask: Option<&GpuBuffer>,
    nhw: [usize; 3],
    count: &GpuBuffer,
    dout: &GpuBuffer,
    dlogits: &mut GpuBuffer,
) -> Result<()> {
    let op = k::CE2_BWD.name;
    let (n, hw) = ce2_check(op, logits, target, mask, nhw)?;
    check_len(op, "count", count.len(), 1, &[1])?;
    check_len(op, "dout", dout.len(), 1, &[1])?;
    check_len(op, "dlogits", dlogits.len(), logits.len(), &[nhw[0], 2, nhw[1], nhw[2]])?;
    launch_ce2(dev, k::CE2_BWD, [logits, target], mask, &[count.ptr(), dout.ptr(), dlogits.ptr_mut()], [n, hw])
}

/// Launches a ce2 kernel, one thread per pixel. Both take logits, target and mask (0 when
/// absent) first, then their own buffers (`own`), then n and hw.
fn launch_ce2(
    dev: &CudaDevice,
    kernel: Kernel,
    [logits, target]: [&GpuBuffer; 2],
    mask: Option<&GpuBuffer>,
    own: &[u64],
    [n, hw]: [i32; 2],
) -> Result<()> {
    let mut args = vec![Arg::Ptr(logits.ptr()), Arg::Ptr(target.ptr()), Arg::Ptr(mask.map_or(0, GpuBuffer::ptr))];
    args.extend(own.iter().map(|&ptr| Arg::Ptr(ptr)));
    args.extend([Arg::I32(n), Arg::I32(hw)]);
    launch(dev, kernel, grid_1d(dev, target.len()), &args)
}

/// Mean binary cross-entropy with logits, into a one-element buffer.
pub fn bce_fwd(dev: &CudaDevice, x: &GpuBuffer, t: &GpuBuffer) -> Result<GpuBuffer> {
    let op = k::BCE_FWD.name;
    if x.is_empty() {
        return Err(Error::invalid(op, "empty input"));
    }
    check_len(op, "target", t.len(), x.len(), &[x.len()])?;
    let n = to_i32(op, "elements", x.len())?;
    let mut terms = dev.alloc(x.len())?;
    launch(dev, k::BCE_FWD, grid_1d(dev, x.len()), &[Arg::Ptr(x.ptr()), Arg::Ptr(t.ptr()), Arg::Ptr(terms.ptr_mut()), Arg::I32(n)])?;
    total(dev, &terms, 1.0 / x.len() as f32)
}

/// dx of the mean BCE given the upstream gradient `dout` (one element).
pub fn bce_bwd(dev: &CudaDevice, x: &GpuBuffer, t: &GpuBuffer, dout: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
    let op = k::BCE_BWD.name;
    check_len(op, "target", t.len(), x.len(), &[x.len()])?;
    check_len(op, "dx", dx.len(), x.len(), &[x.len()])?;
    check_len(op, "dout", dout.len(), 1, &[1])?;
    let n = to_i32(op, "elements", x.len())?;
    let args = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(t.ptr()),
        Arg::Ptr(dout.ptr()),
        Arg::Ptr(dx.ptr_mut()),
        Arg::I32(n),
        Arg::F32(1.0 / x.len().max(1) as f32),
    ];
    launch(dev, k::BCE_BWD, grid_1d(dev, x.len()), &args)
}
