//! Where a tensor's numbers live. One variant per backend: the CUDA backend adds its own variant
//! (device buffer + stream) here, and every op dispatches on the device before touching the data.

use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::device::Device;
use crate::error::{Error, Result};

#[derive(Debug)]
pub enum Storage {
    /// Host memory, row-major, exactly `shape.numel()` elements.
    Cpu(Vec<f32>),
    /// Device memory from the CUDA backend's caching allocator, row-major, `shape.numel()` elements.
    Cuda(GpuBuffer),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.ordinal()),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Cuda(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice, or an error naming `op` when the data is on another device.
    pub fn as_cpu(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => Err(cuda_unavailable(op)),
        }
    }
    pub fn as_cpu_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => Err(cuda_unavailable(op)),
        }
    }
    /// The device buffer, or an error naming `op` when the data is on the host.
    pub fn as_cuda(&self, op: &'static str) -> Result<&GpuBuffer> {
        match self {
            Storage::Cuda(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::Device(format!(
                "{op}: expected a tensor on a CUDA device, found one on the cpu"
            ))),
        }
    }
    /// The device buffer for writing, or an error naming `op` when the data is on the host.
    pub fn as_cuda_mut(&mut self, op: &'static str) -> Result<&mut GpuBuffer> {
        match self {
            Storage::Cuda(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::Device(format!(
                "{op}: expected a tensor on a CUDA device, found one on the cpu"
            ))),
        }
    }
    /// Copies the data to the host.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Cuda(b) => CudaDevice::get(b.ordinal())?.dtoh(b),
        }
    }
    /// Allocates `data` on `device` (for CUDA: opens the device on first use, then copies).
    pub fn from_host(data: Vec<f32>, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            Device::Cuda(n) => Ok(Storage::Cuda(CudaDevice::get(n)?.htod(&data)?)),
        }
    }
}

/// The error of host-only code (a CPU kernel, `Tensor::update`) given data on a CUDA device.
/// Every op routes CUDA tensors to the GPU kernels, so this names a caller that needs the host.
pub fn cuda_unavailable(op: &str) -> Error {
    Error::Device(format!(
        "{op}: needs the data on the host but the tensor is on a CUDA device; move it with \
         to_device(Device::Cpu)"
    ))
}
