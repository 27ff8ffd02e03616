//! The caching allocator: device memory is taken from the driver once per size class and reused.
//!
//! A freed [`GpuBuffer`] goes back to its size class's free list instead of to the driver, so once
//! a training step has run, the next ones allocate nothing from the driver. Reuse is safe without
//! events because every kernel and copy of a device runs on that device's one stream, in order.
//! Size classes round up to a multiple of 1/8 of the next power of two (under 12.5% waste above
//! 2048 elements), in steps of at least 1 KiB.
//!
//! Captured graphs ([`super::graph::capture`]) get blocks of their own: during a capture every block
//! handed out is marked as the graphs', and once freed it goes to the graphs' free list, never
//! back to the general cache, because each replay writes it again. A capture never asks the
//! driver for memory (warm-up steps fill the cache first); a miss fails the capture instead.

use super::context::CudaDevice;
use super::error::CudaError;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError, sys::CUresult};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

const MIN_CLASS: usize = 256; // elements (1 KiB)

/// The capacity, in f32 elements, of the block that serves a request of `len` elements.
pub fn size_class(len: usize) -> usize {
    if len <= MIN_CLASS {
        return MIN_CLASS;
    }
    let step = (len.next_power_of_two() / 8).max(MIN_CLASS);
    len.div_ceil(step) * step
}

/// What the allocator holds, in bytes (block capacities), and how often it went to the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in live buffers.
    pub in_use_bytes: usize,
    /// Bytes in the free lists, ready for reuse.
    pub cached_bytes: usize,
    /// Highest `in_use_bytes` seen.
    pub peak_in_use_bytes: usize,
    /// Highest `in_use_bytes + cached_bytes` seen: the device memory this process took.
    pub peak_reserved_bytes: usize,
    /// Allocations served by the driver (cuMemAlloc).
    pub device_allocations: u64,
    /// Allocations served from a free list.
    pub reuses: u64,
}

struct PoolState {
    free: HashMap<usize, Vec<CudaSlice<f32>>>,
    stats: MemoryStats,
    graphs: GraphBlocks,
}

/// The blocks of captured graphs (see the module docs).
#[derive(Default)]
struct GraphBlocks {
    capturing: bool,
    /// Graphs alive; their blocks return to the general cache when the last goes.
    live: usize,
    /// Device addresses of every block a capture handed out.
    owned: HashSet<u64>,
    free: HashMap<usize, Vec<CudaSlice<f32>>>,
}

fn address(stream: &CudaStream, slice: &CudaSlice<f32>) -> u64 {
    slice.device_ptr(stream).0
}

pub(crate) struct Pool {
    ordinal: usize,
    stream: Arc<CudaStream>,
    state: Mutex<PoolState>,
}

impl Pool {
    pub(crate) fn new(ordinal: usize, stream: Arc<CudaStream>) -> Arc<Self> {
        Arc::new(Pool {
            ordinal,
            stream,
            state: Mutex::new(PoolState { free: HashMap::new(), stats: MemoryStats::default(), graphs: GraphBlocks::default() }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic elsewhere cannot leave the free lists inconsistent (each update is one push or pop).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// Starts the peaks again from what is held now (to measure one stage, e.g. a training step).
    pub(crate) fn reset_peaks(&self) {
        let st = &mut self.lock().stats;
        st.peak_in_use_bytes = st.in_use_bytes;
        st.peak_reserved_bytes = st.in_use_bytes + st.cached_bytes;
    }

    /// Hands every cached block back to the driver; returns the bytes released.
    /// The graphs' free blocks stay (a replay writes them).
    pub(crate) fn release_cached(&self) -> usize {
        let mut st = self.lock();
        let bytes: usize = st.free.drain().map(|(cap, slices)| cap * 4 * slices.len()).sum();
        st.stats.cached_bytes -= bytes;
        bytes
    }

    /// From now until [`Pool::end_capture`], blocks come from the cache only and belong to the
    /// graphs after.
    pub(crate) fn capturing(&self) -> bool {
        self.lock().graphs.capturing
    }
    pub(crate) fn begin_capture(&self) {
        self.lock().graphs.capturing = true;
    }
    /// `made`: a graph came of the capture (else its blocks go back as if never captured, once
    /// no graph is alive).
    pub(crate) fn end_capture(&self, made: bool) {
        let mut st = self.lock();
        st.graphs.capturing = false;
        if made {
            st.graphs.live += 1;
        } else if st.graphs.live == 0 {
            Self::release_graph_blocks(&mut st);
        }
    }
    /// A graph is gone; after the last, the graphs' blocks join the general cache.
    pub(crate) fn graph_dropped(&self) {
        let mut st = self.lock();
        st.graphs.live = st.graphs.live.saturating_sub(1);
        if st.graphs.live == 0 {
            Self::release_graph_blocks(&mut st);
        }
    }
    fn release_graph_blocks(st: &mut PoolState) {
        let free = std::mem::take(&mut st.graphs.free);
        st.graphs.owned.clear();
        for (cap, slices) in free {
            st.free.entry(cap).or_default().extend(slices);
        }
    }

    /// During a capture: a block of class `cap` from the graphs' free list, else from the
    /// general cache (marked as the graphs' from now on), else an error (no driver call).
    fn alloc_captured(self: &Arc<Self>, st: &mut PoolState, cap: usize, len: usize) -> Result<GpuBuffer> {
        let bytes = cap * 4;
        let slice = match st.graphs.free.get_mut(&cap).and_then(Vec::pop) {
            Some(s) => s,
            None => {
                let s = st.free.get_mut(&cap).and_then(Vec::pop).ok_or_else(|| {
                    Error::invalid(
                        "graph capture",
                        format!("a block of {bytes} bytes is not in the allocator's cache, and a capture may not ask the driver for memory"),
                    )
                })?;
                st.graphs.owned.insert(address(&self.stream, &s));
                s
            }
        };
        st.stats.cached_bytes -= bytes;
        st.stats.reuses += 1;
        Self::count_in_use(&mut st.stats, bytes);
        Ok(GpuBuffer { slice: Some(slice), len, pool: self.clone() })
    }

    pub(crate) fn alloc(self: &Arc<Self>, len: usize) -> Result<GpuBuffer> {
        let cap = size_class(len);
        let bytes = cap * 4;
        {
            let mut st = self.lock();
            if st.graphs.capturing {
                return self.alloc_captured(&mut st, cap, len);
            }
            if let Some(slice) = st.free.get_mut(&cap).and_then(Vec::pop) {
                st.stats.cached_bytes -= bytes;
                st.stats.reuses += 1;
                Self::count_in_use(&mut st.stats, bytes);
                return Ok(GpuBuffer { slice: Some(slice), len, pool: self.clone() });
            }
        }
        let slice = match self.driver_alloc(cap) {
            Ok(s) => s,
            Err(e) if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                // Give the cache back and try once more before reporting.
                self.release_cached();
                self.stream
                    .synchronize()
                    .map_err(|e| CudaError::driver(self.ordinal, "synchronizing before retrying an allocation", e))?;
                self.driver_alloc(cap).map_err(|e| self.alloc_error(bytes, e))?
            }
            Err(e) => return Err(self.alloc_error(bytes, e)),
        };
        let mut st = self.lock();
        st.stats.device_allocations += 1;
        Self::count_in_use(&mut st.stats, bytes);
        Ok(GpuBuffer { slice: Some(slice), len, pool: self.clone() })
    }

    fn driver_alloc(&self, cap: usize) -> std::result::Result<CudaSlice<f32>, DriverError> {
        // SAFETY: the memory is uninitialised; every op writes its output before reading it, and
        // tests poison outputs (fill with NaN) to show any element a kernel fails to write.
        unsafe { self.stream.alloc::<f32>(cap) }
    }

    fn count_in_use(stats: &mut MemoryStats, bytes: usize) {
        stats.in_use_bytes += bytes;
        stats.peak_in_use_bytes = stats.peak_in_use_bytes.max(stats.in_use_bytes);
        stats.peak_reserved_bytes = stats.peak_reserved_bytes.max(stats.in_use_bytes + stats.cached_bytes);
    }

    /// Out of memory, with the card's free and total memory and what coseg holds; any other
    /// failure as the driver's error.
    fn alloc_error(&self, bytes: usize, e: DriverError) -> Error {
        if e.0 != CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return CudaError::driver(self.ordinal, format!("allocating {bytes} bytes"), e).into();
        }
        let st = self.stats();
        let card = self.stream.context().mem_get_info().ok();
        CudaError::OutOfMemory {
            ordinal: self.ordinal,
            what: "an allocation".into(),
            requested: bytes,
            free: card.map(|c| c.0),
            total: card.map(|c| c.1),
            held: st.in_use_bytes,
            peak: st.peak_in_use_bytes,
        }
        .into()
    }
}

/// `len` f32 values in device memory (the block behind it may be larger). Dropping it returns the
/// block to the allocator's free list.
pub struct GpuBuffer {
    slice: Option<CudaSlice<f32>>,
    len: usize,
    pool: Arc<Pool>,
}

impl GpuBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device this buffer lives on.
    pub fn ordinal(&self) -> usize {
        self.pool.ordinal
    }
    /// The buffer's device address (to tell buffers apart; the kernels take it through `launch`).
    pub fn device_address(&self) -> u64 {
        self.ptr()
    }
    pub(crate) fn slice(&self) -> &CudaSlice<f32> {
        self.slice.as_ref().expect("a GpuBuffer holds its slice until dropped")
    }
    pub(crate) fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice.as_mut().expect("a GpuBuffer holds its slice until dropped")
    }
    /// The raw device address of a buffer a kernel writes: taking `&mut` keeps the borrow rules honest.
    pub(crate) fn ptr_mut(&mut self) -> u64 {
        self.ptr()
    }
    /// The raw device address, for kernel arguments (16-byte aligned: blocks come from cuMemAlloc).
    pub(crate) fn ptr(&self) -> u64 {
        let slice = self.slice();
        // Event tracking is off (one stream per device), so the guard does nothing on drop.
        let (ptr, _guard) = slice.device_ptr(slice.stream());
        ptr
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer(cuda:{}, {} f32)", self.pool.ordinal, self.len)
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            let cap = slice.len();
            let mut st = self.pool.lock();
            st.stats.in_use_bytes -= cap * 4;
            st.stats.cached_bytes += cap * 4;
            let st = &mut *st;
            // Most drops happen with no graph: no address to look up then.
            let graphs = !st.graphs.owned.is_empty() && st.graphs.owned.contains(&address(&self.pool.stream, &slice));
            let free = if graphs { &mut st.graphs.free } else { &mut st.free };
            free.entry(cap).or_default().push(slice);
        }
    }
}

/// `len` values of a 4-byte plain-data type `T` (u32 indices, ...) in the pooled words of a
/// [`GpuBuffer`]: the compiler, not a convention about f32 bits, keeps integers apart from floats.
pub struct TypedBuffer<T> {
    words: GpuBuffer,
    values: PhantomData<T>,
}

impl<T: bytemuck::Pod> TypedBuffer<T> {
    /// Checked when `alloc` is instantiated: one value per pooled word.
    const ONE_WORD: () = assert!(std::mem::size_of::<T>() == 4, "a TypedBuffer holds 4-byte values");

    /// An uninitialised buffer of `len` values from the caching allocator.
    pub fn alloc(dev: &CudaDevice, len: usize) -> Result<Self> {
        let () = Self::ONE_WORD;
        Ok(TypedBuffer { words: dev.alloc(len)?, values: PhantomData })
    }
    pub fn len(&self) -> usize {
        self.words.len()
    }
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    /// The device it lives on.
    pub fn ordinal(&self) -> usize {
        self.words.ordinal()
    }
    /// The values, copied to the host (waits for the stream, so a kernel's fault shows here).
    pub fn to_host(&self, dev: &CudaDevice) -> Result<Vec<T>> {
        dev.dtoh_words(&self.words)
    }
    /// The raw device address of a buffer a kernel writes (see [`GpuBuffer::ptr_mut`]).
    pub(crate) fn ptr_mut(&mut self) -> u64 {
        self.words.ptr_mut()
    }
    /// The raw device address, for kernel arguments.
    pub(crate) fn ptr(&self) -> u64 {
        self.words.ptr()
    }
}

impl<T> std::fmt::Debug for TypedBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypedBuffer(cuda:{}, {} x {})", self.words.ordinal(), self.words.len(), std::any::type_name::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_little_waste() {
        for len in (0..5000).chain([1 << 20, (1 << 20) + 1, 123_456_789]) {
            let cap = size_class(len);
            assert!(cap >= len && cap >= 256, "len {len} -> {cap}");
            // 1/8 of the next power of two, in steps of at least MIN_CLASS.
            assert!(cap - len <= (len.next_power_of_two() / 8).max(256), "len {len} -> {cap}");
        }
        // Requests in one class share blocks: the classes are few.
        let classes: std::collections::BTreeSet<_> = (1..100_000).map(size_class).collect();
        assert!(classes.len() < 80, "{} classes", classes.len());
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(1025), 1280);
    }
}
