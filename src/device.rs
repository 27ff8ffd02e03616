//! Where a tensor lives. Every build has the same API: asking for CUDA on a machine without a
//! driver or GPU returns `Error::Device`, never a panic.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

/// What the user asked for on the command line: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
                _ => Err(Error::Config(format!(
                    "device '{s}' is not one of auto, cpu, cuda, cuda:N"
                ))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device a request means on this machine: `auto` is cuda:0 when a CUDA device can be
/// opened, else the CPU; `cuda:N` is checked now, so a missing driver or GPU is a clear error
/// before any work starts.
pub fn resolve(req: DeviceRequest) -> Result<Device> {
    use crate::backend::cuda::CudaDevice;
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(if CudaDevice::get(0).is_ok() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceRequest::Cuda(n) => CudaDevice::get(n).map(|_| Device::Cuda(n)).map_err(|e| match e {
            Error::Device(msg) => Error::Device(format!("--device cuda:{n}: {msg}")),
            other => other,
        }),
    }
}
