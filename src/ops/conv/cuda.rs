//! Convolutions on the GPU: the 2-D atrous convolution (forward, input gradient, weight
//! gradient; implicit GEMM in kernels/conv2d.cu, tensor cores in kernels/conv2d_tc.cu) and the
//! 1-D convolution across channels (ECA, kernels/conv1d.cu): the checked launch wrappers, the
//! geometry struct the kernels share, and the CUDA side of [`ConvKernels`].

use super::{CONV1D, CONV2D, ConvKernels};
use crate::backend::cuda::elementwise::fill;
use crate::backend::cuda::kernels::{self as k, Kernel};
use crate::backend::cuda::launch::{Arg, check_len, grid_1d, grid_per_item, launch, split_reduction, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer, nd};
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::tensor::{Shape, Storage, Tensor};
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// Convolution geometry of conv2d.cu (`struct ConvGeom`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub r: i32,
    pub s: i32,
    pub oh: i32,
    pub ow: i32,
    pub stride: i32,
    pub pad: i32,
    pub dil: i32,
}

// SAFETY: a plain #[repr(C)] struct of i32 whose layout matches the kernels' `struct ConvGeom`.
unsafe impl DeviceRepr for ConvGeom {}

impl ConvKernels for Cuda {
    fn conv2d_fwd(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, sh: &Conv2dShape) -> Result<Storage> {
        let dev = device(CONV2D, x)?;
        let (sx, sw) = (x.storage(), w.storage());
        let sb = bias.map(|b| b.storage());
        let bb = sb.as_ref().map(|s| s.as_cuda(CONV2D)).transpose()?;
        let mut y = dev.alloc(sh.output_len())?;
        conv2d_fwd(&dev, sh, dev.precision(), sx.as_cuda(CONV2D)?, sw.as_cuda(CONV2D)?, bb, &mut y)?;
        Ok(Storage::Cuda(y))
    }

    fn conv2d_bwd_input(&self, dy: &Tensor, w: &Tensor, sh: &Conv2dShape) -> Result<Tensor> {
        conv2d_grad(sh, [dy, w], [sh.n, sh.c, sh.h, sh.w], conv2d_bwd_input)
    }

    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, sh: &Conv2dShape) -> Result<Tensor> {
        conv2d_grad(sh, [x, dy], [sh.k, sh.c, sh.r, sh.s], conv2d_bwd_weight)
    }

    /// By the reduction kernels.
    fn conv2d_bwd_bias(&self, dy: &Tensor, sh: &Conv2dShape) -> Result<Tensor> {
        dy.sum_to(&Shape::from([1, sh.k, 1, 1]))?.reshape([sh.k])
    }

    fn conv1d_fwd(&self, x: &Tensor, w: &Tensor, n: usize, c: usize) -> Result<Storage> {
        let dev = device(CONV1D, x)?;
        let (sx, sw) = (x.storage(), w.storage());
        let mut y = dev.alloc(n * c)?;
        conv1d_fwd(&dev, sx.as_cuda(CONV1D)?, n, c, sw.as_cuda(CONV1D)?, &mut y)?;
        Ok(Storage::Cuda(y))
    }

    fn conv1d_bwd(&self, x: &Tensor, w: &Tensor, dy: &Tensor, n: usize, c: usize) -> Result<(Tensor, Tensor)> {
        let dev = device(CONV1D, x)?;
        let (sx, sw, sg) = (x.storage(), w.storage(), dy.storage());
        let mut dx = dev.alloc(n * c)?;
        let mut dw = dev.alloc(w.numel())?;
        let (xb, gb, wb) = (sx.as_cuda(CONV1D)?, sg.as_cuda(CONV1D)?, sw.as_cuda(CONV1D)?);
        conv1d_bwd(&dev, xb, gb, n, c, wb, &mut dx, &mut dw)?;
        Ok((tensor(dx, x.shape().clone())?, tensor(dw, w.shape().clone())?))
    }
}

/// The GEMM tile of conv2d.cu (BM = BN = 64, BK = 16, 256 threads).
const TILE: usize = 64;
const TILE_K: usize = 16;
const TILE_THREADS: u32 = 256;

/// The CPU backend's convolution geometry serves the GPU too: one description of a convolution.
pub use crate::backend::cpu::conv::ConvGeometry as Conv2dShape;

/// Buffer lengths and the kernel's i32 geometry, which only the GPU wrappers need.
impl Conv2dShape {
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn weight_len(&self) -> usize {
        self.k * self.c * self.r * self.s
    }
    pub fn output_len(&self) -> usize {
        self.n * self.k * self.out_h() * self.out_w()
    }

    /// The kernel's geometry, or why this convolution cannot run.
    pub fn geom(&self, op: &'static str) -> Result<ConvGeom> {
        let dims = [self.n, self.c, self.h, self.w, self.k, self.r, self.s, self.stride, self.dilation];
        if dims.contains(&0) {
            return Err(Error::shape(op, format!("zero size or step in {self:?}")));
        }
        let span_h = self.dilation * (self.r - 1) + 1;
        let span_w = self.dilation * (self.s - 1) + 1;
        if self.h + 2 * self.pad < span_h || self.w + 2 * self.pad < span_w {
            return Err(Error::shape(
                op,
                format!("input {}x{} with padding {} is smaller than the dilated kernel {span_h}x{span_w}", self.h, self.w, self.pad),
            ));
        }
        let most = self.input_len().max(self.output_len()).max(self.weight_len()).max(self.n * self.h * self.w * self.r * self.s);
        to_i32(op, "elements", most)?;
        let i = |v: usize| v as i32;
        Ok(ConvGeom {
            n: i(self.n),
            c: i(self.c),
            h: i(self.h),
            w: i(self.w),
            k: i(self.k),
            r: i(self.r),
            s: i(self.s),
            oh: i(self.out_h()),
            ow: i(self.out_w()),
            stride: i(self.stride),
            pad: i(self.pad),
            dil: i(self.dilation),
        })
    }
}

/// One of the three GEMMs of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    Forward,
    InputGrad,
    WeightGrad,
}

impl ConvPass {
    /// (M, N, reduction) of this pass's GEMM (kernels/conv2d.cu's header).
    pub fn gemm(self, sh: &Conv2dShape) -> (usize, usize, usize) {
        let (rs, out_pix, in_pix) = (sh.r * sh.s, sh.n * sh.out_h() * sh.out_w(), sh.n * sh.h * sh.w);
        match self {
            ConvPass::Forward => (sh.k, out_pix, sh.c * rs),
            ConvPass::InputGrad => (sh.c, in_pix, sh.k * rs),
            ConvPass::WeightGrad => (sh.k, sh.c * rs, out_pix),
        }
    }
}

/// The tensor-core kernels' output tiles (BM x BN), in the order of [`TC_KERNELS`].
pub const TC_TILES: [(usize, usize); 3] = [(128, 128), (64, 128), (128, 64)];
/// Reduction elements per shared-memory tile: 16 in TF32, 32 in BF16.
fn tc_tile_k(precision: Precision) -> usize {
    if precision == Precision::Bf16 { 32 } else { 16 }
}

/// kernels/conv2d_tc.cu by pass, then precision (tf32, bf16), then tile ([`TC_TILES`]).
const TC_KERNELS: [[[Kernel; 3]; 2]; 3] = [
    [
        [k::CONV2D_FWD_128X128_TF32, k::CONV2D_FWD_64X128_TF32, k::CONV2D_FWD_128X64_TF32],
        [k::CONV2D_FWD_128X128_BF16, k::CONV2D_FWD_64X128_BF16, k::CONV2D_FWD_128X64_BF16],
    ],
    [
        [k::CONV2D_BWD_INPUT_128X128_TF32, k::CONV2D_BWD_INPUT_64X128_TF32, k::CONV2D_BWD_INPUT_128X64_TF32],
        [k::CONV2D_BWD_INPUT_128X128_BF16, k::CONV2D_BWD_INPUT_64X128_BF16, k::CONV2D_BWD_INPUT_128X64_BF16],
    ],
    [
        [k::CONV2D_BWD_WEIGHT_128X128_TF32, k::CONV2D_BWD_WEIGHT_64X128_TF32, k::CONV2D_BWD_WEIGHT_128X64_TF32],
        [k::CONV2D_BWD_WEIGHT_128X128_BF16, k::CONV2D_BWD_WEIGHT_64X128_BF16, k::CONV2D_BWD_WEIGHT_128X64_BF16],
    ],
];

/// What runs one pass of one convolution: the kernel, its output tile and how the reduction is
/// split over gridDim.z (`chunk` elements each; the weight gradient only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    pub kernel: Kernel,
    pub tile: (usize, usize),
    pub splits: usize,
    pub chunk: usize,
}

impl ConvPlan {
    pub fn grid(&self, sh: &Conv2dShape, pass: ConvPass) -> (usize, usize, usize) {
        let (m, n, _) = pass.gemm(sh);
        (n.div_ceil(self.tile.1), m.div_ceil(self.tile.0), self.splits)
    }
}

/// The weight gradient's split of its pixel reduction: about two blocks per SM, each split at
/// least 4 reduction tiles long and a whole number of them.
fn weight_grad_split(blocks: usize, red: usize, tile_k: usize, sm_count: usize) -> (usize, usize) {
    split_reduction(blocks, 2 * sm_count, red, 4 * tile_k, tile_k)
}

/// The tensor-core precisions, in the order of [`TC_KERNELS`]' second index.
const TC_PRECISIONS: [Precision; 2] = [Precision::Tf32, Precision::Bf16];

/// The kernel for a pass at a precision. fp32 runs conv2d.cu's SIMT kernels (64 x 64 tiles); the
/// tensor-core kernels take every shape (tails, padding and strides load zeros), and the tile is
/// the one whose last wave wastes least: a 128 x 128 block fills an SM alone, the two smaller
/// tiles run two blocks per SM at about nine tenths of its rate.
pub fn plan(sh: &Conv2dShape, pass: ConvPass, precision: Precision, sm_count: usize) -> ConvPlan {
    let (m, n, red) = pass.gemm(sh);
    let sm = sm_count.max(1);
    let Some(prec) = TC_PRECISIONS.iter().position(|p| *p == precision) else {
        let kernel = [k::CONV2D_FWD, k::CONV2D_BWD_INPUT, k::CONV2D_BWD_WEIGHT][pass as usize];
        let (splits, chunk) = match pass {
            ConvPass::WeightGrad => weight_grad_split(m.div_ceil(TILE) * n.div_ceil(TILE), red, TILE_K, sm),
            _ => (1, red),
        };
        return ConvPlan { kernel, tile: (TILE, TILE), splits, chunk };
    };
    let cost = |&(i, (bm, bn)): &(usize, (usize, usize))| {
        let blocks = m.div_ceil(bm) * n.div_ceil(bn);
        let per_sm = if i == 0 { 1 } else { 2 };
        let waves = blocks.div_ceil(sm * per_sm);
        let rate = if i == 0 { 1.0 } else { 0.9 };
        (waves * bm * bn * per_sm) as f64 / rate
    };
    let best = TC_TILES.iter().copied().enumerate().min_by(|a, b| cost(a).total_cmp(&cost(b))).map_or(0, |(i, _)| i);
    tc_plan(sh, pass, prec, best, sm)
}

/// The tensor-core plan with tile `TC_TILES[tile]`; `prec` indexes (tf32, bf16).
fn tc_plan(sh: &Conv2dShape, pass: ConvPass, prec: usize, tile: usize, sm: usize) -> ConvPlan {
    let (m, n, red) = pass.gemm(sh);
    let tile_k = tc_tile_k(TC_PRECISIONS[prec]);
    let (bm, bn) = TC_TILES[tile];
    let (splits, chunk) = match pass {
        ConvPass::WeightGrad => weight_grad_split(m.div_ceil(bm) * n.div_ceil(bn), red, tile_k, sm),
        _ => (1, red),
    };
    ConvPlan { kernel: TC_KERNELS[pass as usize][prec][tile], tile: (bm, bn), splits, chunk }
}

/// Every tensor-core plan of a pass at a precision, one per tile (for tests that run each kernel).
pub fn tc_plans(sh: &Conv2dShape, pass: ConvPass, precision: Precision, sm_count: usize) -> Vec<ConvPlan> {
    let Some(prec) = TC_PRECISIONS.iter().position(|p| *p == precision) else { return Vec::new() };
    (0..TC_TILES.len()).map(|t| tc_plan(sh, pass, prec, t, sm_count.max(1))).collect()
}

/// COSEG_KERNEL_LOG=1: one line on stderr per distinct convolution, pass and precision, naming
/// the kernel that runs it, so the dispatch is visible.
fn log_plan(sh: &Conv2dShape, pass: ConvPass, precision: Precision, p: &ConvPlan) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if !*ON.get_or_init(|| std::env::var("COSEG_KERNEL_LOG").is_ok_and(|v| v == "1")) {
        return;
    }
    let line = format!(
        "conv2d {pass:?} {precision}: x ({}, {}, {}, {}) w ({}, {}, {}, {}) stride {} pad {} dilation {} -> {} grid {:?}",
        sh.n, sh.c, sh.h, sh.w, sh.k, sh.c, sh.r, sh.s, sh.stride, sh.pad, sh.dilation, p.kernel.name, p.grid(sh, pass)
    );
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&line) {
        eprintln!("{line}");
        seen.push(line);
    }
}

/// Launches `pass` at `precision` with operands `a`, `b` (kernels/conv2d_tc.cu's argument order:
/// forward w, x; input gradient w, dy; weight gradient dy, x) into `out`.
#[allow(clippy::too_many_arguments)]
fn launch_pass(
    dev: &CudaDevice,
    sh: &Conv2dShape,
    pass: ConvPass,
    precision: Precision,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    out: &mut GpuBuffer,
) -> Result<()> {
    let p = plan(sh, pass, precision, dev.sm_count() as usize);
    log_plan(sh, pass, precision, &p);
    launch_plan(dev, sh, pass, &p, a, b, bias, out)
}

/// Runs one plan (from [`plan`] or [`tc_plans`]); operands as [`launch_pass`], each checked
/// against the shape (the one length check of the public wrappers too).
#[allow(clippy::too_many_arguments)]
pub fn launch_plan(
    dev: &CudaDevice,
    sh: &Conv2dShape,
    pass: ConvPass,
    p: &ConvPlan,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    out: &mut GpuBuffer,
) -> Result<()> {
    let g = sh.geom(p.kernel.name)?;
    let (x, w, y) = ([sh.n, sh.c, sh.h, sh.w], [sh.k, sh.c, sh.r, sh.s], [sh.n, sh.k, sh.out_h(), sh.out_w()]);
    let operands = match pass {
        ConvPass::Forward => [("weight", w), ("x", x), ("y", y)],
        ConvPass::InputGrad => [("weight", w), ("dy", y), ("dx", x)],
        ConvPass::WeightGrad => [("dy", y), ("x", x), ("dw", w)],
    };
    for (len, (name, dims)) in [a.len(), b.len(), out.len()].into_iter().zip(operands) {
        check_len(p.kernel.name, name, len, dims.iter().product(), &dims)?;
    }
    let (gx, gy, gz) = p.grid(sh, pass);
    if gx > i32::MAX as usize || gy > 65535 {
        return Err(Error::invalid(p.kernel.name, format!("{sh:?} needs a grid of {gx} x {gy} blocks: too large")));
    }
    if gz > 1 {
        fill(dev, out, 0.0)?; // partial sums are added atomically
    }
    let cfg = LaunchConfig { grid_dim: (gx as u32, gy as u32, gz as u32), block_dim: (TILE_THREADS, 1, 1), shared_mem_bytes: 0 };
    let chunk = Arg::I32(to_i32(p.kernel.name, "reduction", p.chunk)?);
    if p.kernel.module == "conv2d" {
        // conv2d.cu's fp32 kernels take their operands in the order of the math, not (a, b).
        let args = match pass {
            ConvPass::Forward => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(bias.map_or(0, GpuBuffer::ptr)), Arg::Ptr(out.ptr_mut()), Arg::Struct(&g)],
            ConvPass::InputGrad => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(out.ptr_mut()), Arg::Struct(&g)],
            ConvPass::WeightGrad => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(out.ptr_mut()), Arg::Struct(&g), chunk],
        };
        return launch(dev, p.kernel, cfg, &args);
    }
    // The tensor-core input gradient reads the weights as a row-major (C, K*R*S) matrix, so its
    // loads are whole lines: transpose (K, C, R*S) -> (C, K, R*S) first (a weight-sized copy).
    let transposed;
    let a = if pass == ConvPass::InputGrad {
        let rs = sh.r * sh.s;
        let walk = nd::geometry(p.kernel.name, &[sh.c, sh.k, rs], &[rs, sh.c * rs, 1], &[sh.k * rs, rs, 1], 0, 0)?;
        let mut t = dev.alloc(a.len())?;
        nd::copy(dev, a, &mut t, &walk)?;
        transposed = t;
        &transposed
    } else {
        a
    };
    let args = [Arg::Ptr(a.ptr()), Arg::Ptr(b.ptr()), Arg::Ptr(bias.map_or(0, GpuBuffer::ptr)), Arg::Ptr(out.ptr_mut()), Arg::Struct(&g), chunk];
    launch(dev, p.kernel, cfg, &args)
}

/// y (n, k, oh, ow) = conv(x, w) + bias, at `precision`.
pub fn conv2d_fwd(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, x: &GpuBuffer, w: &GpuBuffer, bias: Option<&GpuBuffer>, y: &mut GpuBuffer) -> Result<()> {
    if let Some(b) = bias {
        check_len("conv2d_fwd", "bias", b.len(), sh.k, &[sh.k])?;
    }
    launch_pass(dev, sh, ConvPass::Forward, precision, w, x, bias, y)
}

/// dx (n, c, h, w) from dy and w; dx is overwritten.
pub fn conv2d_bwd_input(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, dy: &GpuBuffer, w: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
    launch_pass(dev, sh, ConvPass::InputGrad, precision, w, dy, None, dx)
}

/// dw (k, c, r, s) from x and dy; dw is overwritten.
pub fn conv2d_bwd_weight(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, x: &GpuBuffer, dy: &GpuBuffer, dw: &mut GpuBuffer) -> Result<()> {
    launch_pass(dev, sh, ConvPass::WeightGrad, precision, dy, x, None, dw)
}

/// A conv2d gradient shaped `dims`, which the launch wrapper `pass` computes from its two operands
/// (on the first one's device).
fn conv2d_grad(
    sh: &Conv2dShape,
    [a, b]: [&Tensor; 2],
    dims: [usize; 4],
    pass: fn(&CudaDevice, &Conv2dShape, Precision, &GpuBuffer, &GpuBuffer, &mut GpuBuffer) -> Result<()>,
) -> Result<Tensor> {
    let dev = device(CONV2D, a)?;
    let (sa, sb) = (a.storage(), b.storage());
    let mut out = dev.alloc(dims.iter().product())?;
    pass(&dev, sh, dev.precision(), sa.as_cuda(CONV2D)?, sb.as_cuda(CONV2D)?, &mut out)?;
    tensor(out, dims)
}

fn conv1d_check(op: &'static str, n: usize, c: usize, taps: usize, w: &GpuBuffer) -> Result<(i32, i32, i32)> {
    if taps % 2 == 0 || n * c == 0 {
        return Err(Error::invalid(op, format!("kernel size {taps} must be odd, input ({n}, {c}) non-empty")));
    }
    check_len(op, "weight", w.len(), taps, &[taps])?;
    to_i32(op, "elements", n * c)?;
    Ok((n as i32, c as i32, taps as i32))
}

/// ECA's convolution across channels: x, y (n, c); w (taps), zero padding (taps - 1) / 2.
pub fn conv1d_fwd(dev: &CudaDevice, x: &GpuBuffer, n: usize, c: usize, w: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
    let op = k::CONV1D_FWD.name;
    let (ni, ci, ki) = conv1d_check(op, n, c, w.len(), w)?;
    check_len(op, "x", x.len(), n * c, &[n, c])?;
    check_len(op, "y", y.len(), n * c, &[n, c])?;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(w.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(ni), Arg::I32(ci), Arg::I32(ki)];
    launch(dev, k::CONV1D_FWD, grid_1d(dev, n * c), &args)
}

/// dx (n, c) and dw (taps) of the channel convolution.
#[allow(clippy::too_many_arguments)]
pub fn conv1d_bwd(
    dev: &CudaDevice,
    x: &GpuBuffer,
    dy: &GpuBuffer,
    n: usize,
    c: usize,
    w: &GpuBuffer,
    dx: &mut GpuBuffer,
    dw: &mut GpuBuffer,
) -> Result<()> {
    let op = "conv1d_bwd_f32";
    let (ni, ci, ki) = conv1d_check(op, n, c, w.len(), w)?;
    for (name, b) in [("x", x), ("dy", dy), ("dx", &*dx)] {
        check_len(op, name, b.len(), n * c, &[n, c])?;
    }
    check_len(op, "dw", dw.len(), w.len(), &[w.len()])?;
    let dims = [Arg::I32(ni), Arg::I32(ci), Arg::I32(ki)];
    let mut a = vec![Arg::Ptr(dy.ptr()), Arg::Ptr(w.ptr()), Arg::Ptr(dx.ptr_mut())];
    a.extend(dims);
    launch(dev, k::CONV1D_BWD_INPUT, grid_1d(dev, n * c), &a)?;
    let mut b = vec![Arg::Ptr(x.ptr()), Arg::Ptr(dy.ptr()), Arg::Ptr(dw.ptr_mut())];
    b.extend(dims);
    launch(dev, k::CONV1D_BWD_WEIGHT, grid_per_item(dev, w.len()), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: usize, c: usize, hw: usize, dil: usize) -> Conv2dShape {
        Conv2dShape { n, c, h: hw, w: hw, k: c, r: 3, s: 3, stride: 1, pad: dil, dilation: dil }
    }

    #[test]
    fn geometry_and_flops_of_the_benchmark_shapes() {
        let s = shape(20, 512, 16, 4);
        assert_eq!((s.out_h(), s.out_w()), (16, 16));
        assert_eq!(s.flops(), 2.0 * 20.0 * 512.0 * 256.0 * 512.0 * 9.0);
        let strided = Conv2dShape { stride: 2, pad: 1, dilation: 1, ..shape(1, 3, 15, 1) };
        assert_eq!((strided.out_h(), strided.out_w()), (8, 8));
        let g = s.geom("t").unwrap();
        assert_eq!((g.oh, g.dil, g.pad), (16, 4, 4));
    }

    #[test]
    fn bad_geometry_is_refused_with_the_shape() {
        let tiny = Conv2dShape { h: 4, w: 4, pad: 0, ..shape(1, 8, 4, 4) };
        let e = tiny.geom("conv2d_fwd_f32").unwrap_err().to_string();
        assert!(e.contains("conv2d_fwd_f32") && e.contains("4x4") && e.contains("9x9"), "{e}");
        assert!(Conv2dShape { stride: 0, ..shape(1, 8, 8, 1) }.geom("c").is_err());
        let huge = Conv2dShape { n: 1 << 16, ..shape(1, 512, 128, 1) };
        assert!(huge.geom("c").unwrap_err().to_string().contains("32-bit"));
    }

    #[test]
    fn split_k_fills_the_card_without_tiny_splits() {
        let splits = |s: &Conv2dShape, p| plan(s, ConvPass::WeightGrad, p, 132).splits;
        // 64 channels at 32x32, fp32: 9 output tiles, 20480-long reduction: split.
        let s = shape(20, 64, 32, 1);
        assert!(splits(&s, Precision::Fp32) * 9 >= 2 * 132 && splits(&s, Precision::Fp32) * 9 < 2 * 132 + 9);
        // 512 channels: 8 x 72 = 576 tiles already fill 132 SMs.
        assert_eq!(splits(&shape(20, 512, 16, 4), Precision::Fp32), 1);
        // A short reduction is never cut below 4 tiles per split.
        assert_eq!(splits(&shape(1, 8, 4, 1), Precision::Bf16), 1);
        // Every split is a whole number of tiles, and together they cover the reduction.
        for p in Precision::ALL {
            for s in [shape(20, 64, 32, 1), shape(3, 24, 9, 2), shape(20, 512, 16, 8)] {
                let plan = plan(&s, ConvPass::WeightGrad, p, 132);
                let red = ConvPass::WeightGrad.gemm(&s).2;
                let tile_k = if p == Precision::Fp32 { TILE_K } else { tc_tile_k(p) };
                assert_eq!(plan.chunk % tile_k, 0, "{p} {s:?}");
                assert!(plan.chunk * plan.splits >= red && plan.chunk * (plan.splits - 1) < red, "{p} {s:?} {plan:?}");
            }
        }
    }

    #[test]
    fn the_plan_names_a_kernel_of_the_pass_and_precision() {
        let cases = [shape(20, 64, 32, 1), shape(20, 512, 16, 4), Conv2dShape { k: 64, r: 7, s: 7, stride: 2, pad: 3, ..shape(20, 3, 128, 1) }];
        for s in &cases {
            for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
                let word = ["fwd", "bwd_input", "bwd_weight"][pass as usize];
                for p in Precision::ALL {
                    let plan = plan(s, pass, p, 132);
                    assert!(plan.kernel.name.starts_with(&format!("conv2d_{word}_")), "{}", plan.kernel.name);
                    assert!(plan.kernel.name.ends_with(&format!("_{}", if p == Precision::Fp32 { "f32" } else { p.name() })));
                    let tile = plan.kernel.name.split('_').find(|w| w.contains('x')).map(str::to_string);
                    if p != Precision::Fp32 {
                        assert_eq!(tile, Some(format!("{}x{}", plan.tile.0, plan.tile.1)));
                    }
                }
            }
        }
        // 64 output channels: half of a 128-row tile would be idle, so the 64-row tile runs.
        assert_eq!(plan(&cases[0], ConvPass::Forward, Precision::Bf16, 132).tile, (64, 128));
    }
}
