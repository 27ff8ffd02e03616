//! 2-D convolution on the CPU (NCHW input, KCRS weight), forward and both backward passes.
//!
//! Every pass is lowered to SGEMM on an im2col matrix `col[(c,r,s), (oh,ow)]` per image, whose rows
//! line up with the weight viewed as a `K x (C*R*S)` matrix:
//! - forward:          `Y_n[K, OH*OW] = W[K, CRS] * col_n`
//! - backward input:   `col = W^T * dY_n`, then col2im scatters it back into `dX_n`
//! - backward weight:  `dW[K, CRS] = sum_n dY_n * col_n^T`
//!
//! 1x1 stride-1 unpadded convolutions skip im2col: the image itself is the column matrix.
//! Threads: with at least one image per thread the images are spread over the rayon pool and each
//! GEMM runs single-threaded; otherwise images run in turn and each GEMM uses the whole pool.
//!
//! The slice functions trust their lengths (callers validate shapes with
//! [`ConvGeometry::validate`] and the tensor shapes); lengths are only `debug_assert!`ed.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{Product, Threads, sgemm_threads};
use crate::{Error, Result};

/// Sizes of one convolution: input `n x c x h x w`, weight `k x c x r x s`, symmetric zero
/// padding `pad`, the same `stride` and `dilation` on both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
    pub dilation: usize,
}

impl ConvGeometry {
    /// Output height: `(h + 2 pad - dilation (r - 1) - 1) / stride + 1` (0 if the kernel does not fit).
    pub fn out_h(&self) -> usize {
        out_len(self.h, self.r, self.stride, self.pad, self.dilation)
    }

    /// Output width, as [`out_h`](Self::out_h).
    pub fn out_w(&self) -> usize {
        out_len(self.w, self.s, self.stride, self.pad, self.dilation)
    }

    /// Checks that every size is positive and the (dilated) kernel fits in the padded input.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("n", self.n),
            ("c", self.c),
            ("h", self.h),
            ("w", self.w),
            ("k", self.k),
            ("r", self.r),
            ("s", self.s),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::shape("conv2d", format!("{name} is 0 in {self:?}")));
        }
        for (axis, input, kernel) in [("height", self.h, self.r), ("width", self.w, self.s)] {
            let extent = (kernel - 1)
                .checked_mul(self.dilation)
                .and_then(|e| e.checked_add(1));
            let padded = self.pad.checked_mul(2).and_then(|p| p.checked_add(input));
            match (extent, padded) {
                (Some(e), Some(p)) if e <= p => {}
                _ => {
                    return Err(Error::shape(
                        "conv2d",
                        format!(
                            "empty output: dilated kernel {axis} {kernel} (dilation {}) exceeds \
                             padded input {axis} {input} + 2*{} in {self:?}",
                            self.dilation, self.pad
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Multiply-adds times two: `2 N K OH OW C R S` (the same for each of the three passes).
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.k * self.out_h() * self.out_w()) as f64
            * (self.c * self.r * self.s) as f64
    }

    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_spatial(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Rows of the im2col matrix = columns of the weight matrix.
    fn crs(&self) -> usize {
        self.c * self.r * self.s
    }
    /// 1x1, stride 1, no padding: the input image already is the column matrix.
    fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.pad == 0
    }
    fn debug_check(&self, x_len: usize, w_len: usize, y_len: usize) {
        debug_assert!(self.validate().is_ok(), "conv2d: invalid geometry {self:?}");
        debug_assert_eq!(
            x_len,
            self.n * self.in_len(),
            "conv2d: input length for {self:?}"
        );
        debug_assert_eq!(
            w_len,
            self.k * self.crs(),
            "conv2d: weight length for {self:?}"
        );
        debug_assert_eq!(
            y_len,
            self.n * self.k * self.out_spatial(),
            "conv2d: output length for {self:?}"
        );
    }
}

fn out_len(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    let extent = dilation * (kernel.max(1) - 1) + 1;
    let padded = input + 2 * pad;
    if stride == 0 || extent > padded {
        0
    } else {
        (padded - extent) / stride + 1
    }
}

/// Output positions `o` in `lo..hi` whose input coordinate `o*stride + tap - pad` lies in
/// `0..in_len` (`tap` = kernel offset times dilation); the rest read zero padding.
fn valid_range(
    out_len: usize,
    in_len: usize,
    tap: usize,
    pad: usize,
    stride: usize,
) -> (usize, usize) {
    let lo = if tap >= pad {
        0
    } else {
        (pad - tap).div_ceil(stride)
    };
    let hi = if in_len + pad <= tap {
        0
    } else {
        (in_len + pad - tap - 1) / stride + 1
    };
    let hi = hi.min(out_len);
    (lo.min(hi), hi)
}

/// Runs `f(channel, chunk)` over the per-channel chunks of `buf`, on the rayon pool when `threads`
/// is `Pool` and there is enough work to pay for the fork (else on this thread).
fn for_each_channel(
    threads: Threads,
    buf: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if threads == Threads::Pool && buf.len() >= 1 << 16 {
        // Chunks of >= 16K floats per task keep the fork overhead negligible.
        let min_len = (1 << 14) / chunk.max(1);
        buf.par_chunks_exact_mut(chunk)
            .with_min_len(min_len.max(1))
            .enumerate()
            .for_each(|(c, b)| f(c, b));
    } else {
        buf.chunks_exact_mut(chunk)
            .enumerate()
            .for_each(|(c, b)| f(c, b));
    }
}

/// Unfolds one image `x[C, H, W]` into `col[(c,r,s), (oh,ow)]`; padding becomes zeros.
fn im2col(g: &ConvGeometry, threads: Threads, x: &[f32], col: &mut [f32]) {
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let ohw = oh_n * ow_n;
    let plane_len = g.h * g.w;
    for_each_channel(threads, col, g.r * g.s * ohw, |c, rows| {
        let plane = &x[c * plane_len..(c + 1) * plane_len];
        for (rs, row) in rows.chunks_exact_mut(ohw).enumerate() {
            let (r, s) = (rs / g.s, rs % g.s);
            let (oh_lo, oh_hi) = valid_range(oh_n, g.h, r * g.dilation, g.pad, g.stride);
            let (ow_lo, ow_hi) = valid_range(ow_n, g.w, s * g.dilation, g.pad, g.stride);
            row[..oh_lo * ow_n].fill(0.0);
            row[oh_hi * ow_n..].fill(0.0);
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride + r * g.dilation - g.pad;
                let out = &mut row[oh * ow_n..(oh + 1) * ow_n];
                out[..ow_lo].fill(0.0);
                out[ow_hi..].fill(0.0);
                if ow_lo == ow_hi {
                    continue;
                }
                let iw0 = ow_lo * g.stride + s * g.dilation - g.pad;
                let line = &plane[ih * g.w..(ih + 1) * g.w];
                if g.stride == 1 {
                    out[ow_lo..ow_hi].copy_from_slice(&line[iw0..iw0 + (ow_hi - ow_lo)]);
                } else {
                    for (o, v) in out[ow_lo..ow_hi]
                        .iter_mut()
                        .zip(line[iw0..].iter().step_by(g.stride))
                    {
                        *o = *v;
                    }
                }
            }
        }
    });
}

/// Folds `col[(c,r,s), (oh,ow)]` back onto one image, summing overlaps: `dx` is overwritten.
fn col2im(g: &ConvGeometry, threads: Threads, col: &[f32], dx: &mut [f32]) {
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let ohw = oh_n * ow_n;
    let rs_n = g.r * g.s;
    // Each channel's plane only receives its own R*S rows, so channels are independent.
    for_each_channel(threads, dx, g.h * g.w, |c, plane| {
        plane.fill(0.0);
        let rows = &col[c * rs_n * ohw..(c + 1) * rs_n * ohw];
        for (rs, row) in rows.chunks_exact(ohw).enumerate() {
            let (r, s) = (rs / g.s, rs % g.s);
            let (oh_lo, oh_hi) = valid_range(oh_n, g.h, r * g.dilation, g.pad, g.stride);
            let (ow_lo, ow_hi) = valid_range(ow_n, g.w, s * g.dilation, g.pad, g.stride);
            if ow_lo == ow_hi {
                continue;
            }
            let iw0 = ow_lo * g.stride + s * g.dilation - g.pad;
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride + r * g.dilation - g.pad;
                let src = &row[oh * ow_n + ow_lo..oh * ow_n + ow_hi];
                let line = &mut plane[ih * g.w..(ih + 1) * g.w];
                if g.stride == 1 {
                    for (d, v) in line[iw0..iw0 + src.len()].iter_mut().zip(src) {
                        *d += *v;
                    }
                } else {
                    for (d, v) in line[iw0..].iter_mut().step_by(g.stride).zip(src) {
                        *d += *v;
                    }
                }
            }
        }
    });
}

thread_local! {
    /// One reusable im2col buffer per thread, so repeated convolutions do not re-allocate it;
    /// it keeps the largest size seen (a few MB for the network's layers).
    static COL_BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` floats (contents unspecified), reusing this thread's buffer
/// unless it is already in use further up the stack (a rayon worker can re-enter while waiting).
fn with_col<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COL_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// How to spread `n` images over the pool: `Single` GEMMs inside a parallel loop over images, or
/// images in turn with `Pool` GEMMs.
fn image_threads(n: usize) -> Threads {
    if n >= rayon::current_num_threads() && n > 1 {
        Threads::Single
    } else {
        Threads::Pool
    }
}

/// Runs `f(image index, image's output slice)` for every image, in parallel over images when
/// `threads` is `Single`.
fn for_each_image(
    threads: Threads,
    out: &mut [f32],
    per_image: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    match threads {
        Threads::Single => out
            .par_chunks_exact_mut(per_image)
            .enumerate()
            .for_each(|(i, o)| f(i, o)),
        Threads::Pool => out
            .chunks_exact_mut(per_image)
            .enumerate()
            .for_each(|(i, o)| f(i, o)),
    }
}

/// Forward convolution: `y[n, k, oh, ow] = bias[k] + sum_{c,r,s} w[k,c,r,s] x[n, c, ih, iw]`.
/// `y` (N x K x OH x OW) is overwritten. `bias`, if given, has K elements.
pub fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    g.debug_check(x.len(), w.len(), y.len());
    debug_assert!(
        bias.is_none_or(|b| b.len() == g.k),
        "conv2d: bias length for {g:?}"
    );
    let (crs, ohw) = (g.crs(), g.out_spatial());
    let threads = image_threads(g.n);
    let product = |beta| Product {
        trans_a: false,
        trans_b: false,
        m: g.k,
        n: ohw,
        k: crs,
        alpha: 1.0,
        beta,
    };
    for_each_image(threads, y, g.k * ohw, |i, y_i| {
        let x_i = &x[i * g.in_len()..(i + 1) * g.in_len()];
        // With a bias, seed Y with it and let the GEMM accumulate (beta = 1).
        let beta = match bias {
            Some(b) => {
                for (row, &bk) in y_i.chunks_exact_mut(ohw).zip(b) {
                    row.fill(bk);
                }
                1.0
            }
            None => 0.0,
        };
        if g.is_pointwise() {
            sgemm_threads(threads, product(beta), w, x_i, y_i);
        } else {
            with_col(crs * ohw, |col| {
                im2col(g, threads, x_i, col);
                sgemm_threads(threads, product(beta), w, col, y_i);
            });
        }
    });
}

/// Gradient of the forward pass with respect to its input: `dx` (N x C x H x W) is overwritten
/// from `dy` (N x K x OH x OW) and the weight.
pub fn conv2d_backward_input(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    g.debug_check(dx.len(), w.len(), dy.len());
    let (crs, ohw) = (g.crs(), g.out_spatial());
    let threads = image_threads(g.n);
    // col (or dX) = W^T * dY_i.
    let product = Product {
        trans_a: true,
        trans_b: false,
        m: crs,
        n: ohw,
        k: g.k,
        alpha: 1.0,
        beta: 0.0,
    };
    for_each_image(threads, dx, g.in_len(), |i, dx_i| {
        let dy_i = &dy[i * g.k * ohw..(i + 1) * g.k * ohw];
        if g.is_pointwise() {
            sgemm_threads(threads, product, w, dy_i, dx_i);
        } else {
            with_col(crs * ohw, |col| {
                sgemm_threads(threads, product, w, dy_i, col);
                col2im(g, threads, col, dx_i);
            });
        }
    });
}

/// Gradient of the forward pass with respect to the weight: `dw` (K x C x R x S) is overwritten
/// with the sum over the batch.
pub fn conv2d_backward_weight(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    g.debug_check(x.len(), dw.len(), dy.len());
    let (crs, ohw) = (g.crs(), g.out_spatial());
    let transposed = g.k <= TRANSPOSED_DW_MAX_K && g.n * ohw >= TRANSPOSED_DW_MIN_COLUMNS;
    // Adds dY_i * col_i^T for the images in `range` into `acc` ([K, CRS], or its transpose
    // col_i * dY_i^T as [CRS, K]); the first image overwrites.
    let accumulate = |range: std::ops::Range<usize>, acc: &mut [f32], threads: Threads| {
        for (j, i) in range.enumerate() {
            let x_i = &x[i * g.in_len()..(i + 1) * g.in_len()];
            let dy_i = &dy[i * g.k * ohw..(i + 1) * g.k * ohw];
            let beta = if j == 0 { 0.0 } else { 1.0 };
            // dW^T = col * dY_i^T or dW = dY_i * col^T.
            let (m, n) = if transposed { (crs, g.k) } else { (g.k, crs) };
            let p = Product {
                trans_a: false,
                trans_b: true,
                m,
                n,
                k: ohw,
                alpha: 1.0,
                beta,
            };
            let product = |col: &[f32], acc: &mut [f32]| match transposed {
                true => sgemm_threads(threads, p, col, dy_i, acc),
                false => sgemm_threads(threads, p, dy_i, col, acc),
            };
            if g.is_pointwise() {
                product(x_i, acc);
            } else {
                with_col(crs * ohw, |col| {
                    im2col(g, threads, x_i, col);
                    product(col, acc);
                });
            }
        }
    };
    // With images spread over threads, each thread sums a contiguous group into its own partial.
    let threads = image_threads(g.n);
    let groups = match threads {
        Threads::Single => rayon::current_num_threads().min(g.n),
        Threads::Pool => 1,
    };
    let per_group = g.n.div_ceil(groups);
    // Sums all groups into partials[0].
    let run_groups = |partials: &mut [&mut [f32]]| {
        let run_group = |(t, acc): (usize, &mut &mut [f32])| {
            let range = t * per_group..((t + 1) * per_group).min(g.n);
            if range.is_empty() {
                acc.fill(0.0);
            } else {
                accumulate(range, acc, threads);
            }
        };
        match threads {
            Threads::Single => partials.par_iter_mut().enumerate().for_each(run_group),
            Threads::Pool => partials.iter_mut().enumerate().for_each(run_group),
        }
        let (sum, rest) = partials
            .split_first_mut()
            .expect("at least one image group");
        for partial in rest {
            sum.iter_mut()
                .zip(partial.iter())
                .for_each(|(d, p)| *d += *p);
        }
    };
    let len = g.k * crs;
    if transposed {
        let mut scratch = vec![0.0f32; groups * len];
        let mut partials: Vec<&mut [f32]> = scratch.chunks_exact_mut(len).collect();
        run_groups(&mut partials);
        transpose(partials[0], crs, g.k, dw);
    } else {
        // dw itself holds group 0's partial sum.
        let mut scratch = vec![0.0f32; (groups - 1) * len];
        let mut partials: Vec<&mut [f32]> = vec![dw];
        partials.extend(scratch.chunks_exact_mut(len));
        run_groups(&mut partials);
    }
}

/// When to compute the weight gradient transposed (`dW^T = col * dY^T`, then one transpose of the
/// `K x CRS` result): with the gemm crate that product runs at ~90 GFLOP/s per core for K = 64..256
/// where the direct `dY * col^T` gets 60-85 (measured; at K = 512 the direct form is faster). The
/// transpose costs about as much as 70 columns of GEMM work per weight element, so it only pays
/// when the batch has many output pixels (N * OH * OW).
const TRANSPOSED_DW_MAX_K: usize = 256;
const TRANSPOSED_DW_MIN_COLUMNS: usize = 1024;

/// `dst[cols, rows] = src[rows, cols]^T`, in cache-sized tiles.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// The reference for the tests here and in `ops::conv`: a direct 7-loop convolution computing all
/// three passes at once (f64 accumulators); returns (y, dx, dw) for input x, weight w, bias,
/// upstream gradient dy.
#[cfg(test)]
pub(crate) fn reference_conv2d(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let mut y = vec![0.0f64; g.n * g.k * oh_n * ow_n];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    for n in 0..g.n {
        for k in 0..g.k {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let yi = ((n * g.k + k) * oh_n + oh) * ow_n + ow;
                    y[yi] = bias.map_or(0.0, |b| b[k] as f64);
                    for c in 0..g.c {
                        for r in 0..g.r {
                            for s in 0..g.s {
                                let ih = (oh * g.stride + r * g.dilation) as isize - g.pad as isize;
                                let iw = (ow * g.stride + s * g.dilation) as isize - g.pad as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((k * g.c + c) * g.r + r) * g.s + s;
                                y[yi] += w[wi] as f64 * x[xi] as f64;
                                dx[xi] += w[wi] as f64 * dy[yi] as f64;
                                dw[wi] += x[xi] as f64 * dy[yi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|e| e as f32).collect();
    (f(y), f(dx), f(dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        r: usize,
        s: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            n,
            c,
            h,
            w,
            k,
            r,
            s,
            stride,
            pad,
            dilation,
        }
    }

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }

    /// Checks all three passes against the naive convolution on random data; the outputs start
    /// as NaN so any element a kernel forgets to write fails.
    fn check(g: ConvGeometry, with_bias: bool, seed: u64) {
        g.validate().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random(&mut rng, g.n * g.c * g.h * g.w);
        let w = random(&mut rng, g.k * g.c * g.r * g.s);
        let b = random(&mut rng, g.k);
        let dy = random(&mut rng, g.n * g.k * g.out_h() * g.out_w());
        let bias = with_bias.then_some(&b[..]);
        let (y_ref, dx_ref, dw_ref) = reference_conv2d(&g, &x, &w, bias, &dy);

        let mut y = vec![f32::NAN; y_ref.len()];
        conv2d_forward(&g, &x, &w, bias, &mut y);
        assert_close(&y, &y_ref, &format!("forward {g:?} bias {with_bias}"));
        let mut dx = vec![f32::NAN; dx_ref.len()];
        conv2d_backward_input(&g, &dy, &w, &mut dx);
        assert_close(&dx, &dx_ref, &format!("backward input {g:?}"));
        let mut dw = vec![f32::NAN; dw_ref.len()];
        conv2d_backward_weight(&g, &x, &dy, &mut dw);
        assert_close(&dw, &dw_ref, &format!("backward weight {g:?}"));
    }

    #[test]
    fn matches_naive_3x3_padded_batch() {
        check(geom(2, 3, 7, 9, 4, 3, 3, 1, 1, 1), true, 1);
        check(geom(5, 3, 6, 5, 2, 3, 3, 1, 1, 1), false, 2);
    }

    #[test]
    fn matches_naive_pointwise_fast_path_and_strided_1x1() {
        check(geom(2, 5, 6, 5, 3, 1, 1, 1, 0, 1), true, 3);
        check(geom(1, 5, 6, 5, 3, 1, 1, 1, 0, 1), false, 4);
        check(geom(1, 4, 7, 8, 2, 1, 1, 2, 0, 1), true, 5);
        check(geom(3, 4, 5, 5, 2, 1, 1, 1, 1, 1), false, 6);
    }

    #[test]
    fn matches_naive_dilated() {
        check(geom(1, 3, 10, 8, 5, 3, 3, 1, 2, 2), true, 7);
        check(geom(3, 2, 12, 11, 3, 3, 3, 1, 4, 4), true, 8);
        check(geom(2, 2, 9, 9, 3, 3, 3, 1, 0, 4), false, 9);
        check(geom(2, 3, 13, 11, 2, 3, 3, 3, 3, 2), false, 10);
    }

    #[test]
    fn matches_naive_strided_non_square() {
        check(geom(2, 3, 9, 10, 4, 3, 2, 2, 1, 1), true, 11);
        check(geom(1, 2, 5, 6, 3, 5, 3, 1, 0, 1), false, 12);
        check(geom(2, 3, 11, 7, 2, 2, 4, 3, 2, 1), true, 13);
        // Padding wider than the kernel reaches: whole rows and columns of pure padding.
        check(geom(1, 2, 3, 4, 2, 3, 3, 1, 3, 1), true, 14);
    }

    #[test]
    fn matches_naive_channels_large_enough_for_threaded_gemm() {
        check(geom(1, 32, 12, 12, 48, 3, 3, 1, 4, 4), true, 15);
        check(geom(4, 16, 10, 10, 24, 3, 3, 1, 2, 2), false, 16);
    }

    #[test]
    fn matches_naive_with_transposed_weight_gradient() {
        // Enough output pixels (N * OH * OW >= TRANSPOSED_DW_MIN_COLUMNS) for the transposed dW
        // product: one image (threads inside GEMM), several images, and the pointwise path.
        for (i, g) in [
            geom(1, 3, 33, 32, 5, 3, 3, 1, 1, 1),
            geom(3, 4, 24, 20, 6, 3, 3, 1, 2, 2),
            geom(3, 5, 20, 20, 4, 1, 1, 1, 0, 1),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(g.n * g.out_h() * g.out_w() >= TRANSPOSED_DW_MIN_COLUMNS);
            check(g, true, 30 + i as u64);
        }
    }

    #[test]
    fn repeated_calls_reuse_buffers_correctly() {
        // A smaller geometry after a larger one must not read the larger call's leftovers.
        check(geom(1, 8, 16, 16, 8, 3, 3, 1, 2, 2), true, 17);
        check(geom(1, 3, 5, 4, 2, 3, 3, 1, 1, 1), true, 18);
    }

    #[test]
    fn geometry_sizes_flops_and_validation() {
        let g = geom(1, 512, 16, 16, 512, 3, 3, 1, 4, 4);
        assert_eq!((g.out_h(), g.out_w()), (16, 16));
        assert_eq!(g.flops(), 2.0 * 512.0 * 256.0 * 512.0 * 9.0);
        let g = geom(2, 3, 9, 10, 4, 3, 2, 2, 1, 1);
        assert_eq!((g.out_h(), g.out_w()), (5, 6));
        assert!(g.validate().is_ok());

        let zero_c = geom(1, 0, 5, 5, 1, 3, 3, 1, 1, 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            zero_c.contains("conv2d") && zero_c.contains("c is 0"),
            "{zero_c}"
        );
        let zero_stride = geom(1, 1, 5, 5, 1, 3, 3, 0, 1, 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(zero_stride.contains("stride is 0"), "{zero_stride}");
        let too_big = geom(1, 1, 5, 9, 1, 3, 3, 1, 0, 3)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            too_big.contains("empty output") && too_big.contains("height"),
            "{too_big}"
        );
        assert_eq!(geom(1, 1, 5, 9, 1, 3, 3, 1, 0, 3).out_h(), 0);
        let overflow = geom(1, 1, 5, 5, 1, 3, 3, 1, usize::MAX, 1).validate();
        assert!(overflow.is_err());
    }
}
