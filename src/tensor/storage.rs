//! Where a tensor's numbers live. One variant per backend: the CUDA backend adds its own variant
//! (device buffer + stream) here, and every op dispatches on the device before touching the data.

use crate::device::Device;
use crate::error::{Error, Result};

#[derive(Debug)]
pub enum Storage {
    /// Host memory, row-major, exactly `shape.numel()` elements.
    Cpu(Vec<f32>),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice, or an error naming `op` when the data is on another device.
    pub fn as_cpu(&self, _op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
        }
    }
    pub fn as_cpu_mut(&mut self, _op: &'static str) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
        }
    }
    /// Copies the data to the host.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(v) => Ok(v.clone()),
        }
    }
    /// Allocates `data` on `device`.
    pub fn from_host(data: Vec<f32>, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            Device::Cuda(_) => Err(cuda_unavailable("allocate")),
        }
    }
}

/// The error every op returns when asked to run on CUDA in a build without the CUDA backend.
pub fn cuda_unavailable(op: &str) -> Error {
    Error::Device(format!(
        "{op}: CUDA backend not available in this build (only the CPU backend exists); use --device cpu"
    ))
}
