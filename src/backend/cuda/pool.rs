//! Max pooling and bilinear resize on the GPU, NCHW.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::elementwise::{fill, numel};
use super::kernels as k;
use super::launch::{Arg, check_len, grid_1d, launch, to_i32};
use crate::error::{Error, Result};

/// Output size of a k x k, stride s, padding p pool (floor mode, as PyTorch's default).
pub fn pool_out(op: &'static str, h: usize, w: usize, k: usize, s: usize, p: usize) -> Result<(usize, usize)> {
    if k == 0 || s == 0 || p * 2 > k {
        return Err(Error::invalid(op, format!("kernel {k}, stride {s}, padding {p}: need k, s >= 1 and p <= k/2")));
    }
    if h + 2 * p < k || w + 2 * p < k {
        return Err(Error::shape(op, format!("input {h}x{w} smaller than the {k}x{k} window with padding {p}")));
    }
    Ok(((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1))
}

/// y = max over each window; `idx` (same element count as y) receives the winner's offset within
/// its plane, stored as i32 bits, for the backward. Returns (OH, OW).
#[allow(clippy::too_many_arguments)]
pub fn maxpool_fwd(
    dev: &CudaDevice,
    x: &GpuBuffer,
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    pad: usize,
    y: &mut GpuBuffer,
    idx: &mut GpuBuffer,
) -> Result<(usize, usize)> {
    let op = k::MAXPOOL_FWD.name;
    let [n, c, h, w] = shape;
    let (oh, ow) = pool_out(op, h, w, kernel, stride, pad)?;
    check_len(op, "x", x.len(), numel(shape), &shape)?;
    check_len(op, "y", y.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    check_len(op, "idx", idx.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    to_i32(op, "elements", numel(shape).max(y.len()))?;
    let planes = (n * c) as i32;
    let args = [
        Arg::Ptr(x.ptr()),
        Arg::Ptr(y.ptr_mut()),
        Arg::Ptr(idx.ptr_mut()),
        Arg::I32(planes),
        Arg::I32(h as i32),
        Arg::I32(w as i32),
        Arg::I32(oh as i32),
        Arg::I32(ow as i32),
        Arg::I32(kernel as i32),
        Arg::I32(stride as i32),
        Arg::I32(pad as i32),
    ];
    launch(dev, k::MAXPOOL_FWD, grid_1d(dev, y.len()), &args)?;
    Ok((oh, ow))
}

/// dx from dy and the forward's `idx`; `shape` is the input's.
#[allow(clippy::too_many_arguments)]
pub fn maxpool_bwd(
    dev: &CudaDevice,
    dy: &GpuBuffer,
    idx: &GpuBuffer,
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    pad: usize,
    dx: &mut GpuBuffer,
) -> Result<()> {
    let op = k::MAXPOOL_BWD.name;
    let [n, c, h, w] = shape;
    let (oh, ow) = pool_out(op, h, w, kernel, stride, pad)?;
    check_len(op, "dy", dy.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    check_len(op, "idx", idx.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    check_len(op, "dx", dx.len(), numel(shape), &shape)?;
    to_i32(op, "elements", numel(shape).max(dy.len()))?;
    let args = [
        Arg::Ptr(dy.ptr()),
        Arg::Ptr(idx.ptr()),
        Arg::Ptr(dx.ptr_mut()),
        Arg::I32((n * c) as i32),
        Arg::I32(h as i32),
        Arg::I32(w as i32),
        Arg::I32(oh as i32),
        Arg::I32(ow as i32),
        Arg::I32(kernel as i32),
        Arg::I32(stride as i32),
        Arg::I32(pad as i32),
    ];
    launch(dev, k::MAXPOOL_BWD, grid_1d(dev, dx.len()), &args)
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
    fill(dev, dx, 0.0)?; // the kernel accumulates with atomics
    let mut args = vec![Arg::Ptr(dy.ptr()), Arg::Ptr(dx.ptr_mut())];
    args.extend(tail);
    launch(dev, k::RESIZE_BWD, grid_1d(dev, dy.len()), &args)
}

#[cfg(test)]
mod tests {
    use super::pool_out;

    #[test]
    fn pool_output_sizes_match_pytorch() {
        // ResNet stem: 3x3, stride 2, pad 1 on 64x64 -> 32x32; on 63 -> 32.
        assert_eq!(pool_out("p", 64, 64, 3, 2, 1).unwrap(), (32, 32));
        assert_eq!(pool_out("p", 63, 17, 3, 2, 1).unwrap(), (32, 9));
        assert!(pool_out("p", 1, 1, 3, 2, 0).is_err());
        assert!(pool_out("p", 8, 8, 3, 0, 1).is_err());
    }
}
