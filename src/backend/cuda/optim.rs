//! Optimiser steps on the GPU: one launch updates every parameter of a model.
//!
//! [`ParamTable`] uploads the device addresses of each (param, grad, state...) group and a table
//! of chunks once; a step then costs one launch. The table is rebuilt only when the buffers
//! change (the check compares addresses on the host, so a stale table is never used).
//!
//! A step's learning rate comes from the host ([`StepHyper::Host`], a kernel argument) or from
//! device memory written by [`train_monitor`] ([`StepHyper::Device`]): the training loop's form,
//! which reads nothing from the host per step and skips the update after a non-finite loss.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::error::CudaError;
use super::kernels as k;
use super::launch::{Arg, Chunk, THREADS, launch};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};

/// Elements per block of the optimiser kernels.
const CHUNK: usize = 16384;

/// One parameter and its buffers. `state2` is Adam's second moment (unused by SGD).
pub struct ParamSlot<'a> {
    pub param: &'a mut GpuBuffer,
    pub grad: &'a GpuBuffer,
    pub state1: &'a mut GpuBuffer,
    pub state2: Option<&'a mut GpuBuffer>,
}

/// Where a step's learning rate and Adam's bias corrections come from.
#[derive(Clone, Copy, Debug)]
pub enum StepHyper<'a> {
    /// Given by the host: this step's learning rate and (Adam) 1-based step count.
    Host { lr: f32, step: u32 },
    /// The step scalars ([`STEP_SCALARS`], optim.cu `struct StepScalars`) in device memory,
    /// written by [`train_monitor`] this step.
    Device(&'a GpuBuffer),
}

/// The layout of the step scalars [`train_monitor`] writes (optim.cu `struct StepScalars`): the
/// learning rate, Adam's bias corrections `1 - beta^t`, and `skip` (1.0 after a non-finite loss).
pub const STEP_SCALARS: usize = 4;
/// Words of the monitor's state (optim.cu `train_monitor_f32`): iteration, first non-finite
/// iteration (1-based, 0 = none), optimiser steps taken.
pub const MONITOR_STATE: usize = 3;

/// The training step's watch (optim.cu `train_monitor_f32`, one thread): keeps `loss` in
/// `losses[iteration % capacity]`, records the first non-finite iteration, writes the step
/// scalars (lr from `lr_table`, Adam's bias corrections, skip) and counts the iteration.
#[allow(clippy::too_many_arguments)]
pub fn train_monitor(
    dev: &CudaDevice,
    loss: &GpuBuffer,
    state: &mut GpuBuffer,
    losses: &mut GpuBuffer,
    lr_table: &GpuBuffer,
    scalars: &mut GpuBuffer,
    beta1: f32,
    beta2: f32,
) -> Result<()> {
    let op = k::TRAIN_MONITOR.name;
    if loss.len() != 1 || state.len() != MONITOR_STATE || scalars.len() != STEP_SCALARS || losses.is_empty() {
        return Err(Error::shape(
            op,
            format!(
                "loss {} (needs 1), state {} (needs {MONITOR_STATE}), scalars {} (needs {STEP_SCALARS}), losses {} (needs 1 or more)",
                loss.len(),
                state.len(),
                scalars.len(),
                losses.len()
            ),
        ));
    }
    for b in [loss, &*state, &*losses, lr_table, &*scalars] {
        dev.check_buffer(op, b)?;
    }
    let args = [
        Arg::Ptr(loss.ptr()),
        Arg::Ptr(state.ptr_mut()),
        Arg::Ptr(losses.ptr_mut()),
        Arg::I32(super::launch::to_i32(op, "loss capacity", losses.len())?),
        Arg::Ptr(lr_table.ptr()),
        Arg::I32(super::launch::to_i32(op, "schedule length", lr_table.len())?),
        Arg::Ptr(scalars.ptr_mut()),
        Arg::F32(beta1),
        Arg::F32(beta2),
    ];
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    launch(dev, k::TRAIN_MONITOR, one, &args)
}

/// The device-side table of a parameter set.
pub struct ParamTable {
    key: Vec<u64>,
    ptrs: CudaSlice<u64>,
    lens: CudaSlice<i64>,
    chunks: CudaSlice<Chunk>,
    n_chunks: usize,
}

fn slice_ptr<T>(dev: &CudaDevice, s: &CudaSlice<T>) -> u64 {
    s.device_ptr(dev.stream()).0
}

impl ParamTable {
    fn key_of(slots: &[ParamSlot]) -> Vec<u64> {
        slots
            .iter()
            .flat_map(|s| [s.param.ptr(), s.grad.ptr(), s.state1.ptr(), s.state2.as_ref().map_or(0, |b| b.ptr()), s.param.len() as u64])
            .collect()
    }

    fn build(dev: &CudaDevice, op: &'static str, slots: &[ParamSlot], need_state2: bool) -> Result<Self> {
        let mut ptrs = Vec::with_capacity(4 * slots.len());
        let mut lens = Vec::with_capacity(slots.len());
        let mut chunks = Vec::new();
        for (t, s) in slots.iter().enumerate() {
            let n = s.param.len();
            let state2_len = s.state2.as_ref().map(|b| b.len());
            if s.grad.len() != n || s.state1.len() != n || (need_state2 && state2_len != Some(n)) {
                return Err(Error::shape(
                    op,
                    format!(
                        "parameter {t}: param has {n} elements, grad {}, state {}, second state {state2_len:?}",
                        s.grad.len(),
                        s.state1.len()
                    ),
                ));
            }
            for b in [&*s.param, s.grad, &*s.state1] {
                dev.check_buffer(op, b)?;
            }
            ptrs.extend([s.param.ptr(), s.grad.ptr(), s.state1.ptr(), s.state2.as_ref().map_or(0, |b| b.ptr())]);
            lens.push(n as i64);
            chunks.extend((0..n).step_by(CHUNK).map(|start| Chunk { tensor: t as i32, _pad: 0, start: start as i64 }));
        }
        let err = |e| CudaError::driver(dev.ordinal(), format!("uploading the {op} parameter table"), e);
        // Copies from pageable memory: the driver waits for the stream first.
        dev.count_host_wait();
        Ok(ParamTable {
            key: Self::key_of(slots),
            ptrs: dev.stream().clone_htod(&ptrs).map_err(err)?,
            lens: dev.stream().clone_htod(&lens).map_err(err)?,
            n_chunks: chunks.len(),
            chunks: dev.stream().clone_htod(&chunks).map_err(err)?,
        })
    }

    /// Launches `kernel` over the table's chunks: the table's own arguments first, then the
    /// optimiser's hyperparameters.
    fn launch(&self, dev: &CudaDevice, kernel: k::Kernel, scalars: Option<&GpuBuffer>, hyper: &[f32]) -> Result<()> {
        if let Some(s) = scalars {
            dev.check_buffer(kernel.name, s)?;
            if s.len() != STEP_SCALARS {
                return Err(Error::shape(kernel.name, format!("step scalars have {} values, not {STEP_SCALARS}", s.len())));
            }
        }
        let mut args = vec![
            Arg::Ptr(slice_ptr(dev, &self.ptrs)),
            Arg::Ptr(slice_ptr(dev, &self.lens)),
            Arg::Ptr(slice_ptr(dev, &self.chunks)),
            Arg::I32(self.n_chunks as i32),
            Arg::I32(CHUNK as i32),
            Arg::Ptr(scalars.map_or(0, GpuBuffer::ptr)),
        ];
        args.extend(hyper.iter().map(|&v| Arg::F32(v)));
        launch(dev, kernel, self.launch_cfg(dev), &args)
    }

    fn launch_cfg(&self, dev: &CudaDevice) -> LaunchConfig {
        let blocks = self.n_chunks.clamp(1, dev.sm_count() as usize * 32);
        LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }
}

/// Keeps the table of the last parameter set it stepped.
#[derive(Default)]
pub struct GpuOptimizer {
    table: Option<ParamTable>,
}

impl GpuOptimizer {
    fn table(&mut self, dev: &CudaDevice, op: &'static str, slots: &[ParamSlot], need_state2: bool) -> Result<&ParamTable> {
        let key = ParamTable::key_of(slots);
        if self.table.as_ref().is_none_or(|t| t.key != key) {
            self.table = Some(ParamTable::build(dev, op, slots, need_state2)?);
        }
        Ok(self.table.as_ref().expect("set above"))
    }

    /// PyTorch SGD: buf = momentum * buf + (grad + weight_decay * param); param -= lr * buf.
    /// The learning rate comes from `hyper` (the poly schedule's value for this step); state1 is
    /// the momentum buffer, zero before the first step.
    pub fn sgd_step(&mut self, dev: &CudaDevice, slots: &mut [ParamSlot], hyper: StepHyper, momentum: f32, weight_decay: f32) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let t = self.table(dev, k::SGD_FWD.name, slots, false)?;
        let (scalars, lr) = match hyper {
            StepHyper::Host { lr, .. } => (None, lr),
            StepHyper::Device(s) => (Some(s), 0.0),
        };
        t.launch(dev, k::SGD_FWD, scalars, &[lr, momentum, weight_decay])
    }

    /// PyTorch Adam (L2 weight decay); a host step counts from 1. state1/state2 = first/second moments.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &mut self,
        dev: &CudaDevice,
        slots: &mut [ParamSlot],
        hyper: StepHyper,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    ) -> Result<()> {
        let (scalars, lr, bc1, bc2) = match hyper {
            StepHyper::Host { step: 0, .. } => return Err(Error::invalid("adam_fwd_f32", "step counts from 1")),
            StepHyper::Host { lr, step } => {
                (None, lr, 1.0 - (beta1 as f64).powi(step as i32), 1.0 - (beta2 as f64).powi(step as i32))
            }
            StepHyper::Device(s) => (Some(s), 0.0, 1.0, 1.0),
        };
        if slots.is_empty() {
            return Ok(());
        }
        let t = self.table(dev, k::ADAM_FWD.name, slots, true)?;
        t.launch(dev, k::ADAM_FWD, scalars, &[lr, beta1, beta2, eps, weight_decay, bc1 as f32, bc2 as f32])
    }
}
