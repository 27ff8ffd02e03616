//! Element-wise ops: binary arithmetic with numpy broadcasting, scalar affine maps and unary
//! activations.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`ElementwiseKernels`]; this file checks the
//! inputs and records the nodes. A unary op is named by its [`MapOp`], which both sides turn into
//! the same map: nd.cu's `switch`, and on the CPU one inlined closure per op.

pub(crate) mod cpu;
mod cuda;

use super::{Cpu, Cuda, kernels_for, same_device};
use crate::backend::cuda::nd::MapOp;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

/// The element-wise ops on one side (CPU or CUDA).
pub(crate) trait ElementwiseKernels: Sync {
    /// `a op b` broadcast to `out`.
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out: &Shape) -> Result<Storage>;
    /// `x * mul + add`.
    fn affine(&self, op: &'static str, x: &Tensor, mul: f32, add: f32) -> Result<Storage>;
    /// y = f(x).
    fn map(&self, op: &'static str, x: &Tensor, f: MapOp) -> Result<Storage>;
    /// dx = f'(x, y) * g, the backward of [`ElementwiseKernels::map`].
    fn map_grad(&self, op: &'static str, x: &Tensor, y: &Tensor, g: &Tensor, f: MapOp) -> Result<Tensor>;
}

fn kernels(device: Device) -> &'static dyn ElementwiseKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// The element-wise binary ops, one enum for both sides: the CPU matches on it, and the CUDA
/// side passes its value to nd.cu's `binary_nd_fwd_f32` (the kernel's `switch (op)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op.name();
    let device = same_device(name, &[a, b])?;
    let out_shape = a.shape().broadcast(b.shape(), name)?;
    let storage = kernels(device).binary(op, a, b, &out_shape)?;
    let (ac, bc) = (a.clone(), b.clone());
    Ok(Tensor::from_storage_op(
        name,
        Arc::new(storage),
        out_shape,
        &[a, b],
        move |g, y| {
            let (ash, bsh) = (ac.shape(), bc.shape());
            let need_a = ac.tracks_grad();
            let need_b = bc.tracks_grad();
            Ok(match op {
                BinaryOp::Add => vec![
                    need_a.then(|| g.sum_to(ash)).transpose()?,
                    need_b.then(|| g.sum_to(bsh)).transpose()?,
                ],
                BinaryOp::Sub => vec![
                    need_a.then(|| g.sum_to(ash)).transpose()?,
                    need_b.then(|| g.neg()?.sum_to(bsh)).transpose()?,
                ],
                BinaryOp::Mul => vec![
                    need_a.then(|| g.mul(&bc)?.sum_to(ash)).transpose()?,
                    need_b.then(|| g.mul(&ac)?.sum_to(bsh)).transpose()?,
                ],
                // d(a/b)/db = -a/b^2 = -y/b
                BinaryOp::Div => vec![
                    need_a.then(|| g.div(&bc)?.sum_to(ash)).transpose()?,
                    need_b
                        .then(|| g.mul(y)?.div(&bc)?.neg()?.sum_to(bsh))
                        .transpose()?,
                ],
            })
        },
    ))
}

/// A unary op: `kernel` names the map on both sides.
fn unary(x: &Tensor, name: &'static str, kernel: MapOp) -> Result<Tensor> {
    let storage = kernels(x.device()).map(name, x, kernel)?;
    let xc = x.clone();
    Ok(Tensor::from_storage_op(
        name,
        Arc::new(storage),
        x.shape().clone(),
        &[x],
        move |g, y| Ok(vec![Some(kernels(xc.device()).map_grad(name, &xc, y, g, kernel)?)]),
    ))
}

impl Tensor {
    /// `self + other` with numpy broadcasting (e.g. (N,C,H,W) + (N,C,1,1) or (1,C,1,1)).
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Add)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Sub)
    }
    /// `self * other` with numpy broadcasting (channel attention (N,C,1,1), spatial (N,1,H,W)).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Mul)
    }
    /// `self / other` with broadcasting; division by zero gives inf/NaN as IEEE says.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Div)
    }

    /// `self * mul + add` element-wise.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        const OP: &str = "affine";
        if !mul.is_finite() || !add.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("non-finite constants mul={mul}, add={add}"),
            ));
        }
        let storage = kernels(self.device()).affine(OP, self, mul, add)?;
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            self.shape().clone(),
            &[self],
            move |g, _| Ok(vec![Some(g.affine(mul, 0.0)?)]),
        ))
    }
    pub fn add_scalar(&self, v: f32) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn mul_scalar(&self, v: f32) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }
    /// `self ^ p` element-wise (negative bases give NaN for non-integer `p`).
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        unary(self, "powf", MapOp::Pow(p))
    }

    /// Limits every element to [lo, hi]; the gradient passes only where the input is inside.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(Error::invalid("clamp", format!("lo {lo} > hi {hi}")));
        }
        unary(self, "clamp", MapOp::Clamp { lo, hi })
    }
    /// Inverted dropout: when `training`, zeroes each element with probability `p` (drawn from
    /// `rng`) and scales the others by 1/(1-p); the identity otherwise.
    pub fn dropout(&self, p: f32, training: bool, rng: &mut impl rand::Rng) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "dropout",
                format!("probability {p} outside [0, 1)"),
            ));
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..self.numel())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        self.mul(&Tensor::from_vec(
            mask,
            self.shape().clone(),
            self.device(),
        )?)
    }
}

/// The element-wise maps as methods: `name` runs `MapOp::Map` and records its derivative, under
/// the op name `name`.
macro_rules! map_methods {
    ($($(#[$doc:meta])* $name:ident => $map:ident;)+) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self) -> Result<Tensor> {
                unary(self, stringify!($name), MapOp::$map)
            })+
        }
    };
}

map_methods! {
    relu => Relu;
    sigmoid => Sigmoid;
    tanh => Tanh;
    exp => Exp;
    /// Natural log; 0 gives -inf and negatives NaN (propagated, not an error).
    log => Log;
    sqrt => Sqrt;
    sqr => Sqr;
    abs => Abs;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rng, randn};

    /// Naive broadcasting by full index arithmetic, the reference for the merged-walk kernel.
    fn naive(a: &[f32], ash: &Shape, b: &[f32], bsh: &Shape, out: &Shape) -> Vec<f32> {
        let (sa, sb) = (ash.broadcast_strides(out), bsh.broadcast_strides(out));
        (0..out.numel())
            .map(|mut i| {
                let (mut oa, mut ob) = (0, 0);
                for d in (0..out.rank()).rev() {
                    let k = i % out.dims()[d];
                    i /= out.dims()[d];
                    oa += k * sa[d];
                    ob += k * sb[d];
                }
                a[oa] - 2.0 * b[ob]
            })
            .collect()
    }

    #[test]
    fn broadcast_matches_naive() {
        let mut rng = rng(7);
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[2, 3, 1, 1]),
            (&[2, 3, 4, 5], &[2, 1, 4, 5]),
            (&[2, 1, 4, 1], &[1, 3, 1, 5]),
            (&[3, 1], &[4]),
            (&[2, 3, 64, 64], &[1, 3, 1, 1]),
            (&[5], &[]),
        ];
        for (ad, bd) in cases {
            let a = randn(*ad, 0.0, 1.0, &mut rng);
            let b = randn(*bd, 0.0, 1.0, &mut rng);
            let y = a.sub(&b.mul_scalar(2.0).unwrap()).unwrap();
            let out = a.shape().broadcast(b.shape(), "t").unwrap();
            let want = naive(
                &a.to_vec().unwrap(),
                a.shape(),
                &b.to_vec().unwrap(),
                b.shape(),
                &out,
            );
            assert_eq!(y.shape(), &out);
            let got = y.to_vec().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{ad:?} vs {bd:?}: {g} != {w}"
                );
            }
        }
        let a = Tensor::zeros([2, 3], Device::Cpu).unwrap();
        let e = a
            .add(&Tensor::zeros([4], Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("add:") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn dropout_zeroes_about_p_and_rescales() {
        let mut rng = rng(21);
        let x = Tensor::uniform([100, 100], 1.0, 2.0, Device::Cpu, &mut rng).unwrap();
        let y = x.dropout(0.25, true, &mut rng).unwrap().to_vec().unwrap();
        let xv = x.to_vec().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!(
            (2300..2700).contains(&zeros),
            "{zeros} of 10000 dropped at p = 0.25"
        );
        assert!(
            y.iter()
                .zip(&xv)
                .all(|(&a, &b)| a == 0.0 || (a - b / 0.75).abs() < 1e-6)
        );
        assert_eq!(
            x.dropout(0.25, false, &mut rng).unwrap().to_vec().unwrap(),
            xv
        );
        assert!(x.dropout(1.0, true, &mut rng).is_err());
    }

    #[test]
    fn nan_propagates_through_activations() {
        let x = Tensor::from_vec(vec![f32::NAN, -1.0, 2.0], [3], Device::Cpu).unwrap();
        let y = x.relu().unwrap().to_vec().unwrap();
        assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0);
        let s = x.sigmoid().unwrap().to_vec().unwrap();
        assert!(s[0].is_nan());
        let big = Tensor::from_vec(vec![-200.0, 200.0], [2], Device::Cpu)
            .unwrap()
            .sigmoid()
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(big, vec![0.0, 1.0]);
    }
}
