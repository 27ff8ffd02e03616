//! What the GPU benches share (included with `#[path]`; not a bench of its own).

use coseg::backend::cuda::CudaDevice;
use std::sync::Arc;

/// cuda:0, or None after telling stderr that `bench` is skipped for want of a GPU.
pub fn device_or_skip(bench: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::get(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            eprintln!("{bench}: skipped, no GPU ({e})");
            None
        }
    }
}
