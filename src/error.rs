//! One error type for the whole library. Variants carry what a user needs to find the fault:
//! the op and shapes, the file and row, the device call that failed.

use crate::backend::cuda::CudaError;
use crate::device::{Device, DeviceRequest};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was given tensors whose shapes do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// An argument outside what an op or function accepts (axis out of range, zero width, NaN...).
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A file was read but its content is not what was expected (bad PNG, malformed CSV row, ...).
    #[error("{}{}: {msg}", path.display(), row.map(|r| format!(", row {r}")).unwrap_or_default())]
    Format { path: PathBuf, row: Option<usize>, msg: String },

    /// The GPU failed or refused: no driver or device, a driver or cuBLAS call, a kernel module,
    /// out of memory (with the sizes).
    #[error("device: {0}")]
    Cuda(#[from] CudaError),

    /// A device asked for (`--device`, the config's `device`) that this machine cannot open.
    #[error("device: --device {request}: {source}")]
    DeviceRequest { request: DeviceRequest, source: CudaError },

    /// An op was given tensors on different devices.
    #[error("{op}: inputs on different devices ({first} and {second}); move them with to_device")]
    DeviceMismatch { op: &'static str, first: Device, second: Device },

    /// A tensor on a device that this code path cannot use (host-only code given GPU data, or
    /// a GPU wrapper given host data).
    #[error("{op}: needs {needs}, but the tensor is on {found}; move it with to_device")]
    WrongDevice { op: &'static str, needs: &'static str, found: Device },

    /// A configuration file or value is wrong (unknown key, wrong type, ...).
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, row: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), row, msg: msg.into() }
    }
}
