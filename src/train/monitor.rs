//! The training step's watch over its loss, kept where the step runs so that the step never waits
//! for the host.
//!
//! Each step hands its loss (a one-element tensor) to [`LossWatch::record`]. On a GPU that is one
//! launch (`train_monitor_f32`): the loss goes into a ring of `capacity` slots in device memory,
//! the first non-finite loss's iteration is recorded there, and the step's scalars (the scheduled
//! learning rate from a table uploaded once, Adam's bias corrections, and `skip` once a loss was not
//! finite) are written for the optimiser kernel, which reads them from device memory
//! ([`crate::train::Optimizer::step_device`]). After a non-finite loss every later update is
//! skipped on the device, so the parameters stay those of the last good step. Nothing is read
//! back until [`LossWatch::drain`], which the loop calls at its log interval (and before
//! validation, checkpoints and the end): one copy of the ring and the state, one wait.
//!
//! On the CPU the same bookkeeping runs on the host, where reading the loss costs nothing; the
//! loop is the same on both.

use crate::backend::cuda::optim::{MONITOR_STATE, STEP_SCALARS, train_monitor};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The losses since the last drain, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Drained {
    /// The 0-based iteration of `losses[0]`.
    pub first_iter: usize,
    pub losses: Vec<f32>,
    /// The first iteration (1-based) whose loss was not finite, if any so far.
    pub first_bad: Option<usize>,
}

/// The monitor's state on a GPU: device buffers written by `train_monitor_f32`.
struct DeviceWatch {
    dev: Arc<CudaDevice>,
    /// [iteration, first non-finite iteration (1-based, 0 = none), optimiser steps taken] as u32.
    state: GpuBuffer,
    losses: GpuBuffer,
    lr_table: GpuBuffer,
    scalars: GpuBuffer,
    beta1: f32,
    beta2: f32,
}

enum Side {
    /// `lr_table[i]`: iteration i's learning rate (0 past the end).
    Host { losses: Vec<f32>, first_bad: Option<usize>, lr_table: Vec<f32> },
    Device(Box<DeviceWatch>),
}

/// See the module docs.
pub struct LossWatch {
    side: Side,
    /// The 0-based iteration the next `record` is for.
    next_iter: usize,
    /// The first iteration not yet drained.
    drained_to: usize,
    capacity: usize,
}

/// What the optimiser step of this iteration uses.
pub enum StepSource<'a> {
    /// Host: this learning rate, or no update at all (`None`: a loss was not finite).
    Host(Option<f32>),
    /// Device: the step scalars the monitor wrote this step.
    Device(&'a GpuBuffer),
}

impl LossWatch {
    /// A watch on `device` for a run at iteration `start` with `opt_steps` optimiser steps taken
    /// (a resumed run continues both), keeping up to `capacity` losses between drains.
    /// `lr_table[i]` is iteration i's learning rate; `betas` Adam's (for its bias corrections).
    pub fn new(device: Device, lr_table: Vec<f32>, start: usize, opt_steps: u64, capacity: usize, betas: (f32, f32)) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::invalid("loss watch", "it must keep at least one loss between reads"));
        }
        let words = |what: &str, v: u64| {
            u32::try_from(v).map_err(|_| Error::invalid("loss watch", format!("{what} {v} beyond the device counter's u32")))
        };
        let side = match device {
            Device::Cpu => Side::Host { losses: Vec::with_capacity(capacity), first_bad: None, lr_table },
            Device::Cuda(n) => {
                let dev = CudaDevice::get(n)?;
                let state: [u32; MONITOR_STATE] = [words("iteration", start as u64)?, 0, words("optimiser step", opt_steps)?];
                let table = if lr_table.is_empty() { vec![0.0] } else { lr_table };
                let mut losses = dev.alloc(capacity)?;
                crate::backend::cuda::elementwise::fill(&dev, &mut losses, f32::NAN)?;
                Side::Device(Box::new(DeviceWatch {
                    state: dev.htod_words(&state)?,
                    losses,
                    lr_table: dev.htod(&table)?,
                    scalars: dev.alloc(STEP_SCALARS)?,
                    beta1: betas.0,
                    beta2: betas.1,
                    dev,
                }))
            }
        };
        Ok(LossWatch { side, next_iter: start, drained_to: start, capacity })
    }

    /// The 0-based iteration the next `record` is for.
    pub fn next_iter(&self) -> usize {
        self.next_iter
    }

    /// Losses recorded and not yet drained.
    pub fn pending(&self) -> usize {
        self.next_iter - self.drained_to
    }

    /// Whether the ring is full: the loop must drain before the next `record`.
    pub fn full(&self) -> bool {
        self.pending() >= self.capacity
    }

    /// Whether a non-finite loss is already known on the host (the CPU knows at once; a GPU's
    /// shows at the next drain).
    pub fn known_bad(&self) -> bool {
        matches!(&self.side, Side::Host { first_bad: Some(_), .. })
    }

    /// Records this step's loss (one element, on the watch's device) and prepares the step's
    /// optimiser scalars. Refused when the ring is full (drain first).
    pub fn record(&mut self, loss: &Tensor) -> Result<StepSource<'_>> {
        if self.full() {
            return Err(Error::invalid("loss watch", format!("{} losses wait to be read: drain before recording more", self.pending())));
        }
        if loss.numel() != 1 {
            return Err(Error::shape("loss watch", format!("the loss must be one value, got shape {}", loss.shape())));
        }
        let iter = self.next_iter;
        self.next_iter += 1;
        match &mut self.side {
            Side::Host { losses, first_bad, lr_table } => {
                let v = loss.to_scalar()?;
                losses.push(v);
                if !v.is_finite() && first_bad.is_none() {
                    *first_bad = Some(iter + 1);
                }
                let lr = lr_table.get(iter).copied().unwrap_or(0.0);
                Ok(StepSource::Host(first_bad.is_none().then_some(lr)))
            }
            Side::Device(w) => {
                let storage = loss.storage();
                let loss = storage.as_cuda("loss watch")?;
                let w = &mut **w;
                train_monitor(&w.dev, loss, &mut w.state, &mut w.losses, &w.lr_table, &mut w.scalars, w.beta1, w.beta2)?;
                Ok(StepSource::Device(&w.scalars))
            }
        }
    }

    /// A replay of a captured step ran this watch's launch: count its iteration (the device
    /// counts its own). Refused when the ring is full, as `record` is.
    pub fn replayed(&mut self) -> Result<()> {
        if self.full() {
            return Err(Error::invalid("loss watch", format!("{} losses wait to be read: drain before another step", self.pending())));
        }
        if matches!(self.side, Side::Host { .. }) {
            return Err(Error::invalid("loss watch", "a CPU step is never captured, so never replayed"));
        }
        self.next_iter += 1;
        Ok(())
    }

    /// Forgets the records since iteration `iter` (0-based) that never ran: a capture records its
    /// launch without running it, and a failed one is undone this way. Only a device watch can.
    pub fn rewind_to(&mut self, iter: usize) -> Result<()> {
        if iter < self.drained_to || iter > self.next_iter || matches!(self.side, Side::Host { .. }) {
            return Err(Error::invalid(
                "loss watch",
                format!("cannot rewind to iteration {iter} (drained to {}, next {})", self.drained_to, self.next_iter),
            ));
        }
        self.next_iter = iter;
        Ok(())
    }

    /// The losses recorded since the last drain, and the first non-finite iteration. On a GPU
    /// this is the one read (and wait) of the interval.
    pub fn drain(&mut self) -> Result<Drained> {
        let (first, n) = (self.drained_to, self.pending());
        self.drained_to = self.next_iter;
        let (losses, first_bad) = match &mut self.side {
            Side::Host { losses, first_bad, .. } => (std::mem::take(losses), *first_bad),
            Side::Device(w) => {
                let ring = w.dev.dtoh(&w.losses)?;
                let state: Vec<u32> = w.dev.dtoh_words(&w.state)?;
                if state[0] as usize != self.next_iter {
                    return Err(Error::invalid(
                        "loss watch",
                        format!("the device counted {} iterations, the host {}: a step's monitor launch is missing", state[0], self.next_iter),
                    ));
                }
                let losses = (first..first + n).map(|i| ring[i % self.capacity]).collect();
                (losses, (state[1] != 0).then_some(state[1] as usize))
            }
        };
        Ok(Drained { first_iter: first, losses, first_bad })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_host_watch_keeps_losses_in_order_and_the_first_bad_iteration() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let start = rng.random_range(0..50);
        let table: Vec<f32> = (0..200).map(|_| rng.random_range(1e-4..1e-2)).collect();
        let mut w = LossWatch::new(Device::Cpu, table.clone(), start, start as u64, 7, (0.9, 0.999)).unwrap();
        let mut all = Vec::new();
        let bad_at = start + 11; // 0-based iteration of the first NaN
        let mut it = start;
        for round in 0..3 {
            let mut got = Vec::new();
            while !w.full() {
                let v = if it == bad_at { f32::NAN } else { rng.random_range(0.1..2.0) };
                got.push(v);
                match w.record(&Tensor::scalar(v, Device::Cpu).unwrap()).unwrap() {
                    StepSource::Host(Some(lr)) => assert!(it < bad_at && lr == table[it], "iteration {it}: lr {lr}"),
                    StepSource::Host(None) => assert!(it >= bad_at, "iteration {it} skipped before the NaN"),
                    StepSource::Device(_) => unreachable!("a CPU watch"),
                }
                it += 1;
            }
            assert!(w.record(&Tensor::scalar(0.5, Device::Cpu).unwrap()).is_err(), "a full ring took a loss");
            let d = w.drain().unwrap();
            assert_eq!(d.first_iter, start + 7 * round);
            assert_eq!(d.losses.len(), 7);
            for (a, b) in d.losses.iter().zip(&got) {
                assert!(a == b || (a.is_nan() && b.is_nan()));
            }
            assert_eq!(d.first_bad, (round >= 1).then_some(bad_at + 1), "round {round}");
            all.extend(d.losses);
        }
        assert_eq!(all.len(), 21);
        assert!(w.known_bad());
    }
}
