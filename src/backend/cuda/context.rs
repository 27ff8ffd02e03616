//! One CUDA context and stream per device, the module cache, copies and synchronisation.
//!
//! `CudaDevice::get(n)` opens device `n` once per process and hands out the same `Arc` after.
//! Nothing here touches the driver before checking that libcuda can be loaded: cudarc's
//! dynamic loading panics on first use otherwise, and a machine without a GPU must get
//! [`CudaError::NoDriver`], never a panic.

use super::alloc::{GpuBuffer, MemoryStats, Pool};
use super::error::CudaError;
use super::kernels::{self, Kernel, KernelFormat};
use crate::error::{Error, Result};
use crate::device::{Device, Precision, TcVariant};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DriverError, PinnedHostSlice, sys};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// `data` as f32 words (bit patterns, not values), for copies of integer data.
fn words_of<T: bytemuck::Pod>(data: &[T]) -> Result<&[f32]> {
    bytemuck::try_cast_slice(data).map_err(|e| {
        Error::invalid("htod_words", format!("{}-byte values are not whole 4-byte words: {e}", std::mem::size_of::<T>()))
    })
}

/// A page-locked host buffer and the event after which it may be written again.
#[derive(Default)]
struct Staging {
    buf: Option<PinnedHostSlice<f32>>,
    done: Option<CudaEvent>,
}

impl Staging {
    /// At least `words` values of page-locked memory, once the last copy through it is done.
    /// Grows to the next power of two (page-locking costs milliseconds: buffers are kept).
    fn take(&mut self, dev: &CudaDevice, words: usize) -> Result<&mut [f32]> {
        if let Some(ev) = self.done.take() {
            dev.count_host_wait();
            ev.synchronize().map_err(|e| dev.fault("waiting for a staged copy", e))?;
        }
        if self.buf.as_ref().is_none_or(|b| b.len() < words) {
            self.buf = None;
            let len = words.max(1024).next_power_of_two();
            // SAFETY: page-locked memory, uninitialised until the caller fills or copies into it;
            // flags 0 (cached): the download side reads it back on the host.
            let b = unsafe { dev.ctx.alloc_pinned_with_flags::<f32>(len, 0) }
                .map_err(|e| CudaError::driver(dev.ordinal, format!("page-locking {} MiB of host memory", (len * 4) >> 20), e))?;
            self.buf = Some(b);
        }
        let b = self.buf.as_mut().expect("allocated above");
        b.as_mut_slice().map_err(|e| dev.fault("waiting for a page-locked buffer", e))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether libcuda (the driver) can be loaded on this machine. Checked once.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library and drops it.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// The number of CUDA devices, or why there are none to be had.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(CudaError::NoDriver.into());
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).map_err(|code| {
        CudaError::Driver { ordinal: None, call: "cuInit/cuDeviceGetCount".into(), last_kernel: None, code }.into()
    })
}

/// An open CUDA device: context, the one stream all its work runs on, loaded modules, allocator.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    pool: Arc<Pool>,
    last_kernel: Mutex<&'static str>,
    /// Page-locked host buffers for staged copies, one per direction, kept for reuse.
    upload: Mutex<Staging>,
    download: Mutex<Staging>,
    /// COSEG_CUDA_SYNC=1: synchronise after every launch, so a fault names its kernel.
    sync_each_launch: bool,
    /// The convolutions' arithmetic for tensor ops on this device (`Precision as u8`).
    precision: std::sync::atomic::AtomicU8,
    /// Which tensor-core convolution kernels run tf32 and bf16 (`TcVariant as u8`).
    tc_variant: std::sync::atomic::AtomicU8,
    /// Whether a convolution followed by batch norm in training hands the batch statistics over
    /// from its epilogue (`nn::BatchNorm2d::after_conv`).
    fuse_bn_stats: std::sync::atomic::AtomicBool,
    /// The dynamic shared memory each kernel has been allowed beyond the default 48 KB.
    shared_allowed: Mutex<HashMap<&'static str, u32>>,
    /// Times the host waited for this device's stream (see [`CudaDevice::host_waits`]).
    host_waits: std::sync::atomic::AtomicU64,
    /// Whether each counted wait prints where it came from (see [`CudaDevice::trace_host_waits`]).
    trace_waits: std::sync::atomic::AtomicBool,
    /// Per-op GPU timing, off unless a profiler turns it on (`profile`).
    timer: super::profile::OpTimer,
}

/// The lines of a backtrace that name this crate's functions (and their source lines where the
/// build kept them), without the frames of the standard library, cudarc and the backtrace itself.
fn coseg_frames(bt: &std::backtrace::Backtrace) -> String {
    let text = bt.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("coseg::") && !line.contains("count_host_wait") && !line.contains("coseg_frames") {
            out.push(line.trim());
            if let Some(at) = lines.get(i + 1).filter(|l| l.trim_start().starts_with("at ")) {
                out.push(at.trim());
            }
        }
    }
    format!("  {}", out.join("\n  "))
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{}, {})", self.ordinal, self.name)
    }
}

impl CudaDevice {
    /// Device `ordinal`, opened on first use and shared after.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let mut open = lock(OPEN.get_or_init(Default::default));
        if let Some(dev) = open.get(&ordinal) {
            return Ok(dev.clone());
        }
        let dev = Arc::new(Self::open(ordinal)?);
        open.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoSuchDevice { ordinal, count }.into());
        }
        let err = |what: &'static str| move |e: DriverError| Error::from(CudaError::driver(ordinal, what, e));
        let ctx = CudaContext::new(ordinal).map_err(err("creating the context"))?;
        // SAFETY: all work of this device runs on the one stream below, so cudarc's per-buffer
        // events (for cross-stream ordering) are not needed; stream order makes reuse safe.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(err("creating a stream"))?;
        let name = ctx.name().map_err(err("reading the device name"))?;
        let cc = ctx.compute_capability().map_err(err("reading the compute capability"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(err("reading the multiprocessor count"))?;
        let tc_variant = match std::env::var("COSEG_CONV_TC") {
            Ok(v) => v.parse::<TcVariant>()?,
            Err(_) => TcVariant::default(),
        };
        if tc_variant == TcVariant::Wgmma && cc != (9, 0) {
            eprintln!(
                "cuda:{ordinal} ({name}) is sm_{}{}: COSEG_CONV_TC=wgmma needs sm_90 (its kernels are sm_90a's); running nhwc",
                cc.0, cc.1
            );
        }
        let built_for: i32 = kernels::KERNEL_ARCH.trim_start_matches("compute_").parse().unwrap_or(0);
        if kernels::KERNEL_FORMAT == KernelFormat::Ptx && cc.0 * 10 + cc.1 < built_for {
            return Err(CudaError::Arch { ordinal, name, capability: cc, built_for: kernels::KERNEL_ARCH }.into());
        }
        Ok(CudaDevice {
            ordinal,
            name,
            compute_capability: cc,
            sm_count: sm_count.max(1) as u32,
            pool: Pool::new(ordinal, stream.clone()),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            last_kernel: Mutex::new("(none)"),
            upload: Mutex::new(Staging::default()),
            download: Mutex::new(Staging::default()),
            sync_each_launch: std::env::var("COSEG_CUDA_SYNC").is_ok_and(|v| v == "1"),
            precision: std::sync::atomic::AtomicU8::new(Precision::Fp32 as u8),
            tc_variant: std::sync::atomic::AtomicU8::new(tc_variant as u8),
            shared_allowed: Mutex::new(HashMap::new()),
            fuse_bn_stats: std::sync::atomic::AtomicBool::new(std::env::var("COSEG_FUSE_BN_STATS").map_or(true, |v| v != "0")),
            host_waits: std::sync::atomic::AtomicU64::new(0),
            trace_waits: std::sync::atomic::AtomicBool::new(false),
            timer: Default::default(),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// The precision tensor ops give the convolution wrappers on this device: fp32 until a run
    /// (training config, `--precision`) sets it. The device is shared process-wide, like PyTorch's
    /// `allow_tf32` switch; the wrappers in `conv` also take a precision directly. The matrix
    /// products (cuBLAS, `blas::sgemm`) read it too: tf32 and bf16 run them with TF32 tensor ops.
    pub fn precision(&self) -> Precision {
        let v = self.precision.load(std::sync::atomic::Ordering::Relaxed);
        Precision::ALL.into_iter().find(|p| *p as u8 == v).unwrap_or_default()
    }
    pub fn set_precision(&self, precision: Precision) {
        self.precision.store(precision as u8, std::sync::atomic::Ordering::Relaxed);
    }
    /// The tensor-core convolution kernels the tf32 and bf16 convolutions run on this device:
    /// `COSEG_CONV_TC` when the device was opened, else [`TcVariant::default`]. `Wgmma` is
    /// `Nhwc` on a GPU other than compute capability 9.0 (its kernels are sm_90a's).
    pub fn tc_variant(&self) -> TcVariant {
        let v = self.tc_variant.load(std::sync::atomic::Ordering::Relaxed);
        let variant = TcVariant::ALL.into_iter().find(|t| *t as u8 == v).unwrap_or_default();
        if variant == TcVariant::Wgmma && !self.has_wgmma() { TcVariant::Nhwc } else { variant }
    }
    /// Whether this GPU runs kernels/conv2d_wgmma.cu (sm_90a: compute capability 9.0).
    pub fn has_wgmma(&self) -> bool {
        self.compute_capability == (9, 0)
    }
    pub fn set_tc_variant(&self, variant: TcVariant) {
        self.tc_variant.store(variant as u8, std::sync::atomic::Ordering::Relaxed);
    }
    /// Whether training's convolution + batch norm pairs take the batch statistics from the
    /// convolution's epilogue (pipelined tensor-core kernels only; elsewhere batch norm computes
    /// them as before): on unless `COSEG_FUSE_BN_STATS=0` when the device was opened (on the H200
    /// the bf16 step took 47.1 ms fused against 47.5 ms unfused).
    pub fn fuse_bn_stats(&self) -> bool {
        self.fuse_bn_stats.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn set_fuse_bn_stats(&self, on: bool) {
        self.fuse_bn_stats.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    /// The stream all of this device's work runs on (for interop: cuDNN/cuBLAS handles in benches).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Free and total device memory in bytes (cuMemGetInfo).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| CudaError::driver(self.ordinal, "cuMemGetInfo", e).into())
    }

    pub fn memory_stats(&self) -> MemoryStats {
        self.pool.stats()
    }

    /// Starts the allocator's peak counters again from what is held now.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peaks()
    }

    /// Returns the allocator's cached blocks to the driver; the bytes released.
    pub fn release_cached(&self) -> usize {
        self.pool.release_cached()
    }

    /// An uninitialised buffer of `len` f32 from the caching allocator.
    pub fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        self.pool.alloc(len)
    }

    /// How many times the host has waited for this device's stream: every synchronisation and
    /// device-to-host copy, every copy from pageable host memory (the driver waits for the stream
    /// before it) and every wait for a staged copy. A training step that counts none between its
    /// log intervals never stalls the GPU's queue. Waits of [`super::upload::UploadRing`] on its
    /// own copy stream are not counted: they wait for a copy issued two steps before, the
    /// pipeline's back-pressure.
    pub fn host_waits(&self) -> u64 {
        self.host_waits.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub(crate) fn count_host_wait(&self) {
        let n = self.host_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.trace_waits.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("host wait {n} on cuda:{}, from:\n{}", self.ordinal, coseg_frames(&std::backtrace::Backtrace::force_capture()));
        }
    }
    /// While on, every counted host wait prints the coseg functions it came from (a backtrace
    /// trimmed to this crate's frames), so a step that should never wait shows who waits
    /// (`benches/step_gpu.rs` turns it on for a few steady-state steps with COSEG_WAIT_TRACE=1).
    pub fn trace_host_waits(&self, on: bool) {
        self.trace_waits.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
    /// Whether a graph capture of this device's stream is under way.
    pub fn capturing(&self) -> bool {
        self.pool.capturing()
    }

    /// Host to device (pageable memory: the driver waits for the stream first).
    pub fn htod(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.count_host_wait();
        let mut buf = self.alloc(data.len())?;
        let mut dst = buf.slice_mut().slice_mut(0..data.len());
        self.stream
            .memcpy_htod(data, &mut dst)
            .map_err(|e| CudaError::driver(self.ordinal, format!("copying {} f32 to the device", data.len()), e))?;
        Ok(buf)
    }

    /// Device to host; waits for the stream, so an earlier kernel's fault shows here, named.
    pub fn dtoh(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        self.check_buffer("dtoh", buf)?;
        let mut out = vec![0.0f32; buf.len()];
        let src = buf.slice().slice(0..buf.len());
        self.stream.memcpy_dtoh(&src, &mut out).map_err(|e| self.fault("copying to the host", e))?;
        self.synchronize()?; // counts the wait
        Ok(out)
    }

    /// Host to device for plain data of whole 4-byte words (u32, i32, [u32; 4], ...): the
    /// buffer's `len()` counts words. Integer data (indices, hash keys) travels in the same
    /// pooled buffers as f32.
    pub fn htod_words<T: bytemuck::Pod>(&self, data: &[T]) -> Result<GpuBuffer> {
        self.htod(words_of(data)?)
    }

    /// Device to host of `buf` as plain data of whole 4-byte words (see [`Self::htod_words`]).
    pub fn dtoh_words<T: bytemuck::Pod>(&self, buf: &GpuBuffer) -> Result<Vec<T>> {
        let words = self.dtoh(buf)?;
        let per = std::mem::size_of::<T>() / 4;
        if per == 0 || std::mem::size_of::<T>() % 4 != 0 || words.len() % per != 0 {
            return Err(Error::invalid(
                "dtoh_words",
                format!("{} words are not a whole number of {}-byte values", words.len(), std::mem::size_of::<T>()),
            ));
        }
        let mut out = vec![T::zeroed(); words.len() / per];
        bytemuck::cast_slice_mut::<T, f32>(&mut out).copy_from_slice(&words);
        Ok(out)
    }

    /// Sets every byte of `buf` to zero (asynchronously, in stream order).
    pub fn zero(&self, buf: &mut GpuBuffer) -> Result<()> {
        self.check_buffer("zero", buf)?;
        self.stream.memset_zeros(buf.slice_mut()).map_err(|e| self.fault("clearing a buffer", e))
    }

    /// Host to device through page-locked memory: `fill` writes the `words` values straight
    /// into a reused page-locked buffer, which the DMA engine copies asynchronously (a pageable
    /// copy would stage through the driver's own buffer: one host copy more, and a wait).
    pub fn htod_staged(&self, words: usize, fill: impl FnOnce(&mut [f32])) -> Result<GpuBuffer> {
        let mut dst = self.alloc(words)?;
        let mut st = lock(&self.upload);
        let host = st.take(self, words)?;
        fill(&mut host[..words]);
        let ptr = dst.ptr_mut();
        // SAFETY: `dst` holds at least `words` f32; the source is page-locked memory that is not
        // written again before `st.done` (recorded below) has completed.
        unsafe { cudarc::driver::result::memcpy_htod_async(ptr, &host[..words], self.stream.cu_stream()) }
            .map_err(|e| self.fault("copying to the device", e))?;
        st.done = Some(self.stream.record_event(None).map_err(|e| self.fault("recording an event", e))?);
        Ok(dst)
    }

    /// Device to host through page-locked memory: waits for the stream, then hands `read` the
    /// buffer's values (an earlier kernel's fault shows here, named).
    pub fn dtoh_staged<R>(&self, buf: &GpuBuffer, read: impl FnOnce(&[f32]) -> R) -> Result<R> {
        self.check_buffer("dtoh", buf)?;
        let mut st = lock(&self.download);
        let host = st.take(self, buf.len())?;
        let n = buf.len();
        // SAFETY: `host` has at least n f32 and is read only after the stream synchronises.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host[..n], buf.ptr(), self.stream.cu_stream()) }
            .map_err(|e| self.fault("copying to the host", e))?;
        self.synchronize()?;
        Ok(read(&host[..n]))
    }

    /// A device copy of `src` (same device).
    pub fn dtod(&self, src: &GpuBuffer) -> Result<GpuBuffer> {
        let mut dst = self.alloc(src.len())?;
        self.copy_into(src, &mut dst)?;
        Ok(dst)
    }

    /// Copies `src` into `dst` (same device, same length), in stream order.
    pub fn copy_into(&self, src: &GpuBuffer, dst: &mut GpuBuffer) -> Result<()> {
        self.check_buffer("copy_into", src)?;
        self.check_buffer("copy_into", dst)?;
        if src.len() != dst.len() {
            return Err(Error::shape("copy_into", format!("source has {} values, destination {}", src.len(), dst.len())));
        }
        let n = src.len();
        let from = src.slice().slice(0..n);
        let mut to = dst.slice_mut().slice_mut(0..n);
        self.stream.memcpy_dtod(&from, &mut to).map_err(|e| self.fault("copying on the device", e))
    }

    /// Waits for all work queued on this device.
    pub fn synchronize(&self) -> Result<()> {
        self.count_host_wait();
        self.stream.synchronize().map_err(|e| self.fault("synchronizing", e))
    }

    /// A driver error from something asynchronous: names the last kernel launched, the usual culprit.
    fn fault(&self, what: &str, e: DriverError) -> Error {
        CudaError::Driver { ordinal: Some(self.ordinal), call: what.into(), last_kernel: Some(*lock(&self.last_kernel)), code: e }
            .into()
    }

    /// Refuses a buffer from another device.
    pub(crate) fn check_buffer(&self, op: &'static str, buf: &GpuBuffer) -> Result<()> {
        if buf.ordinal() != self.ordinal {
            return Err(Error::DeviceMismatch { op, first: Device::Cuda(self.ordinal), second: Device::Cuda(buf.ordinal()) });
        }
        Ok(())
    }

    pub(crate) fn timer(&self) -> &super::profile::OpTimer {
        &self.timer
    }

    /// Before a launch: with profiling on, a timing event recorded on the stream (see `profile`).
    pub(crate) fn time_start(&self) -> Result<Option<CudaEvent>> {
        self.timer.start(&self.stream).map_err(|code| self.profile_error("recording an event", code))
    }

    /// After the launch `time_start` preceded: the closing event, the pair queued under `name`.
    pub(crate) fn time_stop(&self, start: Option<CudaEvent>, name: &'static str) -> Result<()> {
        self.timer.stop(start, name, &self.stream).map_err(|code| self.profile_error("recording an event", code))
    }

    /// Records a launch; with COSEG_CUDA_SYNC=1 waits for it so a fault is reported against it.
    pub(crate) fn after_launch(&self, kernel: &'static str) -> Result<()> {
        *lock(&self.last_kernel) = kernel;
        if self.sync_each_launch {
            self.synchronize()?;
        }
        Ok(())
    }

    /// The loaded function for `k`, loading its module on first use.
    pub(crate) fn function(&self, k: Kernel) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(k.name) {
            return Ok(f.clone());
        }
        let module = self.module(k.module)?;
        let f = module.load_function(k.name).map_err(|code| CudaError::MissingKernel {
            ordinal: self.ordinal,
            module: k.module,
            kernel: k.name,
            code,
        })?;
        lock(&self.functions).insert(k.name, f.clone());
        Ok(f)
    }

    /// Lets `k` launch with `bytes` of dynamic shared memory (beyond 48 KB a kernel must opt in,
    /// cuFuncSetAttribute); set once per kernel and size.
    pub(crate) fn allow_shared(&self, k: Kernel, bytes: u32) -> Result<()> {
        let mut allowed = lock(&self.shared_allowed);
        if allowed.get(k.name).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        self.function(k)?
            .set_attribute(attr, bytes as i32)
            .map_err(|e| CudaError::driver(self.ordinal, format!("cuFuncSetAttribute({}, {bytes} bytes of dynamic shared memory)", k.name), e))?;
        allowed.insert(k.name, bytes);
        Ok(())
    }

    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(name) {
            return Ok(m.clone());
        }
        let text = kernels::module_text(name).ok_or(CudaError::MissingModule { module: name })?;
        // An `a` target (compute_90a: wgmma) is that one compute capability's alone.
        let arch = kernels::module_arch(name);
        if let Some(only) = arch.strip_prefix("compute_").and_then(|a| a.strip_suffix('a')) {
            let (major, minor) = self.compute_capability;
            if only != format!("{major}{minor}") {
                return Err(CudaError::ModuleArch { ordinal: self.ordinal, module: name, arch, capability: self.compute_capability }.into());
            }
        }
        let ptx = match kernels::KERNEL_FORMAT {
            KernelFormat::Ptx => Ptx::from_src(text),
            KernelFormat::Source => self.nvrtc(name, text)?,
        };
        let module = self.ctx.load_module(ptx).map_err(|code| CudaError::ModuleLoad {
            ordinal: self.ordinal,
            module: name,
            format: format!("{:?}", kernels::KERNEL_FORMAT),
            arch,
            code,
        })?;
        modules.insert(name, module.clone());
        Ok(module)
    }

    /// Compiles an embedded .cu source for this device (only when build.rs had no nvcc).
    fn nvrtc(&self, name: &str, src: &str) -> Result<Ptx> {
        // SAFETY: only tries to dlopen the library and drops it.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoCompiler { module: name.into() }.into());
        }
        let (major, minor) = self.compute_capability;
        let own = kernels::MODULE_ARCH.iter().find(|(m, _)| *m == name).map(|(_, a)| a.to_string());
        let arch = own.unwrap_or_else(|| format!("compute_{major}{minor}"));
        let opts = CompileOptions {
            options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| {
            CudaError::Compile { module: name.into(), arch: format!("sm_{major}{minor}"), log: e.to_string() }.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::coseg_frames;

    #[inline(never)]
    fn a_caller_in_this_crate() -> String {
        coseg_frames(&std::backtrace::Backtrace::force_capture())
    }

    /// The trace of a host wait names the crate's functions and nothing of std's.
    #[test]
    fn wait_traces_keep_this_crates_frames_only() {
        let frames = a_caller_in_this_crate();
        assert!(frames.contains("a_caller_in_this_crate"), "{frames}");
        assert!(!frames.contains("coseg_frames"), "{frames}");
        assert!(frames.lines().all(|l| l.contains("coseg::") || l.trim_start().starts_with("at ")), "{frames}");
    }
}
