//! Differentiable ops on [`Tensor`], one folder per family, each with forward and backward.
//!
//! Every op is a `Tensor` method returning `coseg::Result<Tensor>`: shapes that do not fit are
//! an `Error::Shape` naming the op and both shapes, bad arguments an `Error::Invalid`.
//!
//! A family lives in `<family>/`: `mod.rs` checks the inputs, records the autograd node and
//! declares the family's kernel trait (`PoolKernels`, `ConvKernels`, ...); `cpu.rs` implements it
//! for [`Cpu`], plain loops over contiguous row-major slices, parallel with rayon over batch,
//! channels or rows when the work is large enough to pay for it ([`for_each_par_if_large`],
//! [`sum_par_if_large`]); `cuda.rs` implements it for [`Cuda`] with the checked launch wrappers
//! of the family's kernels (`kernels/<family>.cu`) and the `#[repr(C)]` struct they share, so
//! results stay on the device. [`kernels_for`] is the one place the device picks a side, for the
//! forward and for the backward. Ops whose backward is written with other ops (add, mul,
//! sum_to, mean, ...) need no kernel of their own.
//!
//! NaN: arithmetic ops propagate NaN (ReLU and max-pool included: a NaN input gives NaN out);
//! the losses refuse a NaN logit with `Error::Invalid` so a diverging run stops with a message
//! instead of training on garbage.
//!
//! Gradient checks for every op live in `tests/gradcheck.rs`; CPU/GPU parity of every op in
//! `tests/gpu_ops_parity.rs`.

pub mod attention;
pub(crate) mod conv;
mod cuda_common;
pub mod danet;
pub(crate) mod elementwise;
pub(crate) mod layout;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod resize;
pub(crate) mod softmax;

pub use norm::{BatchNormOptions, BnPartials};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread: rayon's fork-join costs more.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Runs `f` on each item of `items`, across rayon's threads when the op touches at least
/// [`PAR_MIN`] values (`work`), otherwise on the calling thread: an unsplittable rayon iterator
/// folds in place, with no fork-join.
pub(crate) fn for_each_par_if_large<I, F>(work: usize, items: I, f: F)
where
    I: IndexedParallelIterator,
    F: Fn(I::Item) + Send + Sync,
{
    if work >= PAR_MIN {
        items.for_each(f);
    } else {
        items.with_min_len(usize::MAX).for_each(f);
    }
}

/// The f64 sum of `items`, across rayon's threads when the op touches at least [`PAR_MIN`]
/// values (`work`). On the calling thread the fold is the serial left-to-right sum, to the bit.
pub(crate) fn sum_par_if_large<I>(work: usize, items: I) -> f64
where
    I: IndexedParallelIterator<Item = f64>,
{
    if work >= PAR_MIN {
        items.sum()
    } else {
        items.with_min_len(usize::MAX).sum()
    }
}

/// Runs `f` on each pair of matching planes (`out` in chunks of `out_plane`, `inp` in chunks of
/// `in_plane`), across rayon's threads when the planes together hold at least `PAR_MIN` values.
pub(crate) fn for_each_plane<F>(out: &mut [f32], out_plane: usize, inp: &[f32], in_plane: usize, f: F)
where
    F: Fn((&mut [f32], &[f32])) + Send + Sync,
{
    let work = out.len() + inp.len();
    for_each_par_if_large(work, out.par_chunks_mut(out_plane).zip(inp.par_chunks(in_plane)), f);
}

/// The CPU side of every family's kernels (`<family>/cpu.rs`).
pub(crate) struct Cpu;

/// The CUDA side of every family's kernels (`<family>/cuda.rs`): they run on the device the
/// tensors live on, in order on its one stream.
pub(crate) struct Cuda;

/// The one place an op's kernels are chosen by device: `K` is a family's kernel trait, which
/// [`Cpu`] and [`Cuda`] implement.
pub(crate) fn kernels_for<K: ?Sized>(device: Device, cpu: &'static K, cuda: &'static K) -> &'static K {
    match device {
        Device::Cpu => cpu,
        Device::Cuda(_) => cuda,
    }
}

/// The common device of an op's inputs, or an error naming the op and the devices.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let first = tensors[0].device();
    if let Some(other) = tensors.iter().find(|t| t.device() != first) {
        return Err(Error::DeviceMismatch { op, first, second: other.device() });
    }
    Ok(first)
}

/// Refuses an empty tensor where an op needs at least one element.
pub(crate) fn non_empty(op: &'static str, t: &Tensor) -> Result<()> {
    if t.numel() == 0 {
        return Err(Error::invalid(
            op,
            format!("empty tensor of shape {}", t.shape()),
        ));
    }
    Ok(())
}

/// A strided walk over `dims` with one stride list per operand, with adjacent dimensions merged
/// wherever every operand is contiguous across them (and size-1 dimensions dropped), so
/// broadcasting kernels run long inner loops. `strides[k][i]` is operand k's stride for dim i.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    pub dims: Vec<usize>,
    pub strides: Vec<Vec<usize>>,
}

impl Walk {
    pub fn new(dims: &[usize], strides: Vec<Vec<usize>>) -> Walk {
        let mut out_dims: Vec<usize> = Vec::new();
        let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
        for (i, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let merge = !out_dims.is_empty()
                && strides
                    .iter()
                    .zip(&out_strides)
                    .all(|(s, o)| *o.last().expect("non-empty") == s[i] * d);
            if merge {
                *out_dims.last_mut().expect("non-empty") *= d;
                for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                    *o.last_mut().expect("non-empty") = s[i];
                }
            } else {
                out_dims.push(d);
                for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                    o.push(s[i]);
                }
            }
        }
        if out_dims.is_empty() {
            out_dims.push(1);
            for o in out_strides.iter_mut() {
                o.push(0);
            }
        }
        Walk {
            dims: out_dims,
            strides: out_strides,
        }
    }
    /// Length of the innermost (merged) dimension.
    pub fn inner(&self) -> usize {
        *self.dims.last().expect("walk has a dimension")
    }
    /// Stride of operand `k` along the innermost dimension.
    pub fn inner_stride(&self, k: usize) -> usize {
        *self.strides[k].last().expect("walk has a dimension")
    }
    /// Number of inner rows.
    pub fn rows(&self) -> usize {
        self.dims[..self.dims.len() - 1].iter().product()
    }
    /// Offset of operand `k` at the start of inner row `row`.
    pub fn row_offset(&self, k: usize, mut row: usize) -> usize {
        let mut off = 0;
        for i in (0..self.dims.len() - 1).rev() {
            let d = self.dims[i];
            off += (row % d) * self.strides[k][i];
            row /= d;
        }
        off
    }
}

/// `shape` with the `axes` given set to 1 (the keep-dims shape of a reduction).
pub(crate) fn reduced_shape(
    op: &'static str,
    shape: &Shape,
    axes: &[isize],
) -> Result<(Shape, Vec<usize>)> {
    let mut dims = shape.dims().to_vec();
    let mut resolved = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = shape.axis(op, a)?;
        if resolved.contains(&a) {
            return Err(Error::invalid(
                op,
                format!("axis {a} given twice for shape {shape}"),
            ));
        }
        resolved.push(a);
        dims[a] = 1;
    }
    Ok((Shape::from(dims), resolved))
}

/// What the op families' unit tests share: seeded generators and CPU tensors drawn from them.
#[cfg(test)]
pub(crate) mod testing {
    use crate::device::Device;
    use crate::tensor::{Shape, Tensor};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The generator a test seeds with `seed`.
    pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// A CPU tensor of Normal(mean, std) samples drawn from `rng`.
    pub(crate) fn randn(dims: impl Into<Shape>, mean: f32, std: f32, rng: &mut ChaCha8Rng) -> Tensor {
        Tensor::randn(dims, mean, std, Device::Cpu, rng).expect("a finite mean and a positive std")
    }

    /// How most op tests start: the generator seeded with `seed`, and a first tensor drawn from it.
    pub(crate) fn seeded_randn(seed: u64, dims: impl Into<Shape>, mean: f32, std: f32) -> (ChaCha8Rng, Tensor) {
        let mut rng = rng(seed);
        let x = randn(dims, mean, std, &mut rng);
        (rng, x)
    }
}
