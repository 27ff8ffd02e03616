//! Losses: pixel-wise 2-class cross-entropy with an ignore mask, and binary cross-entropy with
//! logits. Both return a rank-0 mean and refuse NaN logits and targets outside their range.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`LossKernels`], each validating the values it
//! reads; this file checks shapes and devices and records the nodes.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const CE: &str = "cross_entropy_2class";
const BCE: &str = "bce_with_logits";

/// The losses on one side (CPU or CUDA). Forwards refuse NaN logits and bad labels.
pub(crate) trait LossKernels: Sync {
    /// The mean cross-entropy of logits `z` (N,2,H,W) over the counted pixels, and their count
    /// (one element, on the logits' device); with `checks`, an error when none counts.
    fn ce2_fwd(&self, z: &Tensor, t: &Tensor, m: Option<&Tensor>, nhw: [usize; 3], checks: Checks) -> Result<(Storage, Storage)>;
    /// dz given the forward's count and the upstream gradient `g` (one element).
    fn ce2_bwd(&self, z: &Tensor, t: &Tensor, m: Option<&Tensor>, nhw: [usize; 3], count: &Storage, g: &Tensor) -> Result<Tensor>;
    fn bce_fwd(&self, x: &Tensor, t: &Tensor) -> Result<Storage>;
    fn bce_bwd(&self, x: &Tensor, t: &Tensor, g: &Tensor) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn LossKernels {
    kernels_for(device, &Cpu, &Cuda)
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

/// What the cross-entropy's forward verifies of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checks {
    /// Refuse NaN logits, labels other than 0 and 1, and a mask that counts nothing (on a GPU the
    /// values are read back for it: a wait for the device).
    Values,
    /// Trust the caller: the labels were checked where they were made, and the caller watches the
    /// loss for non-finite values itself. Nothing is read back; a NaN logit gives a NaN loss, and
    /// a mask that counts nothing gives a loss of 0 and a zero gradient.
    Trusted,
}

impl Tensor {
    /// Mean cross-entropy of 2-class logits (N,2,H,W) against `target` (N,H,W) in {0, 1}, over
    /// the pixels where `mask` (N,H,W, 1 = count, 0 = ignore) is 1. An error when no pixel counts.
    pub fn cross_entropy_2class(&self, target: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.cross_entropy_2class_with(target, mask, Checks::Values)
    }

    /// [`Tensor::cross_entropy_2class`] for the training step: targets and mask whose labels the
    /// caller has checked (the batch builder does, on the host, as it makes them) and logits whose
    /// loss the caller watches (the training monitor flags a non-finite loss on the device). No
    /// value is read back to the host, so on a GPU the step never waits here; a NaN logit gives a
    /// NaN loss instead of an error, and a mask that counts no pixel gives 0.
    pub fn cross_entropy_2class_trusted(&self, target: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.cross_entropy_2class_with(target, mask, Checks::Trusted)
    }

    fn cross_entropy_2class_with(&self, target: &Tensor, mask: Option<&Tensor>, checks: Checks) -> Result<Tensor> {
        self.shape().expect_rank(CE, 4, "(N,2,H,W) logits")?;
        let &[n, classes, h, w] = self.dims() else {
            unreachable!("rank checked")
        };
        if classes != 2 {
            return Err(Error::shape(
                CE,
                format!("logits {} must have 2 channels", self.shape()),
            ));
        }
        let want = Shape::from([n, h, w]);
        if target.shape() != &want {
            return Err(Error::shape(
                CE,
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
                CE,
                format!(
                    "mask {} does not fit logits {} (needs {want})",
                    m.shape(),
                    self.shape()
                ),
            ));
        }
        let mut all = vec![self, target];
        all.extend(mask);
        let device = same_device(CE, &all)?;
        let nhw = [n, h, w];
        let (storage, count) = kernels(device).ce2_fwd(self, target, mask, nhw, checks)?;
        let (zt, tt, mt) = (self.clone(), target.clone(), mask.cloned());
        Ok(Tensor::from_storage_op(
            CE,
            Arc::new(storage),
            Shape::from(()),
            &all,
            move |g, _| {
                let dz = kernels(g.device()).ce2_bwd(&zt, &tt, mt.as_ref(), nhw, &count, g)?;
                Ok(if mt.is_some() {
                    vec![Some(dz), None, None]
                } else {
                    vec![Some(dz), None]
                })
            },
        ))
    }

    /// Mean binary cross-entropy of `self` (logits) against `target` (same shape, values in
    /// [0, 1]): max(x,0) - x y + log(1 + exp(-|x|)), stable for any finite logit.
    pub fn bce_with_logits(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shape(
                BCE,
                format!(
                    "logits {} and target {} differ",
                    self.shape(),
                    target.shape()
                ),
            ));
        }
        super::non_empty(BCE, self)?;
        let device = same_device(BCE, &[self, target])?;
        let storage = kernels(device).bce_fwd(self, target)?;
        let (xt, yt) = (self.clone(), target.clone());
        Ok(Tensor::from_storage_op(
            BCE,
            Arc::new(storage),
            Shape::from(()),
            &[self, target],
            move |g, _| Ok(vec![Some(kernels(g.device()).bce_bwd(&xt, &yt, g)?), None]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::seeded_randn;

    #[test]
    fn cross_entropy_matches_naive_and_rejects_bad_input() {
        let (_, z) = seeded_randn(13, [2, 2, 3, 4], 0.0, 2.0);
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
