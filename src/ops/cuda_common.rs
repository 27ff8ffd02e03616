//! What every family's CUDA side (`<family>/cuda.rs`) uses to turn tensors into buffers and
//! buffers back into tensors.

use crate::backend::cuda::{CudaDevice, GpuBuffer, elementwise as ew};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

/// The CUDA device a tensor lives on.
pub(crate) fn device(op: &'static str, t: &Tensor) -> Result<Arc<CudaDevice>> {
    match t.device() {
        Device::Cuda(n) => CudaDevice::get(n),
        Device::Cpu => Err(crate::tensor::needs_cuda(op)),
    }
}

/// A tensor from a buffer the kernels filled (not recorded in the graph).
pub(crate) fn tensor(buf: GpuBuffer, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    if buf.len() != shape.numel() {
        return Err(Error::shape(
            "gpu tensor",
            format!("buffer of {} elements for shape {shape}", buf.len()),
        ));
    }
    Ok(Tensor::from_storage(Storage::Cuda(buf), shape))
}

/// A buffer of `len` elements set to `value`.
pub(crate) fn full(dev: &CudaDevice, len: usize, value: f32) -> Result<GpuBuffer> {
    let mut y = dev.alloc(len)?;
    ew::fill(dev, &mut y, value)?;
    Ok(y)
}

