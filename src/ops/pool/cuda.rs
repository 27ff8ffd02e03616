//! Max pooling on the GPU: the checked launch wrappers of kernels/pool.cu's max-pool kernels,
//! and the CUDA side of [`PoolKernels`].

pub use super::pool_out;
use super::{OP, PoolKernels, Window, Winners};
use crate::backend::cuda::elementwise::numel;
use crate::backend::cuda::kernels::{self as k, Kernel};
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer, TypedBuffer};
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};

impl PoolKernels for Cuda {
    fn max_pool_fwd(&self, x: &Tensor, win: Window) -> Result<(Storage, Winners)> {
        let dev = device(OP, x)?;
        let d = x.shape().nchw();
        let (oh, ow) = pool_out(OP, d[2], d[3], win.kernel, win.stride, win.padding)?;
        let len = d[0] * d[1] * oh * ow;
        let (mut y, mut idx) = (dev.alloc(len)?, TypedBuffer::alloc(&dev, len)?);
        let sx = x.storage();
        maxpool_fwd(&dev, sx.as_cuda(OP)?, d, win.kernel, win.stride, win.padding, &mut y, &mut idx)?;
        Ok((Storage::Cuda(y), Winners::Cuda(idx)))
    }

    fn max_pool_bwd(&self, dy: &Tensor, winners: &Winners, in_shape: &Shape, win: Window) -> Result<Tensor> {
        let Winners::Cuda(idx) = winners else {
            return Err(winners.elsewhere_than(dy));
        };
        let dev = device(OP, dy)?;
        let sg = dy.storage();
        let mut dx = dev.alloc(in_shape.numel())?;
        maxpool_bwd(&dev, sg.as_cuda(OP)?, idx, in_shape.nchw(), win.kernel, win.stride, win.padding, &mut dx)?;
        tensor(dx, in_shape.clone())
    }
}

/// y = max over each window; `idx` (same element count as y) receives the winner's offset within
/// its plane, for the backward. Returns (OH, OW).
#[allow(clippy::too_many_arguments)]
pub fn maxpool_fwd(
    dev: &CudaDevice,
    x: &GpuBuffer,
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    pad: usize,
    y: &mut GpuBuffer,
    idx: &mut TypedBuffer<u32>,
) -> Result<(usize, usize)> {
    let op = k::MAXPOOL_FWD.name;
    let [n, c, h, w] = shape;
    let (oh, ow) = pool_out(op, h, w, kernel, stride, pad)?;
    check_len(op, "x", x.len(), numel(shape), &shape)?;
    check_len(op, "y", y.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    check_len(op, "idx", idx.len(), n * c * oh * ow, &[n, c, oh, ow])?;
    let buffers = [x.ptr(), y.ptr_mut(), idx.ptr_mut()];
    launch_pool(dev, k::MAXPOOL_FWD, buffers, shape, [oh, ow], [kernel, stride, pad], y.len())?;
    Ok((oh, ow))
}

/// dx from dy and the forward's `idx`; `shape` is the input's.
#[allow(clippy::too_many_arguments)]
pub fn maxpool_bwd(
    dev: &CudaDevice,
    dy: &GpuBuffer,
    idx: &TypedBuffer<u32>,
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
    let buffers = [dy.ptr(), idx.ptr(), dx.ptr_mut()];
    launch_pool(dev, k::MAXPOOL_BWD, buffers, shape, [oh, ow], [kernel, stride, pad], dx.len())
}

/// Launches one of the max-pool kernels, which share one argument list: their three buffers,
/// then planes, H, W, OH, OW, k, s, p; one thread per element of the buffer written (`items`).
fn launch_pool(
    dev: &CudaDevice,
    kernel: Kernel,
    buffers: [u64; 3],
    [n, c, h, w]: [usize; 4],
    [oh, ow]: [usize; 2],
    [k, s, p]: [usize; 3],
    items: usize,
) -> Result<()> {
    to_i32(kernel.name, "elements", (n * c * h * w).max(n * c * oh * ow))?;
    let args = [
        Arg::Ptr(buffers[0]),
        Arg::Ptr(buffers[1]),
        Arg::Ptr(buffers[2]),
        Arg::I32((n * c) as i32),
        Arg::I32(h as i32),
        Arg::I32(w as i32),
        Arg::I32(oh as i32),
        Arg::I32(ow as i32),
        Arg::I32(k as i32),
        Arg::I32(s as i32),
        Arg::I32(p as i32),
    ];
    launch(dev, kernel, grid_1d(dev, items), &args)
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
