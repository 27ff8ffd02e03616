//! Batch normalisation over the channel axis (axis 1) of (N,C,...) tensors.

use super::{PAR_MIN, gpu, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::Arc;

/// How `batch_norm` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Normalise with the batch's statistics and update the running ones (else use the running ones).
    pub training: bool,
    /// Running stat update: `running = (1 - momentum) * running + momentum * batch` (PyTorch's 0.1).
    pub momentum: f32,
    pub eps: f32,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

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
    let planes: Vec<f64> = if p == 0 {
        Vec::new()
    } else if a.len() >= PAR_MIN {
        a.par_chunks(p)
            .zip(b.par_chunks(p))
            .enumerate()
            .map(plane)
            .collect()
    } else {
        a.chunks(p)
            .zip(b.chunks(p))
            .enumerate()
            .map(plane)
            .collect()
    };
    let mut sums = vec![0f64; c];
    for (i, s) in planes.into_iter().enumerate() {
        sums[i % c] += s;
    }
    sums
}

/// `out[plane] = f(x[plane], channel)` element-wise for each (n, c) plane of size `p`.
fn per_plane(x: &[f32], c: usize, p: usize, f: impl Fn(f32, usize) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    if p == 0 {
        return y;
    }
    let body = |(i, (yp, xp)): (usize, (&mut [f32], &[f32]))| {
        let ch = i % c;
        for (y, &v) in yp.iter_mut().zip(xp) {
            *y = f(v, ch);
        }
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(p)
            .zip(x.par_chunks(p))
            .enumerate()
            .for_each(body);
    } else {
        y.chunks_mut(p).zip(x.chunks(p)).enumerate().for_each(body);
    }
    y
}

impl Tensor {
    /// Batch norm of (N,C,...) with per-channel `gamma`, `beta` and running statistics (C).
    /// Training uses the biased batch variance to normalise and stores the unbiased one in
    /// `running_var`, as PyTorch does; the running tensors are updated in place (not recorded).
    pub fn batch_norm(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNormOptions,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        if self.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!("expected (N,C,...) input, got {}", self.shape()),
            ));
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let p: usize = self.dims()[2..].iter().product();
        for (name, t) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ] {
            if t.dims() != [c] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} has shape {}, input {} needs [{c}]",
                        t.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        if opts.eps.is_nan() || opts.eps <= 0.0 || !(0.0..=1.0).contains(&opts.momentum) {
            return Err(Error::invalid(
                OP,
                format!(
                    "eps {} must be > 0 and momentum {} in [0, 1]",
                    opts.eps, opts.momentum
                ),
            ));
        }
        let count = n * p;
        if opts.training && count < 2 {
            return Err(Error::invalid(
                OP,
                format!(
                    "training needs more than one value per channel, input {}",
                    self.shape()
                ),
            ));
        }
        let device = same_device(OP, &[self, gamma, beta, running_mean, running_var])?;
        if let Device::Cuda(_) = device {
            let shape = [n, c, p, 1];
            let (storage, saved) = gpu::batch_norm_fwd(
                OP,
                self,
                [gamma, beta, running_mean, running_var],
                shape,
                opts,
            )?;
            let (xt, gamma_t) = (self.clone(), gamma.clone());
            return Ok(Tensor::from_storage_op(
                OP,
                Arc::new(storage),
                self.shape().clone(),
                &[self, gamma, beta],
                move |dy, _| {
                    let [dx, dgamma, dbeta] =
                        gpu::batch_norm_bwd(OP, &xt, &gamma_t, dy, shape, &saved, opts)?;
                    Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
                },
            ));
        }
        let sx = self.storage();
        let x = sx.as_cpu(OP)?;
        let (mean, var): (Vec<f32>, Vec<f32>) = if opts.training {
            let sums = channel_sums(x, x, c, p, |v, _, _| v);
            let mean: Vec<f64> = sums.iter().map(|s| s / count as f64).collect();
            let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
            // Two passes (not E[x^2] - E[x]^2): no cancellation when |mean| >> std.
            let sq = channel_sums(x, x, c, p, |v, _, ch| (v - mean32[ch]) * (v - mean32[ch]));
            let var: Vec<f64> = sq.iter().map(|s| s / count as f64).collect();
            let m = opts.momentum;
            let unbias = count as f32 / (count - 1) as f32;
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
            (
                mean.iter().map(|&v| v as f32).collect(),
                var.iter().map(|&v| v as f32).collect(),
            )
        } else {
            (running_mean.to_vec()?, running_var.to_vec()?)
        };
        let inv_std: Vec<f32> = var.iter().map(|&v| 1.0 / (v + opts.eps).sqrt()).collect();
        let (gv, bv) = (gamma.to_vec()?, beta.to_vec()?);
        let scale: Vec<f32> = gv.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
        let shift: Vec<f32> = (0..c).map(|ch| bv[ch] - mean[ch] * scale[ch]).collect();
        let y = per_plane(x, c, p, |v, ch| v * scale[ch] + shift[ch]);

        let (xt, gamma_t) = (self.clone(), gamma.clone());
        let training = opts.training;
        Tensor::from_op(
            OP,
            y,
            self.shape().clone(),
            device,
            &[self, gamma, beta],
            move |dy, _| {
                let (sx, sg) = (xt.storage(), dy.storage());
                let (x, g) = (sx.as_cpu(OP)?, sg.as_cpu(OP)?);
                let xhat = |v: f32, ch: usize| (v - mean[ch]) * inv_std[ch];
                // Per channel: sum(g) and sum(g * xhat).
                let dbeta = channel_sums(g, g, c, p, |v, _, _| v);
                let dgamma = channel_sums(g, x, c, p, |gv, xv, ch| gv * xhat(xv, ch));
                let gam = gamma_t.to_vec()?;
                let dx = if training {
                    // dx = gamma * inv_std / M * (M g - sum(g) - xhat * sum(g xhat))
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
                        if x.len() >= PAR_MIN {
                            dx.par_chunks_mut(p).enumerate().for_each(body)
                        } else {
                            dx.chunks_mut(p).enumerate().for_each(body)
                        }
                    }
                    dx
                } else {
                    per_plane(g, c, p, |v, ch| v * gam[ch] * inv_std[ch])
                };
                let to32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<_>>();
                Ok(vec![
                    Some(Tensor::from_vec(dx, xt.shape().clone(), xt.device())?),
                    Some(Tensor::from_vec(to32(dgamma), [c], xt.device())?),
                    Some(Tensor::from_vec(to32(dbeta), [c], xt.device())?),
                ])
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn batch_norm_matches_naive_and_updates_running_stats() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = Tensor::randn([3, 2, 4, 5], 1.5, 2.0, Device::Cpu, &mut rng).unwrap();
        let gamma = Tensor::randn([2], 1.0, 0.3, Device::Cpu, &mut rng).unwrap();
        let beta = Tensor::randn([2], 0.0, 0.3, Device::Cpu, &mut rng).unwrap();
        let rm = Tensor::uniform([2], -0.5, 0.5, Device::Cpu, &mut rng).unwrap();
        let rv = Tensor::uniform([2], 0.5, 1.5, Device::Cpu, &mut rng).unwrap();
        let (rm0, rv0) = (rm.to_vec().unwrap(), rv.to_vec().unwrap());
        let opts = BatchNormOptions::default();
        let y = x
            .batch_norm(&gamma, &beta, &rm, &rv, opts)
            .unwrap()
            .to_vec()
            .unwrap();
        let xv = x.to_vec().unwrap();
        let (gv, bv) = (gamma.to_vec().unwrap(), beta.to_vec().unwrap());
        for ch in 0..2 {
            let vals: Vec<f64> = (0..3)
                .flat_map(|n| (0..20).map(move |i| (n * 2 + ch) * 20 + i))
                .map(|i| xv[i] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / 60.0;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 60.0;
            let i = (2 + ch) * 20 + 7; // image 1, element 7
            let want = gv[ch] as f64 * (xv[i] as f64 - mean) / (var + 1e-5).sqrt() + bv[ch] as f64;
            assert!((y[i] as f64 - want).abs() < 1e-4, "channel {ch}");
            let rmv = rm.to_vec().unwrap()[ch] as f64;
            assert!((rmv - (0.9 * rm0[ch] as f64 + 0.1 * mean)).abs() < 1e-5);
            let rvv = rv.to_vec().unwrap()[ch] as f64;
            assert!((rvv - (0.9 * rv0[ch] as f64 + 0.1 * var * 60.0 / 59.0)).abs() < 1e-4);
        }
        // eval: uses running stats, leaves them alone
        let (rm1, rv1) = (rm.to_vec().unwrap(), rv.to_vec().unwrap());
        let e = x
            .batch_norm(
                &gamma,
                &beta,
                &rm,
                &rv,
                BatchNormOptions {
                    training: false,
                    ..opts
                },
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let want = gv[1] * (xv[25] - rm1[1]) / (rv1[1] + 1e-5).sqrt() + bv[1];
        assert!((e[25] - want).abs() < 1e-5);
        assert_eq!(rm.to_vec().unwrap(), rm1);
        let one = Tensor::randn([1, 2, 1, 1], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        assert!(
            one.batch_norm(&gamma, &beta, &rm, &rv, opts)
                .unwrap_err()
                .to_string()
                .contains("more than one value")
        );
    }
}
