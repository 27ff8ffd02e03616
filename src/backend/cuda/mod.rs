//! The CUDA backend: hand-written kernels (kernels/*.cu, compiled by build.rs) launched through
//! cudarc, with Rust owning autograd and the training loop.
//!
//! Layers, bottom up, each used by every op family:
//! - [`kernels`]: the embedded PTX (or source for NVRTC) and the table of kernel names;
//! - [`context`]: one context + stream per device, the module cache, copies;
//! - [`error`]: [`CudaError`], what can go wrong on the GPU, typed;
//! - [`alloc`]: the caching allocator ([`GpuBuffer`]), peak memory;
//! - `launch`: the only `unsafe` kernel launches, with launch-configuration and pointer checks;
//! - [`elementwise`]: fills and the scalar affine map; [`nd`]: any-rank maps, broadcasts and
//!   strided copies; [`blas`]: matrix products on cuBLAS;
//! - [`profile`]: opt-in per-op GPU time (events around every launch), the step profile table.
//!
//! Each op family's launch wrappers live with the op, in `crate::ops::<family>::cuda`; the
//! re-exports below keep them reachable here under the kernel files' names. The optimisers
//! (`crate::train::optim`) launch through [`optim`]; [`upload`] overlaps batch copies with the
//! step on a second stream; [`graph`] captures a step once and replays it.
//!
//! A machine without a driver or GPU gets [`CudaError::NoDriver`] (or `NoSuchDevice`) from
//! [`CudaDevice::get`], never a panic.

pub mod alloc;
pub mod blas;
pub mod context;
pub mod elementwise;
pub mod error;
pub mod graph;
pub mod kernels;
pub(crate) mod launch;
pub mod nd;
pub mod optim;
pub mod profile;
pub mod upload;

// The op families' CUDA sides live with their ops (`ops/<family>/cuda.rs`); these names keep
// the paths benches and tests use.
pub use crate::ops::conv::cuda as conv;
pub use crate::ops::conv::tune as conv_tune;
pub use crate::ops::loss::cuda as loss;
pub use crate::ops::norm::cuda as batchnorm;
pub use crate::ops::pool::cuda as pool;
pub use crate::ops::reduce::cuda as reduce;
pub use crate::ops::resize::cuda as resize;
pub use crate::ops::softmax::cuda as softmax;

pub use alloc::{GpuBuffer, MemoryStats, TypedBuffer};
pub use context::{CudaDevice, device_count, driver_present};
pub use error::CudaError;
pub use conv::ConvGeom;
pub use launch::{MAX_DIMS, StridedN};
pub use profile::{PartRow, Profile, ProfileRow, StepProfiler};
pub use reduce::Red4;
