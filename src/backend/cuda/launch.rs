//! The one place that launches kernels: every `unsafe` call into a kernel is in [`launch`].
//!
//! Wrappers (`backend::cuda::elementwise`, `ops::conv::cuda`, ...) check shapes and lengths, then
//! call `launch` with the kernel, a launch configuration and the arguments in the kernel's
//! parameter order. `launch` checks the configuration and that every pointer is a 16-byte aligned
//! device address, and turns a failed launch into an error naming the kernel, its grid and block.

use super::context::CudaDevice;
use super::error::CudaError;
use super::kernels::Kernel;
use crate::error::{Error, Result};
use cudarc::driver::{DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};

/// COSEG_KERNEL_LOG=1: prints `line()` on stderr the first time it is seen, so a wrapper that
/// picks among kernels (the convolutions, the position attention) shows its choice once per
/// distinct shape. Costs one flag test when the variable is unset.
pub fn log_kernel_choice(line: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if !*ON.get_or_init(|| std::env::var("COSEG_KERNEL_LOG").is_ok_and(|v| v == "1")) {
        return;
    }
    let line = line();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&line) {
        eprintln!("{line}");
        seen.push(line);
    }
}

/// The largest rank of nd.cu's strided kernels (after the host merges contiguous dims).
pub const MAX_DIMS: usize = 6;

/// Strided geometry of nd.cu (`struct StridedN`): the iteration dims (row-major over the output
/// index), the strides and base offsets of the two operands.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StridedN {
    pub rank: i32,
    pub dims: [i32; MAX_DIMS],
    pub sx: [i32; MAX_DIMS],
    pub sy: [i32; MAX_DIMS],
    pub ox: i32,
    pub oy: i32,
}

/// One entry of optim.cu's chunk table (`struct Chunk`: int, 4 bytes padding, long long).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub tensor: i32,
    pub _pad: i32,
    pub start: i64,
}

// SAFETY: plain #[repr(C)] structs of i32/i64 whose layout matches the kernels' structs.
unsafe impl DeviceRepr for Chunk {}
unsafe impl DeviceRepr for StridedN {}

/// A `#[repr(C)]` struct a kernel takes by value, whose layout mirrors the kernel's struct: an op
/// family defines it beside its wrappers and passes it as [`Arg::Struct`].
pub(crate) trait KernelStruct: Sync + std::fmt::Debug {
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>);
}

impl<T: DeviceRepr + Sync + std::fmt::Debug> KernelStruct for T {
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

/// A kernel argument. `Ptr(0)` is a null pointer (optional inputs such as a bias or a mask).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Struct(&'a dyn KernelStruct),
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// Threads per block of the elementwise and per-row kernels.
pub(crate) const THREADS: u32 = 256;

/// A grid-stride launch over `n` items: enough blocks to fill the card, never more than needed.
pub(crate) fn grid_1d(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, dev.sm_count() as usize * 16);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One block per item (kernels that stride over items by gridDim.x).
pub(crate) fn grid_per_item(dev: &CudaDevice, items: usize) -> LaunchConfig {
    let blocks = items.clamp(1, dev.sm_count() as usize * 32);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// How to split a reduction of `red` elements over a grid dimension so that `parallel` independent
/// outputs (blocks or threads) become about `wanted`: at least `least` elements per split, at most
/// 65535 splits, chunks a whole number of `granule`s. Returns (splits, chunk). With more than one
/// split each split writes its partial sums into its own slice of a scratch buffer, and
/// reduce.cu's sum_splits_f32 adds the slices in order (the same bits every run).
pub(crate) fn split_reduction(parallel: usize, wanted: usize, red: usize, least: usize, granule: usize) -> (usize, usize) {
    let splits = wanted.div_ceil(parallel.max(1)).clamp(1, (red / least).clamp(1, 65535));
    let chunk = (red.div_ceil(splits).div_ceil(granule) * granule).max(granule);
    (red.div_ceil(chunk).max(1), chunk)
}

/// `v` as a kernel int, or an error naming the op and the quantity.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} exceeds the kernels' 32-bit index range")))
}

/// Checks a buffer's length against what a shape needs.
pub(crate) fn check_len(op: &'static str, what: &str, len: usize, expected: usize, shape: &[usize]) -> Result<()> {
    if len != expected {
        return Err(Error::shape(op, format!("{what} has {len} elements, shape {shape:?} needs {expected}")));
    }
    Ok(())
}

/// Launches `k` on `dev`'s stream with `args` in the kernel's parameter order.
pub(crate) fn launch(dev: &CudaDevice, k: Kernel, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    launch_with(dev, k, cfg, args, false)
}

/// `launch` as a cooperative kernel: the driver guarantees that every block of the grid is
/// resident at once (or refuses the launch), so blocks may wait for each other (a grid barrier).
pub(crate) fn launch_cooperative(dev: &CudaDevice, k: Kernel, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    launch_with(dev, k, cfg, args, true)
}

fn launch_with(dev: &CudaDevice, k: Kernel, cfg: LaunchConfig, args: &[Arg], cooperative: bool) -> Result<()> {
    let (gx, gy, gz) = cfg.grid_dim;
    let (bx, by, bz) = cfg.block_dim;
    if gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 || bx * by * bz == 0 || bx * by * bz > 1024 {
        return Err(Error::invalid(
            k.name,
            format!("launch configuration out of range: grid {:?}, block {:?}", cfg.grid_dim, cfg.block_dim),
        ));
    }
    for (i, a) in args.iter().enumerate() {
        if let Arg::Ptr(p) = a {
            if p % 16 != 0 {
                return Err(Error::invalid(k.name, format!("argument {i}: device pointer {p:#x} is not 16-byte aligned")));
            }
        }
    }
    if cfg.shared_mem_bytes > 48 * 1024 {
        dev.allow_shared(k, cfg.shared_mem_bytes)?;
    }
    let func = dev.function(k)?;
    let mut builder = dev.stream().launch_builder(&func);
    for a in args {
        match a {
            Arg::Struct(s) => {
                s.push(&mut builder);
                &mut builder
            }
            Arg::Ptr(p) => builder.arg(p),
            Arg::I32(v) => builder.arg(v),
            Arg::F32(v) => builder.arg(v),
        };
    }
    // With profiling on, events around the launch time it (backend::cuda::profile).
    let timed = dev.time_start()?;
    // SAFETY: the argument list matches the kernel's parameters (each wrapper mirrors the .cu
    // signature, and tests/gpu_parity.rs runs every wrapper); pointers are live device buffers of
    // the lengths the wrappers checked; all work runs in order on this device's one stream.
    let launched = unsafe { if cooperative { builder.launch_cooperative(cfg) } else { builder.launch(cfg) } };
    launched.map_err(|code| CudaError::Launch {
        ordinal: dev.ordinal(),
        kernel: k.name,
        grid: cfg.grid_dim,
        block: cfg.block_dim,
        code,
    })?;
    dev.time_stop(timed, k.name)?;
    dev.after_launch(k.name)
}
