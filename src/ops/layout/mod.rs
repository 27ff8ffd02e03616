//! Layout ops: reshape (shares data), permute/transpose, concat, narrow/split (copy: every tensor
//! stays contiguous).

//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`LayoutKernels`]; this file checks the inputs
//! and records the nodes.

mod cpu;
pub(crate) mod cuda;

use super::{Cpu, Cuda, kernels_for, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

/// Where a narrow's band lies in its input, viewed as (outer, size, inner) around `axis`:
/// elements `start..start+len` of that axis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Band {
    pub axis: usize,
    pub outer: usize,
    pub size: usize,
    pub inner: usize,
    pub start: usize,
    pub len: usize,
}

/// The copies behind the layout ops, on one side (CPU or CUDA).
pub(crate) trait LayoutKernels: Sync {
    /// A dense copy of `x` read over `dims` with strides `src_strides` (permute).
    fn strided_copy(&self, op: &'static str, x: &Tensor, dims: &[usize], src_strides: &[usize]) -> Result<Storage>;
    /// `tensors` joined along `axis` into `out` (every other dim equal).
    fn concat(&self, op: &'static str, tensors: &[&Tensor], axis: usize, out: &Shape) -> Result<Storage>;
    /// The band of `x`.
    fn narrow(&self, op: &'static str, x: &Tensor, band: Band) -> Result<Storage>;
    /// The adjoint of [`LayoutKernels::narrow`]: `g` placed back into zeros of `in_shape`.
    fn narrow_bwd(&self, op: &'static str, g: &Tensor, in_shape: &Shape, band: Band) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn LayoutKernels {
    kernels_for(device, &Cpu, &Cuda)
}

impl Tensor {
    /// The same numbers seen with another shape of equal element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {shape} ({} elements)",
                    self.shape(),
                    self.numel(),
                    shape.numel()
                ),
            ));
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let own = self.shape().clone();
        Ok(Tensor::from_storage_op(
            "reshape",
            self.storage(),
            shape,
            &[self],
            move |g, _| Ok(vec![Some(g.reshape(own.clone())?)]),
        ))
    }
    /// Merges dimensions `start..` into one: (N,C,H,W).flatten_from(2) = (N,C,H*W).
    pub fn flatten_from(&self, start: usize) -> Result<Tensor> {
        if start >= self.rank() {
            return Err(Error::invalid(
                "flatten_from",
                format!("start {start} out of range for shape {}", self.shape()),
            ));
        }
        let mut dims = self.dims()[..start].to_vec();
        dims.push(self.dims()[start..].iter().product());
        self.reshape(dims)
    }
    /// Inserts a size-1 dimension at `axis` (0..=rank).
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(Error::invalid(
                "unsqueeze",
                format!("axis {axis} out of range for shape {}", self.shape()),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.insert(axis, 1);
        self.reshape(dims)
    }

    /// Reorders dimensions: output dimension i is input dimension `perm[i]` (copies).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        const OP: &str = "permute";
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "{perm:?} is not a permutation of the {rank} axes of {}",
                    self.shape()
                ),
            ));
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let in_strides = self.shape().strides();
        let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let storage = kernels(self.device()).strided_copy(OP, self, &dims, &src_strides)?;
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            Shape::from(dims),
            &[self],
            move |g, _| Ok(vec![Some(g.permute(&inverse)?)]),
        ))
    }
    /// Swaps two dimensions (copies); e.g. (N, C, HW) -> (N, HW, C) for attention.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let rank = self.rank();
        if a >= rank || b >= rank {
            return Err(Error::invalid(
                "transpose",
                format!("axes {a}, {b} out of range for shape {}", self.shape()),
            ));
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Joins tensors along `axis` (all other dimensions equal): channel concat is `axis = 1`.
    pub fn concat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        const OP: &str = "concat";
        let first = tensors
            .first()
            .ok_or_else(|| Error::invalid(OP, "no tensors given"))?;
        let device = same_device(OP, tensors)?;
        let rank = first.rank();
        if axis >= rank {
            return Err(Error::invalid(
                OP,
                format!("axis {axis} out of range for shape {}", first.shape()),
            ));
        }
        for (i, t) in tensors.iter().enumerate() {
            let fits =
                t.rank() == rank && (0..rank).all(|d| d == axis || t.dims()[d] == first.dims()[d]);
            if !fits {
                return Err(Error::shape(
                    OP,
                    format!(
                        "tensor {i} has shape {}, tensor 0 has {}: only axis {axis} may differ",
                        t.shape(),
                        first.shape()
                    ),
                ));
            }
        }
        let total_axis: usize = tensors.iter().map(|t| t.dims()[axis]).sum();
        let mut dims = first.dims().to_vec();
        dims[axis] = total_axis;
        let out_shape = Shape::from(dims);
        let storage = kernels(device).concat(OP, tensors, axis, &out_shape)?;
        let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[axis]).collect();
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            out_shape,
            tensors,
            move |g, _| Ok(g.split(axis, &sizes)?.into_iter().map(Some).collect()),
        ))
    }

    /// Elements `start..start+len` along `axis` (copies); `narrow(0, i, 1)` takes one image.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        const OP: &str = "narrow";
        let size = self.shape().dim(OP, axis)?;
        if start + len > size {
            return Err(Error::invalid(
                OP,
                format!(
                    "range {start}..{} exceeds size {size} of axis {axis} in {}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        let band = Band {
            axis,
            outer: self.dims()[..axis].iter().product(),
            size,
            inner: self.dims()[axis + 1..].iter().product(),
            start,
            len,
        };
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let storage = kernels(self.device()).narrow(OP, self, band)?;
        let src_shape = self.shape().clone();
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            Shape::from(dims),
            &[self],
            move |g, _| Ok(vec![Some(kernels(g.device()).narrow_bwd(OP, g, &src_shape, band)?)]),
        ))
    }
    /// Splits along `axis` into pieces of the given sizes (which must add up to the axis size).
    pub fn split(&self, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let size = self.shape().dim("split", axis)?;
        if sizes.iter().sum::<usize>() != size {
            return Err(Error::invalid(
                "split",
                format!(
                    "sizes {sizes:?} do not add up to {size} (axis {axis} of {})",
                    self.shape()
                ),
            ));
        }
        let mut at = 0;
        sizes
            .iter()
            .map(|&s| {
                let piece = self.narrow(axis, at, s);
                at += s;
                piece
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|v| v as f32).collect(), dims, Device::Cpu).unwrap()
    }

    #[test]
    fn permute_concat_narrow() {
        let x = iota(&[2, 3, 4]);
        let p = x.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.dims(), &[4, 2, 3]);
        let pv = p.to_vec().unwrap();
        // p[k][i][j] = x[i][j][k] = 12 i + 4 j + k
        assert_eq!(pv[(3 * 2 + 1) * 3 + 2], (12 + 8 + 3) as f32);
        let t = x.transpose(1, 2).unwrap().transpose(1, 2).unwrap();
        assert_eq!(t.to_vec().unwrap(), x.to_vec().unwrap());

        let y = iota(&[2, 1, 4]);
        let c = Tensor::concat(&[&x, &y], 1).unwrap();
        assert_eq!(c.dims(), &[2, 4, 4]);
        let cv = c.to_vec().unwrap();
        assert_eq!(&cv[12..16], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(&cv[16..20], &[12.0, 13.0, 14.0, 15.0]);
        let parts = c.split(1, &[3, 1]).unwrap();
        assert_eq!(parts[0].to_vec().unwrap(), x.to_vec().unwrap());
        assert_eq!(parts[1].to_vec().unwrap(), y.to_vec().unwrap());
        let e = Tensor::concat(&[&x, &iota(&[3, 1, 4])], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3, 1, 4]") && e.contains("[2, 3, 4]"), "{e}");
        assert!(x.narrow(1, 2, 2).is_err());
        assert!(x.permute(&[0, 0, 1]).is_err());
        assert!(x.reshape([5, 5]).is_err());
    }
}
