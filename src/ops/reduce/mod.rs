//! Reductions (sum, mean over chosen axes; global average pooling) and their adjoint, broadcasting.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`ReduceKernels`]; this file checks the inputs
//! and records the nodes. Means, `sum` and `global_avg_pool` are written with `sum_to`.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for, non_empty, reduced_shape};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};

/// Sums to and broadcasts from a shape, on one side (CPU or CUDA).
pub(crate) trait ReduceKernels: Sync {
    /// `x` summed down to `dst`, which broadcasts to x's shape.
    fn sum_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage>;
    /// `x` repeated along its size-1 (or missing leading) dims to `dst`.
    fn broadcast_to(&self, op: &'static str, x: &Tensor, dst: &Shape) -> Result<Storage>;
}

fn kernels(device: Device) -> &'static dyn ReduceKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// The two directions between a shape and one it broadcasts to, each the other's adjoint.
#[derive(Clone, Copy)]
enum Broadcast {
    /// Sum down to the smaller shape (`sum_to`).
    Sum,
    /// Repeat up to the larger shape (`broadcast_to`).
    Repeat,
}

impl Tensor {
    /// Sums over the dimensions in which `shape` broadcasts to this tensor's shape (the adjoint of
    /// `broadcast_to`); `shape` may have fewer dimensions (numpy alignment from the right).
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        self.broadcast_step(Broadcast::Sum, shape)
    }

    /// Repeats this tensor along its size-1 (or missing leading) dimensions to `shape`.
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Tensor> {
        self.broadcast_step(Broadcast::Repeat, shape)
    }

    /// `sum_to` or `broadcast_to`, recorded with the other as its backward.
    fn broadcast_step(&self, dir: Broadcast, shape: &Shape) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let (op, fits, verb) = match dir {
            Broadcast::Sum => {
                let op = "sum_to";
                (op, shape.rank() <= self.rank() && &shape.broadcast(self.shape(), op)? == self.shape(), "summed")
            }
            Broadcast::Repeat => {
                let op = "broadcast_to";
                (op, &self.shape().broadcast(shape, op)? == shape, "broadcast")
            }
        };
        if !fits {
            return Err(Error::shape(op, format!("{} cannot be {verb} to {shape}", self.shape())));
        }
        let side = kernels(self.device());
        let storage = match dir {
            Broadcast::Sum => side.sum_to(op, self, shape)?,
            Broadcast::Repeat => side.broadcast_to(op, self, shape)?,
        };
        let own = self.shape().clone();
        Ok(Tensor::from_storage_unary(op, storage, shape.clone(), self, move |g, _| match dir {
            Broadcast::Sum => g.broadcast_to(&own),
            Broadcast::Repeat => g.sum_to(&own),
        }))
    }

    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size 1.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let (kept, resolved) = reduced_shape("sum", self.shape(), axes)?;
        let s = self.sum_to(&kept)?;
        if keepdim {
            Ok(s)
        } else {
            s.reshape(drop_axes(self.shape(), &resolved))
        }
    }
    /// Mean over `axes`; an error for an empty tensor (the mean of nothing is undefined).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        non_empty("mean", self)?;
        let (_, resolved) = reduced_shape("mean", self.shape(), axes)?;
        let count: usize = resolved.iter().map(|&a| self.dims()[a]).product();
        self.sum(axes, keepdim)?.mul_scalar(1.0 / count as f32)
    }
    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum_to(&Shape::from(()))
    }
    /// Mean of every element, as a rank-0 tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        non_empty("mean_all", self)?;
        self.sum_all()?.mul_scalar(1.0 / self.numel() as f32)
    }
    /// (N,C,H,W) -> (N,C,1,1): the mean of each channel plane.
    pub fn global_avg_pool(&self) -> Result<Tensor> {
        self.shape()
            .expect_rank("global_avg_pool", 4, "(N,C,H,W)")?;
        self.mean(&[2, 3], true)
    }
}

fn drop_axes(shape: &Shape, axes: &[usize]) -> Shape {
    Shape::from(
        shape
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::seeded_randn;

    #[test]
    fn sums_match_naive() {
        let (_, x) = seeded_randn(3, [2, 3, 4, 5], 0.0, 1.0);
        let v = x.to_vec().unwrap();
        let idx = |n: usize, c: usize, h: usize, w: usize| v[((n * 3 + c) * 4 + h) * 5 + w] as f64;
        // axes 0 and 2: a non-trailing reduction
        let s = x.sum(&[0, 2], false).unwrap();
        assert_eq!(s.dims(), &[3, 5]);
        let got = s.to_vec().unwrap();
        for c in 0..3 {
            for w in 0..5 {
                let want: f64 = (0..2)
                    .flat_map(|n| (0..4).map(move |h| (n, h)))
                    .map(|(n, h)| idx(n, c, h, w))
                    .sum();
                assert!((got[c * 5 + w] as f64 - want).abs() < 1e-5, "c{c} w{w}");
            }
        }
        let g = x.global_avg_pool().unwrap();
        assert_eq!(g.dims(), &[2, 3, 1, 1]);
        let gv = g.to_vec().unwrap();
        let want: f64 = (0..4)
            .flat_map(|h| (0..5).map(move |w| (h, w)))
            .map(|(h, w)| idx(1, 2, h, w))
            .sum::<f64>()
            / 20.0;
        assert!((gv[5] as f64 - want).abs() < 1e-6);
        assert!(
            (x.mean_all().unwrap().to_scalar().unwrap() as f64
                - v.iter().map(|&a| a as f64).sum::<f64>() / 120.0)
                .abs()
                < 1e-6
        );
        assert!(
            x.mean(&[4], true)
                .unwrap_err()
                .to_string()
                .contains("axis 4")
        );
        assert!(
            Tensor::zeros([0, 3], Device::Cpu)
                .unwrap()
                .mean_all()
                .is_err()
        );
    }
}
