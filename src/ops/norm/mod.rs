//! Batch normalisation over the channel axis (axis 1) of (N,C,...) tensors.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`NormKernels`]; this file checks the inputs and
//! records the node.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};
use std::sync::Arc;

const OP: &str = "batch_norm";

/// How `batch_norm` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Normalise with the batch's statistics and update the running ones (else use the running ones).
    pub training: bool,
    /// Running stat update: `running = (1 - momentum) * running + momentum * batch` (PyTorch's 0.1).
    pub momentum: f32,
    pub eps: f32,
    /// A ReLU on the output, in the same pass (and its gradient in batch norm's backward): the
    /// result and gradients of `batch_norm(..)?.relu()` without the ReLU's own passes.
    pub relu: bool,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            relu: false,
        }
    }
}

/// One batch_norm call: x viewed as (n, c, p, 1) (`shape`), its options, and whether a residual
/// is added before the ReLU ([`Tensor::batch_norm_add`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BnCall {
    pub shape: [usize; 4],
    pub opts: BatchNormOptions,
    pub residual: bool,
}

/// Batch norm's gradients: the input's, gamma's, beta's, and the residual's when one was added.
pub(crate) struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    pub dresidual: Option<Tensor>,
}

/// What the backward reads besides x and gamma: the per-channel statistics the forward
/// normalised with (the batch's in training, a copy of the running ones otherwise), on the
/// input's device, and the call.
pub(crate) struct BnSaved {
    pub mean: Tensor,
    pub var: Tensor,
    pub call: BnCall,
}

/// Batch-norm statistics a convolution computed as it wrote its output (the tensor-core
/// kernels' epilogue, GPU only; `Tensor::conv2d_with_bn_partials`): per channel and slot of
/// `width` consecutive output pixels, the slot's sum, then (after every channel's sums) the sum
/// of its squared deviations from the slot's mean (kernels/conv_tc.cuh, `store_tile`). Handed to
/// `Tensor::batch_norm_with`, they spare batch norm its pass over the convolution's output.
pub struct BnPartials {
    pub(crate) sums: Storage,
    pub(crate) slots: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
}

/// Batch norm on one side (CPU or CUDA).
pub(crate) trait NormKernels: Sync {
    /// y (plus `residual`, given exactly when `call.residual`), and what the backward reads; in
    /// training the running statistics are updated in place, from `partials` when given.
    /// `params` are gamma, beta, running_mean, running_var.
    fn batch_norm_fwd(&self, x: &Tensor, params: [&Tensor; 4], call: BnCall, partials: Option<&BnPartials>, residual: Option<&Tensor>) -> Result<(Storage, BnSaved)>;
    /// The gradients; `out` is the forward's output (read for a fused ReLU's gradient).
    fn batch_norm_bwd(&self, x: &Tensor, gamma: &Tensor, dy: &Tensor, out: &Tensor, saved: &BnSaved) -> Result<BnGrads>;
}

fn kernels(device: Device) -> &'static dyn NormKernels {
    kernels_for(device, &Cpu, &Cuda)
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
        self.batch_norm_with(gamma, beta, running_mean, running_var, opts, None)
    }

    /// [`Tensor::batch_norm`], in training taking the batch statistics from `partials` (which
    /// the convolution that produced `self` wrote) instead of a pass over `self`; the result and
    /// the recorded backward are batch_norm's. Outside training `partials` are not needed and
    /// are ignored.
    pub fn batch_norm_with(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNormOptions,
        partials: Option<&BnPartials>,
    ) -> Result<Tensor> {
        self.batch_norm_impl([gamma, beta, running_mean, running_var], opts, partials, None)
    }

    /// `batch_norm_with(..)? + residual`, then the ReLU when `opts.relu`, in batch norm's own
    /// passes: a ResNet block's last batch norm, its shortcut and the block's ReLU. The same bits,
    /// forward and every gradient, as the three ops apart, without the add's and the ReLU's passes
    /// over the block's output (forward and backward). `residual` has `self`'s shape.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_add(
        &self,
        residual: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNormOptions,
        partials: Option<&BnPartials>,
    ) -> Result<Tensor> {
        if residual.shape() != self.shape() {
            return Err(Error::shape(OP, format!("residual {} is not the shape of input {}", residual.shape(), self.shape())));
        }
        self.batch_norm_impl([gamma, beta, running_mean, running_var], opts, partials, Some(residual))
    }

    /// Checks a batch norm of `self` (shapes, options, devices, the partials' channels) and
    /// describes it: the device, the call, and the partials when training uses them.
    pub(crate) fn bn_call<'p>(
        &self,
        params: [&Tensor; 4],
        opts: BatchNormOptions,
        partials: Option<&'p BnPartials>,
        residual: Option<&Tensor>,
    ) -> Result<(Device, BnCall, Option<&'p BnPartials>)> {
        let [gamma, beta, running_mean, running_var] = params;
        if self.rank() < 2 {
            return Err(Error::shape(OP, format!("expected (N,C,...) input, got {}", self.shape())));
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let p: usize = self.dims()[2..].iter().product();
        for (name, t) in [("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)] {
            if t.dims() != [c] {
                return Err(Error::shape(OP, format!("{name} has shape {}, input {} needs [{c}]", t.shape(), self.shape())));
            }
        }
        if opts.eps.is_nan() || opts.eps <= 0.0 || !(0.0..=1.0).contains(&opts.momentum) {
            return Err(Error::invalid(OP, format!("eps {} must be > 0 and momentum {} in [0, 1]", opts.eps, opts.momentum)));
        }
        if opts.training && n * p < 2 {
            return Err(Error::invalid(OP, format!("training needs more than one value per channel, input {}", self.shape())));
        }
        let device = same_device(OP, &[self, gamma, beta, running_mean, running_var])?;
        if let Some(r) = residual {
            same_device(OP, &[self, r])?;
        }
        if let Some(p) = partials
            && p.channels != c
        {
            return Err(Error::shape(OP, format!("partial statistics of {} channels for input {}", p.channels, self.shape())));
        }
        let call = BnCall { shape: [n, c, p, 1], opts, residual: residual.is_some() };
        Ok((device, call, partials.filter(|_| opts.training)))
    }

    fn batch_norm_impl(&self, params: [&Tensor; 4], opts: BatchNormOptions, partials: Option<&BnPartials>, residual: Option<&Tensor>) -> Result<Tensor> {
        let [gamma, beta, ..] = params;
        let (device, call, partials) = self.bn_call(params, opts, partials, residual)?;
        let (storage, saved) = kernels(device).batch_norm_fwd(self, params, call, partials, residual)?;
        let (xt, gamma_t) = (self.clone(), gamma.clone());
        let mut inputs = vec![self, gamma, beta];
        inputs.extend(residual);
        Ok(Tensor::from_storage_op(OP, Arc::new(storage), self.shape().clone(), &inputs, move |dy, out| {
            let g = kernels(dy.device()).batch_norm_bwd(&xt, &gamma_t, dy, out, &saved)?;
            let mut grads = vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta)];
            grads.extend(g.dresidual.map(Some));
            Ok(grads)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{randn, seeded_randn};

    #[test]
    fn batch_norm_matches_naive_and_updates_running_stats() {
        let (mut rng, x) = seeded_randn(9, [3, 2, 4, 5], 1.5, 2.0);
        let gamma = randn([2], 1.0, 0.3, &mut rng);
        let beta = randn([2], 0.0, 0.3, &mut rng);
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
        let one = randn([1, 2, 1, 1], 0.0, 1.0, &mut rng);
        assert!(
            one.batch_norm(&gamma, &beta, &rm, &rv, opts)
                .unwrap_err()
                .to_string()
                .contains("more than one value")
        );
    }

    // The fused ReLU gives batch_norm(..).relu()'s bits, forward and every gradient (the ReLU op's
    // rules: y <= 0 -> 0, gradient where the output is > 0), in training and eval, on inputs
    // whose normalised values are about half negative.
    #[test]
    fn a_fused_relu_is_batch_norm_then_relu() {
        let (mut rng, xv) = seeded_randn(11, [3, 4, 5, 6], 0.3, 1.5);
        let gamma = randn([4], 1.0, 0.5, &mut rng);
        let beta = randn([4], 0.0, 0.5, &mut rng);
        let upstream = randn([3, 4, 5, 6], 0.0, 1.0, &mut rng);
        for training in [true, false] {
            let run = |fused: bool| {
                let x = xv.detach().into_var();
                let (g, b) = (gamma.detach().into_var(), beta.detach().into_var());
                let (rm, rv) = (Tensor::full([4], 0.2, Device::Cpu).unwrap(), Tensor::full([4], 1.3, Device::Cpu).unwrap());
                let opts = BatchNormOptions { training, relu: fused, ..BatchNormOptions::default() };
                let y = x.batch_norm(&g, &b, &rm, &rv, opts).unwrap();
                let y = if fused { y } else { y.relu().unwrap() };
                y.mul(&upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let grads = [&x, &g, &b].map(|t| t.grad().unwrap().to_vec().unwrap());
                (y.to_vec().unwrap(), grads, rm.to_vec().unwrap(), rv.to_vec().unwrap())
            };
            let (fused, composed) = (run(true), run(false));
            let zeros = fused.0.iter().filter(|&&v| v == 0.0).count();
            assert!(zeros > 50 && zeros < 310, "training {training}: {zeros} of 360 outputs clipped");
            assert_eq!(fused, composed, "training {training}");
        }
    }

    // batch_norm_add gives the bits of batch norm, then the add of the residual, then (with relu)
    // the ReLU op, forward and every gradient (x, gamma, beta and the residual's), in training
    // and eval, with and without the ReLU, on inputs where about half the sums are clipped. A
    // residual of another shape is refused with both shapes.
    #[test]
    fn batch_norm_add_is_batch_norm_then_add_then_relu() {
        let dims = [3, 4, 5, 6];
        let (mut rng, xv) = seeded_randn(12, dims, 0.3, 1.5);
        let gamma = randn([4], 1.0, 0.5, &mut rng);
        let beta = randn([4], 0.0, 0.5, &mut rng);
        let residual = randn(dims, 0.1, 1.0, &mut rng);
        let upstream = randn(dims, 0.0, 1.0, &mut rng);
        for training in [true, false] {
            for relu in [true, false] {
                let run = |fused: bool| {
                    let x = xv.detach().into_var();
                    let (g, b, r) = (gamma.detach().into_var(), beta.detach().into_var(), residual.detach().into_var());
                    let (rm, rv) = (Tensor::full([4], 0.2, Device::Cpu).unwrap(), Tensor::full([4], 1.3, Device::Cpu).unwrap());
                    let opts = BatchNormOptions { training, relu: fused && relu, ..BatchNormOptions::default() };
                    let y = if fused {
                        x.batch_norm_add(&r, &g, &b, &rm, &rv, opts, None).unwrap()
                    } else {
                        let y = x.batch_norm(&g, &b, &rm, &rv, opts).unwrap().add(&r).unwrap();
                        if relu { y.relu().unwrap() } else { y }
                    };
                    y.mul(&upstream).unwrap().sum_all().unwrap().backward().unwrap();
                    let grads = [&x, &g, &b, &r].map(|t| t.grad().unwrap().to_vec().unwrap());
                    (y.to_vec().unwrap(), grads, rm.to_vec().unwrap(), rv.to_vec().unwrap())
                };
                let (fused, composed) = (run(true), run(false));
                let zeros = fused.0.iter().filter(|&&v| v == 0.0).count();
                if relu {
                    assert!(zeros > 50 && zeros < 310, "training {training}: {zeros} of 360 outputs clipped");
                } else {
                    assert_eq!(zeros, 0, "training {training}: no ReLU, yet {zeros} zeros");
                }
                assert_eq!(fused, composed, "training {training} relu {relu}");
            }
        }
        let (rm, rv) = (Tensor::full([4], 0.0, Device::Cpu).unwrap(), Tensor::full([4], 1.0, Device::Cpu).unwrap());
        let short = randn([3, 4, 5, 5], 0.0, 1.0, &mut rng);
        let e = xv.batch_norm_add(&short, &gamma, &beta, &rm, &rv, BatchNormOptions::default(), None).unwrap_err().to_string();
        assert!(e.contains("batch_norm") && e.contains("[3, 4, 5, 5]") && e.contains("[3, 4, 5, 6]"), "{e}");
    }

    // Partial statistics come only from a GPU convolution: on the CPU they are refused, and a
    // wrong channel count is refused before anything runs; outside training they are not needed.
    #[test]
    fn partial_statistics_are_refused_where_they_cannot_apply() {
        let (_, x) = seeded_randn(10, [2, 3, 4, 4], 0.0, 1.0);
        let p = |c: usize| BnPartials { sums: Storage::Cpu(vec![1.0; 2 * c * 5]), slots: 5, width: 8, channels: c };
        let v = |val: f32| Tensor::full([3], val, Device::Cpu).unwrap();
        let opts = BatchNormOptions::default();
        let e = x.batch_norm_with(&v(1.0), &v(0.0), &v(0.0), &v(1.0), opts, Some(&p(3))).unwrap_err().to_string();
        assert!(e.contains("batch_norm") && e.contains("partial statistics"), "{e}");
        let e = x.batch_norm_with(&v(1.0), &v(0.0), &v(0.0), &v(1.0), opts, Some(&p(4))).unwrap_err().to_string();
        assert!(e.contains("4 channels") && e.contains("[2, 3, 4, 4]"), "{e}");
        let eval = BatchNormOptions { training: false, ..opts };
        let want = x.batch_norm(&v(1.0), &v(0.0), &v(0.0), &v(1.0), eval).unwrap().to_vec().unwrap();
        let got = x.batch_norm_with(&v(1.0), &v(0.0), &v(0.0), &v(1.0), eval, Some(&p(3))).unwrap().to_vec().unwrap();
        assert_eq!(got, want);
    }
}
