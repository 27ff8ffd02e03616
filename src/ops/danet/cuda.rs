//! The position attention on the GPU: the checked launch wrappers of kernels/danet.cu (fp32,
//! the reference) and kernels/danet_tc.cu (TF32 tensor cores), and the CUDA side of
//! [`PositionKernels`]. Compiled and checked by CPU emulation (scripts/kernel-emu); danet.cu's
//! kernels have run on an H200, danet_tc.cu's not yet.

use super::{Dims, OP, PositionKernels};
use crate::backend::cuda::kernels::{self as k, Kernel};
use crate::backend::cuda::launch::{Arg, THREADS, check_len, launch, log_kernel_choice, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Storage, Tensor};
use cudarc::driver::LaunchConfig;

/// The kernels' tiles: BR positions per block, BC output channels per block (fp32: fwd/dv over
/// C, dq/dk over D; TF32: fwd/dv over C, dq/dk all of D), 32 positions per block of the delta
/// kernel. Grid dimensions past what a launch allows (N or the chunks over 65535) are refused
/// by `launch` with an error.
const BR: usize = 64;
const BC_C: usize = 128;
const BC_D: usize = 64;
const DELTA_TILE: usize = 32;
/// danet_tc.cu's block: 4 warps of 16 rows each.
const TC_THREADS: u32 = 128;
const _: () = assert!(THREADS == 256);

/// The largest D the TF32 kernels take: their dq and dk blocks hold all of D in accumulators.
pub const TC_MAX_D: usize = 128;

/// Which kernels run the position attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamKernels {
    /// danet.cu: f32 FMA, the reference (parity with the composed ops about 1e-6).
    Fp32,
    /// danet_tc.cu: TF32 mma.sync on f32 data, f32 accumulation (about 2e-4 from f64 on
    /// TF32-rounded inputs).
    Tf32,
}

impl PamKernels {
    /// The kernels for `dims` at a device's `precision`: TF32 tensor cores at tf32 and bf16 (as
    /// the matrix products, `backend::cuda::blas`: TF32 rather than bf16, whose 8-bit mantissa
    /// would put 0.4% errors into the scores before the exponential) where D <= [`TC_MAX_D`];
    /// fp32 otherwise. With COSEG_KERNEL_LOG=1 the choice is printed once per shape.
    pub fn choose(precision: Precision, dims: Dims) -> PamKernels {
        let kernels = if precision != Precision::Fp32 && dims.d <= TC_MAX_D { PamKernels::Tf32 } else { PamKernels::Fp32 };
        log_kernel_choice(|| {
            let Dims { n, d, c, l } = dims;
            let why = if precision != Precision::Fp32 && kernels == PamKernels::Fp32 { format!(" (D = {d} > {TC_MAX_D})") } else { String::new() };
            format!("{OP} {precision}: q, k ({n}, {d}, {l}) v ({n}, {c}, {l}) -> {}{why}", kernels.fwd().name)
        });
        kernels
    }

    fn fwd(self) -> Kernel {
        match self {
            PamKernels::Fp32 => k::PAM_FWD,
            PamKernels::Tf32 => k::PAM_FWD_TF32,
        }
    }

    fn bwd(self) -> Kernel {
        match self {
            PamKernels::Fp32 => k::PAM_BWD,
            PamKernels::Tf32 => k::PAM_BWD_TF32,
        }
    }

    /// The forward's launch: grid (position tiles, chunks of C, N).
    fn fwd_config(self, Dims { n, d, c, l }: Dims) -> LaunchConfig {
        let grid_dim = (l.div_ceil(BR) as u32, c.div_ceil(BC_C) as u32, n as u32);
        match self {
            PamKernels::Fp32 => LaunchConfig { grid_dim, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 },
            PamKernels::Tf32 => LaunchConfig { grid_dim, block_dim: (TC_THREADS, 1, 1), shared_mem_bytes: 4 * tc_smem_floats(d, false) as u32 },
        }
    }

    /// The backward's launch. fp32: grid (position tiles, chunks, N), the chunks dq's of D (64
    /// each), dk's, then dv's of C. TF32: grid (position tiles, N, 2 + chunks of C), dq, dk (all
    /// of D each), then dv's chunks: the gradient outermost, so the heavy blocks go first.
    fn bwd_config(self, Dims { n, d, c, l }: Dims) -> LaunchConfig {
        let tiles = l.div_ceil(BR) as u32;
        match self {
            PamKernels::Fp32 => {
                let chunks = 2 * d.div_ceil(BC_D) + c.div_ceil(BC_C);
                LaunchConfig { grid_dim: (tiles, chunks as u32, n as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
            }
            PamKernels::Tf32 => LaunchConfig {
                grid_dim: (tiles, n as u32, (2 + c.div_ceil(BC_C)) as u32),
                block_dim: (TC_THREADS, 1, 1),
                shared_mem_bytes: 4 * tc_smem_floats(d, true) as u32,
            },
        }
    }
}

/// danet_tc.cu's dynamic shared memory in floats (its header; the kernel traps on less): the
/// rows' operand Dp x 64, two column stages of Dp x 32 (+ X's 128 x 32 for fwd and dv) + 64, and
/// for dq and dk three dP stages of 32 x (64 + 32); the backward's launch takes the largest.
pub fn tc_smem_floats(d: usize, backward: bool) -> usize {
    let dp = d.div_ceil(8) * 8;
    let own_x = dp * 64 + 2 * (dp * 32 + 128 * 32 + 64);
    let with_dp = dp * 64 + 2 * (dp * 32 + 64) + 3 * 32 * (64 + 32);
    if backward { own_x.max(with_dp) } else { own_x }
}

/// The sizes as kernel ints, after checking that every tensor's element count fits and that
/// `kernels` takes D (the TF32 ones at most [`TC_MAX_D`]; `PamKernels::choose` never picks them
/// beyond).
fn ints(op: &'static str, kernels: PamKernels, Dims { n, d, c, l }: Dims) -> Result<[i32; 3]> {
    to_i32(op, "q elements", n * d * l)?;
    to_i32(op, "v elements", n * c * l)?;
    if kernels == PamKernels::Tf32 && d > TC_MAX_D {
        return Err(Error::shape(op, format!("q and k have D = {d} channels; the TF32 kernels take at most {TC_MAX_D}")));
    }
    Ok([d as i32, c as i32, l as i32])
}

/// Checks each (name, length, shape): the buffer must hold exactly the shape's elements.
fn check_all(op: &'static str, bufs: &[(&str, usize, [usize; 3])]) -> Result<()> {
    bufs.iter().try_for_each(|&(what, len, shape)| check_len(op, what, len, shape.iter().product(), &shape))
}

/// out (N, C, L) and lse (N, L) from q, k (N, D, L) and v (N, C, L), on `kernels`.
#[allow(clippy::too_many_arguments)]
pub fn pam_fwd(
    dev: &CudaDevice,
    kernels: PamKernels,
    q: &GpuBuffer,
    kk: &GpuBuffer,
    v: &GpuBuffer,
    dims: Dims,
    out: &mut GpuBuffer,
    lse: &mut GpuBuffer,
) -> Result<()> {
    let kernel = kernels.fwd();
    let op = kernel.name;
    let Dims { n, d, c, l } = dims;
    let [di, ci, li] = ints(op, kernels, dims)?;
    check_all(op, &[("q", q.len(), [n, d, l]), ("k", kk.len(), [n, d, l]), ("v", v.len(), [n, c, l])])?;
    check_all(op, &[("out", out.len(), [n, c, l]), ("lse", lse.len(), [n, 1, l])])?;
    let args = [Arg::Ptr(q.ptr()), Arg::Ptr(kk.ptr()), Arg::Ptr(v.ptr()), Arg::Ptr(out.ptr_mut()), Arg::Ptr(lse.ptr_mut()), Arg::I32(di), Arg::I32(ci), Arg::I32(li)];
    launch(dev, kernel, kernels.fwd_config(dims), &args)
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

/// (dq, dk, dv) from [`Saved`] on `kernels`: delta = rowsum(dout * out) (danet.cu, both), then
/// one launch for the three gradients, each recomputing the attention tile by tile from q, k and lse.
pub fn pam_bwd(dev: &CudaDevice, kernels: PamKernels, s: &Saved, dims: Dims, dq: &mut GpuBuffer, dk: &mut GpuBuffer, dv: &mut GpuBuffer) -> Result<()> {
    let kernel = kernels.bwd();
    let op = kernel.name;
    let Dims { n, d, c, l } = dims;
    let [di, ci, li] = ints(op, kernels, dims)?;
    let (qd, cl) = ([n, d, l], [n, c, l]);
    check_all(op, &[("q", s.q.len(), qd), ("k", s.k.len(), qd), ("v", s.v.len(), cl), ("out", s.out.len(), cl)])?;
    check_all(op, &[("lse", s.lse.len(), [n, 1, l]), ("dout", s.dout.len(), cl)])?;
    check_all(op, &[("dq", dq.len(), qd), ("dk", dk.len(), qd), ("dv", dv.len(), cl)])?;
    let mut delta = dev.alloc(n * l)?;
    let delta_cfg = LaunchConfig { grid_dim: (l.div_ceil(DELTA_TILE) as u32, n as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let args = [Arg::Ptr(s.dout.ptr()), Arg::Ptr(s.out.ptr()), Arg::Ptr(delta.ptr_mut()), Arg::I32(ci), Arg::I32(li)];
    launch(dev, k::PAM_BWD_DELTA, delta_cfg, &args)?;
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
    launch(dev, kernel, kernels.bwd_config(dims), &args)
}

impl PositionKernels for Cuda {
    fn pam_fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, dims: Dims) -> Result<(Storage, Tensor)> {
        let dev = device(OP, q)?;
        let kernels = PamKernels::choose(dev.precision(), dims);
        let (mut out, mut lse) = (dev.alloc(dims.n * dims.c * dims.l)?, dev.alloc(dims.n * dims.l)?);
        let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
        pam_fwd(&dev, kernels, sq.as_cuda(OP)?, sk.as_cuda(OP)?, sv.as_cuda(OP)?, dims, &mut out, &mut lse)?;
        Ok((Storage::Cuda(out), tensor(lse, [dims.n, dims.l])?))
    }

    fn pam_bwd(&self, g: &Tensor, [q, k, v]: [&Tensor; 3], out: &Tensor, lse: &Tensor, dims: Dims) -> Result<[Tensor; 3]> {
        let dev = device(OP, g)?;
        let kernels = PamKernels::choose(dev.precision(), dims);
        let (mut dq, mut dk, mut dv) = (dev.alloc(q.numel())?, dev.alloc(k.numel())?, dev.alloc(v.numel())?);
        let (sg, sq, sk, sv, so, sl) = (g.storage(), q.storage(), k.storage(), v.storage(), out.storage(), lse.storage());
        let saved = Saved { q: sq.as_cuda(OP)?, k: sk.as_cuda(OP)?, v: sv.as_cuda(OP)?, out: so.as_cuda(OP)?, lse: sl.as_cuda(OP)?, dout: sg.as_cuda(OP)? };
        pam_bwd(&dev, kernels, &saved, dims, &mut dq, &mut dk, &mut dv)?;
        Ok([tensor(dq, q.shape().clone())?, tensor(dk, k.shape().clone())?, tensor(dv, v.shape().clone())?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TF32 path at tf32 and bf16 up to D = 128, fp32 beyond and at fp32.
    #[test]
    fn the_tensor_cores_take_tf32_and_bf16_up_to_d_128() {
        let dims = |d| Dims { n: 2, d, c: 512, l: 256 };
        for p in [Precision::Tf32, Precision::Bf16] {
            assert_eq!(PamKernels::choose(p, dims(64)), PamKernels::Tf32);
            assert_eq!(PamKernels::choose(p, dims(TC_MAX_D)), PamKernels::Tf32);
            assert_eq!(PamKernels::choose(p, dims(TC_MAX_D + 1)), PamKernels::Fp32);
        }
        assert_eq!(PamKernels::choose(Precision::Fp32, dims(64)), PamKernels::Fp32);
    }

    /// At the paper's DANet shape (D = 64) three forward blocks fit an SM's 227 KB (with the 1 KB
    /// the hardware keeps per block): its 320 blocks in one wave of 396; the largest D fits one.
    #[test]
    fn tf32_shared_memory_fits_an_sm() {
        assert_eq!(tc_smem_floats(64, false), 64 * 64 + 2 * (64 * 32 + 128 * 32 + 64));
        assert!(3 * (tc_smem_floats(64, false) * 4 + 1024) <= 227 * 1024, "{}", tc_smem_floats(64, false) * 4);
        assert!(3 * (tc_smem_floats(64, true) * 4 + 1024) <= 227 * 1024, "{}", tc_smem_floats(64, true) * 4);
        assert!(tc_smem_floats(TC_MAX_D, true) * 4 + 1024 <= 227 * 1024);
        // D rounds up to the 8-wide k-steps: D = 5 takes what D = 8 takes.
        assert_eq!(tc_smem_floats(5, true), tc_smem_floats(8, true));
        assert!(tc_smem_floats(64, true) >= tc_smem_floats(64, false));
    }

    #[test]
    fn the_tf32_kernels_refuse_d_over_128() {
        let dims = |d| Dims { n: 2, d, c: 16, l: 9 };
        let e = ints("pam_fwd_tf32", PamKernels::Tf32, dims(129)).unwrap_err().to_string();
        assert!(e.contains("pam_fwd_tf32") && e.contains("129"), "{e}");
        assert!(ints("pam_fwd_f32", PamKernels::Fp32, dims(4096)).is_ok());
    }
}
