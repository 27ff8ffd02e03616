//! Fused ops of the channel-spatial co-attention (CSA, `nn::attention`), each one pass over the
//! (N, C, H, W) features where the composed version takes several:
//! - [`Tensor::csa_pool`]: the channel gate's global average pool and MSA's mean over channels,
//!   from one read of f;
//! - [`Tensor::csa_gate`]: `f ⊙ c ⊙ s` with a per-channel `c` and a per-pixel `s`, and its
//!   backward (df, dc, ds) from one read of the upstream gradient and f.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`CsaKernels`]; this file checks the inputs and
//! records the nodes. The CPU side sums in the composed ops' order (f64, pixels and channels in
//! order), so its forward equals `global_avg_pool`, `mean(&[1], true)` and `f.mul(c)?.mul(s)` to
//! the bit; the one exception is a pool over fewer (N*C) planes than rayon has threads with at
//! least 32768 pixels each, where `sum_to` splits a plane's sum across threads.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for, non_empty, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

const POOL: &str = "csa_pool";
const GATE: &str = "csa_gate";

/// The fused CSA kernels on one side (CPU or CUDA). `f` is (N, C, H, W), `c` (N, C, 1, 1) and
/// `s` (N, 1, H, W), as [`Tensor::csa_gate`] checked.
pub(crate) trait CsaKernels: Sync {
    /// The pool's packed output (N, C + H*W): per image, the C channel means over pixels, then
    /// the H*W pixel means over channels.
    fn csa_pool_fwd(&self, f: &Tensor) -> Result<Storage>;
    /// df (shaped `f_shape`) from the packed output's gradient `g`.
    fn csa_pool_bwd(&self, g: &Tensor, f_shape: &Shape) -> Result<Tensor>;
    /// `f ⊙ c ⊙ s`, rounded as `(f * c) * s`.
    fn csa_gate_fwd(&self, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<Storage>;
    /// (df, dc, ds) from the output's gradient `g`, shaped as f, c and s.
    fn csa_gate_bwd(&self, g: &Tensor, f: &Tensor, c: &Tensor, s: &Tensor) -> Result<[Tensor; 3]>;
}

fn kernels(device: Device) -> &'static dyn CsaKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// (N, C, H, W) of a rank-4, non-empty `f`.
fn checked_nchw(op: &'static str, f: &Tensor) -> Result<[usize; 4]> {
    f.shape().expect_rank(op, 4, "(N,C,H,W)")?;
    non_empty(op, f)?;
    Ok(f.shape().nchw())
}

impl Tensor {
    /// (N,C,H,W) -> ((N,C,1,1), (N,1,H,W)): each channel's mean over its pixels (as
    /// [`Tensor::global_avg_pool`]) and each pixel's mean over the channels (as
    /// `mean(&[1], true)`), from one pass over the features. An error for an empty tensor.
    pub fn csa_pool(&self) -> Result<(Tensor, Tensor)> {
        let [n, c, h, w] = checked_nchw(POOL, self)?;
        let storage = kernels(self.device()).csa_pool_fwd(self)?;
        let f_shape = self.shape().clone();
        let packed = Tensor::from_storage_unary(POOL, storage, Shape::from([n, c + h * w]), self, move |g, _| {
            kernels(g.device()).csa_pool_bwd(g, &f_shape)
        });
        let gap = packed.narrow(1, 0, c)?.reshape([n, c, 1, 1])?;
        let mean = packed.narrow(1, c, h * w)?.reshape([n, 1, h, w])?;
        Ok((gap, mean))
    }

    /// `self ⊙ c ⊙ s` for features (N,C,H,W), a per-channel gate `c` (N,C,1,1) and a per-pixel
    /// gate `s` (N,1,H,W): the value of `self.mul(c)?.mul(s)` in one pass, and a backward that
    /// reads the gradient and the features once for all three gradients.
    pub fn csa_gate(&self, c: &Tensor, s: &Tensor) -> Result<Tensor> {
        let [n, ch, h, w] = checked_nchw(GATE, self)?;
        if c.dims() != [n, ch, 1, 1] || s.dims() != [n, 1, h, w] {
            return Err(Error::shape(
                GATE,
                format!(
                    "features {} need a channel gate [{n}, {ch}, 1, 1] and a spatial gate [{n}, 1, {h}, {w}], got {} and {}",
                    self.shape(),
                    c.shape(),
                    s.shape()
                ),
            ));
        }
        let device = same_device(GATE, &[self, c, s])?;
        let storage = kernels(device).csa_gate_fwd(self, c, s)?;
        let (fc, cc, sc) = (self.clone(), c.clone(), s.clone());
        Ok(Tensor::from_storage_op(GATE, Arc::new(storage), self.shape().clone(), &[self, c, s], move |g, _| {
            let grads = kernels(g.device()).csa_gate_bwd(g, &fc, &cc, &sc)?;
            let needed = [fc.tracks_grad(), cc.tracks_grad(), sc.tracks_grad()];
            Ok(grads.into_iter().zip(needed).map(|(d, need)| need.then_some(d)).collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{randn, seeded_randn};

    // The CPU side against the composed ops on odd sizes: the forward to the bit.
    #[test]
    fn cpu_forward_equals_the_composed_ops_bitwise() {
        for dims in [[2, 5, 3, 7], [1, 3, 1, 1], [3, 33, 4, 9]] {
            let (mut rng, f) = seeded_randn(11, dims, 0.3, 1.5);
            let (gap, mean) = f.csa_pool().unwrap();
            assert_eq!(gap.to_vec().unwrap(), f.global_avg_pool().unwrap().to_vec().unwrap(), "{dims:?}");
            assert_eq!(mean.to_vec().unwrap(), f.mean(&[1], true).unwrap().to_vec().unwrap(), "{dims:?}");
            let c = randn([dims[0], dims[1], 1, 1], 0.0, 1.0, &mut rng);
            let s = randn([dims[0], 1, dims[2], dims[3]], 0.0, 1.0, &mut rng);
            let fused = f.csa_gate(&c, &s).unwrap().to_vec().unwrap();
            assert_eq!(fused, f.mul(&c).unwrap().mul(&s).unwrap().to_vec().unwrap(), "{dims:?}");
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_op_and_shapes() {
        let (mut rng, f) = seeded_randn(3, [2, 4, 3, 3], 0.0, 1.0);
        let c = randn([2, 4, 1, 1], 0.0, 1.0, &mut rng);
        let s = randn([2, 1, 3, 2], 0.0, 1.0, &mut rng);
        let e = f.csa_gate(&c, &s).unwrap_err().to_string();
        assert!(e.starts_with("csa_gate") && e.contains("[2, 1, 3, 2]") && e.contains("[2, 4, 3, 3]"), "{e}");
        assert!(f.csa_gate(&s, &c).is_err());
        assert!(f.reshape([2, 4, 9]).unwrap().csa_pool().is_err());
        assert!(Tensor::zeros([2, 0, 3, 3], Device::Cpu).unwrap().csa_pool().is_err());
    }
}
