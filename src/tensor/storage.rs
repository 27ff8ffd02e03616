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
            Storage::Cuda(b) => Err(needs_host(op, b.ordinal())),
        }
    }
    pub fn as_cpu_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(b) => Err(needs_host(op, b.ordinal())),
        }
    }
    /// The device buffer, or an error naming `op` when the data is on the host.
    pub fn as_cuda(&self, op: &'static str) -> Result<&GpuBuffer> {
        match self {
            Storage::Cuda(b) => Ok(b),
            Storage::Cpu(_) => Err(needs_cuda(op)),
        }
    }
    /// The device buffer for writing, or an error naming `op` when the data is on the host.
    pub fn as_cuda_mut(&mut self, op: &'static str) -> Result<&mut GpuBuffer> {
        match self {
            Storage::Cuda(b) => Ok(b),
            Storage::Cpu(_) => Err(needs_cuda(op)),
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
fn needs_host(op: &'static str, ordinal: usize) -> Error {
    Error::WrongDevice { op, needs: "the data on the host (cpu)", found: Device::Cuda(ordinal) }
}

/// The error of a GPU wrapper given data on the host.
pub(crate) fn needs_cuda(op: &'static str) -> Error {
    Error::WrongDevice { op, needs: "a CUDA device", found: Device::Cpu }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_data_given_to_a_gpu_wrapper_is_a_typed_error_naming_the_op() {
        let mut s = Storage::Cpu(vec![0.5, -1.5, 2.25]);
        for e in [s.as_cuda("max_pool2d").unwrap_err(), s.as_cuda_mut("softmax").unwrap_err()] {
            match &e {
                Error::WrongDevice { op, needs: "a CUDA device", found: Device::Cpu } => {
                    assert!(e.to_string().starts_with(&format!("{op}: needs a CUDA device, but the tensor is on cpu")), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(s.as_cpu("sum").unwrap(), &[0.5, -1.5, 2.25]);
    }
}
