// Shared by the test files (included with `mod common;` at the top of the file): the GPU or a
// skip, `test_device!`, which runs one test body on every device present, and `test_gpu!`, for a
// test of cuda:0 alone.
#![allow(dead_code, unused_macros, unused_imports)] // each test file uses a part

use coseg::backend::cuda::CudaDevice;
use coseg::device::{Device, Precision};
use std::sync::Arc;

/// cuda:0, or None after printing why the test skips. With REQUIRE_CUDA=1 a missing GPU fails.
pub fn gpu(test: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::get(0) {
        Ok(dev) => Some(dev),
        Err(e) if std::env::var("REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("{test}: REQUIRE_CUDA=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipping {test}: no GPU ({e})");
            None
        }
    }
}

/// cuda:0 for a `test_device!` body, or None after printing that the test skips. Its convolutions
/// must be at fp32 (the device's setting until a run changes it, process-wide): the tolerances of
/// these tests are those of f32 arithmetic.
pub fn cuda_device(test: &str) -> Option<Device> {
    let dev = gpu(test)?;
    assert_eq!(dev.precision(), Precision::Fp32, "{test}: cuda:0's convolutions are not at fp32");
    Some(Device::Cuda(dev.ordinal()))
}

/// `test_device!(name, |device| { body })`: the body as one test per device kind, in a module
/// `name`: `name::cpu` always, `name::cuda` on cuda:0, which skips (see [`gpu`]) where there is
/// none. The body sees the calling file's items.
macro_rules! test_device {
    ($name:ident, |$device:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($device: coseg::Device) $body

            #[test]
            fn cpu() {
                body(coseg::Device::Cpu)
            }

            #[test]
            fn cuda() {
                if let Some(device) = $crate::common::cuda_device(concat!(stringify!($name), "::cuda")) {
                    body(device)
                }
            }
        }
    };
}
pub(crate) use test_device;

/// `test_gpu!(name, |dev| { body })`: a test of cuda:0 alone (a kernel against a CPU reference,
/// the GPU against the CPU), the body given its `Arc<CudaDevice>`; skips (see [`gpu`]) where
/// there is none.
macro_rules! test_gpu {
    ($name:ident, |$dev:ident| $body:block) => {
        #[test]
        fn $name() {
            if let Some($dev) = $crate::common::gpu(stringify!($name)) $body
        }
    };
}
pub(crate) use test_gpu;
