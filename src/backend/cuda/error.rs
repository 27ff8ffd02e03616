//! What can go wrong on the GPU, typed (in the style of candle's `CudaError`), so a caller can
//! tell an out-of-memory from a missing kernel or a driver fault without reading the message,
//! and every message names the device, the call and the sizes involved.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use std::fmt;

#[derive(Debug)]
pub enum CudaError {
    /// libcuda cannot be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// An ordinal this machine does not have.
    NoSuchDevice { ordinal: usize, count: usize },
    /// The kernels were compiled as PTX for a newer architecture than the device's.
    Arch { ordinal: usize, name: String, capability: (i32, i32), built_for: &'static str },
    /// A driver call failed. For asynchronous faults (copies, synchronisation) `last_kernel` is
    /// the kernel launched last on the device's stream, the usual culprit.
    Driver { ordinal: Option<usize>, call: String, last_kernel: Option<&'static str>, code: DriverError },
    /// The driver refused a kernel launch.
    Launch { ordinal: usize, kernel: &'static str, grid: (u32, u32, u32), block: (u32, u32, u32), code: DriverError },
    /// A cuBLAS call failed.
    Blas { ordinal: usize, call: String, status: CublasError },
    /// NVRTC rejected an embedded kernel source (only when build.rs had no nvcc).
    Compile { module: String, arch: String, log: String },
    /// The kernels were embedded as source and libnvrtc, needed to compile them, is absent.
    NoCompiler { module: String },
    /// No module of this name was embedded at build time.
    MissingModule { module: &'static str },
    /// The driver would not load an embedded module.
    ModuleLoad { ordinal: usize, module: &'static str, format: String, arch: &'static str, code: DriverError },
    /// A module built for one compute capability's own target (`compute_90a`: wgmma) asked for on
    /// another device.
    ModuleArch { ordinal: usize, module: &'static str, arch: &'static str, capability: (i32, i32) },
    /// A module was loaded but has no kernel of this name.
    MissingKernel { ordinal: usize, module: &'static str, kernel: &'static str, code: DriverError },
    /// A request for device memory that the card cannot hold. `free`/`total` are the card's
    /// (None when cuMemGetInfo itself failed); `held`/`peak` are coseg's live tensors.
    OutOfMemory { ordinal: usize, what: String, requested: usize, free: Option<usize>, total: Option<usize>, held: usize, peak: usize },
    /// A GPU permutohedral lattice's hash table filled up (the size estimate was too small).
    TableFull { op: &'static str, slots: Option<usize> },
}

/// "CUDA_ERROR_X (text)" for a driver error; the text comes from the driver, so only the code
/// where libcuda cannot be loaded (asking it would panic in cudarc's dynamic loading).
pub(crate) fn describe(e: DriverError) -> String {
    match super::context::driver_present().then(|| e.error_string()) {
        Some(Ok(s)) => format!("{:?} ({})", e.0, s.to_string_lossy()),
        _ => format!("{:?}", e.0),
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CudaError::*;
        match self {
            NoDriver => write!(f, "no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver on this machine?)"),
            NoSuchDevice { ordinal, count } => {
                write!(f, "cuda:{ordinal} asked for, but this machine has {count} CUDA device(s)")
            }
            Arch { ordinal, name, capability: (major, minor), built_for } => write!(
                f,
                "cuda:{ordinal} ({name}) is sm_{major}{minor} but the kernels were compiled for {built_for}; \
                 rebuild with COSEG_CUDA_ARCH=compute_{major}{minor}"
            ),
            Driver { ordinal, call, last_kernel, code } => {
                if let Some(n) = ordinal {
                    write!(f, "cuda:{n}: ")?;
                }
                write!(f, "{call}")?;
                if let Some(k) = last_kernel {
                    write!(f, " (last kernel launched: {k})")?;
                }
                write!(f, ": {}", describe(*code))
            }
            Launch { ordinal, kernel, grid, block, code } => {
                write!(f, "launch {kernel} (grid {grid:?}, block {block:?}) on cuda:{ordinal}: {}", describe(*code))
            }
            Blas { ordinal, call, status } => write!(f, "cuda:{ordinal}: cuBLAS {call}: {:?}", status.0),
            Compile { module, arch, log } => write!(f, "NVRTC compiling kernels/{module}.cu for {arch}: {log}"),
            NoCompiler { module } => write!(
                f,
                "kernels/{module}.cu was embedded as source (no nvcc when this was built) and libnvrtc cannot be \
                 loaded: run scripts/install-nvcc.sh and rebuild, or put libnvrtc on the loader path"
            ),
            MissingModule { module } => write!(f, "no kernel module '{module}' was embedded (kernels/{module}.cu)"),
            ModuleLoad { ordinal, module, format, arch, code } => {
                write!(f, "cuda:{ordinal}: loading module {module} ({format} for {arch}): {}", describe(*code))
            }
            ModuleArch { ordinal, module, arch, capability: (major, minor) } => write!(
                f,
                "cuda:{ordinal} is sm_{major}{minor}, but kernels/{module}.cu is built for {arch}, which runs on that \
                 architecture only (COSEG_CONV_TC=wgmma needs an sm_90 GPU such as the H100 or H200)"
            ),
            MissingKernel { ordinal, module, kernel, code } => {
                write!(f, "cuda:{ordinal}: kernel {kernel} not found in module {module}: {}", describe(*code))
            }
            OutOfMemory { ordinal, what, requested, free, total, held, peak } => {
                write!(f, "cuda:{ordinal}: out of memory: {what} needs {requested} bytes ({:.1} MiB); ", mib(*requested))?;
                match (free, total) {
                    (Some(free), Some(total)) => write!(f, "free {:.1} MiB of {:.1} MiB", mib(*free), mib(*total))?,
                    _ => write!(f, "the card's free memory could not be read")?,
                }
                write!(f, "; coseg holds {:.1} MiB in live tensors (peak {:.1} MiB)", mib(*held), mib(*peak))
            }
            TableFull { op, slots } => {
                write!(f, "{op}: a lattice's hash table")?;
                if let Some(s) = slots {
                    write!(f, " ({s} slots)")?;
                }
                write!(f, " filled up; refine again with TableSize::WorstCase")
            }
        }
    }
}

impl std::error::Error for CudaError {}

impl CudaError {
    /// The driver's error code, for the variants that carry one.
    pub fn driver_code(&self) -> Option<DriverError> {
        match self {
            CudaError::Driver { code, .. }
            | CudaError::Launch { code, .. }
            | CudaError::ModuleLoad { code, .. }
            | CudaError::MissingKernel { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A failed driver call on device `ordinal` (not tied to a kernel).
    pub(crate) fn driver(ordinal: usize, call: impl Into<String>, code: DriverError) -> Self {
        CudaError::Driver { ordinal: Some(ordinal), call: call.into(), last_kernel: None, code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    #[test]
    fn messages_name_the_device_the_call_and_the_sizes() {
        let oom = CudaError::OutOfMemory {
            ordinal: 1,
            what: "an allocation".into(),
            requested: 3 << 20,
            free: Some(1 << 20),
            total: Some(80 << 30),
            held: 5 << 20,
            peak: 7 << 20,
        };
        let m = oom.to_string();
        assert!(m.starts_with("cuda:1: out of memory: an allocation needs 3145728 bytes (3.0 MiB)"), "{m}");
        assert!(m.contains("free 1.0 MiB of 81920.0 MiB") && m.contains("5.0 MiB in live tensors (peak 7.0 MiB)"), "{m}");
        let CudaError::OutOfMemory { ordinal, what, requested, held, peak, .. } = oom else { unreachable!() };
        let unread = CudaError::OutOfMemory { ordinal, what, requested, free: None, total: None, held, peak };
        assert!(unread.to_string().contains("could not be read"), "{unread}");

        let code = DriverError(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
        let fault = CudaError::Driver { ordinal: Some(0), call: "synchronizing".into(), last_kernel: Some("pool_fwd"), code };
        let m = fault.to_string();
        assert!(m.starts_with("cuda:0: synchronizing (last kernel launched: pool_fwd): CUDA_ERROR_ILLEGAL_ADDRESS"), "{m}");
        assert_eq!(fault.driver_code(), Some(code));

        let launch = CudaError::Launch { ordinal: 2, kernel: "softmax_fwd", grid: (0, 1, 1), block: (256, 1, 1), code };
        assert!(launch.to_string().starts_with("launch softmax_fwd (grid (0, 1, 1), block (256, 1, 1)) on cuda:2:"));
        assert_eq!(CudaError::TableFull { op: "crf", slots: Some(64) }.to_string(),
            "crf: a lattice's hash table (64 slots) filled up; refine again with TableSize::WorstCase");
        assert_eq!(CudaError::NoSuchDevice { ordinal: 3, count: 1 }.driver_code(), None);
    }
}
