//! The CUDA backend: hand-written kernels (kernels/*.cu, compiled by build.rs) launched through
//! cudarc, with Rust owning autograd and the training loop.
//!
//! Layers, bottom up:
//! - [`kernels`]: the embedded PTX (or source for NVRTC) and the table of kernel names;
//! - [`context`]: one context + stream per device, the module cache, copies, error reporting;
//! - [`alloc`]: the caching allocator ([`GpuBuffer`]), peak memory;
//! - `launch`: the only `unsafe` kernel launches, with launch-configuration and pointer checks;
//! - one file per op family (elementwise, reduce, batchnorm, pool, loss, conv, optim, and
//!   `nd`: any-rank maps, broadcasts and strided copies) with the host-side wrappers that check
//!   shapes and lengths and return clear errors; `blas`: matrix products on cuBLAS.
//!
//! The tensor ops (`crate::ops`) reach these wrappers through `ops::gpu` whenever their inputs
//! live on `Device::Cuda(n)`; the optimisers (`crate::train::optim`) through [`optim`].
//!
//! A machine without a driver or GPU gets `Error::Device` from [`CudaDevice::get`], never a panic.

pub mod alloc;
pub mod batchnorm;
pub mod blas;
pub mod context;
pub mod conv;
pub mod elementwise;
pub mod kernels;
pub(crate) mod launch;
pub mod loss;
pub mod nd;
pub mod optim;
pub mod pool;
pub mod reduce;

pub use alloc::{GpuBuffer, MemoryStats};
pub use context::{CudaDevice, device_count, driver_present};
pub use launch::{ConvGeom, MAX_DIMS, Red4, StridedN};
