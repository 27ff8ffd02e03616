//! DANet's position attention (Fu et al., CVPR 2019; `nn::attention`) as one fused op,
//! [`Tensor::position_attention`]: for q, k (N, D, L) and v (N, C, L) (NCHW maps flattened,
//! L = H*W), `out[n,c,i] = sum_j softmax_j(sum_d q[n,d,i] k[n,d,j]) v[n,c,j]`, the value of
//! `v.bmm(&q.transpose(1, 2)?.bmm(&k)?.softmax(-1)?.transpose(1, 2)?)` without the (N, L, L)
//! attention: the CUDA kernels (kernels/danet.cu) never write it to device memory, and the
//! backward recomputes it from q, k and the saved log-sum-exp per query (flash attention 2).
//!
//! `cpu.rs` (the reference: f64 sums, row by row) and `cuda.rs` hold the two sides of
//! [`PositionKernels`]; this file checks the inputs and records the node.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for, non_empty, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};
use std::sync::Arc;

const OP: &str = "position_attention";

/// The sizes of one call: batch, q/k channels, v channels, positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    pub l: usize,
}

/// The position attention on one side (CPU or CUDA); shapes as [`Tensor::position_attention`]
/// checked them.
pub(crate) trait PositionKernels: Sync {
    /// (out (N, C, L), lse (N, L)): the output and each query's log-sum-exp of its scores.
    fn pam_fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, dims: Dims) -> Result<(Storage, Tensor)>;
    /// (dq, dk, dv) from the output's gradient `g`, the output `out` and the saved `lse`.
    fn pam_bwd(&self, g: &Tensor, qkv: [&Tensor; 3], out: &Tensor, lse: &Tensor, dims: Dims) -> Result<[Tensor; 3]>;
}

fn kernels(device: Device) -> &'static dyn PositionKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// The sizes of (q, k, v), or an error naming the op and the three shapes.
fn checked_dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let bad = || {
        Error::shape(
            OP,
            format!("q and k need one shape (N, D, L) and v (N, C, L), got q {}, k {}, v {}", q.shape(), k.shape(), v.shape()),
        )
    };
    let (&[n, d, l], &[kn, kd, kl], &[vn, c, vl]) = (q.dims(), k.dims(), v.dims()) else { return Err(bad()) };
    if (kn, kd, kl) != (n, d, l) || (vn, vl) != (n, l) {
        return Err(bad());
    }
    for t in [q, v] {
        non_empty(OP, t)?;
    }
    Ok(Dims { n, d, c, l })
}

impl Tensor {
    /// DANet's position attention on flattened maps: `self` = q and `k` (N, D, L), `v` (N, C, L);
    /// returns (N, C, L) with `out[n,c,i] = sum_j softmax_j(q[n,:,i] . k[n,:,j]) v[n,c,j]` (no
    /// scaling of the scores, as DANet). Differentiable in all three. Errors: shapes that do not
    /// fit, empty tensors, inputs on different devices.
    pub fn position_attention(&self, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dims = checked_dims(self, k, v)?;
        let device = same_device(OP, &[self, k, v])?;
        let (storage, lse) = kernels(device).pam_fwd(self, k, v, dims)?;
        let (qc, kc, vc) = (self.clone(), k.clone(), v.clone());
        let shape = v.shape().clone();
        Ok(Tensor::from_storage_op(OP, Arc::new(storage), shape, &[self, k, v], move |g, out| {
            let grads = kernels(g.device()).pam_bwd(g, [&qc, &kc, &vc], out, &lse, dims)?;
            let needed = [qc.tracks_grad(), kc.tracks_grad(), vc.tracks_grad()];
            Ok(grads.into_iter().zip(needed).map(|(d, need)| need.then_some(d)).collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{randn, seeded_randn};

    /// The composed version DaNet ran before the fused op.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let attn = q.transpose(1, 2).unwrap().bmm(k).unwrap().softmax(-1).unwrap();
        v.bmm(&attn.transpose(1, 2).unwrap()).unwrap()
    }

    #[test]
    fn cpu_forward_matches_the_composed_ops() {
        for (n, d, c, l) in [(2, 3, 5, 7), (1, 1, 1, 1), (1, 4, 9, 33)] {
            let (mut rng, q) = seeded_randn(7, [n, d, l], 0.0, 1.0);
            let k = randn([n, d, l], 0.0, 1.0, &mut rng);
            let v = randn([n, c, l], 0.0, 1.0, &mut rng);
            let fused = q.position_attention(&k, &v).unwrap().to_vec().unwrap();
            let want = composed(&q, &k, &v).to_vec().unwrap();
            let err = fused.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "({n}, {d}, {c}, {l}): max abs difference {err}");
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_op_and_shapes() {
        let (mut rng, q) = seeded_randn(3, [2, 4, 9], 0.0, 1.0);
        let k = randn([2, 4, 8], 0.0, 1.0, &mut rng);
        let v = randn([2, 6, 9], 0.0, 1.0, &mut rng);
        let e = q.position_attention(&k, &v).unwrap_err().to_string();
        assert!(e.contains(OP) && e.contains("[2, 4, 8]") && e.contains("[2, 6, 9]"), "{e}");
        assert!(q.position_attention(&q, &randn([1, 6, 9], 0.0, 1.0, &mut rng)).is_err());
        assert!(q.position_attention(&q, &q.reshape([2, 4, 3, 3]).unwrap()).is_err());
        let empty = Tensor::zeros([2, 0, 9], Device::Cpu).unwrap();
        assert!(empty.position_attention(&empty, &v).is_err());
    }
}
