//! Batch norm on the CPU: per-channel sums over (n, c) planes, one task per plane.

use super::{BatchNormOptions, BnCall, BnGrads, BnPartials, BnSaved, NormKernels, OP};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, for_each_par_if_large};
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;

/// Per-channel sums of `f(a, b, channel)` over the (n, c) planes of size `p` of two equally
/// shaped (N, C, P) buffers: each plane is summed in f32 (a short, vectorised loop; planes are at
/// most a few 10^4 elements), the planes of a channel in f64.
fn channel_sums(
    a: &[f32],
    b: &[f32],
    c: usize,
    p: usize,
    f: impl Fn(f32, f32, usize) -> f32 + Sync,
) -> Vec<f64> {
    let plane = |(i, (ap, bp)): (usize, (&[f32], &[f32]))| -> f64 {
        let ch = i % c;
        // Eight running sums so the compiler can vectorise (a single f32 sum is a serial chain).
        let mut lanes = [0f32; 8];
        let (a8, b8) = (ap.chunks_exact(8), bp.chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(&x, &y)| f(x, y, ch))
            .sum();
        for (ca, cb) in a8.zip(b8) {
            for l in 0..8 {
                lanes[l] += f(ca[l], cb[l], ch);
            }
        }
        (lanes.iter().sum::<f32>() + tail) as f64
    };
    let mut planes = vec![0f64; a.len().checked_div(p).unwrap_or(0)];
    if p > 0 {
        let items = planes.par_iter_mut().zip(a.par_chunks(p).zip(b.par_chunks(p)).enumerate());
        for_each_par_if_large(a.len(), items, |(out, item)| *out = plane(item));
    }
    let mut sums = vec![0f64; c];
    for (i, s) in planes.into_iter().enumerate() {
        sums[i % c] += s;
    }
    sums
}

/// `out[plane] = f(x[plane], channel)` element-wise for each (n, c) plane of size `p`.
fn per_plane(x: &[f32], c: usize, p: usize, f: impl Fn(f32, usize) -> f32 + Sync) -> Vec<f32> {
    per_plane2(x, x, c, p, |v, _, ch| f(v, ch))
}

/// `out[plane] = f(x[plane], r[plane], channel)` element-wise, for two equally shaped buffers.
fn per_plane2(x: &[f32], r: &[f32], c: usize, p: usize, f: impl Fn(f32, f32, usize) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    if p == 0 {
        return y;
    }
    let body = |(i, (yp, (xp, rp))): (usize, (&mut [f32], (&[f32], &[f32])))| {
        let ch = i % c;
        for ((y, &v), &w) in yp.iter_mut().zip(xp).zip(rp) {
            *y = f(v, w, ch);
        }
    };
    let work = x.len();
    for_each_par_if_large(work, y.par_chunks_mut(p).zip(x.par_chunks(p).zip(r.par_chunks(p))).enumerate(), body);
    y
}

/// The batch's per-channel (mean, biased variance), and the running statistics updated with them.
fn batch_stats(x: &[f32], [n, c, p, _]: [usize; 4], running: [&Tensor; 2], opts: BatchNormOptions) -> Result<(Vec<f32>, Vec<f32>)> {
    let count = n * p;
    let sums = channel_sums(x, x, c, p, |v, _, _| v);
    let mean: Vec<f64> = sums.iter().map(|s| s / count as f64).collect();
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // Two passes (not E[x^2] - E[x]^2): no cancellation when |mean| >> std.
    let sq = channel_sums(x, x, c, p, |v, _, ch| (v - mean32[ch]) * (v - mean32[ch]));
    let var: Vec<f64> = sq.iter().map(|s| s / count as f64).collect();
    let m = opts.momentum;
    let unbias = count as f32 / (count - 1) as f32;
    let [running_mean, running_var] = running;
    running_mean.update(OP, |r| {
        r.iter_mut()
            .zip(&mean)
            .for_each(|(r, &b)| *r = (1.0 - m) * *r + m * b as f32)
    })?;
    running_var.update(OP, |r| {
        r.iter_mut()
            .zip(&var)
            .for_each(|(r, &b)| *r = (1.0 - m) * *r + m * b as f32 * unbias)
    })?;
    Ok((
        mean.iter().map(|&v| v as f32).collect(),
        var.iter().map(|&v| v as f32).collect(),
    ))
}

fn inv_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

impl NormKernels for Cpu {
    /// Partial statistics come only from GPU convolutions; given here they are refused, not dropped.
    fn batch_norm_fwd(&self, x: &Tensor, params: [&Tensor; 4], call: BnCall, partials: Option<&BnPartials>, residual: Option<&Tensor>) -> Result<(Storage, BnSaved)> {
        if partials.is_some() {
            return Err(crate::error::Error::WrongDevice { op: OP, needs: "partial statistics from a CPU convolution", found: Device::Cpu });
        }
        let [gamma, beta, running_mean, running_var] = params;
        let BnCall { shape, opts, .. } = call;
        let [_, c, p, _] = shape;
        let sx = x.storage();
        let xv = sx.as_cpu(OP)?;
        let (mean, var) = if opts.training {
            batch_stats(xv, shape, [running_mean, running_var], opts)?
        } else {
            (running_mean.to_vec()?, running_var.to_vec()?)
        };
        let inv_std = inv_std(&var, opts.eps);
        let (gv, bv) = (gamma.to_vec()?, beta.to_vec()?);
        let scale: Vec<f32> = gv.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift: Vec<f32> = (0..c).map(|ch| bv[ch] - mean[ch] * scale[ch]).collect();
        // The residual rounded apart from batch norm's value, as the add op rounds it; then a
        // fused ReLU by the ReLU op's rule: y <= 0 -> 0, NaN kept.
        let act = |y: f32| if opts.relu && y <= 0.0 { 0.0 } else { y };
        let y = match residual {
            Some(r) => per_plane2(xv, r.storage().as_cpu(OP)?, c, p, |v, r, ch| act((v * scale[ch] + shift[ch]) + r)),
            None => per_plane(xv, c, p, |v, ch| act(v * scale[ch] + shift[ch])),
        };
        let saved = BnSaved {
            mean: Tensor::from_vec(mean, [c], Device::Cpu)?,
            var: Tensor::from_vec(var, [c], Device::Cpu)?,
            call,
        };
        Ok((Storage::Cpu(y), saved))
    }

    fn batch_norm_bwd(&self, xt: &Tensor, gamma: &Tensor, dy: &Tensor, out: &Tensor, saved: &BnSaved) -> Result<BnGrads> {
        let BnCall { shape: [n, c, p, _], opts, residual } = saved.call;
        let (sx, sg, so) = (xt.storage(), dy.storage(), out.storage());
        let x = sx.as_cpu(OP)?;
        // A fused ReLU passes the gradient where its output is > 0 (the ReLU op's rule).
        let masked: Option<Vec<f32>> = match opts.relu {
            true => Some(sg.as_cpu(OP)?.iter().zip(so.as_cpu(OP)?).map(|(&g, &y)| if y > 0.0 { g } else { 0.0 }).collect()),
            false => None,
        };
        let g = match &masked {
            Some(m) => m.as_slice(),
            None => sg.as_cpu(OP)?,
        };
        let mean = saved.mean.to_vec()?;
        let inv_std = inv_std(&saved.var.to_vec()?, opts.eps);
        let xhat = |v: f32, ch: usize| (v - mean[ch]) * inv_std[ch];
        // Per channel: sum(g) and sum(g * xhat).
        let dbeta = channel_sums(g, g, c, p, |v, _, _| v);
        let dgamma = channel_sums(g, x, c, p, |gv, xv, ch| gv * xhat(xv, ch));
        let gam = gamma.to_vec()?;
        let dx = if opts.training {
            let sums = [dbeta.as_slice(), dgamma.as_slice()];
            training_dx(x, g, [n, c, p], sums, [&gam, &inv_std, &mean])
        } else {
            per_plane(g, c, p, |v, ch| v * gam[ch] * inv_std[ch])
        };
        let to32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<_>>();
        // The residual's gradient is the upstream batch norm saw: dy, masked behind a ReLU.
        let dresidual = match (residual, masked) {
            (true, Some(m)) => Some(Tensor::from_vec(m, xt.shape().clone(), Device::Cpu)?),
            (true, None) => Some(dy.clone()),
            (false, _) => None,
        };
        Ok(BnGrads {
            dx: Tensor::from_vec(dx, xt.shape().clone(), Device::Cpu)?,
            dgamma: Tensor::from_vec(to32(dgamma), [c], Device::Cpu)?,
            dbeta: Tensor::from_vec(to32(dbeta), [c], Device::Cpu)?,
            dresidual,
        })
    }
}

/// dx of training-mode batch norm from the per-channel sums (dbeta, dgamma) and (gamma, inv_std,
/// mean): dx = gamma * inv_std / M * (M g - sum(g) - xhat * sum(g xhat)).
fn training_dx(x: &[f32], g: &[f32], [n, c, p]: [usize; 3], [dbeta, dgamma]: [&[f64]; 2], [gam, inv_std, mean]: [&[f32]; 3]) -> Vec<f32> {
    let count = n * p;
    let mut dx = vec![0f32; x.len()];
    let body = |(i, d): (usize, &mut [f32])| {
        let ch = i % c;
        let k = gam[ch] * inv_std[ch] / count as f32;
        let (sb, sgm) = (dbeta[ch] as f32, dgamma[ch] as f32);
        let (gp, xp) = (&g[i * p..(i + 1) * p], &x[i * p..(i + 1) * p]);
        // Folded into dx = a g + b x + c per channel, one fused pass.
        let (a, bx) = (k * count as f32, -k * sgm * inv_std[ch]);
        let c0 = -k * sb + k * sgm * inv_std[ch] * mean[ch];
        for ((dv, &gv), &xv) in d.iter_mut().zip(gp).zip(xp) {
            *dv = a * gv + bx * xv + c0;
        }
    };
    if p > 0 {
        let work = x.len();
        for_each_par_if_large(work, dx.par_chunks_mut(p).enumerate(), body);
    }
    dx
}
