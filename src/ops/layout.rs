//! Layout ops: reshape (shares data), permute/transpose, concat, narrow/split (copy: every tensor
//! stays contiguous).

use super::{PAR_MIN, Walk, cuda_common, gpu, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Copies `src` read with `src_strides` over `dims` into a new contiguous buffer.
fn strided_copy_cpu(src: &[f32], dims: &[usize], src_strides: Vec<usize>) -> Vec<f32> {
    let out_shape = Shape::from(dims);
    let walk = Walk::new(dims, vec![out_shape.strides(), src_strides]);
    let n = out_shape.numel();
    let mut y = vec![0f32; n];
    if n == 0 {
        return y;
    }
    let inner = walk.inner();
    let s = walk.inner_stride(1);
    let row = |(r, yr): (usize, &mut [f32])| {
        let o = walk.row_offset(1, r);
        if s == 1 {
            yr.copy_from_slice(&src[o..o + inner]);
        } else {
            for (i, y) in yr.iter_mut().enumerate() {
                *y = src[o + i * s];
            }
        }
    };
    if n >= PAR_MIN {
        y.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_MIN / 4 / inner).max(1))
            .for_each(row);
    } else {
        y.chunks_mut(inner).enumerate().for_each(row);
    }
    y
}

/// Rows of `rows` blocks: copies block `[from, from+len)` of each source row of width `src_w`
/// into destination rows of width `dst_w` at `to`.
#[allow(clippy::too_many_arguments)]
fn copy_blocks(
    src: &[f32],
    src_w: usize,
    from: usize,
    dst: &mut [f32],
    dst_w: usize,
    to: usize,
    len: usize,
    rows: usize,
) {
    if len == 0 || rows == 0 {
        return;
    }
    let body = |(r, d): (usize, &mut [f32])| {
        d[to..to + len].copy_from_slice(&src[r * src_w + from..r * src_w + from + len])
    };
    if rows * len >= PAR_MIN {
        dst.par_chunks_mut(dst_w).enumerate().for_each(body);
    } else {
        dst.chunks_mut(dst_w).enumerate().for_each(body);
    }
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
        let storage = match self.device() {
            Device::Cpu => Storage::Cpu(strided_copy_cpu(
                self.storage().as_cpu(OP)?,
                &dims,
                src_strides,
            )),
            Device::Cuda(_) => gpu::gather(OP, self, &dims, &src_strides, 0)?,
        };
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
        let outer: usize = first.dims()[..axis].iter().product();
        let inner: usize = first.dims()[axis + 1..].iter().product();
        let total_axis: usize = tensors.iter().map(|t| t.dims()[axis]).sum();
        let mut dims = first.dims().to_vec();
        dims[axis] = total_axis;
        let row_w = total_axis * inner;
        let out_shape = Shape::from(dims);
        let storage = match device {
            Device::Cpu => {
                let mut y = vec![0f32; outer * row_w];
                let mut at = 0;
                for t in tensors {
                    let w = t.dims()[axis] * inner;
                    copy_blocks(t.storage().as_cpu(OP)?, w, 0, &mut y, row_w, at, w, outer);
                    at += w;
                }
                Storage::Cpu(y)
            }
            Device::Cuda(_) => {
                // Each input lands in the output's strides, shifted along `axis`.
                let dev = cuda_common::device(OP, first)?;
                let mut y = cuda_common::alloc(&dev, out_shape.numel())?;
                let out_strides = out_shape.strides();
                let mut at = 0;
                for t in tensors {
                    gpu::scatter(OP, t, &mut y, &out_strides, at * inner)?;
                    at += t.dims()[axis];
                }
                Storage::Cuda(y)
            }
        };
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
        let outer: usize = self.dims()[..axis].iter().product();
        let inner: usize = self.dims()[axis + 1..].iter().product();
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let in_strides = self.shape().strides();
        let storage = match self.device() {
            Device::Cpu => {
                let mut y = vec![0f32; outer * len * inner];
                copy_blocks(
                    self.storage().as_cpu(OP)?,
                    size * inner,
                    start * inner,
                    &mut y,
                    len * inner,
                    0,
                    len * inner,
                    outer,
                );
                Storage::Cpu(y)
            }
            Device::Cuda(_) => gpu::gather(OP, self, &dims, &in_strides, start * inner)?,
        };
        let src_shape = self.shape().clone();
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            Shape::from(dims),
            &[self],
            move |g, _| {
                // The adjoint: the gradient placed back into zeros of the input's shape.
                let dx = match g.device() {
                    Device::Cpu => {
                        let mut dx = vec![0f32; src_shape.numel()];
                        let gs = g.storage();
                        copy_blocks(
                            gs.as_cpu(OP)?,
                            len * inner,
                            0,
                            &mut dx,
                            size * inner,
                            start * inner,
                            len * inner,
                            outer,
                        );
                        Tensor::from_vec(dx, src_shape.clone(), Device::Cpu)?
                    }
                    Device::Cuda(_) => {
                        let dev = cuda_common::device(OP, g)?;
                        let mut dx = cuda_common::full(&dev, src_shape.numel(), 0.0)?;
                        gpu::scatter(OP, g, &mut dx, &src_shape.strides(), start * inner)?;
                        cuda_common::tensor(dx, src_shape.clone())?
                    }
                };
                Ok(vec![Some(dx)])
            },
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
