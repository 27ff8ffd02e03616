//! Convolutions on the CPU: conv2d on `backend::cpu::conv`, ECA's channel convolution as plain
//! loops.

use super::{CONV1D, CONV2D, ConvKernels};
use crate::backend::cpu::conv::{
    ConvGeometry, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large};
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;

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
    let mut out = vec![0f32; k];
    for_each_par_if_large(dy.len(), out.par_iter_mut().enumerate(), |(c, o)| *o = per_channel(c));
    out
}

/// y\[i,j\] = sum_t w\[t\] x\[i, j + t - half\] over the (n, c) rows of x, zero outside 0..c.
fn correlate(x: &[f32], w: &[f32], n: usize, c: usize) -> Vec<f32> {
    let half = (w.len() / 2) as isize;
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
}

impl ConvKernels for Cpu {
    fn conv2d_fwd(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry) -> Result<Storage> {
        let mut y = vec![0f32; g.n * g.k * g.out_h() * g.out_w()];
        let (sx, sw) = (x.storage(), w.storage());
        let sb = bias.map(|b| b.storage());
        let bv = sb.as_ref().map(|s| s.as_cpu(CONV2D)).transpose()?;
        conv2d_forward(g, sx.as_cpu(CONV2D)?, sw.as_cpu(CONV2D)?, bv, &mut y);
        Ok(Storage::Cpu(y))
    }

    fn conv2d_bwd_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
        let (sw, sg) = (w.storage(), dy.storage());
        let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
        conv2d_backward_input(g, sg.as_cpu(CONV2D)?, sw.as_cpu(CONV2D)?, &mut dx);
        Tensor::from_vec(dx, [g.n, g.c, g.h, g.w], Device::Cpu)
    }

    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
        let (sx, sg) = (x.storage(), dy.storage());
        let mut dw = vec![0f32; g.k * g.c * g.r * g.s];
        conv2d_backward_weight(g, sx.as_cpu(CONV2D)?, sg.as_cpu(CONV2D)?, &mut dw);
        Tensor::from_vec(dw, [g.k, g.c, g.r, g.s], Device::Cpu)
    }

    fn conv2d_bwd_bias(&self, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
        let sg = dy.storage();
        let db = bias_grad_cpu(sg.as_cpu(CONV2D)?, g.n, g.k, g.out_h() * g.out_w());
        Tensor::from_vec(db, [g.k], Device::Cpu)
    }

    fn conv1d_fwd(&self, x: &Tensor, w: &Tensor, n: usize, c: usize) -> Result<Storage> {
        let (sx, sw) = (x.storage(), w.storage());
        Ok(Storage::Cpu(correlate(sx.as_cpu(CONV1D)?, sw.as_cpu(CONV1D)?, n, c)))
    }

    fn conv1d_bwd(&self, xt: &Tensor, wt: &Tensor, g: &Tensor, n: usize, c: usize) -> Result<(Tensor, Tensor)> {
        let (sx, sw, sg) = (xt.storage(), wt.storage(), g.storage());
        let (xv, wv, gv) = (sx.as_cpu(CONV1D)?, sw.as_cpu(CONV1D)?, sg.as_cpu(CONV1D)?);
        let (k, half) = (wv.len(), (wv.len() / 2) as isize);
        // The adjoint of a zero-padded correlation is the correlation with the flipped kernel.
        let flipped: Vec<f32> = wv.iter().rev().copied().collect();
        let dx = Tensor::from_vec(correlate(gv, &flipped, n, c), xt.shape().clone(), Device::Cpu)?;
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
        Ok((dx, Tensor::from_vec(dw, wt.shape().clone(), Device::Cpu)?))
    }
}
