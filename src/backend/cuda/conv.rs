//! Convolutions on the GPU: the 2-D atrous convolution (forward, input gradient, weight
//! gradient; implicit GEMM in kernels/conv2d.cu) and the 1-D convolution across channels (ECA).

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::elementwise::fill;
use super::kernels as k;
use super::launch::{Arg, ConvGeom, check_len, grid_1d, grid_per_item, launch, to_i32};
use crate::error::{Error, Result};
use cudarc::driver::LaunchConfig;

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

fn gemm_grid(m: usize, n: usize, z: usize) -> Result<LaunchConfig> {
    let (gx, gy) = (n.div_ceil(TILE), m.div_ceil(TILE));
    if gx > i32::MAX as usize || gy > 65535 {
        return Err(Error::invalid("conv2d", format!("GEMM {m} x {n} needs a grid of {gx} x {gy} blocks: too large")));
    }
    Ok(LaunchConfig { grid_dim: (gx as u32, gy as u32, z as u32), block_dim: (TILE_THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// y (n, k, oh, ow) = conv(x, w) + bias.
pub fn conv2d_fwd(dev: &CudaDevice, sh: &Conv2dShape, x: &GpuBuffer, w: &GpuBuffer, bias: Option<&GpuBuffer>, y: &mut GpuBuffer) -> Result<()> {
    let op = k::CONV2D_FWD.name;
    let g = sh.geom(op)?;
    check_len(op, "x", x.len(), sh.input_len(), &[sh.n, sh.c, sh.h, sh.w])?;
    check_len(op, "weight", w.len(), sh.weight_len(), &[sh.k, sh.c, sh.r, sh.s])?;
    if let Some(b) = bias {
        check_len(op, "bias", b.len(), sh.k, &[sh.k])?;
    }
    check_len(op, "y", y.len(), sh.output_len(), &[sh.n, sh.k, sh.out_h(), sh.out_w()])?;
    let cfg = gemm_grid(sh.k, sh.n * sh.out_h() * sh.out_w(), 1)?;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(w.ptr()), Arg::Ptr(bias.map_or(0, GpuBuffer::ptr)), Arg::Ptr(y.ptr_mut()), Arg::Struct(&g)];
    launch(dev, k::CONV2D_FWD, cfg, &args)
}

/// dx (n, c, h, w) from dy and w; dx is overwritten.
pub fn conv2d_bwd_input(dev: &CudaDevice, sh: &Conv2dShape, dy: &GpuBuffer, w: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
    let op = k::CONV2D_BWD_INPUT.name;
    let g = sh.geom(op)?;
    check_len(op, "dy", dy.len(), sh.output_len(), &[sh.n, sh.k, sh.out_h(), sh.out_w()])?;
    check_len(op, "weight", w.len(), sh.weight_len(), &[sh.k, sh.c, sh.r, sh.s])?;
    check_len(op, "dx", dx.len(), sh.input_len(), &[sh.n, sh.c, sh.h, sh.w])?;
    let cfg = gemm_grid(sh.c, sh.n * sh.h * sh.w, 1)?;
    launch(dev, k::CONV2D_BWD_INPUT, cfg, &[Arg::Ptr(dy.ptr()), Arg::Ptr(w.ptr()), Arg::Ptr(dx.ptr_mut()), Arg::Struct(&g)])
}

/// How many ways to split the weight gradient's reduction (over N*OH*OW pixels) so that the
/// grid fills the card: about two blocks per SM, each split at least 4 reduction tiles long.
pub fn weight_grad_splits(sh: &Conv2dShape, sm_count: usize) -> usize {
    let tiles = (sh.c * sh.r * sh.s).div_ceil(TILE) * sh.k.div_ceil(TILE);
    let red = sh.n * sh.out_h() * sh.out_w();
    let wanted = (2 * sm_count).div_ceil(tiles.max(1));
    let most = (red / (4 * TILE_K)).max(1);
    wanted.clamp(1, most.min(65535))
}

/// dw (k, c, r, s) from x and dy; dw is overwritten.
pub fn conv2d_bwd_weight(dev: &CudaDevice, sh: &Conv2dShape, x: &GpuBuffer, dy: &GpuBuffer, dw: &mut GpuBuffer) -> Result<()> {
    let op = k::CONV2D_BWD_WEIGHT.name;
    let g = sh.geom(op)?;
    check_len(op, "x", x.len(), sh.input_len(), &[sh.n, sh.c, sh.h, sh.w])?;
    check_len(op, "dy", dy.len(), sh.output_len(), &[sh.n, sh.k, sh.out_h(), sh.out_w()])?;
    check_len(op, "dw", dw.len(), sh.weight_len(), &[sh.k, sh.c, sh.r, sh.s])?;
    let red = sh.n * sh.out_h() * sh.out_w();
    let splits = weight_grad_splits(sh, dev.sm_count() as usize);
    // Each split covers a whole number of BK tiles.
    let chunk = red.div_ceil(splits).div_ceil(TILE_K) * TILE_K;
    let splits = red.div_ceil(chunk);
    if splits > 1 {
        fill(dev, dw, 0.0)?; // partial sums are added atomically
    }
    let cfg = gemm_grid(sh.k, sh.c * sh.r * sh.s, splits)?;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(dy.ptr()), Arg::Ptr(dw.ptr_mut()), Arg::Struct(&g), Arg::I32(chunk as i32)];
    launch(dev, k::CONV2D_BWD_WEIGHT, cfg, &args)
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
        // 64 channels at 32x32: 9 output tiles, 20480-long reduction: split.
        let s = shape(20, 64, 32, 1);
        let splits = weight_grad_splits(&s, 132);
        assert!(splits * 9 >= 2 * 132 && splits * 9 < 2 * 132 + 9, "{splits}");
        // 512 channels: 8 x 72 = 576 tiles already fill 132 SMs.
        assert_eq!(weight_grad_splits(&shape(20, 512, 16, 4), 132), 1);
        // A short reduction is never cut below 4 tiles per split.
        assert_eq!(weight_grad_splits(&shape(1, 8, 4, 1), 132), 1);
    }
}
