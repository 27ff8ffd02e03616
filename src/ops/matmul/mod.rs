//! Matrix products: matmul, batched matmul, linear, on the CPU GEMM (`backend::cpu::gemm`) or
//! cuBLAS.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`MatmulKernels`]; this file checks the inputs
//! and records the nodes.

mod cpu;
mod cuda;

use super::{Cpu, Cuda, kernels_for, same_device};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

/// One operand of a [`Gemm`]: transposed?, tensor, elements between batch entries (0 reuses one
/// matrix).
pub(crate) type GemmOperand<'a> = (bool, &'a Tensor, usize);

/// `batch` row-major products op(A_i) op(B_i), (m x k)(k x n), of tensors on one device.
pub(crate) struct Gemm<'a> {
    pub op: &'static str,
    pub batch: usize,
    pub a: GemmOperand<'a>,
    pub b: GemmOperand<'a>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Matrix products on one side: the CPU GEMM or cuBLAS.
pub(crate) trait MatmulKernels: Sync {
    fn gemm(&self, p: &Gemm) -> Result<Storage>;
}

impl Gemm<'_> {
    fn run(&self) -> Result<Storage> {
        kernels(self.a.1.device()).gemm(self)
    }
}

fn kernels(device: Device) -> &'static dyn MatmulKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// `lhs` times op(`rhs`) (transposed when `trans_rhs`) as `batch` products (m x k)(k x n), with
/// the elements between batch entries of lhs, rhs and the output in `strides`; shaped `dims`
/// and recorded with the backward of both operands.
#[allow(clippy::too_many_arguments)]
fn product(
    op: &'static str,
    lhs: &Tensor,
    rhs: &Tensor,
    trans_rhs: bool,
    batch: usize,
    [m, k, n]: [usize; 3],
    [lhs_stride, rhs_stride, out_stride]: [usize; 3],
    dims: Vec<usize>,
) -> Result<Tensor> {
    let storage = Gemm { op, batch, a: (false, lhs, lhs_stride), b: (trans_rhs, rhs, rhs_stride), m, n, k }.run()?;
    let (a, b) = (lhs.clone(), rhs.clone());
    Ok(Tensor::from_storage_op(op, Arc::new(storage), Shape::from(dims), &[lhs, rhs], move |g, _| {
        let g_op = (false, g, out_stride);
        // dA = dC op(B)^T (m,n)(n,k); dB = A^T dC (k,m)(m,n), or dC^T A (n,m)(m,k) when B is transposed.
        let da = Gemm { op, batch, a: g_op, b: (!trans_rhs, &b, rhs_stride), m, n: k, k: n };
        let db = match trans_rhs {
            false => Gemm { op, batch, a: (true, &a, lhs_stride), b: g_op, m: k, n, k: m },
            true => Gemm { op, batch, a: (true, g, out_stride), b: (false, &a, lhs_stride), m: n, n: k, k: m },
        };
        Ok(vec![grad_if_tracked(&a, &da)?, grad_if_tracked(&b, &db)?])
    }))
}

/// `product`'s gradient for `input`, if it takes part in the graph.
fn grad_if_tracked(input: &Tensor, p: &Gemm) -> Result<Option<Tensor>> {
    let storage = input.tracks_grad().then(|| p.run()).transpose()?;
    Ok(storage.map(|s| Tensor::from_storage(s, input.shape().clone())))
}

/// (B?, M, K) x (B?, K, N): sizes, or an error naming the op and both shapes.
fn product_dims(op: &'static str, a: &Shape, b: &Shape) -> Result<(usize, usize, usize, usize)> {
    let bad = || Error::shape(op, format!("cannot multiply {a} by {b}"));
    let (batch, m, k1, k2, n) = match (a.dims(), b.dims()) {
        (&[m, k1], &[k2, n]) => (1, m, k1, k2, n),
        (&[ba, m, k1], &[bb, k2, n]) if ba == bb => (ba, m, k1, k2, n),
        _ => return Err(bad()),
    };
    if k1 != k2 {
        return Err(bad());
    }
    Ok((batch, m, k1, n))
}

impl Tensor {
    /// Matrix product: (M,K) x (K,N) -> (M,N), or batched (B,M,K) x (B,K,N) -> (B,M,N).
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let (batch, m, k, n) = product_dims(OP, self.shape(), other.shape())?;
        same_device(OP, &[self, other])?;
        let mut dims = self.dims()[..self.rank() - 2].to_vec();
        dims.extend([m, n]);
        product(OP, self, other, false, batch, [m, k, n], [m * k, k * n, m * n], dims)
    }
    /// Batched matrix product (B,M,K) x (B,K,N) -> (B,M,N) (attention: (N,HW,C) x (N,C,HW)).
    pub fn bmm(&self, other: &Tensor) -> Result<Tensor> {
        if self.rank() != 3 || other.rank() != 3 {
            return Err(Error::shape(
                "bmm",
                format!(
                    "expected two rank-3 tensors, got {} and {}",
                    self.shape(),
                    other.shape()
                ),
            ));
        }
        self.matmul(other)
    }

    /// Fully connected layer: x (..., IN) times weight (OUT, IN) transposed, plus bias (OUT).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        let (out_f, in_f) = match weight.dims() {
            &[o, i] => (o, i),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("weight must be (OUT, IN), got {}", weight.shape()),
                ));
            }
        };
        if self.rank() == 0 || self.dims()[self.rank() - 1] != in_f {
            return Err(Error::shape(
                OP,
                format!(
                    "input {} does not end in IN = {in_f} of weight {}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        if let Some(b) = bias
            && b.dims() != [out_f]
        {
            return Err(Error::shape(
                OP,
                format!("bias {} does not fit weight {}", b.shape(), weight.shape()),
            ));
        }
        same_device(OP, &[self, weight])?;
        let rows = self.numel() / in_f;
        let mut dims = self.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out_f;
        let y = product(OP, self, weight, true, 1, [rows, in_f, out_f], [0, 0, 0], dims)?;
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{randn, seeded_randn};

    #[test]
    fn matmul_matches_naive() {
        let (mut rng, a) = seeded_randn(11, [3, 5, 7], 0.0, 1.0);
        let b = randn([3, 7, 4], 0.0, 1.0, &mut rng);
        let c = a.bmm(&b).unwrap();
        assert_eq!(c.dims(), &[3, 5, 4]);
        let (av, bv, cv) = (
            a.to_vec().unwrap(),
            b.to_vec().unwrap(),
            c.to_vec().unwrap(),
        );
        for bi in 0..3 {
            for i in 0..5 {
                for j in 0..4 {
                    let want: f32 = (0..7)
                        .map(|p| av[bi * 35 + i * 7 + p] * bv[bi * 28 + p * 4 + j])
                        .sum();
                    assert!((cv[bi * 20 + i * 4 + j] - want).abs() < 1e-4);
                }
            }
        }
        let e = a.matmul(&a).unwrap_err().to_string();
        assert!(e.contains("matmul") && e.contains("[3, 5, 7]"), "{e}");
        let w = randn([6, 7], 0.0, 1.0, &mut rng);
        let y = a.linear(&w, None).unwrap();
        assert_eq!(y.dims(), &[3, 5, 6]);
        let yv = y.to_vec().unwrap();
        let wv = w.to_vec().unwrap();
        let want: f32 = (0..7).map(|p| av[35 + 2 * 7 + p] * wv[3 * 7 + p]).sum();
        assert!((yv[(5 + 2) * 6 + 3] - want).abs() < 1e-4);
    }
}
