//! Convolutions on the GPU: the 2-D atrous convolution (forward, input gradient, weight
//! gradient; implicit GEMM in kernels/conv2d.cu, tensor cores in kernels/conv2d_tc.cu,
//! conv2d_tcp.cu and, from channels-last bf16 copies, conv2d_nhwc.cu) and the
//! 1-D convolution across channels (ECA, kernels/conv1d.cu): the checked launch wrappers, the
//! geometry struct the kernels share, and the CUDA side of [`ConvKernels`].

use super::{CONV1D, CONV2D, ConvKernels};
use crate::backend::cuda::kernels::{self as k, Kernel};
use crate::backend::cuda::launch::{Arg, StridedN, check_len, grid_1d, grid_per_item, launch, log_kernel_choice, split_reduction, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer, TypedBuffer, nd};
use super::tune::Choice;
use crate::device::{Precision, TcVariant};
use crate::error::{Error, Result};
use crate::ops::{BnPartials, Cuda};
use crate::ops::cuda_common::{device, tensor};
use crate::ops::reduce::cuda::into_split_slices;
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
        Ok(forward(x, w, bias, sh, false)?.0)
    }

    fn conv2d_fwd_partials(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, sh: &Conv2dShape) -> Result<(Storage, Option<BnPartials>)> {
        forward(x, w, bias, sh, true)
    }

    fn conv2d_bwd_input(&self, dy: &Tensor, w: &Tensor, sh: &Conv2dShape) -> Result<Tensor> {
        conv2d_grad(sh, [dy, w], [sh.n, sh.c, sh.h, sh.w], conv2d_bwd_input)
    }

    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, sh: &Conv2dShape) -> Result<Tensor> {
        conv2d_grad(sh, [x, dy], [sh.k, sh.c, sh.r, sh.s], conv2d_bwd_weight)
    }

    fn conv2d_bwd_both(&self, x: &Tensor, w: &Tensor, dy: &Tensor, sh: &Conv2dShape) -> Result<(Tensor, Tensor)> {
        let dev = device(CONV2D, dy)?;
        let (sx, sw, sg) = (x.storage(), w.storage(), dy.storage());
        let (mut dx, mut dw) = (dev.alloc(sh.input_len())?, dev.alloc(sh.weight_len())?);
        conv2d_bwd(&dev, sh, dev.precision(), sx.as_cuda(CONV2D)?, sw.as_cuda(CONV2D)?, sg.as_cuda(CONV2D)?, &mut dx, &mut dw)?;
        Ok((tensor(dx, [sh.n, sh.c, sh.h, sh.w])?, tensor(dw, [sh.k, sh.c, sh.r, sh.s])?))
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

/// The forward at the device's precision, with batch-norm partial statistics when `with_stats`
/// and the kernel writes them.
fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, sh: &Conv2dShape, with_stats: bool) -> Result<(Storage, Option<BnPartials>)> {
    let dev = device(CONV2D, x)?;
    let (sx, sw) = (x.storage(), w.storage());
    let sb = bias.map(|b| b.storage());
    let bb = sb.as_ref().map(|s| s.as_cuda(CONV2D)).transpose()?;
    let (xb, wb) = (sx.as_cuda(CONV2D)?, sw.as_cuda(CONV2D)?);
    let mut y = dev.alloc(sh.output_len())?;
    let partials = if with_stats {
        conv2d_fwd_partials(&dev, sh, xb, wb, bb, &mut y)?.map(|(sums, slots, width)| BnPartials { sums: Storage::Cuda(sums), slots, width, channels: sh.k })
    } else {
        conv2d_fwd(&dev, sh, dev.precision(), xb, wb, bb, &mut y)?;
        None
    };
    Ok((Storage::Cuda(y), partials))
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// Reduction elements per shared-memory tile: the staged kernels take 16 words (16 TF32 or 32
/// BF16 elements); the pipelined ones 32 elements of f32 at both precisions.
fn tc_tile_k(variant: TcVariant, precision: Precision) -> usize {
    match variant {
        TcVariant::Staged if precision == Precision::Tf32 => 16,
        _ => 32,
    }
}

/// The dynamic shared memory of a pipelined kernel (kernels/conv2d_tcp.cu, `conv_tcp`):
/// stages x (A tile + B tile) x 4 bytes; A is BM rows of SA words, B is 32 rows of SB (the
/// forward and input gradient) or BN rows of SA (the weight gradient).
pub fn pipe_shared_bytes(pass: ConvPass, precision: Precision, (bm, bn): (usize, usize)) -> usize {
    let tf32 = precision == Precision::Tf32;
    let sa = if tf32 { 36 } else { 40 };
    let sb = bn + if tf32 { 8 } else { 4 };
    let stages = if bm * bn > 8192 { 4 } else { 3 };
    let b = if pass == ConvPass::WeightGrad { bn * sa } else { 32 * sb };
    stages * (bm * sa + b) * 4
}

/// The dynamic shared memory of a channels-last kernel (kernels/conv2d_nhwc.cu), 4 stages of
/// bf16 tiles: the forward and input gradient (`conv_nhwc`) (BM + BN) rows x 40 (32 reduction
/// elements and 8 of padding); the weight gradient (`conv_nhwc_wgrad`) 32 pixel rows x (BM + 8 +
/// BN + 8).
pub fn nhwc_shared_bytes(pass: ConvPass, (bm, bn): (usize, usize)) -> usize {
    match pass {
        ConvPass::WeightGrad => 4 * 32 * (bm + bn + 16) * 2,
        _ => 4 * (bm + bn) * 40 * 2,
    }
}

/// Whether kernels/conv2d_nhwc.cu takes this pass: bf16, and the channels it copies in 16-byte
/// runs (8 bf16) a multiple of 8: C of x for the forward, K of dy for the input gradient, both
/// for the weight gradient.
pub fn nhwc_takes(sh: &Conv2dShape, pass: ConvPass, precision: Precision) -> bool {
    let channels_ok = match pass {
        ConvPass::Forward => sh.c.is_multiple_of(8),
        ConvPass::InputGrad => sh.k.is_multiple_of(8),
        ConvPass::WeightGrad => sh.c.is_multiple_of(8) && sh.k.is_multiple_of(8),
    };
    precision == Precision::Bf16 && channels_ok
}

/// The channels-last kernels' tiles: [`TC_TILES`], then 64 x 64, which only tuning runs (the
/// planner's model chooses among the first three, as for the other families).
pub const NHWC_TILES: [(usize, usize); 4] = [TC_TILES[0], TC_TILES[1], TC_TILES[2], (64, 64)];

/// The `Wgmma` variant's tiles where its kernels take the pass: [`NHWC_TILES`] (conv2d_nhwc.cu's,
/// for tuning), then the wgmma kernel's 128 x 128 ([`WGMMA_TILE`]), the model's plan.
pub const WGMMA_TILES: [(usize, usize); 5] = [NHWC_TILES[0], NHWC_TILES[1], NHWC_TILES[2], NHWC_TILES[3], (128, 128)];
/// The index of the wgmma kernel's tile in [`WGMMA_TILES`].
pub const WGMMA_TILE: usize = 4;

/// Whether kernels/conv2d_wgmma.cu takes this pass: every bf16 pass that conv2d_nhwc.cu takes
/// (the same channels-last copies). The device decides whether the variant runs at all (compute
/// capability 9.0, `CudaDevice::tc_variant`).
pub fn wgmma_takes(sh: &Conv2dShape, pass: ConvPass, precision: Precision) -> bool {
    nhwc_takes(sh, pass, precision)
}

/// The dynamic shared memory of a wgmma kernel: 3 stages of two 128 x 64 bf16 tiles (32 KB),
/// and 1 KB to start them on 1024 bytes (the 128-byte swizzle's period).
pub fn wgmma_shared_bytes() -> usize {
    3 * 2 * 128 * 64 * 2 + 1024
}
const WGMMA_KERNELS: [Kernel; 3] = [k::CONV2D_WGMMA_FWD_128X128_BF16, k::CONV2D_WGMMA_BWD_INPUT_128X128_BF16, k::CONV2D_WGMMA_BWD_WEIGHT_128X128_BF16];

/// The channels-last kernels (kernels/conv2d_nhwc.cu, bf16) by pass, then tile ([`NHWC_TILES`]).
const NHWC_KERNELS: [[Kernel; 4]; 3] = [
    [k::CONV2D_NHWC_FWD_128X128_BF16, k::CONV2D_NHWC_FWD_64X128_BF16, k::CONV2D_NHWC_FWD_128X64_BF16, k::CONV2D_NHWC_FWD_64X64_BF16],
    [
        k::CONV2D_NHWC_BWD_INPUT_128X128_BF16,
        k::CONV2D_NHWC_BWD_INPUT_64X128_BF16,
        k::CONV2D_NHWC_BWD_INPUT_128X64_BF16,
        k::CONV2D_NHWC_BWD_INPUT_64X64_BF16,
    ],
    [
        k::CONV2D_NHWC_BWD_WEIGHT_128X128_BF16,
        k::CONV2D_NHWC_BWD_WEIGHT_64X128_BF16,
        k::CONV2D_NHWC_BWD_WEIGHT_128X64_BF16,
        k::CONV2D_NHWC_BWD_WEIGHT_64X64_BF16,
    ],
];

/// The tensor-core kernels by variant (conv2d_tc.cu, conv2d_tcp.cu), pass, precision (tf32,
/// bf16), then tile ([`TC_TILES`]).
const TC_KERNELS: [[[[Kernel; 3]; 2]; 3]; 2] = [
    [
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
    ],
    [
        [
            [k::CONV2D_PIPE_FWD_128X128_TF32, k::CONV2D_PIPE_FWD_64X128_TF32, k::CONV2D_PIPE_FWD_128X64_TF32],
            [k::CONV2D_PIPE_FWD_128X128_BF16, k::CONV2D_PIPE_FWD_64X128_BF16, k::CONV2D_PIPE_FWD_128X64_BF16],
        ],
        [
            [k::CONV2D_PIPE_BWD_INPUT_128X128_TF32, k::CONV2D_PIPE_BWD_INPUT_64X128_TF32, k::CONV2D_PIPE_BWD_INPUT_128X64_TF32],
            [k::CONV2D_PIPE_BWD_INPUT_128X128_BF16, k::CONV2D_PIPE_BWD_INPUT_64X128_BF16, k::CONV2D_PIPE_BWD_INPUT_128X64_BF16],
        ],
        [
            [k::CONV2D_PIPE_BWD_WEIGHT_128X128_TF32, k::CONV2D_PIPE_BWD_WEIGHT_64X128_TF32, k::CONV2D_PIPE_BWD_WEIGHT_128X64_TF32],
            [k::CONV2D_PIPE_BWD_WEIGHT_128X128_BF16, k::CONV2D_PIPE_BWD_WEIGHT_64X128_BF16, k::CONV2D_PIPE_BWD_WEIGHT_128X64_BF16],
        ],
    ],
];

/// What runs one pass of one convolution: the kernel, its output tile, how the reduction is
/// split over gridDim.z (`chunk` elements each; the weight gradient only), the dynamic shared
/// memory it needs and the order it wants the weights in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    pub kernel: Kernel,
    pub tile: (usize, usize),
    pub splits: usize,
    pub chunk: usize,
    pub shared_bytes: usize,
    pub weights: WeightOrder,
}

/// The layout a kernel reads the weights in (the weight gradient's: writes them in); (K, C, R, S)
/// is how they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightOrder {
    /// As stored: (K, C, R, S).
    Kcrs,
    /// (C, K, R, S): the staged input gradient's rows are whole lines.
    Ckrs,
    /// (K, R, S, C): the pipelined forward's reduction runs (r, s, c); the channels-last weight
    /// gradient's columns too.
    Krsc,
    /// (C, R, S, K): the pipelined input gradient's reduction runs (r, s, k).
    Crsk,
}

impl WeightOrder {
    /// Axes of the stored (K, C, R*S) weights in this order.
    fn axes(self) -> [usize; 3] {
        match self {
            WeightOrder::Kcrs => [0, 1, 2],
            WeightOrder::Ckrs => [1, 0, 2],
            WeightOrder::Krsc => [0, 2, 1],
            WeightOrder::Crsk => [1, 2, 0],
        }
    }
    /// Whether `sh`'s weights in this order are their stored bytes: the axes longer than 1 keep
    /// their stored order (a 1x1 convolution's (K, R, S, C) is its (K, C, R, S)). No copy then.
    pub fn is_stored_layout(self, sh: &Conv2dShape) -> bool {
        let dims = [sh.k, sh.c, sh.r * sh.s];
        let kept: Vec<usize> = self.axes().into_iter().filter(|&a| dims[a] > 1).collect();
        kept.windows(2).all(|w| w[0] < w[1])
    }
}

impl ConvPlan {
    /// Whether the kernel takes a batch-norm statistics pointer after `out` (conv2d_tcp.cu's and
    /// conv2d_nhwc.cu's; only the forward writes statistics).
    pub fn takes_stats(&self) -> bool {
        self.kernel.module == "conv2d_tcp" || self.channels_last()
    }
    /// Whether the kernel reads bf16 channels-last copies of its operands (conv2d_nhwc.cu,
    /// conv2d_wgmma.cu).
    pub fn channels_last(&self) -> bool {
        self.kernel.module == "conv2d_nhwc" || self.is_wgmma()
    }
    /// Whether the kernel is conv2d_wgmma.cu's (sm_90a).
    pub fn is_wgmma(&self) -> bool {
        self.kernel.module == "conv2d_wgmma"
    }
    pub fn grid(&self, sh: &Conv2dShape, pass: ConvPass) -> (usize, usize, usize) {
        let (m, n, _) = pass.gemm(sh);
        (n.div_ceil(self.tile.1), m.div_ceil(self.tile.0), self.splits)
    }
}

/// The SIMT weight gradient's split of its pixel reduction: about two blocks per SM, each split
/// at least 4 reduction tiles long and a whole number of them.
fn weight_grad_split(blocks: usize, red: usize, tile_k: usize, sm_count: usize) -> (usize, usize) {
    split_reduction(blocks, 2 * sm_count, red, 4 * tile_k, tile_k)
}

/// The tensor-core weight gradient's split, by whole waves: `blocks` output tiles, `per_sm` of
/// them resident on an SM at once, `sm_count` SMs. Of the splits into whole numbers of `tile_k`
/// (each at least 4 tiles long), the one with the least modelled time, waves x (tiles per split +
/// 4): a last wave only partly filled costs a whole one, and a block pays about 4 tiles' worth of
/// pipeline fill, epilogue and its slice's share of the sum. (Aiming at two blocks per SM, as the
/// SIMT split does, overshot: a 128 x 128 block fills an SM alone, and the H200's profile showed
/// the c512 weight gradient at 144 tiles x 2 splits = 2.2 waves. Model, not yet measured.)
fn tc_weight_grad_split(blocks: usize, red: usize, tile_k: usize, sm_count: usize, per_sm: usize) -> (usize, usize) {
    let slots = (sm_count * per_sm).max(1);
    let most = (red / (4 * tile_k)).clamp(1, 1024);
    let mut best = (usize::MAX, 1, red.div_ceil(tile_k).max(1) * tile_k);
    for wanted in 1..=most {
        let chunk = red.div_ceil(wanted).div_ceil(tile_k).max(1) * tile_k;
        let splits = red.div_ceil(chunk).max(1);
        let cost = (blocks * splits).div_ceil(slots) * (chunk / tile_k + 4);
        if cost < best.0 {
            best = (cost, splits, chunk);
        }
    }
    (best.1, best.2)
}

/// Blocks of a tile resident on an SM at once, as the planner counts them: a staged or pipelined
/// 128 x 128 block fills an SM alone (its registers and, pipelined, 160 KB of shared memory), the
/// other tiles and the larger channels-last tiles run two, the channels-last 64 x 64 three (63-70
/// registers, ptxas 13.0: three blocks of 256 threads by registers, four for the forward).
fn resident_blocks(tile: (usize, usize), channels_last: bool) -> usize {
    match (tile, channels_last) {
        ((64, 64), true) => 3,
        ((128, 128), false) => 1,
        _ => 2,
    }
}

/// The tensor-core precisions, in the order of [`TC_KERNELS`]' third index.
const TC_PRECISIONS: [Precision; 2] = [Precision::Tf32, Precision::Bf16];

/// The kernel for a pass at a precision. fp32 runs conv2d.cu's SIMT kernels (64 x 64 tiles);
/// tf32 and bf16 the tensor-core kernels of `variant`, which take every shape (tails, padding
/// and strides load zeros; `Nhwc` hands what its kernels do not take to the pipelined ones), with
/// the tile whose last wave wastes least: a pipelined 128 x 128 block fills an SM alone, the two
/// smaller tiles run two blocks per SM at about nine tenths of its rate; every channels-last
/// tile runs two blocks per SM (half the shared memory).
pub fn plan(sh: &Conv2dShape, pass: ConvPass, precision: Precision, variant: TcVariant, sm_count: usize) -> ConvPlan {
    let (m, n, red) = pass.gemm(sh);
    let sm = sm_count.max(1);
    if !TC_PRECISIONS.contains(&precision) {
        let kernel = [k::CONV2D_FWD, k::CONV2D_BWD_INPUT, k::CONV2D_BWD_WEIGHT][pass as usize];
        let (splits, chunk) = match pass {
            ConvPass::WeightGrad => weight_grad_split(m.div_ceil(TILE) * n.div_ceil(TILE), red, TILE_K, sm),
            _ => (1, red),
        };
        return ConvPlan { kernel, tile: (TILE, TILE), splits, chunk, shared_bytes: 0, weights: WeightOrder::Kcrs };
    }
    if variant == TcVariant::Wgmma {
        return match wgmma_takes(sh, pass, precision) {
            true => tc_plan(sh, pass, precision, variant, WGMMA_TILE, sm),
            false => plan(sh, pass, precision, TcVariant::Nhwc, sm),
        };
    }
    let nhwc = variant == TcVariant::Nhwc && nhwc_takes(sh, pass, precision);
    let cost = |&(i, (bm, bn)): &(usize, (usize, usize))| {
        let blocks = m.div_ceil(bm) * n.div_ceil(bn);
        let per_sm = resident_blocks((bm, bn), nhwc);
        let waves = blocks.div_ceil(sm * per_sm);
        let rate = if i == 0 { 1.0 } else { 0.9 };
        (waves * bm * bn * per_sm) as f64 / rate
    };
    let best = TC_TILES.iter().copied().enumerate().min_by(|a, b| cost(a).total_cmp(&cost(b))).map_or(0, |(i, _)| i);
    tc_plan(sh, pass, precision, variant, best, sm)
}

/// The tiles `variant`'s kernels have for a pass: [`WGMMA_TILES`] where the wgmma kernels take
/// it, [`NHWC_TILES`] where the channels-last kernels do, else [`TC_TILES`].
fn variant_tiles(sh: &Conv2dShape, pass: ConvPass, precision: Precision, variant: TcVariant) -> &'static [(usize, usize)] {
    match variant {
        TcVariant::Wgmma if wgmma_takes(sh, pass, precision) => &WGMMA_TILES,
        TcVariant::Nhwc | TcVariant::Wgmma if nhwc_takes(sh, pass, precision) => &NHWC_TILES,
        _ => &TC_TILES,
    }
}

/// The tensor-core plan of `variant` with its tile `tile` ([`variant_tiles`]; precision tf32 or
/// bf16).
fn tc_plan(sh: &Conv2dShape, pass: ConvPass, precision: Precision, variant: TcVariant, tile: usize, sm: usize) -> ConvPlan {
    if variant == TcVariant::Wgmma {
        if tile != WGMMA_TILE || !wgmma_takes(sh, pass, precision) {
            return tc_plan(sh, pass, precision, TcVariant::Nhwc, tile, sm);
        }
        // The weights as the channels-last kernels take them (the weight gradient's come back in
        // (K, R, S, C)); only the weight gradient is split, by whole waves of its 64-pixel tiles.
        let (m, n, red) = pass.gemm(sh);
        let (weights, (splits, chunk)) = match pass {
            ConvPass::Forward => (WeightOrder::Krsc, (1, red)),
            ConvPass::InputGrad => (WeightOrder::Crsk, (1, red)),
            ConvPass::WeightGrad => (WeightOrder::Krsc, tc_weight_grad_split(m.div_ceil(128) * n.div_ceil(128), red, 64, sm, 2)),
        };
        let kernel = WGMMA_KERNELS[pass as usize];
        return ConvPlan { kernel, tile: WGMMA_TILES[tile], splits, chunk, shared_bytes: wgmma_shared_bytes(), weights };
    }
    if variant == TcVariant::Nhwc {
        if !nhwc_takes(sh, pass, precision) {
            return tc_plan(sh, pass, precision, TcVariant::Pipelined, tile, sm);
        }
        // The weights go over as bf16 copies in the pipelined kernels' orders (channels_last_operands);
        // the weight gradient comes back in (K, R, S, C).
        let (m, n, red) = pass.gemm(sh);
        let (bm, bn) = NHWC_TILES[tile];
        let per_sm = resident_blocks((bm, bn), true);
        let (weights, (splits, chunk)) = match pass {
            ConvPass::Forward => (WeightOrder::Krsc, (1, red)),
            ConvPass::InputGrad => (WeightOrder::Crsk, (1, red)),
            ConvPass::WeightGrad => (WeightOrder::Krsc, tc_weight_grad_split(m.div_ceil(bm) * n.div_ceil(bn), red, 32, sm, per_sm)),
        };
        let kernel = NHWC_KERNELS[pass as usize][tile];
        return ConvPlan { kernel, tile: (bm, bn), splits, chunk, shared_bytes: nhwc_shared_bytes(pass, (bm, bn)), weights };
    }
    let (m, n, red) = pass.gemm(sh);
    let prec = TC_PRECISIONS.iter().position(|p| *p == precision).unwrap_or(0);
    let tile_k = tc_tile_k(variant, precision);
    let (bm, bn) = TC_TILES[tile];
    let per_sm = resident_blocks((bm, bn), false);
    let (splits, chunk) = match pass {
        ConvPass::WeightGrad => tc_weight_grad_split(m.div_ceil(bm) * n.div_ceil(bn), red, tile_k, sm, per_sm),
        _ => (1, red),
    };
    let (shared_bytes, weights) = match (variant, pass) {
        (TcVariant::Staged, ConvPass::InputGrad) => (0, WeightOrder::Ckrs),
        (TcVariant::Staged, _) => (0, WeightOrder::Kcrs),
        (_, p) => {
            let order = [WeightOrder::Krsc, WeightOrder::Crsk, WeightOrder::Kcrs][p as usize];
            (pipe_shared_bytes(p, precision, (bm, bn)), order)
        }
    };
    let family = if variant == TcVariant::Staged { 0 } else { 1 };
    ConvPlan { kernel: TC_KERNELS[family][pass as usize][prec][tile], tile: (bm, bn), splits, chunk, shared_bytes, weights }
}

/// The plans [`tune`](super::tune) times for a pass: the model's ([`plan`]) first, then every
/// other tile of `variant`'s kernels and, for the weight gradient, each tile's split at half, twice
/// and once its model's (and unsplit); for the forward and the input gradient, whose plans never
/// split, each tile whose grid is under two waves also split in 2 and 4 (split-K: more blocks for
/// the SMs a short grid leaves idle, at the cost of a pass that sums the splits; no split shorter
/// than 4 tiles). None at fp32 (one kernel).
pub fn candidate_plans(sh: &Conv2dShape, pass: ConvPass, precision: Precision, variant: TcVariant, sm_count: usize) -> Vec<ConvPlan> {
    let mut out = vec![plan(sh, pass, precision, variant, sm_count)];
    let (_, _, red) = pass.gemm(sh);
    let tile_k = tc_tile_k(variant, precision); // the channels-last kernels' 32 too
    for base in tc_plans(sh, pass, precision, variant, sm_count) {
        let split = |wanted: usize| {
            let chunk = red.div_ceil(wanted).div_ceil(tile_k).max(1) * tile_k;
            ConvPlan { splits: red.div_ceil(chunk), chunk, ..base }
        };
        let mut plans = vec![base];
        if base.is_wgmma() {
            // only its model's split (the kernels are checked unsplit and in the model's splits)
        } else if pass == ConvPass::WeightGrad {
            plans.extend([1, base.splits / 2, 2 * base.splits].into_iter().filter(|&s| s >= 1).map(split));
        } else {
            let (gx, gy, _) = base.grid(sh, pass);
            let slots = sm_count.max(1) * resident_blocks(base.tile, base.channels_last());
            if gx * gy < 2 * slots {
                plans.extend([2, 4].into_iter().map(split).filter(|p| p.splits > 1 && p.chunk >= 4 * tile_k));
            }
        }
        for p in plans {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Every tensor-core plan of a pass at a precision and variant, one per tile (for tests that run
/// each kernel); none at fp32.
pub fn tc_plans(sh: &Conv2dShape, pass: ConvPass, precision: Precision, variant: TcVariant, sm_count: usize) -> Vec<ConvPlan> {
    if !TC_PRECISIONS.contains(&precision) {
        return Vec::new();
    }
    (0..variant_tiles(sh, pass, precision, variant).len()).map(|t| tc_plan(sh, pass, precision, variant, t, sm_count.max(1))).collect()
}

/// COSEG_KERNEL_LOG=1: one line on stderr per distinct convolution, pass and precision, naming
/// the kernel that runs it and how it was chosen, so the dispatch is visible.
fn log_plan(sh: &Conv2dShape, pass: ConvPass, precision: Precision, p: &ConvPlan, how: Choice) {
    log_kernel_choice(|| {
        let how = match how {
            Choice::Model => "",
            Choice::Tuned => " (tuned)",
            Choice::ModelWhileCapturing => " (not tuned: first met during a graph capture)",
        };
        format!("conv2d {pass:?} {precision}: {} -> {} grid {:?}{how}", describe(sh), p.kernel.name, p.grid(sh, pass))
    });
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
    let p = device_plan(dev, sh, pass, precision)?;
    launch_plan(dev, sh, pass, &p, a, b, bias, out)
}

/// The plan for `dev` (its tensor-core variant and SM count): the model's, or with tuning on the
/// fastest candidate ([`tune`](super::tune)); logged (`log_plan`).
pub(super) fn device_plan(dev: &CudaDevice, sh: &Conv2dShape, pass: ConvPass, precision: Precision) -> Result<ConvPlan> {
    let model = plan(sh, pass, precision, dev.tc_variant(), dev.sm_count() as usize);
    let (p, how) = super::tune::choose(dev, sh, pass, precision, model)?;
    log_plan(sh, pass, precision, &p, how);
    Ok(p)
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
    launch_plan_with(dev, sh, pass, p, a, b, bias, out, None)
}

/// [`launch_plan`], a pipelined forward also writing batch-norm partial statistics into `stats`
/// (2 x K x slots values, [`bn_slots`]; see `BnPartials`).
#[allow(clippy::too_many_arguments)]
pub fn launch_plan_with(
    dev: &CudaDevice,
    sh: &Conv2dShape,
    pass: ConvPass,
    p: &ConvPlan,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    out: &mut GpuBuffer,
    stats: Option<&mut GpuBuffer>,
) -> Result<()> {
    let stats = match stats {
        Some(s) => {
            let (slots, _) = bn_slots(sh, p).ok_or_else(|| Error::invalid(p.kernel.name, "only the pipelined and channels-last forwards, unsplit, write batch-norm statistics"))?;
            check_len(p.kernel.name, "stats", s.len(), 2 * sh.k * slots, &[2, sh.k, slots])?;
            s.ptr_mut()
        }
        None => 0,
    };
    let g = sh.geom(p.kernel.name)?;
    check_operands(p.kernel.name, sh, pass, [a, b, out])?;
    if let Some(b) = bias {
        check_len(p.kernel.name, "bias", b.len(), sh.k, &[sh.k])?;
    }
    let (gx, gy, gz) = checked_grid(sh, pass, p)?;
    let cfg = LaunchConfig { grid_dim: (gx as u32, gy as u32, gz as u32), block_dim: (TILE_THREADS, 1, 1), shared_mem_bytes: 0 };
    let chunk = Arg::I32(to_i32(p.kernel.name, "reduction", p.chunk)?);
    if p.kernel.module == "conv2d" {
        // conv2d.cu's fp32 kernels take their operands in the order of the math, not (a, b).
        return into_split_slices(dev, gz, out, |out| {
            let args = match pass {
                ConvPass::Forward => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(bias.map_or(0, GpuBuffer::ptr)), Arg::Ptr(out), Arg::Struct(&g)],
                ConvPass::InputGrad => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(out), Arg::Struct(&g)],
                ConvPass::WeightGrad => vec![Arg::Ptr(b.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(out), Arg::Struct(&g), chunk],
            };
            launch(dev, p.kernel, cfg, &args)
        });
    }
    // The operands as the kernel reads them: for the channels-last kernels, bf16 channels-last
    // copies of both; else the weights in the kernel's order (a weight-sized copy; see WeightOrder).
    let (converted, reordered);
    let (a, b) = if p.channels_last() {
        converted = channels_last_operands(dev, sh, pass, a, b)?;
        (converted.0.ptr(), converted.1.ptr())
    } else if pass != ConvPass::WeightGrad && !p.weights.is_stored_layout(sh) {
        reordered = reorder_weights(dev, p.kernel.name, sh, a, p.weights)?;
        (reordered.ptr(), b.ptr())
    } else {
        (a.ptr(), b.ptr())
    };
    launch_operands(dev, sh, pass, p, [a, b], bias, out, stats)
}

/// Checks a pass's operands (a, b, out) against the shape: forward (weight, x, y), input gradient
/// (weight, dy, dx), weight gradient (dy, x, dw).
pub(super) fn check_operands(op: &'static str, sh: &Conv2dShape, pass: ConvPass, bufs: [&GpuBuffer; 3]) -> Result<()> {
    for (buf, (name, dims)) in bufs.into_iter().zip(pass.operands(sh)) {
        check_len(op, name, buf.len(), dims.iter().product(), &dims)?;
    }
    Ok(())
}

impl ConvPass {
    /// The pass's operands (a, b, out) in the kernels' argument order, named and shaped: forward
    /// (weight, x, y), input gradient (weight, dy, dx), weight gradient (dy, x, dw).
    pub fn operands(self, sh: &Conv2dShape) -> [(&'static str, [usize; 4]); 3] {
        let (x, w, y) = ([sh.n, sh.c, sh.h, sh.w], [sh.k, sh.c, sh.r, sh.s], [sh.n, sh.k, sh.out_h(), sh.out_w()]);
        match self {
            ConvPass::Forward => [("weight", w), ("x", x), ("y", y)],
            ConvPass::InputGrad => [("weight", w), ("dy", y), ("dx", x)],
            ConvPass::WeightGrad => [("dy", y), ("x", x), ("dw", w)],
        }
    }
}

/// A convolution as the kernel log names it: "x (n, c, h, w) w (k, c, r, s) stride .. pad ..
/// dilation ..".
pub(super) fn describe(sh: &Conv2dShape) -> String {
    format!(
        "x ({}, {}, {}, {}) w ({}, {}, {}, {}) stride {} pad {} dilation {}",
        sh.n, sh.c, sh.h, sh.w, sh.k, sh.c, sh.r, sh.s, sh.stride, sh.pad, sh.dilation
    )
}

/// The plan's grid, or why it is too large to launch.
fn checked_grid(sh: &Conv2dShape, pass: ConvPass, p: &ConvPlan) -> Result<(usize, usize, usize)> {
    let (gx, gy, gz) = p.grid(sh, pass);
    if gx > i32::MAX as usize || gy > 65535 {
        return Err(Error::invalid(p.kernel.name, format!("{sh:?} needs a grid of {gx} x {gy} blocks: too large")));
    }
    Ok((gx, gy, gz))
}

/// The launch of a tensor-core plan on operands already in the order (and, for the channels-last
/// kernels, the bf16 copies) it reads, at device addresses `a` and `b`; `stats` a device address
/// or 0. The lengths were checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_operands(dev: &CudaDevice, sh: &Conv2dShape, pass: ConvPass, p: &ConvPlan, [a, b]: [u64; 2], bias: Option<&GpuBuffer>, out: &mut GpuBuffer, stats: u64) -> Result<()> {
    let g = sh.geom(p.kernel.name)?;
    let (gx, gy, gz) = checked_grid(sh, pass, p)?;
    let chunk = Arg::I32(to_i32(p.kernel.name, "reduction", p.chunk)?);
    let cfg = LaunchConfig { grid_dim: (gx as u32, gy as u32, gz as u32), block_dim: (TILE_THREADS, 1, 1), shared_mem_bytes: p.shared_bytes as u32 };
    // A split weight gradient: each split into its slice of a scratch buffer, then added in order.
    let run = |out: &mut GpuBuffer| {
        into_split_slices(dev, gz, out, |out| {
            let mut args = vec![Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(bias.map_or(0, GpuBuffer::ptr)), Arg::Ptr(out)];
            if p.takes_stats() {
                args.push(Arg::Ptr(stats)); // conv2d_tcp.cu's and conv2d_nhwc.cu's kernels take it after `out`
            }
            args.extend([Arg::Struct(&g), chunk]);
            launch(dev, p.kernel, cfg, &args)
        })
    };
    // The channels-last weight gradient writes (K, R, S, C): into a scratch buffer, put back in
    // (K, C, R, S) (a weight-sized copy; none for a 1x1 convolution, where they are the same bytes).
    if p.channels_last() && pass == ConvPass::WeightGrad && !p.weights.is_stored_layout(sh) {
        let mut krsc = dev.alloc(out.len())?;
        run(&mut krsc)?;
        return restore_weight_order(dev, p.kernel.name, sh, &krsc, p.weights, out);
    }
    run(out)
}

/// The batch-norm partial statistics per channel a forward plan writes, and the output pixels
/// each covers (4 slots per block column: kernels/conv_tc.cuh `store_tile`), or None when its
/// kernel writes none, or the plan splits the reduction (a split holds part of each sum; batch
/// norm then reads the output for its statistics).
pub fn bn_slots(sh: &Conv2dShape, p: &ConvPlan) -> Option<(usize, usize)> {
    (p.takes_stats() && p.splits == 1).then(|| (4 * p.grid(sh, ConvPass::Forward).0, p.tile.1 / 4))
}

/// The forward at the device's precision and variant, with batch-norm partial statistics (and
/// their slots and slot width, [`bn_slots`]) when its kernel writes them (the pipelined
/// tensor-core kernels), else plain (None).
#[allow(clippy::type_complexity)]
pub fn conv2d_fwd_partials(dev: &CudaDevice, sh: &Conv2dShape, x: &GpuBuffer, w: &GpuBuffer, bias: Option<&GpuBuffer>, y: &mut GpuBuffer) -> Result<Option<(GpuBuffer, usize, usize)>> {
    let p = device_plan(dev, sh, ConvPass::Forward, dev.precision())?;
    let Some((slots, width)) = bn_slots(sh, &p) else {
        launch_plan(dev, sh, ConvPass::Forward, &p, w, x, bias, y)?;
        return Ok(None);
    };
    let mut sums = dev.alloc(2 * sh.k * slots)?;
    launch_plan_with(dev, sh, ConvPass::Forward, &p, w, x, bias, y, Some(&mut sums))?;
    Ok(Some((sums, slots, width)))
}

/// The bf16 channels-last operands (a, b) of a kernels/conv2d_nhwc.cu plan, from the f32 tensors
/// the wrappers take: forward (weights, x), input gradient (weights, dy), weight gradient (dy, x).
/// Both are freed after the launch.
fn channels_last_operands(dev: &CudaDevice, sh: &Conv2dShape, pass: ConvPass, w: &GpuBuffer, gathered: &GpuBuffer) -> Result<(TypedBuffer<u32>, TypedBuffer<u32>)> {
    match pass {
        ConvPass::Forward => Ok((nhwc_weights(dev, sh, pass, w)?, nhwc_x(dev, sh, gathered)?)),
        ConvPass::InputGrad => Ok((nhwc_weights(dev, sh, pass, w)?, nhwc_dy(dev, sh, gathered)?)),
        // (a, b) = (dy, x), as the kernel takes them
        ConvPass::WeightGrad => Ok((nhwc_dy(dev, sh, w)?, nhwc_x(dev, sh, gathered)?)),
    }
}

/// x (N, C, H, W) as (N, H, W, C) bf16.
fn nhwc_x(dev: &CudaDevice, sh: &Conv2dShape, x: &GpuBuffer) -> Result<TypedBuffer<u32>> {
    to_nhwc_bf16(dev, x, sh.n, sh.c, sh.h * sh.w)
}

/// dy (N, K, OH, OW) as (N, OH, OW, K) bf16.
pub(super) fn nhwc_dy(dev: &CudaDevice, sh: &Conv2dShape, dy: &GpuBuffer) -> Result<TypedBuffer<u32>> {
    to_nhwc_bf16(dev, dy, sh.n, sh.k, sh.out_h() * sh.out_w())
}

/// The weights (K, C, R, S) in bf16 as the forward reads them, (K, R, S, C) (the stored (K, C,
/// R*S) is "N = K, C, HW = R*S"), or as the input gradient does, (C, R, S, K) ("N = 1, C = K,
/// HW = C*R*S").
pub(super) fn nhwc_weights(dev: &CudaDevice, sh: &Conv2dShape, pass: ConvPass, w: &GpuBuffer) -> Result<TypedBuffer<u32>> {
    let rs = sh.r * sh.s;
    match pass {
        ConvPass::InputGrad => to_nhwc_bf16(dev, w, 1, sh.k, sh.c * rs),
        _ => to_nhwc_bf16(dev, w, sh.k, sh.c, rs),
    }
}

/// `x` (n, c, hw) f32 copied to (n, hw, c) bf16, rounded to nearest even, two channels per word
/// (channel 2j in the low half): n * c * hw / 2 words (kernels/conv2d_nhwc.cu `nchw_to_nhwc_bf16`).
pub fn to_nhwc_bf16(dev: &CudaDevice, x: &GpuBuffer, n: usize, c: usize, hw: usize) -> Result<TypedBuffer<u32>> {
    nhwc_copy(dev, k::NCHW_TO_NHWC_BF16, x, [n, c, hw], None)
}

/// [`to_nhwc_bf16`] of relu(batch_norm(x)) with per-channel `mean`, `var`, `gamma`, `beta` (each
/// c values) and `eps`: a convolution's prologue (kernels/conv2d_nhwc.cu
/// `bn_relu_nchw_to_nhwc_bf16`; the bits of batch norm's forward with its ReLU, then the copy).
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_to_nhwc_bf16(dev: &CudaDevice, x: &GpuBuffer, [n, c, hw]: [usize; 3], [mean, var, gamma, beta]: [&GpuBuffer; 4], eps: f32) -> Result<TypedBuffer<u32>> {
    let op = k::BN_RELU_NCHW_TO_NHWC_BF16.name;
    for (name, b) in [("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)] {
        check_len(op, name, b.len(), c, &[c])?;
    }
    let stats = [mean, var, gamma, beta].map(GpuBuffer::ptr);
    nhwc_copy(dev, k::BN_RELU_NCHW_TO_NHWC_BF16, x, [n, c, hw], Some((stats, eps)))
}

/// Launches one of the channels-last copies on x (n, c, hw); a batch-norm prologue's four
/// per-channel pointers (mean, var, gamma, beta) and eps, when it has one, go where the kernel
/// takes them (after x; last).
fn nhwc_copy(dev: &CudaDevice, kernel: Kernel, x: &GpuBuffer, [n, c, hw]: [usize; 3], prologue: Option<([u64; 4], f32)>) -> Result<TypedBuffer<u32>> {
    let op = kernel.name;
    if !c.is_multiple_of(2) || n * c * hw == 0 {
        return Err(Error::invalid(op, format!("({n}, {c}, {hw}): needs an even, nonzero channel count and a nonempty tensor")));
    }
    check_len(op, "x", x.len(), n * c * hw, &[n, c, hw])?;
    let (gx, gy) = (hw.div_ceil(32), c.div_ceil(64));
    if n > 65535 || gy > 65535 || gx > i32::MAX as usize {
        return Err(Error::invalid(op, format!("({n}, {c}, {hw}) needs a grid of {gx} x {gy} x {n} blocks: too large")));
    }
    let (ci, hwi) = (to_i32(op, "channels", c)?, to_i32(op, "pixels", hw)?);
    let mut y = TypedBuffer::alloc(dev, n * c * hw / 2)?;
    let cfg = LaunchConfig { grid_dim: (gx as u32, gy as u32, n as u32), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut args = vec![Arg::Ptr(x.ptr())];
    args.extend(prologue.iter().flat_map(|(ptrs, _)| ptrs.map(Arg::Ptr)));
    args.extend([Arg::Ptr(y.ptr_mut()), Arg::I32(ci), Arg::I32(hwi)]);
    args.extend(prologue.map(|(_, eps)| Arg::F32(eps)));
    launch(dev, kernel, cfg, &args)?;
    Ok(y)
}

/// The (K, C, R, S) weights `w` copied into `order`.
fn reorder_weights(dev: &CudaDevice, op: &'static str, sh: &Conv2dShape, w: &GpuBuffer, order: WeightOrder) -> Result<GpuBuffer> {
    let mut t = dev.alloc(w.len())?;
    copy_weight_order(dev, op, sh, w, order, &mut t, false)?;
    Ok(t)
}

/// Weights (or their gradient) in `order` copied back to the stored (K, C, R, S), into `out`.
fn restore_weight_order(dev: &CudaDevice, op: &'static str, sh: &Conv2dShape, w: &GpuBuffer, order: WeightOrder, out: &mut GpuBuffer) -> Result<()> {
    copy_weight_order(dev, op, sh, w, order, out, true)
}

/// One walk serves both directions: the elements of the stored (K, C, R*S) layout and of `order`,
/// visited in `order`'s sequence; `back` copies from `order` to the stored layout.
fn copy_weight_order(dev: &CudaDevice, op: &'static str, sh: &Conv2dShape, src: &GpuBuffer, order: WeightOrder, dst: &mut GpuBuffer, back: bool) -> Result<()> {
    nd::copy(dev, src, dst, &weight_order_walk(op, sh, order, back)?)
}

/// The walk of [`copy_weight_order`].
fn weight_order_walk(op: &'static str, sh: &Conv2dShape, order: WeightOrder, back: bool) -> Result<StridedN> {
    let rs = sh.r * sh.s;
    let (dims, strides) = ([sh.k, sh.c, rs], [sh.c * rs, rs, 1]);
    let axes = order.axes();
    let out_dims = axes.map(|a| dims[a]);
    let stored = axes.map(|a| strides[a]);
    let ordered = [out_dims[1] * out_dims[2], out_dims[2], 1];
    let (from, to) = if back { (ordered, stored) } else { (stored, ordered) };
    nd::geometry(op, &out_dims, &from, &to, 0, 0)
}

/// y (n, k, oh, ow) = conv(x, w) + bias, at `precision`.
pub fn conv2d_fwd(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, x: &GpuBuffer, w: &GpuBuffer, bias: Option<&GpuBuffer>, y: &mut GpuBuffer) -> Result<()> {
    launch_pass(dev, sh, ConvPass::Forward, precision, w, x, bias, y)
}

/// dx (n, c, h, w) from dy and w; dx is overwritten.
pub fn conv2d_bwd_input(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, dy: &GpuBuffer, w: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
    launch_pass(dev, sh, ConvPass::InputGrad, precision, w, dy, None, dx)
}

/// dx and dw together: where both passes run channels-last kernels, dy is copied to bf16
/// channels-last once for both (else the two wrappers apart).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bwd(dev: &CudaDevice, sh: &Conv2dShape, precision: Precision, x: &GpuBuffer, w: &GpuBuffer, dy: &GpuBuffer, dx: &mut GpuBuffer, dw: &mut GpuBuffer) -> Result<()> {
    let (pi, pw) = (device_plan(dev, sh, ConvPass::InputGrad, precision)?, device_plan(dev, sh, ConvPass::WeightGrad, precision)?);
    if !(pi.channels_last() && pw.channels_last()) {
        launch_plan(dev, sh, ConvPass::InputGrad, &pi, w, dy, None, dx)?;
        return launch_plan(dev, sh, ConvPass::WeightGrad, &pw, dy, x, None, dw);
    }
    check_operands(pi.kernel.name, sh, ConvPass::InputGrad, [w, dy, dx])?;
    check_operands(pw.kernel.name, sh, ConvPass::WeightGrad, [dy, x, dw])?;
    let dy16 = nhwc_dy(dev, sh, dy)?;
    let w16 = nhwc_weights(dev, sh, ConvPass::InputGrad, w)?;
    launch_operands(dev, sh, ConvPass::InputGrad, &pi, [w16.ptr(), dy16.ptr()], None, dx, 0)?;
    drop(w16);
    let x16 = nhwc_x(dev, sh, x)?;
    launch_operands(dev, sh, ConvPass::WeightGrad, &pw, [dy16.ptr(), x16.ptr()], None, dw, 0)
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

    // The network's 16x16 weight gradients on an H200 (132 SMs) in bf16, pipelined: whole waves.
    #[test]
    fn tensor_core_weight_gradient_splits_fill_their_waves() {
        let c1 = |c: usize, k: usize| Conv2dShape { n: 20, c, h: 16, w: 16, k, r: 1, s: 1, stride: 1, pad: 0, dilation: 1 };
        for s in [shape(20, 512, 16, 4), shape(20, 256, 16, 2), c1(1024, 256), c1(256, 1024), c1(2048, 512), c1(512, 2048)] {
            let p = plan(&s, ConvPass::WeightGrad, Precision::Bf16, TcVariant::Pipelined, 132);
            let (gx, gy, gz) = p.grid(&s, ConvPass::WeightGrad);
            let per_sm = if p.tile == (128, 128) { 1 } else { 2 };
            let (blocks, slots) = (gx * gy * gz, 132 * per_sm);
            let fill = blocks as f64 / (blocks.div_ceil(slots) * slots) as f64;
            assert!(fill >= 0.85, "{s:?}: {blocks} blocks ({gx} x {gy} x {gz} splits) on {slots} slots fill their waves {fill:.2}");
            assert!(p.chunk >= 4 * 32, "{s:?}: a split of {} pixels", p.chunk);
        }
        // What the profile showed (c512 d4: 144 tiles x 2 splits = 288 blocks, 2.2 waves) is gone.
        let c512 = plan(&shape(20, 512, 16, 4), ConvPass::WeightGrad, Precision::Bf16, TcVariant::Pipelined, 132);
        assert_ne!(c512.splits, 2);
    }

    #[test]
    fn split_k_fills_the_card_without_tiny_splits() {
        let splits = |s: &Conv2dShape, p| plan(s, ConvPass::WeightGrad, p, TcVariant::Staged, 132).splits;
        // 64 channels at 32x32, fp32: 9 output tiles, 20480-long reduction: split.
        let s = shape(20, 64, 32, 1);
        assert!(splits(&s, Precision::Fp32) * 9 >= 2 * 132 && splits(&s, Precision::Fp32) * 9 < 2 * 132 + 9);
        // 512 channels: 8 x 72 = 576 tiles already fill 132 SMs.
        assert_eq!(splits(&shape(20, 512, 16, 4), Precision::Fp32), 1);
        // A short reduction is never cut below 4 tiles per split.
        assert_eq!(splits(&shape(1, 8, 4, 1), Precision::Bf16), 1);
        // Every split is a whole number of the kernel's tiles (32 elements for every pipelined
        // kernel, whose 16-byte dy loads need it), and together they cover the reduction.
        for v in TcVariant::ALL {
            for p in Precision::ALL {
                for s in [shape(20, 64, 32, 1), shape(3, 24, 9, 2), shape(20, 512, 16, 8)] {
                    let plan = plan(&s, ConvPass::WeightGrad, p, v, 132);
                    let red = ConvPass::WeightGrad.gemm(&s).2;
                    let tile_k = if p == Precision::Fp32 { TILE_K } else { tc_tile_k(v, p) };
                    assert_eq!(plan.chunk % tile_k, 0, "{v} {p} {s:?}");
                    if v == TcVariant::Pipelined && p != Precision::Fp32 {
                        assert_eq!(plan.chunk % 32, 0, "{p} {s:?}");
                    }
                    assert!(plan.chunk * plan.splits >= red && plan.chunk * (plan.splits - 1) < red, "{v} {p} {s:?} {plan:?}");
                }
            }
        }
    }

    #[test]
    fn the_plan_names_a_kernel_of_the_pass_precision_and_variant() {
        let cases = [shape(20, 64, 32, 1), shape(20, 512, 16, 4), Conv2dShape { k: 64, r: 7, s: 7, stride: 2, pad: 3, ..shape(20, 3, 128, 1) }];
        for s in &cases {
            for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
                let word = ["fwd", "bwd_input", "bwd_weight"][pass as usize];
                for v in TcVariant::ALL {
                    for p in Precision::ALL {
                        let plan = plan(s, pass, p, v, 132);
                        let name = plan.kernel.name;
                        // Nhwc: its own kernels where they take the pass, else the pipelined ones;
                        // Wgmma: its own wherever Nhwc has its own, else as Nhwc.
                        let wgmma = v == TcVariant::Wgmma && wgmma_takes(s, pass, p);
                        let nhwc = !wgmma && matches!(v, TcVariant::Nhwc | TcVariant::Wgmma) && nhwc_takes(s, pass, p);
                        let pipe = !wgmma && !nhwc && v != TcVariant::Staged && p != Precision::Fp32;
                        let prefix = if wgmma {
                            format!("conv2d_wgmma_{word}_")
                        } else if nhwc {
                            format!("conv2d_nhwc_{word}_")
                        } else if pipe {
                            format!("conv2d_pipe_{word}_")
                        } else {
                            format!("conv2d_{word}_")
                        };
                        assert!(name.starts_with(&prefix), "{v} {p}: {name}");
                        let module = if wgmma {
                            "conv2d_wgmma"
                        } else if nhwc {
                            "conv2d_nhwc"
                        } else if pipe {
                            "conv2d_tcp"
                        } else if p == Precision::Fp32 {
                            "conv2d"
                        } else {
                            "conv2d_tc"
                        };
                        assert_eq!(plan.kernel.module, module);
                        assert!(name.ends_with(&format!("_{}", if p == Precision::Fp32 { "f32" } else { p.name() })));
                        let tile = name.split('_').find(|w| w.contains('x')).map(str::to_string);
                        if p != Precision::Fp32 {
                            assert_eq!(tile, Some(format!("{}x{}", plan.tile.0, plan.tile.1)));
                        }
                        assert_eq!(plan.shared_bytes > 0, pipe || nhwc || wgmma, "{name}");
                        assert_eq!(plan.takes_stats(), pipe || nhwc || wgmma, "{name}");
                    }
                }
            }
        }
        // 64 output channels: half of a 128-row tile would be idle, so the 64-row tile runs.
        assert_eq!(plan(&cases[0], ConvPass::Forward, Precision::Bf16, TcVariant::Staged, 132).tile, (64, 128));
        // The stem's forward gathers 3 channels: not in 16-byte runs, so the pipelined kernel
        // runs it; its input gradient gathers dy's 64 channels, which the channels-last kernel takes.
        let stem = &cases[2];
        assert_eq!(plan(stem, ConvPass::Forward, Precision::Bf16, TcVariant::Nhwc, 132).kernel.module, "conv2d_tcp");
        assert_eq!(plan(stem, ConvPass::InputGrad, Precision::Bf16, TcVariant::Nhwc, 132).kernel.module, "conv2d_nhwc");
    }

    // The channels-last kernels: which passes they take, their plans (the forward and input
    // gradient unsplit, in the pipelined kernels' weight orders; the weight gradient split by whole
    // waves; the shared memory of two blocks per SM) and the tile the cost model picks now that a
    // 128 x 128 block shares its SM.
    // What tuning times: the model's plan first, no plan twice, every plan of the device's
    // family; the weight gradient's splits each cover the reduction in whole tiles of at least
    // one, and differ from the model's somewhere (so there is something to choose); the other
    // passes never split; fp32 has one kernel, so nothing to time.
    #[test]
    fn tuning_candidates_start_with_the_model_and_cover_the_reduction() {
        let shapes = [shape(20, 512, 16, 4), shape(2, 48, 10, 2), Conv2dShape { n: 2, c: 3, h: 37, w: 41, k: 64, r: 7, s: 7, stride: 2, pad: 3, dilation: 1 }];
        for sh in shapes {
            for (precision, variant) in [(Precision::Bf16, TcVariant::Nhwc), (Precision::Bf16, TcVariant::Pipelined), (Precision::Tf32, TcVariant::Staged)] {
                for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
                    let cands = candidate_plans(&sh, pass, precision, variant, 132);
                    assert_eq!(cands[0], plan(&sh, pass, precision, variant, 132));
                    let tiles = tc_plans(&sh, pass, precision, variant, 132);
                    for (i, c) in cands.iter().enumerate() {
                        assert!(!cands[..i].contains(c), "{c:?} twice");
                        assert!(tiles.iter().any(|t| t.kernel == c.kernel && t.shared_bytes == c.shared_bytes && t.weights == c.weights), "{c:?} is not a plan of {variant}");
                    }
                    let (_, _, red) = pass.gemm(&sh);
                    let tile_k = if variant == TcVariant::Staged && precision == Precision::Tf32 { 16 } else { 32 };
                    for c in &cands {
                        assert!((c.splits == 1 || c.chunk % tile_k == 0) && c.chunk >= tile_k.min(red), "{c:?}");
                        assert!(c.splits * c.chunk >= red && (c.splits - 1) * c.chunk < red, "{c:?} of {red}");
                    }
                    // (Every grid here is short; the stem's forward reduces over 147, too short to split.)
                    if pass == ConvPass::WeightGrad || red >= 8 * tile_k {
                        assert!(cands.iter().any(|c| c.splits != cands[0].splits), "{sh:?} {pass:?}: no other split than {}", cands[0].splits);
                    }
                    if pass != ConvPass::WeightGrad {
                        // The model never splits these; tuning offers 2 and 4 on short grids,
                        // each split at least 4 tiles long.
                        assert!(cands[0].splits == 1 && cands[0].chunk == red, "{cands:?}");
                        for c in cands.iter().filter(|c| c.splits > 1) {
                            assert!(c.splits <= 4 && c.chunk >= 4 * tile_k, "{c:?}");
                            let (gx, gy, _) = c.grid(&sh, pass);
                            assert!(gx * gy < 2 * resident_blocks(c.tile, c.channels_last()) * 132, "{c:?}: a grid of {gx} x {gy} is not short");
                        }
                    }
                }
            }
        }
        assert_eq!(candidate_plans(&shapes[0], ConvPass::WeightGrad, Precision::Fp32, TcVariant::Nhwc, 132).len(), 1);
    }

    #[test]
    fn channels_last_plans() {
        let c512 = shape(20, 512, 16, 4);
        for pass in [ConvPass::Forward, ConvPass::InputGrad] {
            assert!(nhwc_takes(&c512, pass, Precision::Bf16));
            assert!(!nhwc_takes(&c512, pass, Precision::Tf32) && !nhwc_takes(&c512, pass, Precision::Fp32));
            // 512 x 5120 output: 160 blocks of 128 x 128, all resident at once on 132 SMs x 2.
            let p = plan(&c512, pass, Precision::Bf16, TcVariant::Nhwc, 132);
            assert_eq!((p.tile, p.splits, p.chunk), ((128, 128), 1, 512 * 9), "{pass:?}");
            let (gx, gy, _) = p.grid(&c512, pass);
            assert!(gx * gy <= 2 * 132, "{pass:?}: {gx} x {gy} blocks");
            // The pipelined 128 x 128 block sits alone on its SM: 160 blocks take two waves there.
            let pipe = plan(&c512, pass, Precision::Bf16, TcVariant::Pipelined, 132);
            assert_eq!(pipe.weights, p.weights);
        }
        // The weight gradient: dw in (K, R, S, C), split by whole waves of two blocks per SM, each
        // split whole 32-pixel tiles.
        let w = plan(&c512, ConvPass::WeightGrad, Precision::Bf16, TcVariant::Nhwc, 132);
        assert!(w.channels_last() && w.weights == WeightOrder::Krsc && w.chunk % 32 == 0, "{w:?}");
        let (gx, gy, gz) = w.grid(&c512, ConvPass::WeightGrad);
        let fill = (gx * gy * gz) as f64 / ((gx * gy * gz).div_ceil(264) * 264) as f64;
        assert!(fill >= 0.85 && w.chunk * gz >= 20 * 256, "{w:?}: waves {fill:.2} full");
        // Channels not a multiple of 8 where the kernel copies them: the pipelined kernel, the same plan.
        let odd = Conv2dShape { c: 20, k: 36, ..shape(2, 20, 9, 1) };
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            assert!(!nhwc_takes(&odd, pass, Precision::Bf16), "{pass:?}");
            assert_eq!(tc_plans(&odd, pass, Precision::Bf16, TcVariant::Nhwc, 132), tc_plans(&odd, pass, Precision::Bf16, TcVariant::Pipelined, 132));
        }
        // The weight gradient needs both: C = 16 with K = 36 is refused, though the forward takes it.
        let half = Conv2dShape { c: 16, k: 36, ..shape(2, 16, 9, 1) };
        assert!(nhwc_takes(&half, ConvPass::Forward, Precision::Bf16) && !nhwc_takes(&half, ConvPass::WeightGrad, Precision::Bf16));
        // Every tile's shared memory fits two blocks on an H100/H200 SM (228 KB, 1 KB reserved per
        // block) and needs the opt-in above 48 KB; the formulas at one point by hand.
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            for tile in TC_TILES {
                let bytes = nhwc_shared_bytes(pass, tile);
                assert!(2 * (bytes + 1024) <= 228 * 1024 && bytes > 48 * 1024, "{pass:?} {tile:?}: {bytes} bytes");
            }
        }
        // The 64 x 64 tile (tuning's only) fits the three blocks per SM its registers allow, and is
        // offered wherever the channels-last kernels take the pass.
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            let bytes = nhwc_shared_bytes(pass, (64, 64));
            assert!(resident_blocks((64, 64), true) * (bytes + 1024) <= 228 * 1024, "{pass:?}: {bytes} bytes");
            let plans = tc_plans(&c512, pass, Precision::Bf16, TcVariant::Nhwc, 132);
            assert_eq!(plans.iter().map(|p| p.tile).collect::<Vec<_>>(), NHWC_TILES, "{pass:?}");
            assert!(plans.iter().all(ConvPlan::channels_last), "{pass:?}");
        }
        assert_eq!(nhwc_shared_bytes(ConvPass::Forward, (128, 128)), 4 * 256 * 80);
        assert_eq!(nhwc_shared_bytes(ConvPass::WeightGrad, (128, 128)), 4 * 32 * 272 * 2);
    }

    // The wgmma variant: its kernels run the bf16 passes that the channels-last kernels take, in
    // their weight orders, as the model's plan (the forward and input gradient unsplit); tuning
    // offers them beside every channels-last plan (no other split); everything else is Nhwc's.
    // Two blocks share an SM, and the stages start on 1024 bytes.
    #[test]
    fn wgmma_plans() {
        let c512 = shape(20, 512, 16, 4);
        for pass in [ConvPass::Forward, ConvPass::InputGrad] {
            let p = plan(&c512, pass, Precision::Bf16, TcVariant::Wgmma, 132);
            assert!(p.is_wgmma() && p.channels_last() && p.takes_stats(), "{p:?}");
            assert_eq!((p.tile, p.splits, p.chunk, p.shared_bytes), ((128, 128), 1, 512 * 9, wgmma_shared_bytes()));
            assert_eq!(p.weights, plan(&c512, pass, Precision::Bf16, TcVariant::Nhwc, 132).weights);
            let cands = candidate_plans(&c512, pass, Precision::Bf16, TcVariant::Wgmma, 132);
            assert_eq!(cands[0], p);
            assert!(cands.iter().filter(|c| c.is_wgmma()).all(|c| c.splits == 1));
            for nhwc in candidate_plans(&c512, pass, Precision::Bf16, TcVariant::Nhwc, 132) {
                assert!(cands.contains(&nhwc), "{nhwc:?} not offered");
            }
        }
        // The weight gradient: dw in (K, R, S, C), split by whole waves of two blocks per SM into
        // whole 64-pixel tiles.
        let w = plan(&c512, ConvPass::WeightGrad, Precision::Bf16, TcVariant::Wgmma, 132);
        assert!(w.is_wgmma() && w.weights == WeightOrder::Krsc && w.chunk % 64 == 0 && w.splits > 1, "{w:?}");
        let (gx, gy, gz) = w.grid(&c512, ConvPass::WeightGrad);
        let fill = (gx * gy * gz) as f64 / ((gx * gy * gz).div_ceil(264) * 264) as f64;
        assert!(fill >= 0.85 && w.chunk * gz >= 20 * 256, "{w:?}: waves {fill:.2} full");
        // tf32, and channels the copies do not take: Nhwc's plans.
        let stem = Conv2dShape { k: 64, r: 7, s: 7, stride: 2, pad: 3, ..shape(20, 3, 128, 1) };
        for (sh, pass, p) in [(c512, ConvPass::Forward, Precision::Tf32), (stem, ConvPass::Forward, Precision::Bf16), (stem, ConvPass::WeightGrad, Precision::Bf16)] {
            assert!(!wgmma_takes(&sh, pass, p));
            assert_eq!(plan(&sh, pass, p, TcVariant::Wgmma, 132), plan(&sh, pass, p, TcVariant::Nhwc, 132), "{pass:?} {p}");
            assert_eq!(candidate_plans(&sh, pass, p, TcVariant::Wgmma, 132), candidate_plans(&sh, pass, p, TcVariant::Nhwc, 132));
        }
        let bytes = wgmma_shared_bytes();
        assert!(resident_blocks((128, 128), true) * (bytes + 1024) <= 228 * 1024 && bytes > 48 * 1024, "{bytes} bytes");
        assert_eq!(bytes % 1024, 0);
    }

    // The pipelined kernels' shared memory fits an H100/H200 SM (227 KB a block), and the smaller
    // tiles fit two blocks (228 KB an SM, 1 KB of it reserved per block), as the planner's cost
    // model and the kernels' launch bounds assume.
    #[test]
    fn pipelined_shared_memory_fits_the_blocks_per_sm_the_planner_assumes() {
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            for p in [Precision::Tf32, Precision::Bf16] {
                for (i, tile) in TC_TILES.into_iter().enumerate() {
                    let bytes = pipe_shared_bytes(pass, p, tile);
                    let per_sm = if i == 0 { 1 } else { 2 };
                    assert!(per_sm * (bytes + 1024) <= 228 * 1024, "{pass:?} {p} {tile:?}: {bytes} bytes");
                    assert!(bytes > 48 * 1024, "{pass:?} {p} {tile:?}: {bytes} bytes (the opt-in path would go untested)");
                }
            }
        }
        // kernels/conv2d_tcp.cu's formula at one point worked by hand: bf16 forward 128x128,
        // 4 stages x (128 x 40 + 32 x 132) words.
        assert_eq!(pipe_shared_bytes(ConvPass::Forward, Precision::Bf16, (128, 128)), 4 * (128 * 40 + 32 * 132) * 4);
    }

    /// The pipelined kernels' weight orders, to and back, are transposes: nd::copy runs them on
    /// nd.cu's tiled kernel (`nd::as_transpose`), never element by element with strided reads.
    #[test]
    fn the_pipelined_weight_orders_take_the_tiled_transpose() {
        for (k, c, r) in [(64, 32, 3), (512, 512, 3), (64, 3, 7), (256, 1024, 1)] {
            let sh = Conv2dShape { n: 2, c, h: 9, w: 9, k, r, s: r, stride: 1, pad: r / 2, dilation: 1 };
            for order in [WeightOrder::Krsc, WeightOrder::Crsk] {
                if order.is_stored_layout(&sh) {
                    continue; // no copy at all (a 1x1's (K, R, S, C))
                }
                for back in [false, true] {
                    let walk = weight_order_walk("t", &sh, order, back).unwrap();
                    assert!(nd::as_transpose(&walk).is_some(), "({k}, {c}, {r}x{r}) {order:?} back {back}: {walk:?}");
                }
            }
        }
    }

    // The walk `reorder_weights` hands nd::copy puts stored element (k, c, q) where each order
    // says, for every element (a wrong axis or stride would move some).
    #[test]
    fn only_orders_that_move_bytes_are_copied() {
        let sh = |k, c, r| Conv2dShape { n: 2, c, h: 9, w: 9, k, r, s: r, stride: 1, pad: r / 2, dilation: 1 };
        // 1x1: (K, R, S, C) is (K, C, R, S); the transposes (C, K) are not, unless K or C is 1.
        assert!(WeightOrder::Krsc.is_stored_layout(&sh(64, 32, 1)));
        assert!(!WeightOrder::Crsk.is_stored_layout(&sh(64, 32, 1)) && !WeightOrder::Ckrs.is_stored_layout(&sh(64, 32, 1)));
        assert!(WeightOrder::Crsk.is_stored_layout(&sh(1, 32, 1)) && WeightOrder::Ckrs.is_stored_layout(&sh(64, 1, 3)));
        // 3x3 with several channels: every order but the stored one moves bytes.
        for o in [WeightOrder::Ckrs, WeightOrder::Krsc, WeightOrder::Crsk] {
            assert!(!o.is_stored_layout(&sh(64, 32, 3)), "{o:?}");
        }
        assert!(WeightOrder::Kcrs.is_stored_layout(&sh(64, 32, 3)));
        // The stem (C = 3, 7x7): (K, R, S, C) moves them.
        assert!(!WeightOrder::Krsc.is_stored_layout(&sh(64, 3, 7)));
    }

    #[test]
    fn weight_orders_place_every_element() {
        let (k, c, rs) = (5usize, 3usize, 4usize);
        let dims = [k, c, rs];
        let want = |o: WeightOrder, (kk, cc, q): (usize, usize, usize)| match o {
            WeightOrder::Kcrs => (kk * c + cc) * rs + q,
            WeightOrder::Ckrs => (cc * k + kk) * rs + q,
            WeightOrder::Krsc => (kk * rs + q) * c + cc,
            WeightOrder::Crsk => (cc * rs + q) * k + kk,
        };
        for o in [WeightOrder::Kcrs, WeightOrder::Ckrs, WeightOrder::Krsc, WeightOrder::Crsk] {
            let axes = o.axes();
            let out_dims = axes.map(|a| dims[a]);
            let dst_strides = [out_dims[1] * out_dims[2], out_dims[2], 1];
            let mut seen = vec![false; k * c * rs];
            for kk in 0..k {
                for cc in 0..c {
                    for q in 0..rs {
                        let idx = [kk, cc, q];
                        let at: usize = (0..3).map(|d| idx[axes[d]] * dst_strides[d]).sum();
                        assert_eq!(at, want(o, (kk, cc, q)), "{o:?}");
                        seen[at] = true;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "{o:?}");
        }
    }
}
