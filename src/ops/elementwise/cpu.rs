//! Element-wise ops on the CPU: merged-walk broadcasting and one inlined closure per map.

use super::{BinaryOp, ElementwiseKernels};
use crate::backend::cuda::nd::MapOp;
use crate::device::Device;
use crate::error::Result;
use crate::ops::{Cpu, PAR_MIN, Walk, for_each_par_if_large};
use crate::tensor::{Shape, Storage, Tensor};
use rayon::prelude::*;

/// `f(a, b)` over the broadcast of `a` (shape `ash`) and `b` (shape `bsh`) to `out`.
pub(crate) fn broadcast_binary_cpu(
    a: &[f32],
    ash: &Shape,
    b: &[f32],
    bsh: &Shape,
    out: &Shape,
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Vec<f32> {
    let walk = Walk::new(
        out.dims(),
        vec![
            out.strides(),
            ash.broadcast_strides(out),
            bsh.broadcast_strides(out),
        ],
    );
    let n = out.numel();
    let mut y = vec![0f32; n];
    if n == 0 {
        return y;
    }
    let inner = walk.inner();
    let (sa, sb) = (walk.inner_stride(1), walk.inner_stride(2));
    let row = |(r, yr): (usize, &mut [f32])| {
        let (oa, ob) = (walk.row_offset(1, r), walk.row_offset(2, r));
        match (sa, sb) {
            (1, 1) => {
                for ((y, &x), &z) in yr
                    .iter_mut()
                    .zip(&a[oa..oa + inner])
                    .zip(&b[ob..ob + inner])
                {
                    *y = f(x, z);
                }
            }
            (1, 0) => {
                let z = b[ob];
                for (y, &x) in yr.iter_mut().zip(&a[oa..oa + inner]) {
                    *y = f(x, z);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (y, &z) in yr.iter_mut().zip(&b[ob..ob + inner]) {
                    *y = f(x, z);
                }
            }
            _ => {
                for (i, y) in yr.iter_mut().enumerate() {
                    *y = f(a[oa + i * sa], b[ob + i * sb]);
                }
            }
        }
    };
    let rows = y.par_chunks_mut(inner).enumerate().with_min_len((PAR_MIN / 4 / inner).max(1));
    for_each_par_if_large(n, rows, row);
    y
}

/// Elements per task of the maps: below this, rayon's bookkeeping costs more than the work.
const MAP_CHUNK: usize = PAR_MIN / 4;

/// `f` applied to every element, in parallel when large.
fn map_cpu(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let chunks = y.par_chunks_mut(MAP_CHUNK).zip(x.par_chunks(MAP_CHUNK));
    for_each_par_if_large(x.len(), chunks, |(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = f(v);
        }
    });
    y
}

/// `f(x, y, g)` over three equally long slices (the backward of a unary op).
fn map3_cpu(x: &[f32], y: &[f32], g: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    let chunks = dx.par_chunks_mut(MAP_CHUNK).zip(x.par_chunks(MAP_CHUNK).zip(y.par_chunks(MAP_CHUNK)).zip(g.par_chunks(MAP_CHUNK)));
    for_each_par_if_large(x.len(), chunks, |(dc, ((xc, yc), gc))| {
        for (((d, &x), &y), &g) in dc.iter_mut().zip(xc).zip(yc).zip(gc) {
            *d = f(x, y, g);
        }
    });
    dx
}

fn sigmoid_f(x: f32) -> f32 {
    // Stable on both sides: exp never overflows.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// y = f(x): one arm per map, so each closure is inlined and vectorised.
fn map_forward(x: &[f32], f: MapOp) -> Vec<f32> {
    match f {
        // `x <= 0` is false for NaN, so NaN passes through.
        MapOp::Relu => map_cpu(x, |x| if x <= 0.0 { 0.0 } else { x }),
        MapOp::Sigmoid => map_cpu(x, sigmoid_f),
        MapOp::Tanh => map_cpu(x, f32::tanh),
        MapOp::Exp => map_cpu(x, f32::exp),
        MapOp::Log => map_cpu(x, f32::ln),
        MapOp::Sqrt => map_cpu(x, f32::sqrt),
        MapOp::Sqr => map_cpu(x, |x| x * x),
        MapOp::Abs => map_cpu(x, f32::abs),
        MapOp::Clamp { lo, hi } => map_cpu(x, move |x| {
            if x < lo {
                lo
            } else if x > hi {
                hi
            } else {
                x
            }
        }),
        MapOp::Pow(p) => map_cpu(x, move |v| v.powf(p)),
    }
}

/// dx from (x, y = f(x), dy), one arm per map.
fn map_backward(x: &[f32], y: &[f32], g: &[f32], f: MapOp) -> Vec<f32> {
    match f {
        MapOp::Relu => map3_cpu(x, y, g, |x, _, g| if x > 0.0 { g } else { 0.0 }),
        MapOp::Sigmoid => map3_cpu(x, y, g, |_, y, g| g * y * (1.0 - y)),
        MapOp::Tanh => map3_cpu(x, y, g, |_, y, g| g * (1.0 - y * y)),
        MapOp::Exp => map3_cpu(x, y, g, |_, y, g| g * y),
        MapOp::Log => map3_cpu(x, y, g, |x, _, g| g / x),
        MapOp::Sqrt => map3_cpu(x, y, g, |_, y, g| g * 0.5 / y),
        MapOp::Sqr => map3_cpu(x, y, g, |x, _, g| 2.0 * x * g),
        MapOp::Abs => map3_cpu(x, y, g, |x, _, g| {
            if x > 0.0 {
                g
            } else if x < 0.0 {
                -g
            } else {
                0.0
            }
        }),
        MapOp::Clamp { lo, hi } => map3_cpu(x, y, g, move |x, _, g| {
            if x >= lo && x <= hi { g } else { 0.0 }
        }),
        MapOp::Pow(p) => map3_cpu(x, y, g, move |x, _, g| g * p * x.powf(p - 1.0)),
    }
}

impl ElementwiseKernels for Cpu {
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out: &Shape) -> Result<Storage> {
        let name = op.name();
        let (sa, sb) = (a.storage(), b.storage());
        let (x, z) = (sa.as_cpu(name)?, sb.as_cpu(name)?);
        let (ash, bsh) = (a.shape(), b.shape());
        Ok(Storage::Cpu(match op {
            BinaryOp::Add => broadcast_binary_cpu(x, ash, z, bsh, out, |p, q| p + q),
            BinaryOp::Sub => broadcast_binary_cpu(x, ash, z, bsh, out, |p, q| p - q),
            BinaryOp::Mul => broadcast_binary_cpu(x, ash, z, bsh, out, |p, q| p * q),
            BinaryOp::Div => broadcast_binary_cpu(x, ash, z, bsh, out, |p, q| p / q),
        }))
    }

    fn affine(&self, op: &'static str, x: &Tensor, mul: f32, add: f32) -> Result<Storage> {
        Ok(Storage::Cpu(map_cpu(x.storage().as_cpu(op)?, |v| v * mul + add)))
    }

    fn map(&self, op: &'static str, x: &Tensor, f: MapOp) -> Result<Storage> {
        Ok(Storage::Cpu(map_forward(x.storage().as_cpu(op)?, f)))
    }

    fn map_grad(&self, op: &'static str, x: &Tensor, y: &Tensor, g: &Tensor, f: MapOp) -> Result<Tensor> {
        let (xs, ys, gs) = (x.storage(), y.storage(), g.storage());
        let dx = map_backward(xs.as_cpu(op)?, ys.as_cpu(op)?, gs.as_cpu(op)?, f);
        Tensor::from_vec(dx, x.shape().clone(), Device::Cpu)
    }
}
