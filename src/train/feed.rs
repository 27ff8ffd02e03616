//! The training batches' way onto the device.
//!
//! On the CPU a batch's vectors become its tensors. On a GPU two staging sets of input tensors are
//! made once and filled in turn through [`UploadRing`]: page-locked host buffers, copies on a
//! second stream ordered by events, so the copy of batch k+1 overlaps step k and the step never
//! waits for the host to copy. The step then copies its set, on the device, into one fixed set of
//! inputs: the step's inputs keep their device addresses (what a captured graph reads), and the
//! staging set is free again as soon as that copy is done, not when the step is.

use crate::backend::cuda::CudaDevice;
use crate::backend::cuda::upload::UploadRing;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::dataset::{Batch, HostBatch};

/// Batches in flight on a GPU: one being computed on, one being copied.
const IN_FLIGHT: usize = 2;

/// See the module docs.
pub enum Feed {
    Host(Device),
    /// `slots[i]`: the tensors the ring's slot i copies into.
    Ring { ring: UploadRing, slots: Vec<Batch>, fixed: Batch, pairs: usize, size: usize },
}

impl Feed {
    /// A feed of batches of `pairs` pairs of `size` x `size` crops onto `device`.
    pub fn new(device: Device, pairs: usize, size: usize) -> Result<Feed> {
        let Device::Cuda(n) = device else { return Ok(Feed::Host(device)) };
        let dev = CudaDevice::get(n)?;
        let inputs = || -> Result<Batch> {
            let zeros = |shape: &[usize]| Tensor::zeros(shape.to_vec(), device);
            Ok(Batch {
                a: zeros(&[pairs, 3, size, size])?,
                b: zeros(&[pairs, 3, size, size])?,
                target_a: zeros(&[pairs, size, size])?,
                target_b: zeros(&[pairs, size, size])?,
            })
        };
        let slots = (0..IN_FLIGHT).map(|_| inputs()).collect::<Result<Vec<_>>>()?;
        let fixed = inputs()?;
        // After the slots' buffers: the ring orders its first copies after their allocation.
        let ring = UploadRing::new(dev, IN_FLIGHT, 2 * pairs * 4 * size * size)?;
        Ok(Feed::Ring { ring, slots, fixed, pairs, size })
    }

    /// The batch as tensors on the device. On a GPU they are the feed's fixed inputs (the same
    /// tensors every time, holding this batch for the work queued after this call).
    pub fn put(&mut self, batch: HostBatch) -> Result<Batch> {
        match self {
            Feed::Host(device) => batch.upload(*device),
            Feed::Ring { ring, slots, fixed, pairs, size } => {
                if (batch.pairs(), batch.size()) != (*pairs, *size) {
                    return Err(Error::shape(
                        "feed",
                        format!("a batch of {} pairs of {}px crops, the feed takes {pairs} of {size}px", batch.pairs(), batch.size()),
                    ));
                }
                let slot = &slots[ring.next_slot()];
                let [a, b, ta, tb] = batch.parts();
                let tensors = [&slot.a, &slot.b, &slot.target_a, &slot.target_b];
                Tensor::update_storages(&tensors, |storages| {
                    let dsts = storages.into_iter().map(|s| s.as_cuda_mut("feed")).collect::<Result<Vec<_>>>()?;
                    ring.upload(&[a, b, ta, tb], dsts)
                })?;
                for (to, from) in [(&fixed.a, &slot.a), (&fixed.b, &slot.b), (&fixed.target_a, &slot.target_a), (&fixed.target_b, &slot.target_b)] {
                    to.copy_from(from)?;
                }
                ring.consumed()?;
                Ok(Batch { a: fixed.a.clone(), b: fixed.b.clone(), target_a: fixed.target_a.clone(), target_b: fixed.target_b.clone() })
            }
        }
    }
}
