//! Host-to-device copies that overlap the device's work: page-locked staging buffers used in
//! turn, copies on a second stream, ordered against the compute stream by events.
//!
//! One [`UploadRing`] slot per batch in flight (two: double buffering). Uploading into slot `s`:
//! 1. the host waits until the last copy out of slot `s`'s page-locked buffer is done (issued
//!    two uploads ago, normally long finished: this is the pipeline's back-pressure, not a wait
//!    for the compute stream) and fills the buffer;
//! 2. the copy stream waits until the compute stream has finished with slot `s`'s destination
//!    buffers (the `consumed` event of the step that last read them), copies, records `copied`;
//! 3. the compute stream waits for `copied` (on the device, not the host).
//!
//! After queueing the work that reads the slot, the caller calls [`UploadRing::consumed`], which
//! records that point on the compute stream. So the copy of batch k+1 runs while step k computes,
//! and nothing here makes the host wait for the compute stream.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::error::CudaError;
use crate::error::{Error, Result};
use cudarc::driver::{CudaEvent, CudaStream, PinnedHostSlice};
use std::sync::Arc;

struct Slot {
    host: PinnedHostSlice<f32>,
    /// The last copy out of `host`, once there has been one (events are made once and recorded
    /// again, so a step creates nothing).
    copied: CudaEvent,
    copying: bool,
    /// The compute stream's last use of the slot's destination buffers.
    consumed: CudaEvent,
}

/// See the module docs.
pub struct UploadRing {
    dev: Arc<CudaDevice>,
    copy: Arc<CudaStream>,
    slots: Vec<Slot>,
    /// The slot of the last upload.
    current: usize,
}

const OP: &str = "upload ring";

impl UploadRing {
    /// `slots` page-locked buffers of `words` f32 each, and a copy stream.
    pub fn new(dev: Arc<CudaDevice>, slots: usize, words: usize) -> Result<Self> {
        if slots == 0 || words == 0 {
            return Err(Error::invalid(OP, format!("{slots} slots of {words} values: both must be at least 1")));
        }
        let ctx = dev.context().clone();
        let ordinal = dev.ordinal();
        let err = |what: &'static str| move |e| Error::from(CudaError::driver(ordinal, what, e));
        let copy = ctx.new_stream().map_err(err("creating the copy stream"))?;
        let mut ring = Vec::with_capacity(slots);
        for _ in 0..slots {
            // SAFETY: page-locked memory, written by `upload` before any copy reads it.
            let host = unsafe { ctx.alloc_pinned_with_flags::<f32>(words, 0) }.map_err(err("page-locking the upload buffers"))?;
            // Recorded now: the destination buffers, allocated on the compute stream before this
            // ring, are ready for the first copy once the compute stream reaches this point.
            let consumed = dev.stream().record_event(None).map_err(err("recording an event"))?;
            let copied = ctx.new_event(None).map_err(err("creating an event"))?;
            ring.push(Slot { host, copied, copying: false, consumed });
        }
        Ok(UploadRing { dev, copy, slots: ring, current: slots - 1 })
    }

    /// The slot the next upload goes through (slots are used in turn, from 0).
    pub fn next_slot(&self) -> usize {
        (self.current + 1) % self.slots.len()
    }

    /// Copies `parts`, in order, into `dsts` (one destination per part, each exactly as long)
    /// through the next slot; the compute stream's later work sees the values. The destinations
    /// must be the same buffers whenever this slot comes round again, or buffers nothing else
    /// uses: they are written while the compute stream may still run earlier work on others.
    pub fn upload(&mut self, parts: &[&[f32]], dsts: Vec<&mut GpuBuffer>) -> Result<()> {
        if parts.len() != dsts.len() {
            return Err(Error::invalid(OP, format!("{} parts for {} destinations", parts.len(), dsts.len())));
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some((i, (p, d))) = parts.iter().zip(&dsts).enumerate().find(|(_, (p, d))| p.len() != d.len()) {
            return Err(Error::shape(OP, format!("part {i} has {} values, its destination {}", p.len(), d.len())));
        }
        let s = self.next_slot();
        let (dev, copy) = (&self.dev, &self.copy);
        let slot = &mut self.slots[s];
        if total > slot.host.len() {
            return Err(Error::shape(OP, format!("{total} values exceed the slot's {}", slot.host.len())));
        }
        let ordinal = dev.ordinal();
        let fault = |what: &'static str| move |e| Error::from(CudaError::driver(ordinal, what, e));
        if slot.copying {
            slot.copied.synchronize().map_err(fault("waiting for the previous copy out of an upload buffer"))?;
        }
        let host = slot.host.as_mut_slice().map_err(fault("opening an upload buffer"))?;
        let mut at = 0;
        for p in parts {
            host[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        copy.wait(&slot.consumed).map_err(fault("ordering a copy after the compute stream"))?;
        let mut at = 0;
        for (p, d) in parts.iter().zip(dsts) {
            dev.check_buffer(OP, d)?;
            // SAFETY: `d` holds p.len() f32 (checked); the source is page-locked memory not
            // written again before `copied` (recorded below) has completed.
            unsafe { cudarc::driver::result::memcpy_htod_async(d.ptr_mut(), &host[at..at + p.len()], copy.cu_stream()) }
                .map_err(fault("copying a batch to the device"))?;
            at += p.len();
        }
        slot.copied.record(copy).map_err(fault("recording an event"))?;
        slot.copying = true;
        dev.stream().wait(&slot.copied).map_err(fault("ordering the compute stream after a copy"))?;
        self.current = s;
        Ok(())
    }

    /// Marks the point on the compute stream after which the last upload's buffers may be
    /// written again: call it once the work that reads them is queued.
    pub fn consumed(&mut self) -> Result<()> {
        let slot = &mut self.slots[self.current];
        slot.consumed
            .record(self.dev.stream())
            .map_err(|e| CudaError::driver(self.dev.ordinal(), "recording an event", e).into())
    }
}
