//! Fused ops of the channel-spatial co-attention (CSA, `nn::attention`), each one pass over the
//! (N, C, H, W) features where the composed version takes several:
//! - [`Tensor::csa_pool`]: the channel gate's global average pool and MSA's mean over channels,
//!   from one read of f;
//! - [`Tensor::csa_gate`]: `f ⊙ c ⊙ s` with a per-channel `c` and a per-pixel `s`, and its
//!   backward (df, dc, ds) from one read of the upstream gradient and f;
//! - [`Tensor::se_pair_gate`]: SE's channel gates of both images of a pair and their product, in
//!   two launches forward and three backward on the GPU (the composed ops on the CPU);
//! - [`Tensor::eca_pair_gate`]: the same for ECA's gates, one launch forward and two backward.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`CsaKernels`]; this file checks the inputs and
//! records the nodes. The CPU side sums in the composed ops' order (f64, pixels and channels in
//! order), so its forward equals `global_avg_pool`, `mean(&[1], true)` and `f.mul(c)?.mul(s)` to
//! the bit; the one exception is a pool over fewer (N*C) planes than rayon has threads with at
//! least 32768 pixels each, where `sum_to` splits a plane's sum across threads.

mod cpu;
pub mod cuda;

use super::conv::odd_kernel_len;
use super::{Cpu, Cuda, kernels_for, non_empty, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

const POOL: &str = "csa_pool";
const GATE: &str = "csa_gate";
const SE_PAIR: &str = "se_pair_gate";
const ECA_PAIR: &str = "eca_pair_gate";

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

/// SE's bottleneck of one pooled batch (N, C): `sigmoid(fc2(relu(fc1(p))))`, shaped (N, C, 1, 1).
fn se_composed(p: &Tensor, [w1, b1, w2, b2]: [&Tensor; 4]) -> Result<Tensor> {
    let (n, c) = (p.dims()[0], p.dims()[1]);
    let hidden = p.reshape([n, c])?.linear(w1, Some(b1))?.relu()?;
    hidden.linear(w2, Some(b2))?.reshape([n, c, 1, 1])?.sigmoid()
}

impl Tensor {
    /// The shared channel gate of a pair under SE (Hu et al.): `se(pa) ⊙ se(pb)` with
    /// `se(p) = sigmoid(w2 relu(w1 p + b1) + b2)`, for the pooled features `pa`, `pb`
    /// (N, C, 1, 1) and the layers w1 (HD, C), b1 (HD), w2 (C, HD), b2 (C) (nn::Linear's
    /// (OUT, IN) weights); (N, C, 1, 1). On a GPU two fused launches forward and three backward
    /// (kernels/attention.cu `se_*`); on the CPU the composed ops, the reference.
    pub fn se_pair_gate(pa: &Tensor, pb: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Result<Tensor> {
        let (n, c, hd) = se_pair_dims(pa, pb, [w1, b1, w2, b2])?;
        let device = same_device(SE_PAIR, &[pa, pb, w1, b1, w2, b2])?;
        if device == Device::Cpu {
            return se_composed(pa, [w1, b1, w2, b2])?.mul(&se_composed(pb, [w1, b1, w2, b2])?);
        }
        let (out, hid, gates) = cuda::se_pair_fwd(pa, pb, [w1, b1, w2, b2], [n, c, hd])?;
        let (pa_, pb_, w1_, w2_) = (pa.clone(), pb.clone(), w1.clone(), w2.clone());
        let needed = [pa, pb, w1, b1, w2, b2].map(Tensor::tracks_grad);
        Ok(Tensor::from_storage_op(SE_PAIR, Arc::new(out), Shape::from([n, c, 1, 1]), &[pa, pb, w1, b1, w2, b2], move |g, _| {
            let grads = cuda::se_pair_bwd(g, [&pa_, &pb_], &w1_, &w2_, [&hid, &gates], [n, c, hd])?;
            Ok(grads.into_iter().zip(needed).map(|(d, need)| need.then_some(d)).collect())
        }))
    }
}

impl Tensor {
    /// ECA's shared channel gate of a pair: `sigmoid(conv1d(pa, w)) ⊙ sigmoid(conv1d(pb, w))` for
    /// the images' pooled features pa, pb (N, C, 1, 1) and the odd-length kernel `w` across
    /// channels ((k), (1, k) or (1, 1, k), as [`Tensor::conv1d_channels`] takes it); (N, C, 1, 1).
    /// On a GPU one fused launch forward and two backward (kernels/attention.cu `eca_*`), the
    /// forward and the inputs' gradients the composed ops' bits; on the CPU the composed ops.
    pub fn eca_pair_gate(pa: &Tensor, pb: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (n, c) = pooled_pair(ECA_PAIR, pa, pb)?;
        let k = odd_kernel_len(ECA_PAIR, w)?;
        let device = same_device(ECA_PAIR, &[pa, pb, w])?;
        if device == Device::Cpu {
            let gate = |p: &Tensor| p.conv1d_channels(w)?.sigmoid();
            return gate(pa)?.mul(&gate(pb)?);
        }
        let (out, gates) = cuda::eca_pair_fwd(pa, pb, w, [n, c, k])?;
        let (pa_, pb_, w_) = (pa.clone(), pb.clone(), w.clone());
        let needed = [pa, pb, w].map(Tensor::tracks_grad);
        Ok(Tensor::from_storage_op(ECA_PAIR, Arc::new(out), Shape::from([n, c, 1, 1]), &[pa, pb, w], move |g, _| {
            let grads = cuda::eca_pair_bwd(g, [&pa_, &pb_], &w_, &gates, [n, c, k])?;
            Ok(grads.into_iter().zip(needed).map(|(d, need)| need.then_some(d)).collect())
        }))
    }
}

/// (N, C) of a pair gate's pooled features: pa (N, C, 1, 1), non-empty, and pb of the same shape.
fn pooled_pair(op: &'static str, pa: &Tensor, pb: &Tensor) -> Result<(usize, usize)> {
    match pa.dims() {
        &[n, c, 1, 1] if n * c > 0 && pb.dims() == pa.dims() => Ok((n, c)),
        _ => Err(Error::shape(op, format!("pooled features {} and {} must both be (N, C, 1, 1), non-empty", pa.shape(), pb.shape()))),
    }
}

/// (N, C, HD) of a checked [`Tensor::se_pair_gate`] call, or the shapes that do not fit.
fn se_pair_dims(pa: &Tensor, pb: &Tensor, [w1, b1, w2, b2]: [&Tensor; 4]) -> Result<(usize, usize, usize)> {
    let (n, c) = pooled_pair(SE_PAIR, pa, pb)?;
    let hd = w1.dims().first().copied().unwrap_or(0);
    let fits = hd > 0 && w1.dims() == [hd, c] && b1.dims() == [hd] && w2.dims() == [c, hd] && b2.dims() == [c];
    if !fits {
        return Err(Error::shape(
            SE_PAIR,
            format!(
                "pooled {} and {} with layers w1 {}, b1 {}, w2 {}, b2 {}: need w1 (HD, {c}), b1 (HD), w2 ({c}, HD), b2 ({c})",
                pa.shape(),
                pb.shape(),
                w1.shape(),
                b1.shape(),
                w2.shape(),
                b2.shape()
            ),
        ));
    }
    Ok((n, c, hd))
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

    // The CPU's SE pair gate is the composed ops: the same bits as the module's composed path,
    // gradients reaching all six inputs; shapes that do not fit are refused, naming the op.
    #[test]
    fn se_pair_gate_on_the_cpu_is_the_composed_product() {
        let (mut rng, pa) = seeded_randn(21, [3, 37, 1, 1], 0.0, 1.0);
        let pb = randn([3, 37, 1, 1], 0.5, 1.0, &mut rng);
        let w = [randn([2, 37], 0.0, 0.3, &mut rng), randn([2], 0.0, 0.3, &mut rng), randn([37, 2], 0.0, 0.3, &mut rng), randn([37], 0.0, 0.3, &mut rng)];
        let vars: Vec<Tensor> = [&pa, &pb].into_iter().chain(&w).map(|t| t.clone().into_var()).collect();
        let out = Tensor::se_pair_gate(&vars[0], &vars[1], &vars[2], &vars[3], &vars[4], &vars[5]).unwrap();
        let refs = [&w[0], &w[1], &w[2], &w[3]];
        let want = se_composed(&pa, refs).unwrap().mul(&se_composed(&pb, refs).unwrap()).unwrap();
        assert_eq!(out.to_vec().unwrap(), want.to_vec().unwrap());
        assert_eq!(out.dims(), [3, 37, 1, 1]);
        out.sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let g = v.grad().unwrap().to_vec().unwrap();
            assert!(g.iter().any(|&x| x != 0.0) && g.iter().all(|x| x.is_finite()), "input {i}");
        }
        let e = Tensor::se_pair_gate(&pa, &pb, &w[2], &w[1], &w[0], &w[3]).unwrap_err().to_string();
        assert!(e.starts_with("se_pair_gate") && e.contains("[37, 2]"), "{e}");
        assert!(Tensor::se_pair_gate(&pa.reshape([3, 37]).unwrap(), &pb, refs[0], refs[1], refs[2], refs[3]).is_err());
    }

    // The CPU's ECA pair gate is the composed ops (the module's composed ECA path, to the bit),
    // gradients reaching all three inputs; a mismatched partner or an even kernel is refused.
    #[test]
    fn eca_pair_gate_on_the_cpu_is_the_composed_product() {
        let (mut rng, pa) = seeded_randn(22, [3, 37, 1, 1], 0.0, 1.0);
        let pb = randn([3, 37, 1, 1], 0.5, 1.0, &mut rng);
        let w = randn([1, 1, 5], 0.0, 0.5, &mut rng);
        let vars: Vec<Tensor> = [&pa, &pb, &w].into_iter().map(|t| t.clone().into_var()).collect();
        let out = Tensor::eca_pair_gate(&vars[0], &vars[1], &vars[2]).unwrap();
        let gate = |p: &Tensor| p.conv1d_channels(&w).unwrap().reshape([3, 37, 1, 1]).unwrap().sigmoid().unwrap();
        assert_eq!(out.to_vec().unwrap(), gate(&pa).mul(&gate(&pb)).unwrap().to_vec().unwrap());
        assert_eq!(out.dims(), [3, 37, 1, 1]);
        out.sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let g = v.grad().unwrap().to_vec().unwrap();
            assert!(g.iter().any(|&x| x != 0.0) && g.iter().all(|x| x.is_finite()), "input {i}");
        }
        let e = Tensor::eca_pair_gate(&pa, &pb.reshape([3, 37]).unwrap(), &w).unwrap_err().to_string();
        assert!(e.starts_with("eca_pair_gate") && e.contains("[3, 37]"), "{e}");
        let even = randn([4], 0.0, 0.5, &mut rng);
        assert!(Tensor::eca_pair_gate(&pa, &pb, &even).unwrap_err().to_string().contains("odd-length"));
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
