// Shared by the GPU test files (included with `mod common; mod gpu_common;`): buffers, random
// inputs and the comparison of the kernel tests; the device or a skip is common's `gpu`.
#![allow(dead_code, unused_imports)] // each test file uses a part

use coseg::backend::cuda::conv_tune::{self, TuneMode};
use coseg::backend::cuda::{CudaDevice, GpuBuffer, elementwise::fill};
use coseg::device::{Precision, TcVariant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::common::gpu;

/// Held by tests that inspect the caching allocator or take most of the card's memory: the
/// tests of one binary run on parallel threads and share the device and its allocator.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device's precision, tensor-core variant, batch-norm fusion and convolution tuning mode as
/// they were when saved, put back when dropped (also when the test fails; tuning's choices made
/// meanwhile are dropped): a test that changes them leaves the next one the device it found. They
/// are the device's, shared by a binary's tests: hold `serial()` as well.
pub struct DeviceSettings<'a> {
    dev: &'a CudaDevice,
    precision: Precision,
    variant: TcVariant,
    fuse_bn_stats: bool,
    tuning: TuneMode,
}

impl<'a> DeviceSettings<'a> {
    pub fn saved(dev: &'a CudaDevice) -> DeviceSettings<'a> {
        let tuning = conv_tune::mode(dev).expect("the tuning mode");
        DeviceSettings { dev, precision: dev.precision(), variant: dev.tc_variant(), fuse_bn_stats: dev.fuse_bn_stats(), tuning }
    }
}

impl Drop for DeviceSettings<'_> {
    fn drop(&mut self) {
        self.dev.set_precision(self.precision);
        self.dev.set_tc_variant(self.variant);
        self.dev.set_fuse_bn_stats(self.fuse_bn_stats);
        conv_tune::set_mode(self.dev, self.tuning.clone()).expect("the tuning mode back");
    }
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn randn(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// An output buffer filled with NaN, so an element a kernel fails to write shows.
pub fn poisoned(dev: &CudaDevice, n: usize) -> GpuBuffer {
    let mut b = dev.alloc(n).unwrap();
    fill(dev, &mut b, f32::NAN).unwrap();
    b
}

/// ||gpu - cpu|| / ||cpu||, NaN anywhere -> infinity.
pub fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (g, c) in gpu.iter().zip(cpu) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        d += (*g as f64 - *c as f64).powi(2);
        n += (*c as f64).powi(2);
    }
    (d / n.max(1e-30)).sqrt()
}

/// The bit patterns of `v`, for the tests that ask for the same bits (NaN included).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// f32 tolerance of the parity tests.
pub const F32_TOL: f64 = 1e-5;

pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    let e = rel_err(gpu, cpu);
    assert!(e < tol, "{what}: relative error {e:.3e} >= {tol:.0e}");
}
