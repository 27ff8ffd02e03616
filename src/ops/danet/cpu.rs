//! The position attention on the CPU, the reference the CUDA kernels and the gradient checks are
//! held to: one task per image, one query row at a time, every sum in f64. The backward
//! recomputes each row's softmax in f64 (the saved f32 log-sum-exp is the GPU's shortcut).

use super::{Dims, OP, PositionKernels};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large};
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;

/// Row i of the softmax of one image's scores: p\[j\] = exp(s\[j\] - max) / sum; returns the
/// log-sum-exp. `q`, `k` are (D, L).
fn softmax_row(q: &[f64], k: &[f64], l: usize, i: usize, p: &mut [f64]) -> f64 {
    p.fill(0.0);
    for (qd, kd) in q.chunks(l).zip(k.chunks(l)) {
        let a = qd[i];
        for (s, &b) in p.iter_mut().zip(kd) {
            *s += a * b;
        }
    }
    let max = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in p.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    p.iter_mut().for_each(|s| *s /= sum);
    max + sum.ln()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// One image's forward: out (C, L) and lse (L) from q, k (D, L) and v (C, L).
fn forward_image(q: &[f32], k: &[f32], v: &[f32], l: usize, out: &mut [f32], lse: &mut [f32]) {
    let (q, k, v) = (to_f64(q), to_f64(k), to_f64(v));
    let mut p = vec![0f64; l];
    for i in 0..l {
        lse[i] = softmax_row(&q, &k, l, i, &mut p) as f32;
        for (o, vc) in out.chunks_mut(l).zip(v.chunks(l)) {
            o[i] = p.iter().zip(vc).map(|(a, b)| a * b).sum::<f64>() as f32;
        }
    }
}

/// One image's gradients (dq, dk, dv) from dout (C, L).
fn backward_image(q: &[f32], k: &[f32], v: &[f32], g: &[f32], l: usize, [dq, dk, dv]: [&mut [f32]; 3]) {
    let (q, k, v, g) = (to_f64(q), to_f64(k), to_f64(v), to_f64(g));
    let (mut dk64, mut dv64) = (vec![0f64; dk.len()], vec![0f64; dv.len()]);
    let (mut p, mut dp) = (vec![0f64; l], vec![0f64; l]);
    for i in 0..l {
        softmax_row(&q, &k, l, i, &mut p);
        // dP[i, j] = sum_c dout[c, i] v[c, j]; dv[c, j] += dout[c, i] P[i, j].
        dp.fill(0.0);
        for ((gc, vc), dvc) in g.chunks(l).zip(v.chunks(l)).zip(dv64.chunks_mut(l)) {
            let gi = gc[i];
            for (((d, &vj), dvj), &pj) in dp.iter_mut().zip(vc).zip(dvc.iter_mut()).zip(&p) {
                *d += gi * vj;
                *dvj += gi * pj;
            }
        }
        let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        // dS = P (dP - delta), reusing dp; dq[d, i] = dS . k[d, :]; dk[d, :] += dS q[d, i].
        dp.iter_mut().zip(&p).for_each(|(d, &pj)| *d = pj * (*d - delta));
        for ((kd, qd), (dqd, dkd)) in k.chunks(l).zip(q.chunks(l)).zip(dq.chunks_mut(l).zip(dk64.chunks_mut(l))) {
            dqd[i] = kd.iter().zip(&dp).map(|(a, b)| a * b).sum::<f64>() as f32;
            let qi = qd[i];
            dkd.iter_mut().zip(&dp).for_each(|(o, &s)| *o += s * qi);
        }
    }
    dk.iter_mut().zip(&dk64).for_each(|(o, &x)| *o = x as f32);
    dv.iter_mut().zip(&dv64).for_each(|(o, &x)| *o = x as f32);
}

impl PositionKernels for Cpu {
    fn pam_fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, Dims { n, d, c, l }: Dims) -> Result<(Storage, Tensor)> {
        let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
        let (qv, kv, vv) = (sq.as_cpu(OP)?, sk.as_cpu(OP)?, sv.as_cpu(OP)?);
        let (mut out, mut lse) = (vec![0f32; n * c * l], vec![0f32; n * l]);
        let work = n * l * l * (d + c);
        let images = out.par_chunks_mut(c * l).zip(lse.par_chunks_mut(l)).enumerate();
        for_each_par_if_large(work, images, |(i, (o, s))| {
            let (qi, ki, vi) = (&qv[i * d * l..(i + 1) * d * l], &kv[i * d * l..(i + 1) * d * l], &vv[i * c * l..(i + 1) * c * l]);
            forward_image(qi, ki, vi, l, o, s);
        });
        Ok((Storage::Cpu(out), Tensor::from_vec(lse, [n, l], Device::Cpu)?))
    }

    fn pam_bwd(&self, g: &Tensor, [q, k, v]: [&Tensor; 3], _out: &Tensor, _lse: &Tensor, dims: Dims) -> Result<[Tensor; 3]> {
        let Dims { n, d, c, l } = dims;
        let (sg, sq, sk, sv) = (g.storage(), q.storage(), k.storage(), v.storage());
        let (gv, qv, kv, vv) = (sg.as_cpu(OP)?, sq.as_cpu(OP)?, sk.as_cpu(OP)?, sv.as_cpu(OP)?);
        let (mut dq, mut dk, mut dv) = (vec![0f32; n * d * l], vec![0f32; n * d * l], vec![0f32; n * c * l]);
        let work = n * l * l * (d + c);
        let images = dq.par_chunks_mut(d * l).zip(dk.par_chunks_mut(d * l)).zip(dv.par_chunks_mut(c * l)).enumerate();
        for_each_par_if_large(work, images, |(i, ((dqi, dki), dvi))| {
            let (qd, vc) = (i * d * l..(i + 1) * d * l, i * c * l..(i + 1) * c * l);
            backward_image(&qv[qd.clone()], &kv[qd], &vv[vc.clone()], &gv[vc], l, [dqi, dki, dvi]);
        });
        Ok([
            Tensor::from_vec(dq, q.shape().clone(), Device::Cpu)?,
            Tensor::from_vec(dk, k.shape().clone(), Device::Cpu)?,
            Tensor::from_vec(dv, v.shape().clone(), Device::Cpu)?,
        ])
    }
}
