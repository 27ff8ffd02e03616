//! Tensor shapes: a list of dimension sizes, row-major (C order), last dimension contiguous.

use crate::error::{Error, Result};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// (N, C, H, W) of a shape an op has already checked to be rank 4.
    pub fn nchw(&self) -> [usize; 4] {
        let d = &self.0;
        [d[0], d[1], d[2], d[3]]
    }
    /// Number of elements; 1 for a scalar (rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// Size of dimension `axis`, with an error naming `op` when the axis does not exist.
    pub fn dim(&self, op: &'static str, axis: usize) -> Result<usize> {
        self.0.get(axis).copied().ok_or_else(|| {
            Error::invalid(
                op,
                format!(
                    "axis {axis} out of range for shape {self} (rank {})",
                    self.rank()
                ),
            )
        })
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
    /// Resolves a possibly negative axis (-1 = last) to an index, or names `op` and the shape.
    pub fn axis(&self, op: &'static str, axis: isize) -> Result<usize> {
        let rank = self.rank() as isize;
        let a = if axis < 0 { axis + rank } else { axis };
        if a < 0 || a >= rank {
            return Err(Error::invalid(
                op,
                format!("axis {axis} out of range for shape {self} (rank {rank})"),
            ));
        }
        Ok(a as usize)
    }
    /// Checks the rank, naming `op`, the expected layout (e.g. "(N,C,H,W)") and the shape given.
    pub fn expect_rank(&self, op: &'static str, rank: usize, layout: &str) -> Result<()> {
        if self.rank() != rank {
            return Err(Error::shape(
                op,
                format!("expected a rank-{rank} tensor {layout}, got shape {self}"),
            ));
        }
        Ok(())
    }
    /// The shape numpy broadcasting of `self` and `other` gives, or a shape error naming both.
    pub fn broadcast(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(other.rank());
        let mut dims = vec![0; rank];
        for (i, d) in dims.iter_mut().enumerate() {
            let a = self.padded_dim(rank, i);
            let b = other.padded_dim(rank, i);
            *d = if a == b || b == 1 {
                a
            } else if a == 1 {
                b
            } else {
                return Err(Error::shape(
                    op,
                    format!(
                        "shapes {self} and {other} do not broadcast (dimension {i}: {a} vs {b})"
                    ),
                ));
            };
        }
        Ok(Shape(dims))
    }
    /// Dimension `i` of this shape left-padded with ones to `rank` dimensions.
    pub(crate) fn padded_dim(&self, rank: usize, i: usize) -> usize {
        let offset = rank - self.rank();
        if i < offset { 1 } else { self.0[i - offset] }
    }
    /// Strides of this shape seen as broadcast to `rank` dims: 0 where the dimension is 1 or missing.
    pub(crate) fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let rank = target.rank();
        let own = self.strides();
        let offset = rank - self.rank();
        (0..rank)
            .map(|i| {
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_broadcast() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.strides(), vec![12, 4, 1]);
        assert_eq!(s.numel(), 24);
        let b = Shape::from([3, 1]);
        assert_eq!(s.broadcast(&b, "t").unwrap(), Shape::from([2, 3, 4]));
        assert_eq!(b.broadcast_strides(&s), vec![0, 1, 0]);
        let e = Shape::from([2, 5])
            .broadcast(&s, "add")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[2, 5]") && e.contains("[2, 3, 4]"),
            "{e}"
        );
        assert_eq!(s.axis("t", -1).unwrap(), 2);
        assert!(s.axis("t", 3).is_err());
    }
}
