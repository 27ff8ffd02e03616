//! Convolutions: conv2d over NCHW on the CPU convolution kernels (`backend::cpu::conv`, which
//! include the 1x1 fast path), and the 1-D convolution across channels of ECA attention.

use super::{PAR_MIN, gpu, same_device};
use crate::backend::cpu::conv::{
    ConvGeometry, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Sum of each channel of `dy` (N,K,P) over N and P: the bias gradient.
fn bias_grad_cpu(dy: &[f32], n: usize, k: usize, plane: usize) -> Vec<f32> {
    let per_channel = |c: usize| -> f32 {
        (0..n)
            .map(|i| {
                dy[(i * k + c) * plane..(i * k + c + 1) * plane]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
            })
            .sum::<f64>() as f32
    };
    if dy.len() >= PAR_MIN {
        (0..k).into_par_iter().map(per_channel).collect()
    } else {
        (0..k).map(per_channel).collect()
    }
}

impl Tensor {
    /// 2-D convolution (cross-correlation, as PyTorch): input (N,C,H,W), weight (K,C,R,S),
    /// optional bias (K), the same stride, zero padding and dilation on both axes.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        self.shape().expect_rank(OP, 4, "(N,C,H,W)")?;
        weight.shape().expect_rank(OP, 4, "(K,C,R,S) weight")?;
        let (x, w) = (self.dims(), weight.dims());
        if x[1] != w[1] {
            return Err(Error::shape(
                OP,
                format!(
                    "input {} has {} channels, weight {} expects {}",
                    self.shape(),
                    x[1],
                    weight.shape(),
                    w[1]
                ),
            ));
        }
        if let Some(b) = bias
            && b.dims() != [w[0]]
        {
            return Err(Error::shape(
                OP,
                format!(
                    "bias {} does not fit weight {} (needs [{}])",
                    b.shape(),
                    weight.shape(),
                    w[0]
                ),
            ));
        }
        let g = ConvGeometry {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            k: w[0],
            r: w[2],
            s: w[3],
            stride,
            pad: padding,
            dilation,
        };
        g.validate()?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let device = same_device(OP, &inputs)?;
        let out_shape = Shape::from([g.n, g.k, g.out_h(), g.out_w()]);
        let sh = g;
        let storage = match device {
            Device::Cpu => {
                let mut y = vec![0f32; out_shape.numel()];
                let (sx, sw) = (self.storage(), weight.storage());
                let sb = bias.map(|b| b.storage());
                let bv = sb.as_ref().map(|s| s.as_cpu(OP)).transpose()?;
                conv2d_forward(&g, sx.as_cpu(OP)?, sw.as_cpu(OP)?, bv, &mut y);
                Storage::Cpu(y)
            }
            Device::Cuda(_) => gpu::conv2d_fwd(OP, self, weight, bias, &sh)?,
        };
        let (xt, wt, has_bias) = (self.clone(), weight.clone(), bias.is_some());
        let bias_tracks = bias.is_some_and(|b| b.tracks_grad());
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            out_shape,
            &inputs,
            move |dy, _| {
                if let Device::Cuda(_) = dy.device() {
                    let dx = xt
                        .tracks_grad()
                        .then(|| gpu::conv2d_bwd_input(OP, dy, &wt, &sh))
                        .transpose()?;
                    let dw = wt
                        .tracks_grad()
                        .then(|| gpu::conv2d_bwd_weight(OP, &xt, dy, &sh))
                        .transpose()?;
                    let mut grads = vec![dx, dw];
                    if has_bias {
                        // The bias gradient: dy summed over batch and pixels, by the reduction kernels.
                        grads.push(
                            bias_tracks
                                .then(|| dy.sum_to(&Shape::from([1, sh.k, 1, 1]))?.reshape([sh.k]))
                                .transpose()?,
                        );
                    }
                    return Ok(grads);
                }
                let (sx, sw, sg) = (xt.storage(), wt.storage(), dy.storage());
                let (xv, wv, gv) = (sx.as_cpu(OP)?, sw.as_cpu(OP)?, sg.as_cpu(OP)?);
                let dx = if xt.tracks_grad() {
                    let mut dx = vec![0f32; xt.numel()];
                    conv2d_backward_input(&g, gv, wv, &mut dx);
                    Some(Tensor::from_vec(dx, xt.shape().clone(), xt.device())?)
                } else {
                    None
                };
                let dw = if wt.tracks_grad() {
                    let mut dw = vec![0f32; wt.numel()];
                    conv2d_backward_weight(&g, xv, gv, &mut dw);
                    Some(Tensor::from_vec(dw, wt.shape().clone(), wt.device())?)
                } else {
                    None
                };
                let mut grads = vec![dx, dw];
                if has_bias {
                    let db = bias_tracks
                        .then(|| {
                            Tensor::from_vec(
                                bias_grad_cpu(gv, g.n, g.k, g.out_h() * g.out_w()),
                                [g.k],
                                dy.device(),
                            )
                        })
                        .transpose()?;
                    grads.push(db);
                }
                Ok(grads)
            },
        ))
    }

    /// ECA's 1-D convolution across channels: each image's channel vector (from (N,C), (N,1,C)
    /// or (N,C,1,1)) is convolved with an odd-length kernel (k), (1,k) or (1,1,k), zero padded
    /// to keep C; no bias. The output has the input's shape.
    pub fn conv1d_channels(&self, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv1d_channels";
        let (n, c) = match self.dims() {
            &[n, c] | &[n, 1, c] | &[n, c, 1, 1] => (n, c),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "input must be (N,C), (N,1,C) or (N,C,1,1), got {}",
                        self.shape()
                    ),
                ));
            }
        };
        let k = weight.numel();
        if weight.dims().iter().rev().skip(1).any(|&d| d != 1) || k.is_multiple_of(2) {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must be an odd-length kernel (k), (1,k) or (1,1,k), got {}",
                    weight.shape()
                ),
            ));
        }
        let device = same_device(OP, &[self, weight])?;
        let half = (k / 2) as isize;
        // y[i,j] = sum_t w[t] x[i, j + t - half], zero outside 0..c
        let correlate = move |x: &[f32], w: &[f32]| -> Vec<f32> {
            let mut y = vec![0f32; n * c];
            for (yi, xi) in y.chunks_mut(c).zip(x.chunks(c)) {
                for (j, yj) in yi.iter_mut().enumerate() {
                    *yj = w
                        .iter()
                        .enumerate()
                        .map(|(t, &wt)| {
                            let src = j as isize + t as isize - half;
                            if (0..c as isize).contains(&src) {
                                wt * xi[src as usize]
                            } else {
                                0.0
                            }
                        })
                        .sum();
                }
            }
            y
        };
        let storage = match device {
            Device::Cpu => {
                let (sx, sw) = (self.storage(), weight.storage());
                Storage::Cpu(correlate(sx.as_cpu(OP)?, sw.as_cpu(OP)?))
            }
            Device::Cuda(_) => gpu::conv1d_fwd(OP, self, weight, n, c)?,
        };
        let (xt, wt) = (self.clone(), weight.clone());
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            self.shape().clone(),
            &[self, weight],
            move |g, _| {
                if let Device::Cuda(_) = g.device() {
                    let (dx, dw) = gpu::conv1d_bwd(OP, &xt, &wt, g, n, c)?;
                    return Ok(vec![Some(dx), Some(dw)]);
                }
                let (sx, sw, sg) = (xt.storage(), wt.storage(), g.storage());
                let (xv, wv, gv) = (sx.as_cpu(OP)?, sw.as_cpu(OP)?, sg.as_cpu(OP)?);
                // The adjoint of a zero-padded correlation is the correlation with the flipped kernel.
                let flipped: Vec<f32> = wv.iter().rev().copied().collect();
                let dx =
                    Tensor::from_vec(correlate(gv, &flipped), xt.shape().clone(), xt.device())?;
                let mut dw = vec![0f32; k];
                for (gi, xi) in gv.chunks(c).zip(xv.chunks(c)) {
                    for (t, d) in dw.iter_mut().enumerate() {
                        for (j, &gj) in gi.iter().enumerate() {
                            let src = j as isize + t as isize - half;
                            if (0..c as isize).contains(&src) {
                                *d += gj * xi[src as usize];
                            }
                        }
                    }
                }
                Ok(vec![
                    Some(dx),
                    Some(Tensor::from_vec(dw, wt.shape().clone(), wt.device())?),
                ])
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Direct loops over the PyTorch definition.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0f32; g.n * g.k * oh * ow];
        for n in 0..g.n {
            for k in 0..g.k {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = b[k] as f64;
                        for c in 0..g.c {
                            for r in 0..g.r {
                                for s in 0..g.s {
                                    let hi =
                                        (i * g.stride + r * g.dilation) as isize - g.pad as isize;
                                    let wi =
                                        (j * g.stride + s * g.dilation) as isize - g.pad as isize;
                                    if hi >= 0
                                        && wi >= 0
                                        && (hi as usize) < g.h
                                        && (wi as usize) < g.w
                                    {
                                        acc += (x[((n * g.c + c) * g.h + hi as usize) * g.w
                                            + wi as usize]
                                            * w[((k * g.c + c) * g.r + r) * g.s + s])
                                            as f64;
                                    }
                                }
                            }
                        }
                        y[((n * g.k + k) * oh + i) * ow + j] = acc as f32;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv2d_matches_naive() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for &(stride, pad, dil, r) in &[
            (1, 1, 1, 3),
            (2, 1, 1, 3),
            (1, 2, 2, 3),
            (1, 0, 1, 1),
            (2, 0, 1, 1),
            (2, 3, 1, 7),
        ] {
            let x = Tensor::randn([2, 3, 9, 8], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
            let w = Tensor::randn([4, 3, r, r], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
            let b = Tensor::randn([4], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
            let y = x.conv2d(&w, Some(&b), stride, pad, dil).unwrap();
            let g = ConvGeometry {
                n: 2,
                c: 3,
                h: 9,
                w: 8,
                k: 4,
                r,
                s: r,
                stride,
                pad,
                dilation: dil,
            };
            let want = naive_conv(
                &x.to_vec().unwrap(),
                &w.to_vec().unwrap(),
                &b.to_vec().unwrap(),
                &g,
            );
            assert_eq!(y.dims(), &[2, 4, g.out_h(), g.out_w()]);
            for (a, e) in y.to_vec().unwrap().iter().zip(&want) {
                assert!(
                    (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                    "stride {stride} pad {pad} dil {dil} r {r}: {a} vs {e}"
                );
            }
        }
        let x = Tensor::randn([1, 3, 4, 4], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let w = Tensor::randn([2, 5, 3, 3], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let e = x.conv2d(&w, None, 1, 1, 1).unwrap_err().to_string();
        assert!(
            e.contains("conv2d") && e.contains("[1, 3, 4, 4]") && e.contains("[2, 5, 3, 3]"),
            "{e}"
        );
    }

    #[test]
    fn conv1d_channels_matches_naive() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let x = Tensor::randn([2, 6, 1, 1], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let w = Tensor::randn([1, 1, 3], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let y = x.conv1d_channels(&w).unwrap().to_vec().unwrap();
        let (xv, wv) = (x.to_vec().unwrap(), w.to_vec().unwrap());
        // channel 0 of image 1: zero pad on the left
        assert!((y[6] - (wv[1] * xv[6] + wv[2] * xv[7])).abs() < 1e-6);
        assert!((y[9] - (wv[0] * xv[8] + wv[1] * xv[9] + wv[2] * xv[10])).abs() < 1e-6);
        assert!(
            x.conv1d_channels(&Tensor::ones([2], Device::Cpu).unwrap())
                .is_err()
        );
    }
}
