//! The position attention on the GPU: the checked launch wrappers of kernels/danet.cu and the
//! CUDA side of [`PositionKernels`]. Compiled and checked by CPU emulation (scripts/kernel-emu), not
//! yet run on a GPU.

use super::{Dims, OP, PositionKernels};
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, THREADS, check_len, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Storage, Tensor};
use cudarc::driver::LaunchConfig;

/// danet.cu's tiles: BR positions per block, BC output channels per block (fwd/dv over C, dq/dk
/// over D), 32 positions per block of the delta kernel; PAM_THREADS = 256. Grid dimensions past
/// what a launch allows (N or the chunks over 65535) are refused by `launch` with an error.
const BR: usize = 64;
const BC_C: usize = 128;
const BC_D: usize = 64;
const DELTA_TILE: usize = 32;
const _: () = assert!(THREADS == 256);

/// The forward's grid (position tiles, chunks of C, N) of 256 threads.
fn fwd_grid(Dims { n, c, l, .. }: Dims) -> LaunchConfig {
    LaunchConfig { grid_dim: (l.div_ceil(BR) as u32, c.div_ceil(BC_C) as u32, n as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The sizes as kernel ints, after checking that every tensor's element count fits.
fn ints(op: &'static str, Dims { n, d, c, l }: Dims) -> Result<[i32; 3]> {
    to_i32(op, "q elements", n * d * l)?;
    to_i32(op, "v elements", n * c * l)?;
    Ok([d as i32, c as i32, l as i32])
}

/// Checks each (name, length, shape): the buffer must hold exactly the shape's elements.
fn check_all(op: &'static str, bufs: &[(&str, usize, [usize; 3])]) -> Result<()> {
    bufs.iter().try_for_each(|&(what, len, shape)| check_len(op, what, len, shape.iter().product(), &shape))
}

/// out (N, C, L) and lse (N, L) from q, k (N, D, L) and v (N, C, L).
pub fn pam_fwd(dev: &CudaDevice, q: &GpuBuffer, kk: &GpuBuffer, v: &GpuBuffer, dims: Dims, out: &mut GpuBuffer, lse: &mut GpuBuffer) -> Result<()> {
    let op = k::PAM_FWD.name;
    let Dims { n, d, c, l } = dims;
    let [di, ci, li] = ints(op, dims)?;
    check_all(op, &[("q", q.len(), [n, d, l]), ("k", kk.len(), [n, d, l]), ("v", v.len(), [n, c, l])])?;
    check_all(op, &[("out", out.len(), [n, c, l]), ("lse", lse.len(), [n, 1, l])])?;
    let args = [Arg::Ptr(q.ptr()), Arg::Ptr(kk.ptr()), Arg::Ptr(v.ptr()), Arg::Ptr(out.ptr_mut()), Arg::Ptr(lse.ptr_mut()), Arg::I32(di), Arg::I32(ci), Arg::I32(li)];
    launch(dev, k::PAM_FWD, fwd_grid(dims), &args)
}

/// The inputs of the backward: q, k, v, the forward's out and lse, and out's gradient.
pub struct Saved<'a> {
    pub q: &'a GpuBuffer,
    pub k: &'a GpuBuffer,
    pub v: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
    pub lse: &'a GpuBuffer,
    pub dout: &'a GpuBuffer,
}

/// (dq, dk, dv) from [`Saved`]: delta = rowsum(dout * out), then one launch for the three
/// gradients, each recomputing the attention tile by tile from q, k and lse.
pub fn pam_bwd(dev: &CudaDevice, s: &Saved, dims: Dims, dq: &mut GpuBuffer, dk: &mut GpuBuffer, dv: &mut GpuBuffer) -> Result<()> {
    let op = k::PAM_BWD.name;
    let Dims { n, d, c, l } = dims;
    let [di, ci, li] = ints(op, dims)?;
    let (qd, cl) = ([n, d, l], [n, c, l]);
    check_all(op, &[("q", s.q.len(), qd), ("k", s.k.len(), qd), ("v", s.v.len(), cl), ("out", s.out.len(), cl)])?;
    check_all(op, &[("lse", s.lse.len(), [n, 1, l]), ("dout", s.dout.len(), cl)])?;
    check_all(op, &[("dq", dq.len(), qd), ("dk", dk.len(), qd), ("dv", dv.len(), cl)])?;
    let mut delta = dev.alloc(n * l)?;
    let delta_cfg = LaunchConfig { grid_dim: (l.div_ceil(DELTA_TILE) as u32, n as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let args = [Arg::Ptr(s.dout.ptr()), Arg::Ptr(s.out.ptr()), Arg::Ptr(delta.ptr_mut()), Arg::I32(ci), Arg::I32(li)];
    launch(dev, k::PAM_BWD_DELTA, delta_cfg, &args)?;
    // blockIdx.y: dq's chunks of D, dk's, then dv's chunks of C (danet.cu).
    let chunks = 2 * d.div_ceil(BC_D) + c.div_ceil(BC_C);
    let cfg = LaunchConfig { grid_dim: (l.div_ceil(BR) as u32, chunks as u32, n as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let args = [
        Arg::Ptr(s.q.ptr()),
        Arg::Ptr(s.k.ptr()),
        Arg::Ptr(s.v.ptr()),
        Arg::Ptr(s.dout.ptr()),
        Arg::Ptr(s.lse.ptr()),
        Arg::Ptr(delta.ptr()),
        Arg::Ptr(dq.ptr_mut()),
        Arg::Ptr(dk.ptr_mut()),
        Arg::Ptr(dv.ptr_mut()),
        Arg::I32(di),
        Arg::I32(ci),
        Arg::I32(li),
    ];
    launch(dev, k::PAM_BWD, cfg, &args)
}

impl PositionKernels for Cuda {
    fn pam_fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, dims: Dims) -> Result<(Storage, Tensor)> {
        let dev = device(OP, q)?;
        let (mut out, mut lse) = (dev.alloc(dims.n * dims.c * dims.l)?, dev.alloc(dims.n * dims.l)?);
        let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
        pam_fwd(&dev, sq.as_cuda(OP)?, sk.as_cuda(OP)?, sv.as_cuda(OP)?, dims, &mut out, &mut lse)?;
        Ok((Storage::Cuda(out), tensor(lse, [dims.n, dims.l])?))
    }

    fn pam_bwd(&self, g: &Tensor, [q, k, v]: [&Tensor; 3], out: &Tensor, lse: &Tensor, dims: Dims) -> Result<[Tensor; 3]> {
        let dev = device(OP, g)?;
        let (mut dq, mut dk, mut dv) = (dev.alloc(q.numel())?, dev.alloc(k.numel())?, dev.alloc(v.numel())?);
        let (sg, sq, sk, sv, so, sl) = (g.storage(), q.storage(), k.storage(), v.storage(), out.storage(), lse.storage());
        let saved = Saved { q: sq.as_cuda(OP)?, k: sk.as_cuda(OP)?, v: sv.as_cuda(OP)?, out: so.as_cuda(OP)?, lse: sl.as_cuda(OP)?, dout: sg.as_cuda(OP)? };
        pam_bwd(&dev, &saved, dims, &mut dq, &mut dk, &mut dv)?;
        Ok([tensor(dq, q.shape().clone())?, tensor(dk, k.shape().clone())?, tensor(dv, v.shape().clone())?])
    }
}
