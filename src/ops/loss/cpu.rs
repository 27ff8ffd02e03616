//! The losses on the CPU: f64 sums over pixels, parallel when large.

use super::{BCE, CE, Checks, LossKernels, NOTHING_COUNTED, refuse_bad_labels, refuse_bad_probabilities, refuse_nan};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::{Cpu, for_each_par_if_large, sum_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

/// log(1 + exp(d)) without overflow.
fn softplus(d: f32) -> f32 {
    d.max(0.0) + (-d.abs()).exp().ln_1p()
}
fn sigmoid(d: f32) -> f32 {
    if d >= 0.0 {
        1.0 / (1.0 + (-d).exp())
    } else {
        d.exp() / (1.0 + d.exp())
    }
}

impl LossKernels for Cpu {
    fn ce2_fwd(&self, zt: &Tensor, tt: &Tensor, mt: Option<&Tensor>, [n, h, w]: [usize; 3], checks: Checks) -> Result<(Storage, Storage)> {
        let (sz, st) = (zt.storage(), tt.storage());
        let (z, t) = (sz.as_cpu(CE)?, st.as_cpu(CE)?);
        let sm = mt.map(|m| m.storage());
        let m = sm.as_ref().map(|s| s.as_cpu(CE)).transpose()?;
        if checks == Checks::Values {
            refuse_nan(CE, z, zt.shape())?;
            refuse_bad_labels(CE, t, &Shape::from([n, h, w]), m)?;
        }
        let p = h * w;
        let counted = m.map_or(n * p, |m| m.iter().filter(|&&v| v == 1.0).count());
        if counted == 0 && checks == Checks::Values {
            return Err(Error::invalid(CE, NOTHING_COUNTED));
        }
        // Per pixel: d = z_other - z_target, loss = softplus(d).
        let pixel = |i: usize| -> f64 {
            if m.is_some_and(|m| m[i] == 0.0) {
                return 0.0;
            }
            let (b, q) = (i / p, i % p);
            let (z0, z1) = (z[b * 2 * p + q], z[(b * 2 + 1) * p + q]);
            let d = if t[i] == 1.0 { z0 - z1 } else { z1 - z0 };
            softplus(d) as f64
        };
        let total = sum_par_if_large(n * p, (0..n * p).into_par_iter().map(pixel));
        // 0 / max(count, 1): a trusted mask that counts nothing gives 0, as on the GPU.
        Ok((Storage::Cpu(vec![(total / counted.max(1) as f64) as f32]), Storage::Cpu(vec![counted as f32])))
    }

    fn ce2_bwd(&self, zt: &Tensor, tt: &Tensor, mt: Option<&Tensor>, [_, h, w]: [usize; 3], count: &Storage, g: &Tensor) -> Result<Tensor> {
        let p = h * w;
        let count = count.as_cpu(CE)?.first().copied().unwrap_or(0.0);
        let scale = if count > 0.0 { g.to_scalar()? / count } else { 0.0 };
        let (sz, st) = (zt.storage(), tt.storage());
        let (z, t) = (sz.as_cpu(CE)?, st.as_cpu(CE)?);
        let sm = mt.map(|m| m.storage());
        let m = sm.as_ref().map(|s| s.as_cpu(CE)).transpose()?;
        let mut dz = vec![0f32; z.len()];
        // d loss / d z_other = sigmoid(d), d loss / d z_target = -sigmoid(d)
        let image = |(b, db): (usize, &mut [f32])| {
            let (d0, d1) = db.split_at_mut(p);
            for q in 0..p {
                let i = b * p + q;
                if m.is_some_and(|m| m[i] == 0.0) {
                    continue;
                }
                let (z0, z1) = (z[b * 2 * p + q], z[(b * 2 + 1) * p + q]);
                let target_one = t[i] == 1.0;
                let s = scale * sigmoid(if target_one { z0 - z1 } else { z1 - z0 });
                if target_one {
                    d0[q] = s;
                    d1[q] = -s;
                } else {
                    d0[q] = -s;
                    d1[q] = s;
                }
            }
        };
        if p > 0 {
            let work = dz.len();
            for_each_par_if_large(work, dz.par_chunks_mut(2 * p).enumerate(), image);
        }
        Tensor::from_vec(dz, zt.shape().clone(), Device::Cpu)
    }

    fn bce_fwd(&self, xt: &Tensor, tt: &Tensor) -> Result<Storage> {
        let (sx, st) = (xt.storage(), tt.storage());
        let (x, y) = (sx.as_cpu(BCE)?, st.as_cpu(BCE)?);
        refuse_nan(BCE, x, xt.shape())?;
        refuse_bad_probabilities(BCE, y, tt.shape())?;
        let term = |(&x, &y): (&f32, &f32)| (x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()) as f64;
        let total = sum_par_if_large(x.len(), x.par_iter().zip(y).map(term));
        Ok(Storage::Cpu(vec![(total / x.len() as f64) as f32]))
    }

    fn bce_bwd(&self, xt: &Tensor, tt: &Tensor, g: &Tensor) -> Result<Tensor> {
        let scale = g.to_scalar()? / xt.numel() as f32;
        let (sx, st) = (xt.storage(), tt.storage());
        let (x, y) = (sx.as_cpu(BCE)?, st.as_cpu(BCE)?);
        let dx: Vec<f32> = x
            .iter()
            .zip(y)
            .map(|(&x, &y)| scale * (sigmoid(x) - y))
            .collect();
        Tensor::from_vec(dx, xt.shape().clone(), Device::Cpu)
    }
}
