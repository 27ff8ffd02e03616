//! Max pooling over (N,C,H,W) planes (ResNet's stem uses kernel 3, stride 2, padding 1).
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`PoolKernels`]; this file checks the inputs and
//! records the node.

mod cpu;
pub mod cuda;

use super::{Cpu, Cuda, kernels_for};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::backend::cuda::TypedBuffer;
use crate::tensor::{Shape, Storage, Tensor};

const OP: &str = "max_pool2d";

/// A square pooling window: its size, stride and implicit -inf padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// The forward's winners: each output's argmax as an offset within its input plane, which the
/// backward routes the output's gradient to. [`winner_offsets_fit`] keeps the offsets in u32.
pub(crate) enum Winners {
    Cpu(Vec<u32>),
    Cuda(TypedBuffer<u32>),
}

impl Winners {
    /// The error of a backward whose gradient `dy` is not where the forward left its winners.
    pub(super) fn elsewhere_than(&self, dy: &Tensor) -> Error {
        let second = match self {
            Winners::Cpu(_) => Device::Cpu,
            Winners::Cuda(b) => Device::Cuda(b.ordinal()),
        };
        Error::DeviceMismatch { op: OP, first: dy.device(), second }
    }
}

/// Max pooling on one side (CPU or CUDA).
pub(crate) trait PoolKernels: Sync {
    /// The pooled output of `x` (N,C,H,W) and its winners.
    fn max_pool_fwd(&self, x: &Tensor, win: Window) -> Result<(Storage, Winners)>;
    /// dx (shaped `in_shape`) from the upstream gradient `dy` and the forward's winners.
    fn max_pool_bwd(&self, dy: &Tensor, winners: &Winners, in_shape: &Shape, win: Window) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn PoolKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// Output size of a k x k, stride s, padding p pool (floor mode, as PyTorch's default).
pub fn pool_out(op: &'static str, h: usize, w: usize, k: usize, s: usize, p: usize) -> Result<(usize, usize)> {
    if k == 0 || s == 0 || p * 2 > k {
        return Err(Error::invalid(op, format!("kernel {k}, stride {s}, padding {p}: need k, s >= 1 and p <= k/2")));
    }
    if h + 2 * p < k || w + 2 * p < k {
        return Err(Error::shape(op, format!("input {h}x{w} smaller than the {k}x{k} window with padding {p}")));
    }
    Ok(((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1))
}

/// Refuses an input whose planes have cells beyond u32's reach: the winners would wrap.
fn winner_offsets_fit(shape: &Shape) -> Result<()> {
    let plane: usize = shape.dims()[2..].iter().product();
    if plane > 0 && u32::try_from(plane - 1).is_err() {
        return Err(Error::shape(
            OP,
            format!("input {shape}: a plane of {plane} cells is beyond the u32 offsets the winners are kept in"),
        ));
    }
    Ok(())
}

impl Tensor {
    /// Max pool with a square `kernel`, `stride` and implicit -inf `padding` (at most kernel/2,
    /// as PyTorch requires); output size `(H + 2 pad - kernel) / stride + 1`, rounded down.
    /// NaN inputs propagate: a window holding NaN gives NaN.
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.shape().expect_rank(OP, 4, "(N,C,H,W)")?;
        let &[n, c, h, w] = self.dims() else {
            unreachable!("rank checked")
        };
        if kernel == 0 || stride == 0 || padding > kernel / 2 {
            return Err(Error::invalid(
                OP,
                format!(
                    "kernel {kernel}, stride {stride}, padding {padding}: need kernel, stride > 0 and padding <= kernel/2"
                ),
            ));
        }
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            return Err(Error::shape(
                OP,
                format!("kernel {kernel} larger than padded input {}", self.shape()),
            ));
        }
        let (oh, ow) = (
            (h + 2 * padding - kernel) / stride + 1,
            (w + 2 * padding - kernel) / stride + 1,
        );
        winner_offsets_fit(self.shape())?;
        let win = Window { kernel, stride, padding };
        let (storage, winners) = kernels(self.device()).max_pool_fwd(self, win)?;
        let in_shape = self.shape().clone();
        Ok(Tensor::from_storage_unary(OP, storage, Shape::from([n, c, oh, ow]), self, move |g, _| {
            kernels(g.device()).max_pool_bwd(g, &winners, &in_shape, win)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::seeded_randn;

    #[test]
    fn max_pool_matches_naive() {
        let (_, x) = seeded_randn(4, [2, 3, 7, 6], 0.0, 1.0);
        let y = x.max_pool2d(3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4, 3]);
        let (xv, yv) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        for p in 0..6 {
            for i in 0..4 {
                for j in 0..3 {
                    let mut m = f32::NEG_INFINITY;
                    for r in 0..3 {
                        for s in 0..3 {
                            let (hi, wi) = ((2 * i + r) as isize - 1, (2 * j + s) as isize - 1);
                            if (0..7).contains(&hi) && (0..6).contains(&wi) {
                                m = m.max(xv[p * 42 + hi as usize * 6 + wi as usize]);
                            }
                        }
                    }
                    assert_eq!(yv[p * 12 + i * 3 + j], m);
                }
            }
        }
        assert!(x.max_pool2d(3, 2, 2).is_err());
    }

    #[test]
    fn planes_beyond_u32_offsets_are_refused() {
        let largest = u32::MAX as usize + 1;
        assert!(winner_offsets_fit(&Shape::from([2, 3, 1, largest])).is_ok());
        assert!(winner_offsets_fit(&Shape::from([1, 1, 0, largest + 1])).is_ok());
        let e = winner_offsets_fit(&Shape::from([1, 2, 65536, 65537])).unwrap_err().to_string();
        assert!(e.starts_with("max_pool2d:") && e.contains("[1, 2, 65536, 65537]"), "{e}");
    }
}
