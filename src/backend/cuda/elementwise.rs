//! Elementwise ops on the GPU: activations, scalar ops, fills and broadcast binary ops.
//! Shapes are 4-D (N,C,H,W); lower-rank tensors are padded with leading 1s by the caller.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::kernels::{self as k, Kernel};
use super::launch::{Arg, Bcast4, check_len, grid_1d, launch, to_i32};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

pub(crate) fn numel(shape: [usize; 4]) -> usize {
    shape.iter().product()
}

/// The broadcast of two 4-D shapes (each axis equal, or 1 on one side).
pub fn broadcast_shape(op: &'static str, a: [usize; 4], b: [usize; 4]) -> Result<[usize; 4]> {
    let mut out = [0; 4];
    for i in 0..4 {
        out[i] = match (a[i], b[i]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::shape(op, format!("shapes {a:?} and {b:?} do not broadcast (axis {i})"))),
        };
    }
    Ok(out)
}

/// Strides to read a tensor of `shape` at positions of `out`: 0 on broadcast axes.
fn bcast_strides(shape: [usize; 4], out: [usize; 4]) -> [i32; 4] {
    let mut strides = [0i32; 4];
    let mut s = 1usize;
    for i in (0..4).rev() {
        strides[i] = if shape[i] == 1 && out[i] != 1 { 0 } else { s as i32 };
        s *= shape[i];
    }
    strides
}

fn bcast(op: &'static str, out: [usize; 4], a: [usize; 4], b: [usize; 4]) -> Result<Bcast4> {
    to_i32(op, "elements", numel(out).max(numel(a)).max(numel(b)))?;
    Ok(Bcast4 { dims: out.map(|d| d as i32), sa: bcast_strides(a, out), sb: bcast_strides(b, out) })
}

fn same_len(op: &'static str, bufs: &[(&str, &GpuBuffer)]) -> Result<i32> {
    let n = bufs[0].1.len();
    for (name, b) in bufs {
        if b.len() != n {
            return Err(Error::shape(op, format!("{name} has {} elements, {} has {n}", b.len(), bufs[0].0)));
        }
    }
    to_i32(op, "elements", n)
}

pub fn fill(dev: &CudaDevice, y: &mut GpuBuffer, value: f32) -> Result<()> {
    dev.check_buffer("fill", y)?;
    let n = to_i32("fill", "elements", y.len())?;
    launch(dev, k::FILL_FWD, grid_1d(dev, y.len()), &[Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::F32(value)])
}

pub fn unary_fwd(dev: &CudaDevice, op: Unary, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
    let kernel = match op {
        Unary::Relu => k::RELU_FWD,
        Unary::Sigmoid => k::SIGMOID_FWD,
        Unary::Tanh => k::TANH_FWD,
    };
    let n = same_len(kernel.name, &[("x", x), ("y", y)])?;
    launch(dev, kernel, grid_1d(dev, x.len()), &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n)])
}

/// `saved` is the forward's input for ReLU and its output for sigmoid and tanh.
pub fn unary_bwd(dev: &CudaDevice, op: Unary, saved: &GpuBuffer, dy: &GpuBuffer, dx: &mut GpuBuffer) -> Result<()> {
    let kernel = match op {
        Unary::Relu => k::RELU_BWD,
        Unary::Sigmoid => k::SIGMOID_BWD,
        Unary::Tanh => k::TANH_BWD,
    };
    let n = same_len(kernel.name, &[("saved", saved), ("dy", dy), ("dx", dx)])?;
    let args = [Arg::Ptr(saved.ptr()), Arg::Ptr(dy.ptr()), Arg::Ptr(dx.ptr_mut()), Arg::I32(n)];
    launch(dev, kernel, grid_1d(dev, dy.len()), &args)
}

/// y = alpha * x + beta.
pub fn affine(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, alpha: f32, beta: f32) -> Result<()> {
    let n = same_len("affine_fwd_f32", &[("x", x), ("y", y)])?;
    let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::F32(alpha), Arg::F32(beta)];
    launch(dev, k::AFFINE_FWD, grid_1d(dev, x.len()), &args)
}

/// y += alpha * x.
pub fn axpy(dev: &CudaDevice, x: &GpuBuffer, y: &mut GpuBuffer, alpha: f32) -> Result<()> {
    let n = same_len("axpy_fwd_f32", &[("x", x), ("y", y)])?;
    launch(dev, k::AXPY_FWD, grid_1d(dev, x.len()), &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::F32(alpha)])
}

/// y = a op b with broadcasting; returns the output shape. `y` must have its element count.
pub fn binary_fwd(
    dev: &CudaDevice,
    op: Binary,
    a: &GpuBuffer,
    a_shape: [usize; 4],
    b: &GpuBuffer,
    b_shape: [usize; 4],
    y: &mut GpuBuffer,
) -> Result<[usize; 4]> {
    let kernel = match op {
        Binary::Add => k::ADD_FWD,
        Binary::Sub => k::SUB_FWD,
        Binary::Mul => k::MUL_FWD,
        Binary::Div => k::DIV_FWD,
    };
    let out = broadcast_shape(kernel.name, a_shape, b_shape)?;
    check_len(kernel.name, "a", a.len(), numel(a_shape), &a_shape)?;
    check_len(kernel.name, "b", b.len(), numel(b_shape), &b_shape)?;
    check_len(kernel.name, "y", y.len(), numel(out), &out)?;
    let g = bcast(kernel.name, out, a_shape, b_shape)?;
    let n = numel(out) as i32;
    launch(dev, kernel, grid_1d(dev, numel(out)), &[Arg::Ptr(a.ptr()), Arg::Ptr(b.ptr()), Arg::Ptr(y.ptr_mut()), Arg::I32(n), Arg::Bcast(&g)])?;
    Ok(out)
}

fn full_grad(
    dev: &CudaDevice,
    kernel: Kernel,
    dy: &GpuBuffer,
    out: [usize; 4],
    other: &GpuBuffer,
    other_shape: [usize; 4],
    d_full: &mut GpuBuffer,
) -> Result<()> {
    broadcast_shape(kernel.name, out, other_shape)?;
    check_len(kernel.name, "dy", dy.len(), numel(out), &out)?;
    check_len(kernel.name, "other operand", other.len(), numel(other_shape), &other_shape)?;
    check_len(kernel.name, "gradient", d_full.len(), numel(out), &out)?;
    let g = bcast(kernel.name, out, out, other_shape)?;
    let args = [Arg::Ptr(dy.ptr()), Arg::Ptr(other.ptr()), Arg::Ptr(d_full.ptr_mut()), Arg::I32(numel(out) as i32), Arg::Bcast(&g)];
    launch(dev, kernel, grid_1d(dev, numel(out)), &args)
}

/// Full-size gradient of one side of a product: d_full = dy * other (then sum to the side's shape).
pub fn mul_bwd(dev: &CudaDevice, dy: &GpuBuffer, out: [usize; 4], other: &GpuBuffer, other_shape: [usize; 4], d_full: &mut GpuBuffer) -> Result<()> {
    full_grad(dev, k::MUL_BWD, dy, out, other, other_shape, d_full)
}

/// Full-size gradient of a quotient's numerator: d_full = dy / b.
pub fn div_bwd_a(dev: &CudaDevice, dy: &GpuBuffer, out: [usize; 4], b: &GpuBuffer, b_shape: [usize; 4], d_full: &mut GpuBuffer) -> Result<()> {
    full_grad(dev, k::DIV_BWD_A, dy, out, b, b_shape, d_full)
}

/// Full-size gradient of a quotient's denominator: d_full = -dy * a / b^2.
#[allow(clippy::too_many_arguments)]
pub fn div_bwd_b(
    dev: &CudaDevice,
    dy: &GpuBuffer,
    out: [usize; 4],
    a: &GpuBuffer,
    a_shape: [usize; 4],
    b: &GpuBuffer,
    b_shape: [usize; 4],
    d_full: &mut GpuBuffer,
) -> Result<()> {
    let name = k::DIV_BWD_B.name;
    if broadcast_shape(name, a_shape, b_shape)? != out {
        return Err(Error::shape(name, format!("a {a_shape:?} and b {b_shape:?} do not broadcast to {out:?}")));
    }
    check_len(name, "dy", dy.len(), numel(out), &out)?;
    check_len(name, "a", a.len(), numel(a_shape), &a_shape)?;
    check_len(name, "b", b.len(), numel(b_shape), &b_shape)?;
    check_len(name, "gradient", d_full.len(), numel(out), &out)?;
    let g = bcast(name, out, a_shape, b_shape)?;
    let args = [
        Arg::Ptr(dy.ptr()),
        Arg::Ptr(a.ptr()),
        Arg::Ptr(b.ptr()),
        Arg::Ptr(d_full.ptr_mut()),
        Arg::I32(numel(out) as i32),
        Arg::Bcast(&g),
    ];
    launch(dev, k::DIV_BWD_B, grid_1d(dev, numel(out)), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shapes_and_strides() {
        assert_eq!(broadcast_shape("t", [2, 3, 4, 5], [2, 3, 1, 1]).unwrap(), [2, 3, 4, 5]);
        assert_eq!(broadcast_shape("t", [2, 1, 4, 5], [2, 3, 4, 5]).unwrap(), [2, 3, 4, 5]);
        let e = broadcast_shape("add", [2, 3, 4, 5], [2, 2, 4, 5]).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("[2, 3, 4, 5]") && e.contains("[2, 2, 4, 5]"), "{e}");
        assert_eq!(bcast_strides([2, 3, 1, 1], [2, 3, 4, 5]), [3, 1, 0, 0]);
        assert_eq!(bcast_strides([2, 1, 4, 5], [2, 3, 4, 5]), [20, 0, 5, 1]);
        assert_eq!(bcast_strides([2, 3, 4, 5], [2, 3, 4, 5]), [60, 20, 5, 1]);
    }
}
