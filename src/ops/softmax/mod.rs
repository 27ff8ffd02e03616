//! Softmax over one axis.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`SoftmaxKernels`]; this file checks the inputs
//! and records the node.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Storage, Tensor};
use std::sync::Arc;

const OP: &str = "softmax";

/// A tensor viewed as (outer, dim, inner), the softmax running over `dim`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub outer: usize,
    pub dim: usize,
    pub inner: usize,
}

/// Softmax on one side (CPU or CUDA).
pub(crate) trait SoftmaxKernels: Sync {
    fn softmax_fwd(&self, x: &Tensor, view: View) -> Result<Storage>;
    /// dx from the forward's output `y` and the upstream gradient `dy`.
    fn softmax_bwd(&self, y: &Tensor, dy: &Tensor, view: View) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn SoftmaxKernels {
    kernels_for(device, &Cpu, &Cuda)
}

impl Tensor {
    /// Softmax along `axis` (negative counts from the end): exp(x - max) / sum, stable for any
    /// finite input.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let a = self.shape().axis(OP, axis)?;
        let view = View {
            outer: self.dims()[..a].iter().product(),
            dim: self.dims()[a],
            inner: self.dims()[a + 1..].iter().product(),
        };
        let storage = kernels(self.device()).softmax_fwd(self, view)?;
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            self.shape().clone(),
            &[self],
            move |g, y| Ok(vec![Some(kernels(g.device()).softmax_bwd(y, g, view)?)]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::seeded_randn;

    #[test]
    fn softmax_matches_naive() {
        let (_, x) = seeded_randn(8, [2, 3, 4], 0.0, 3.0);
        let xv = x.to_vec().unwrap();
        let y = x.softmax(1).unwrap().to_vec().unwrap();
        for n in 0..2 {
            for i in 0..4 {
                let z: f64 = (0..3).map(|c| (xv[n * 12 + c * 4 + i] as f64).exp()).sum();
                for c in 0..3 {
                    let want = (xv[n * 12 + c * 4 + i] as f64).exp() / z;
                    assert!((y[n * 12 + c * 4 + i] as f64 - want).abs() < 1e-6);
                }
            }
        }
        let big = Tensor::from_vec(vec![1000.0, 0.0], [2], Device::Cpu)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(big, vec![1.0, 0.0]);
        assert!(x.softmax(3).is_err());
    }
}
