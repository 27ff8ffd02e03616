//! The fused CSA ops on the GPU: the checked launch wrappers of kernels/attention.cu, the CUDA
//! side of [`CsaKernels`], and the pair gates of SE (`se_pair_fwd`, `se_pair_bwd`) and ECA
//! (`eca_pair_fwd`, `eca_pair_bwd`); neither yet run on a GPU.

use super::{CsaKernels, ECA_PAIR, GATE, POOL, SE_PAIR};
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, THREADS, check_len, grid_1d, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};
use cudarc::driver::LaunchConfig;

/// The tile of one block of the two-way reductions (attention.cu's TILE_C, TILE_P).
const TILE_C: usize = 32;
const TILE_P: usize = 128;
// The kernels' CSA_WARPS: one warp per 32 threads of a block.
const _: () = assert!(THREADS == 256);

/// The tiled kernels' grid over (pixel tiles, channel chunks, N), its partial-sum buffers (one
/// per channel and pixel tile, one per pixel and channel chunk) and their int arguments.
struct Tiles {
    n: i32,
    c: i32,
    hw: i32,
    ptiles: i32,
    chunks: i32,
    cfg: LaunchConfig,
    part_c: GpuBuffer,
    part_p: GpuBuffer,
}

impl Tiles {
    fn new(dev: &CudaDevice, op: &'static str, [n, c, h, w]: [usize; 4]) -> Result<Tiles> {
        let hw = h * w;
        let (ptiles, chunks) = (hw.div_ceil(TILE_P), c.div_ceil(TILE_C));
        to_i32(op, "elements", n * c * hw)?;
        to_i32(op, "outputs", n * (c + hw))?;
        to_i32(op, "partial sums", (n * c * ptiles).max(n * chunks * hw))?;
        let cfg = LaunchConfig {
            grid_dim: (ptiles as u32, chunks as u32, n as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        Ok(Tiles {
            n: n as i32,
            c: c as i32,
            hw: hw as i32,
            ptiles: ptiles as i32,
            chunks: chunks as i32,
            cfg,
            part_c: dev.alloc(n * c * ptiles)?,
            part_p: dev.alloc(n * chunks * hw)?,
        })
    }

    /// Adds the partial sums into `out_c[n * c_stride + c_off + ch]` (scaled by `scale_c`) and
    /// `out_p[n * p_stride + p_off + p]` (scaled by `scale_p`); the outputs may be one buffer.
    #[allow(clippy::too_many_arguments)]
    fn finish(&self, dev: &CudaDevice, out_c: u64, out_p: u64, [c_off, c_stride, p_off, p_stride]: [i32; 4], scale_c: f32, scale_p: f32) -> Result<()> {
        let outputs = (self.n as usize) * (self.c + self.hw) as usize;
        let args = [
            Arg::Ptr(self.part_c.ptr()),
            Arg::Ptr(self.part_p.ptr()),
            Arg::Ptr(out_c),
            Arg::Ptr(out_p),
            Arg::I32(self.n),
            Arg::I32(self.c),
            Arg::I32(self.hw),
            Arg::I32(self.ptiles),
            Arg::I32(self.chunks),
            Arg::I32(c_off),
            Arg::I32(c_stride),
            Arg::I32(p_off),
            Arg::I32(p_stride),
            Arg::F32(scale_c),
            Arg::F32(scale_p),
        ];
        launch(dev, k::CSA_FINISH, grid_1d(dev, outputs), &args)
    }
}

/// From f (`shape` (N,C,H,W)), `out` (N, C + H*W): per image the channel means over pixels, then
/// the pixel means over channels. Two launches: the tiles' partial sums, then their sums.
pub fn csa_pool_fwd(dev: &CudaDevice, f: &GpuBuffer, shape: [usize; 4], out: &mut GpuBuffer) -> Result<()> {
    let op = k::CSA_POOL_FWD.name;
    let [n, c, h, w] = shape;
    check_len(op, "f", f.len(), n * c * h * w, &shape)?;
    check_len(op, "out", out.len(), n * (c + h * w), &[n, c + h * w])?;
    let mut t = Tiles::new(dev, op, shape)?;
    let args = [Arg::Ptr(f.ptr()), Arg::Ptr(t.part_c.ptr_mut()), Arg::Ptr(t.part_p.ptr_mut()), Arg::I32(t.c), Arg::I32(t.hw)];
    launch(dev, k::CSA_POOL_FWD, t.cfg, &args)?;
    let o = out.ptr_mut();
    let row = t.c + t.hw;
    t.finish(dev, o, o, [0, row, t.c, row], 1.0 / (h * w) as f32, 1.0 / c as f32)
}

/// df (`shape` (N,C,H,W)) from the packed gradient `g` (N, C + H*W) of [`csa_pool_fwd`]'s output.
pub fn csa_pool_bwd(dev: &CudaDevice, g: &GpuBuffer, shape: [usize; 4], df: &mut GpuBuffer) -> Result<()> {
    let op = k::CSA_POOL_BWD.name;
    let [n, c, h, w] = shape;
    check_len(op, "g", g.len(), n * (c + h * w), &[n, c + h * w])?;
    check_len(op, "df", df.len(), n * c * h * w, &shape)?;
    to_i32(op, "elements", df.len().max(g.len()))?;
    let args = [
        Arg::Ptr(g.ptr()),
        Arg::Ptr(df.ptr_mut()),
        Arg::I32(n as i32),
        Arg::I32(c as i32),
        Arg::I32((h * w) as i32),
        Arg::F32(1.0 / (h * w) as f32),
        Arg::F32(1.0 / c as f32),
    ];
    launch(dev, k::CSA_POOL_BWD, grid_1d(dev, elementwise_items(shape)), &args)
}

/// The steps of the element-wise kernels: groups of 4 elements when a row (H*W) holds whole
/// groups, single elements otherwise (attention.cu).
fn elementwise_items([n, c, h, w]: [usize; 4]) -> usize {
    let len = n * c * h * w;
    if (h * w) % 4 == 0 { len / 4 } else { len }
}

/// Checks the gate's operands: f and y (N,C,H,W), c (N,C), s (N,H*W).
fn check_gate(op: &'static str, [n, c, h, w]: [usize; 4], bufs: [(&str, usize); 3]) -> Result<()> {
    let [(fname, f), (cname, cl), (sname, sl)] = bufs;
    check_len(op, fname, f, n * c * h * w, &[n, c, h, w])?;
    check_len(op, cname, cl, n * c, &[n, c, 1, 1])?;
    check_len(op, sname, sl, n * h * w, &[n, 1, h, w])?;
    to_i32(op, "elements", n * c * h * w).map(|_| ())
}

/// y = (f * c\[n,ch\]) * s\[n,p\] for f (`shape` (N,C,H,W)), c (N,C,1,1), s (N,1,H,W).
pub fn csa_gate_fwd(dev: &CudaDevice, f: &GpuBuffer, c: &GpuBuffer, s: &GpuBuffer, shape: [usize; 4], y: &mut GpuBuffer) -> Result<()> {
    let op = k::CSA_GATE_FWD.name;
    check_gate(op, shape, [("f", f.len()), ("c", c.len()), ("s", s.len())])?;
    check_len(op, "y", y.len(), f.len(), &shape)?;
    let [n, ch, h, w] = shape;
    let args = [
        Arg::Ptr(f.ptr()),
        Arg::Ptr(c.ptr()),
        Arg::Ptr(s.ptr()),
        Arg::Ptr(y.ptr_mut()),
        Arg::I32(n as i32),
        Arg::I32(ch as i32),
        Arg::I32((h * w) as i32),
    ];
    launch(dev, k::CSA_GATE_FWD, grid_1d(dev, elementwise_items(shape)), &args)
}

/// The gate's backward from dy: df = (dy * s) * c, dc = sum over pixels of (dy * s) * f,
/// ds = sum over channels of dy * (f * c). One pass over dy and f, then the partial sums' sums.
#[allow(clippy::too_many_arguments)]
pub fn csa_gate_bwd(
    dev: &CudaDevice,
    dy: &GpuBuffer,
    f: &GpuBuffer,
    c: &GpuBuffer,
    s: &GpuBuffer,
    shape: [usize; 4],
    df: &mut GpuBuffer,
    dc: &mut GpuBuffer,
    ds: &mut GpuBuffer,
) -> Result<()> {
    let op = k::CSA_GATE_BWD.name;
    check_gate(op, shape, [("f", f.len()), ("c", c.len()), ("s", s.len())])?;
    check_gate(op, shape, [("df", df.len()), ("dc", dc.len()), ("ds", ds.len())])?;
    check_len(op, "dy", dy.len(), f.len(), &shape)?;
    let mut t = Tiles::new(dev, op, shape)?;
    let args = [
        Arg::Ptr(dy.ptr()),
        Arg::Ptr(f.ptr()),
        Arg::Ptr(c.ptr()),
        Arg::Ptr(s.ptr()),
        Arg::Ptr(df.ptr_mut()),
        Arg::Ptr(t.part_c.ptr_mut()),
        Arg::Ptr(t.part_p.ptr_mut()),
        Arg::I32(t.c),
        Arg::I32(t.hw),
    ];
    launch(dev, k::CSA_GATE_BWD, t.cfg, &args)?;
    t.finish(dev, dc.ptr_mut(), ds.ptr_mut(), [0, t.c, 0, t.hw], 1.0, 1.0)
}

impl CsaKernels for Cuda {
    fn csa_pool_fwd(&self, f: &Tensor) -> Result<Storage> {
        let dev = device(POOL, f)?;
        let shape = f.shape().nchw();
        let mut out = dev.alloc(shape[0] * (shape[1] + shape[2] * shape[3]))?;
        let sf = f.storage();
        csa_pool_fwd(&dev, sf.as_cuda(POOL)?, shape, &mut out)?;
        Ok(Storage::Cuda(out))
    }

    fn csa_pool_bwd(&self, g: &Tensor, f_shape: &Shape) -> Result<Tensor> {
        let dev = device(POOL, g)?;
        let mut df = dev.alloc(f_shape.numel())?;
        let sg = g.storage();
        csa_pool_bwd(&dev, sg.as_cuda(POOL)?, f_shape.nchw(), &mut df)?;
        tensor(df, f_shape.clone())
    }

    fn csa_gate_fwd(&self, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<Storage> {
        let dev = device(GATE, f)?;
        let mut y = dev.alloc(f.numel())?;
        let (sf, sc, ss) = (f.storage(), c.storage(), s.storage());
        csa_gate_fwd(&dev, sf.as_cuda(GATE)?, sc.as_cuda(GATE)?, ss.as_cuda(GATE)?, f.shape().nchw(), &mut y)?;
        Ok(Storage::Cuda(y))
    }

    fn csa_gate_bwd(&self, g: &Tensor, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<[Tensor; 3]> {
        let dev = device(GATE, g)?;
        let (mut df, mut dc, mut ds) = (dev.alloc(f.numel())?, dev.alloc(c.numel())?, dev.alloc(s.numel())?);
        let (sg, sf, sc, ss) = (g.storage(), f.storage(), c.storage(), s.storage());
        let bufs = (sg.as_cuda(GATE)?, sf.as_cuda(GATE)?, sc.as_cuda(GATE)?, ss.as_cuda(GATE)?);
        csa_gate_bwd(&dev, bufs.0, bufs.1, bufs.2, bufs.3, f.shape().nchw(), &mut df, &mut dc, &mut ds)?;
        Ok([tensor(df, f.shape().clone())?, tensor(dc, c.shape().clone())?, tensor(ds, s.shape().clone())?])
    }
}

/// SE's pair gate forward ([`Tensor::se_pair_gate`], shapes checked there): the gate (N, C, 1, 1)
/// as storage, the hidden activations (2N, HD) and both images' gates (2N, C) for the backward.
/// Two launches: se_hidden_f32 (a warp per row and hidden unit), se_gate_f32 (a thread per image
/// and channel).
pub(super) fn se_pair_fwd(pa: &Tensor, pb: &Tensor, w: [&Tensor; 4], [n, c, hd]: [usize; 3]) -> Result<(Storage, Tensor, Tensor)> {
    let dev = device(SE_PAIR, pa)?;
    let [pa, pb, w1, b1, w2, b2] = cuda_ptrs(SE_PAIR, [pa, pb, w[0], w[1], w[2], w[3]])?;
    let dims = se_dims(SE_PAIR, [n, c, hd])?;
    let (mut hid, mut gates, mut out) = (dev.alloc(2 * n * hd)?, dev.alloc(2 * n * c)?, dev.alloc(n * c)?);
    let args = [Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(w1), Arg::Ptr(b1), Arg::Ptr(hid.ptr_mut())];
    launch(&dev, k::SE_HIDDEN, grid_1d(&dev, 32 * 2 * n * hd), &[&args[..], &dims].concat())?;
    let args = [Arg::Ptr(hid.ptr()), Arg::Ptr(w2), Arg::Ptr(b2), Arg::Ptr(gates.ptr_mut()), Arg::Ptr(out.ptr_mut())];
    launch(&dev, k::SE_GATE, grid_1d(&dev, n * c), &[&args[..], &dims].concat())?;
    Ok((Storage::Cuda(out), tensor(hid, [2 * n, hd])?, tensor(gates, [2 * n, c])?))
}

/// (dpa, dpb, dw1, db1, dw2, db2) from the gate's gradient `g` (N, C, 1, 1), with what the
/// forward kept. Three launches: se_bwd_gate_f32 (dz, dw2, db2; a warp per channel),
/// se_bwd_hidden_f32 (dz1; a block per row), se_bwd_input_f32 (dpa, dpb, dw1, db1).
pub(super) fn se_pair_bwd(g: &Tensor, [pa, pb]: [&Tensor; 2], w1: &Tensor, w2: &Tensor, [hid, gates]: [&Tensor; 2], [n, c, hd]: [usize; 3]) -> Result<[Tensor; 6]> {
    let dev = device(SE_PAIR, g)?;
    let dims = se_dims(SE_PAIR, [n, c, hd])?;
    let [g, pa, pb, w1, w2, hid, gates] = cuda_ptrs(SE_PAIR, [g, pa, pb, w1, w2, hid, gates])?;
    let (mut dz, mut dz1) = (dev.alloc(2 * n * c)?, dev.alloc(2 * n * hd)?);
    let (mut dpa, mut dpb, mut dw1, mut db1, mut dw2, mut db2) =
        (dev.alloc(n * c)?, dev.alloc(n * c)?, dev.alloc(hd * c)?, dev.alloc(hd)?, dev.alloc(c * hd)?, dev.alloc(c)?);
    let args = [Arg::Ptr(g), Arg::Ptr(gates), Arg::Ptr(hid), Arg::Ptr(dz.ptr_mut()), Arg::Ptr(dw2.ptr_mut()), Arg::Ptr(db2.ptr_mut())];
    launch(&dev, k::SE_BWD_GATE, grid_1d(&dev, 32 * c), &[&args[..], &dims].concat())?;
    let cfg = LaunchConfig { grid_dim: (2 * n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let args = [Arg::Ptr(dz.ptr()), Arg::Ptr(w2), Arg::Ptr(hid), Arg::Ptr(dz1.ptr_mut()), dims[1], dims[2]];
    launch(&dev, k::SE_BWD_HIDDEN, cfg, &args)?;
    let args = [
        Arg::Ptr(dz1.ptr()),
        Arg::Ptr(pa),
        Arg::Ptr(pb),
        Arg::Ptr(w1),
        Arg::Ptr(dpa.ptr_mut()),
        Arg::Ptr(dpb.ptr_mut()),
        Arg::Ptr(dw1.ptr_mut()),
        Arg::Ptr(db1.ptr_mut()),
    ];
    launch(&dev, k::SE_BWD_INPUT, grid_1d(&dev, 2 * n * c + hd * c + hd), &[&args[..], &dims].concat())?;
    Ok([tensor(dpa, [n, c, 1, 1])?, tensor(dpb, [n, c, 1, 1])?, tensor(dw1, [hd, c])?, tensor(db1, [hd])?, tensor(dw2, [c, hd])?, tensor(db2, [c])?])
}

/// ECA's pair gate (N, C, 1, 1) and the gates (2N, C) the backward reads, from the pooled
/// features pa, pb (N, C, 1, 1) and the k taps `w`: one launch (eca_gate_f32).
pub(super) fn eca_pair_fwd(pa: &Tensor, pb: &Tensor, w: &Tensor, [n, c, k]: [usize; 3]) -> Result<(Storage, Tensor)> {
    let dev = device(ECA_PAIR, pa)?;
    let dims = eca_dims([n, c, k])?;
    let [pa, pb, w] = cuda_ptrs(ECA_PAIR, [pa, pb, w])?;
    let (mut gates, mut out) = (dev.alloc(2 * n * c)?, dev.alloc(n * c)?);
    let args = [Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(w), Arg::Ptr(gates.ptr_mut()), Arg::Ptr(out.ptr_mut())];
    launch(&dev, k::ECA_GATE, grid_1d(&dev, n * c), &[&args[..], &dims].concat())?;
    Ok((Storage::Cuda(out), tensor(gates, [2 * n, c])?))
}

/// (dpa, dpb, dw) from the gate's gradient `g` (N, C, 1, 1) and the forward's gates: two
/// launches (eca_bwd_input_f32, eca_bwd_weight_f32; a warp per tap).
pub(super) fn eca_pair_bwd(g: &Tensor, [pa, pb]: [&Tensor; 2], w: &Tensor, gates: &Tensor, [n, c, k]: [usize; 3]) -> Result<[Tensor; 3]> {
    let dev = device(ECA_PAIR, g)?;
    let dims = eca_dims([n, c, k])?;
    let w_shape = w.shape().clone();
    let [g, pa, pb, w, gates] = cuda_ptrs(ECA_PAIR, [g, pa, pb, w, gates])?;
    let (mut dpa, mut dpb, mut dw) = (dev.alloc(n * c)?, dev.alloc(n * c)?, dev.alloc(k)?);
    let args = [Arg::Ptr(g), Arg::Ptr(gates), Arg::Ptr(w), Arg::Ptr(dpa.ptr_mut()), Arg::Ptr(dpb.ptr_mut())];
    launch(&dev, k::ECA_BWD_INPUT, grid_1d(&dev, 2 * n * c), &[&args[..], &dims].concat())?;
    let args = [Arg::Ptr(g), Arg::Ptr(gates), Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(dw.ptr_mut())];
    launch(&dev, k::ECA_BWD_WEIGHT, grid_1d(&dev, 32 * k), &[&args[..], &dims].concat())?;
    Ok([tensor(dpa, [n, c, 1, 1])?, tensor(dpb, [n, c, 1, 1])?, tensor(dw, w_shape)?])
}

/// The ECA kernels' (N, C, k) arguments, refused when an index space they walk passes i32.
fn eca_dims([n, c, k]: [usize; 3]) -> Result<[Arg<'static>; 3]> {
    to_i32(ECA_PAIR, "index space", 2 * n * c + 32 * k)?;
    Ok([Arg::I32(n as i32), Arg::I32(c as i32), Arg::I32(k as i32)])
}

/// The device addresses of `op`'s tensors, each on the GPU (an error naming `op` otherwise; the
/// caller's borrows keep them alive through the launches).
fn cuda_ptrs<const K: usize>(op: &'static str, tensors: [&Tensor; K]) -> Result<[u64; K]> {
    let mut ptrs = [0; K];
    for (p, t) in ptrs.iter_mut().zip(tensors) {
        *p = t.storage().as_cuda(op)?.ptr();
    }
    Ok(ptrs)
}

/// The SE kernels' (N, C, HD) arguments, refused when an index space they walk passes i32.
fn se_dims(op: &'static str, [n, c, hd]: [usize; 3]) -> Result<[Arg<'static>; 3]> {
    to_i32(op, "index space", (32 * 2 * n * hd).max(2 * n * c + hd * c + hd).max(32 * c))?;
    Ok([Arg::I32(n as i32), Arg::I32(c as i32), Arg::I32(hd as i32)])
}
