//! Losses: pixel-wise 2-class cross-entropy with an ignore mask, and binary cross-entropy with
//! logits. Both return a rank-0 mean and refuse NaN logits and targets outside their range.

use super::{PAR_MIN, gpu, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

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

/// The first index (in row-major order of `shape`) where `bad` holds, written as (i, j, ...).
fn first_bad(v: &[f32], shape: &Shape, bad: impl Fn(f32) -> bool + Sync) -> Option<(String, f32)> {
    let i = v.par_iter().position_first(|&x| bad(x))?;
    let mut rest = i;
    let mut idx = vec![0; shape.rank()];
    for d in (0..shape.rank()).rev() {
        idx[d] = rest % shape.dims()[d];
        rest /= shape.dims()[d];
    }
    Some((format!("{idx:?}"), v[i]))
}

/// Refuses NaN logits (a diverged run), naming the first position.
fn refuse_nan(op: &'static str, z: &[f32], shape: &Shape) -> Result<()> {
    match first_bad(z, shape, f32::is_nan) {
        Some((at, v)) => Err(Error::invalid(
            op,
            format!("NaN logit at {at} (value {v}): training diverged?"),
        )),
        None => Ok(()),
    }
}

/// The same check for logits on the GPU: their sum is NaN when any logit is (one value comes
/// back); only then are the logits copied to locate it.
fn refuse_nan_gpu(op: &'static str, z: &Tensor) -> Result<()> {
    let total = crate::autograd::no_grad(|| z.sum_all()?.to_scalar())?;
    if total.is_nan() {
        refuse_nan(op, &z.to_vec()?, z.shape())
    } else {
        Ok(())
    }
}

/// Refuses targets other than 0 and 1 and a mask other than 0 and 1.
fn refuse_bad_labels(op: &'static str, t: &[f32], shape: &Shape, m: Option<&[f32]>) -> Result<()> {
    if let Some((at, v)) = first_bad(t, shape, |v| v != 0.0 && v != 1.0) {
        return Err(Error::invalid(
            op,
            format!("target at {at} is {v}, not 0 or 1"),
        ));
    }
    if let Some(m) = m
        && let Some((at, v)) = first_bad(m, shape, |v| v != 0.0 && v != 1.0)
    {
        return Err(Error::invalid(
            op,
            format!("mask at {at} is {v}, not 0 or 1"),
        ));
    }
    Ok(())
}

/// Refuses BCE targets outside [0, 1].
fn refuse_bad_probabilities(op: &'static str, y: &[f32], shape: &Shape) -> Result<()> {
    match first_bad(y, shape, |v| !(0.0..=1.0).contains(&v)) {
        Some((at, v)) => Err(Error::invalid(
            op,
            format!("target at {at} is {v}, outside [0, 1]"),
        )),
        None => Ok(()),
    }
}

const NOTHING_COUNTED: &str = "every pixel is masked out: nothing to average";

impl Tensor {
    /// Mean cross-entropy of 2-class logits (N,2,H,W) against `target` (N,H,W) in {0, 1}, over
    /// the pixels where `mask` (N,H,W, 1 = count, 0 = ignore) is 1. An error when no pixel counts.
    pub fn cross_entropy_2class(&self, target: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "cross_entropy_2class";
        self.shape().expect_rank(OP, 4, "(N,2,H,W) logits")?;
        let &[n, classes, h, w] = self.dims() else {
            unreachable!("rank checked")
        };
        if classes != 2 {
            return Err(Error::shape(
                OP,
                format!("logits {} must have 2 channels", self.shape()),
            ));
        }
        let want = Shape::from([n, h, w]);
        if target.shape() != &want {
            return Err(Error::shape(
                OP,
                format!(
                    "target {} does not fit logits {} (needs {want})",
                    target.shape(),
                    self.shape()
                ),
            ));
        }
        if let Some(m) = mask
            && m.shape() != &want
        {
            return Err(Error::shape(
                OP,
                format!(
                    "mask {} does not fit logits {} (needs {want})",
                    m.shape(),
                    self.shape()
                ),
            ));
        }
        let mut all = vec![self, target];
        all.extend(mask);
        let device = same_device(OP, &all)?;
        if let Device::Cuda(_) = device {
            // Labels are checked on the host (small); the loss and its count stay on the device
            // but for the one count value that says whether anything was counted.
            refuse_nan_gpu(OP, self)?;
            let mv = mask.map(|m| m.to_vec()).transpose()?;
            refuse_bad_labels(OP, &target.to_vec()?, &want, mv.as_deref())?;
            let (storage, count) = gpu::ce2_fwd(OP, self, target, mask, [n, h, w])?;
            if count == 0.0 {
                return Err(Error::invalid(OP, NOTHING_COUNTED));
            }
            let (zt, tt, mt) = (self.clone(), target.clone(), mask.cloned());
            return Ok(Tensor::from_storage_op(
                OP,
                Arc::new(storage),
                Shape::from(()),
                &all,
                move |g, _| {
                    let dz = gpu::ce2_bwd(OP, &zt, &tt, mt.as_ref(), [n, h, w], count, g)?;
                    Ok(if mt.is_some() {
                        vec![Some(dz), None, None]
                    } else {
                        vec![Some(dz), None]
                    })
                },
            ));
        }
        let (sz, st) = (self.storage(), target.storage());
        let (z, t) = (sz.as_cpu(OP)?, st.as_cpu(OP)?);
        let sm = mask.map(|m| m.storage());
        let m = sm.as_ref().map(|s| s.as_cpu(OP)).transpose()?;
        refuse_nan(OP, z, self.shape())?;
        refuse_bad_labels(OP, t, &want, m)?;
        let p = h * w;
        let counted = m.map_or(n * p, |m| m.iter().filter(|&&v| v == 1.0).count());
        if counted == 0 {
            return Err(Error::invalid(OP, NOTHING_COUNTED));
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
        let total: f64 = if n * p >= PAR_MIN {
            (0..n * p).into_par_iter().map(pixel).sum()
        } else {
            (0..n * p).map(pixel).sum()
        };
        let loss = (total / counted as f64) as f32;
        let (zt, tt, mt) = (self.clone(), target.clone(), mask.cloned());
        let inputs: Vec<&Tensor> = all;
        Tensor::from_op(
            OP,
            vec![loss],
            Shape::from(()),
            device,
            &inputs,
            move |g, _| {
                let scale = g.to_scalar()? / counted as f32;
                let (sz, st) = (zt.storage(), tt.storage());
                let (z, t) = (sz.as_cpu(OP)?, st.as_cpu(OP)?);
                let sm = mt.as_ref().map(|m| m.storage());
                let m = sm.as_ref().map(|s| s.as_cpu(OP)).transpose()?;
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
                    if dz.len() >= PAR_MIN {
                        dz.par_chunks_mut(2 * p).enumerate().for_each(image)
                    } else {
                        dz.chunks_mut(2 * p).enumerate().for_each(image)
                    }
                }
                let mut grads = vec![
                    Some(Tensor::from_vec(dz, zt.shape().clone(), zt.device())?),
                    None,
                ];
                if mt.is_some() {
                    grads.push(None);
                }
                Ok(grads)
            },
        )
    }

    /// Mean binary cross-entropy of `self` (logits) against `target` (same shape, values in
    /// [0, 1]): max(x,0) - x y + log(1 + exp(-|x|)), stable for any finite logit.
    pub fn bce_with_logits(&self, target: &Tensor) -> Result<Tensor> {
        const OP: &str = "bce_with_logits";
        if self.shape() != target.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "logits {} and target {} differ",
                    self.shape(),
                    target.shape()
                ),
            ));
        }
        super::non_empty(OP, self)?;
        let device = same_device(OP, &[self, target])?;
        if let Device::Cuda(_) = device {
            refuse_nan_gpu(OP, self)?;
            refuse_bad_probabilities(OP, &target.to_vec()?, target.shape())?;
            let storage = gpu::bce_fwd(OP, self, target)?;
            let (xt, yt) = (self.clone(), target.clone());
            return Ok(Tensor::from_storage_op(
                OP,
                Arc::new(storage),
                Shape::from(()),
                &[self, target],
                move |g, _| Ok(vec![Some(gpu::bce_bwd(OP, &xt, &yt, g)?), None]),
            ));
        }
        let (sx, st) = (self.storage(), target.storage());
        let (x, y) = (sx.as_cpu(OP)?, st.as_cpu(OP)?);
        refuse_nan(OP, x, self.shape())?;
        refuse_bad_probabilities(OP, y, target.shape())?;
        let term = |(&x, &y): (&f32, &f32)| (x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()) as f64;
        let total: f64 = if x.len() >= PAR_MIN {
            x.par_iter().zip(y).map(term).sum()
        } else {
            x.iter().zip(y).map(term).sum()
        };
        let count = x.len();
        let (xt, yt) = (self.clone(), target.clone());
        Tensor::from_op(
            OP,
            vec![(total / count as f64) as f32],
            Shape::from(()),
            device,
            &[self, target],
            move |g, _| {
                let scale = g.to_scalar()? / count as f32;
                let (sx, st) = (xt.storage(), yt.storage());
                let (x, y) = (sx.as_cpu(OP)?, st.as_cpu(OP)?);
                let dx: Vec<f32> = x
                    .iter()
                    .zip(y)
                    .map(|(&x, &y)| scale * (sigmoid(x) - y))
                    .collect();
                Ok(vec![
                    Some(Tensor::from_vec(dx, xt.shape().clone(), xt.device())?),
                    None,
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
    fn cross_entropy_matches_naive_and_rejects_bad_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let z = Tensor::randn([2, 2, 3, 4], 0.0, 2.0, Device::Cpu, &mut rng).unwrap();
        let t: Vec<f32> = (0..24).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect();
        let m: Vec<f32> = (0..24).map(|i| (i % 5 != 0) as u8 as f32).collect();
        let tt = Tensor::from_vec(t.clone(), [2, 3, 4], Device::Cpu).unwrap();
        let mt = Tensor::from_vec(m.clone(), [2, 3, 4], Device::Cpu).unwrap();
        let loss = z
            .cross_entropy_2class(&tt, Some(&mt))
            .unwrap()
            .to_scalar()
            .unwrap() as f64;
        let zv = z.to_vec().unwrap();
        let (mut sum, mut cnt) = (0.0f64, 0);
        for i in 0..24 {
            if m[i] == 0.0 {
                continue;
            }
            let (b, q) = (i / 12, i % 12);
            let (z0, z1) = (zv[b * 24 + q] as f64, zv[b * 24 + 12 + q] as f64);
            let lse = (z0.exp() + z1.exp()).ln();
            sum += lse - if t[i] == 1.0 { z1 } else { z0 };
            cnt += 1;
        }
        assert!((loss - sum / cnt as f64).abs() < 1e-5);

        let bad_t = Tensor::from_vec(vec![0.5; 24], [2, 3, 4], Device::Cpu).unwrap();
        assert!(
            z.cross_entropy_2class(&bad_t, None)
                .unwrap_err()
                .to_string()
                .contains("[0, 0, 0]")
        );
        let none = Tensor::zeros([2, 3, 4], Device::Cpu).unwrap();
        assert!(z.cross_entropy_2class(&tt, Some(&none)).is_err());
        let mut nan = zv.clone();
        nan[13] = f32::NAN;
        let zn = Tensor::from_vec(nan, [2, 2, 3, 4], Device::Cpu).unwrap();
        assert!(
            zn.cross_entropy_2class(&tt, None)
                .unwrap_err()
                .to_string()
                .contains("NaN logit at [0, 1, 0, 1]")
        );
    }

    #[test]
    fn bce_matches_naive_and_is_stable() {
        let x = Tensor::from_vec(vec![-3.0, 0.5, 2.0, 100.0, -100.0], [5], Device::Cpu).unwrap();
        let y = Tensor::from_vec(vec![0.0, 1.0, 0.3, 1.0, 0.0], [5], Device::Cpu).unwrap();
        let l = x.bce_with_logits(&y).unwrap().to_scalar().unwrap() as f64;
        let want: f64 = [
            (-3.0f64, 0.0f64),
            (0.5, 1.0),
            (2.0, 0.3),
            (100.0, 1.0),
            (-100.0, 0.0),
        ]
        .iter()
        .map(|&(x, y)| {
            let s = 1.0 / (1.0 + (-x).exp());
            -(y * s.max(1e-300).ln() + (1.0 - y) * (1.0 - s).max(1e-300).ln())
        })
        .sum::<f64>()
            / 5.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        assert!(
            x.bce_with_logits(&Tensor::ones([4], Device::Cpu).unwrap())
                .is_err()
        );
    }
}
