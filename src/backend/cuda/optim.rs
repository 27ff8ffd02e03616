//! Optimiser steps on the GPU: one launch updates every parameter of a model.
//!
//! [`ParamTable`] uploads the device addresses of each (param, grad, state...) group and a table
//! of chunks once; a step then costs one launch. The table is rebuilt only when the buffers
//! change (the check compares addresses on the host, so a stale table is never used).

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
    fn launch(&self, dev: &CudaDevice, kernel: k::Kernel, hyper: &[f32]) -> Result<()> {
        let mut args = vec![
            Arg::Ptr(slice_ptr(dev, &self.ptrs)),
            Arg::Ptr(slice_ptr(dev, &self.lens)),
            Arg::Ptr(slice_ptr(dev, &self.chunks)),
            Arg::I32(self.n_chunks as i32),
            Arg::I32(CHUNK as i32),
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
    /// `lr` is this step's (poly schedule computed by the caller); state1 is the momentum buffer,
    /// zero before the first step.
    pub fn sgd_step(&mut self, dev: &CudaDevice, slots: &mut [ParamSlot], lr: f32, momentum: f32, weight_decay: f32) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let t = self.table(dev, k::SGD_FWD.name, slots, false)?;
        t.launch(dev, k::SGD_FWD, &[lr, momentum, weight_decay])
    }

    /// PyTorch Adam (L2 weight decay); `step` counts from 1. state1/state2 = first/second moments.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &mut self,
        dev: &CudaDevice,
        slots: &mut [ParamSlot],
        step: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    ) -> Result<()> {
        if step == 0 {
            return Err(Error::invalid("adam_fwd_f32", "step counts from 1"));
        }
        if slots.is_empty() {
            return Ok(());
        }
        let t = self.table(dev, k::ADAM_FWD.name, slots, true)?;
        let bc1 = 1.0 - (beta1 as f64).powi(step as i32);
        let bc2 = 1.0 - (beta2 as f64).powi(step as i32);
        t.launch(dev, k::ADAM_FWD, &[lr, beta1, beta2, eps, weight_decay, bc1 as f32, bc2 as f32])
    }
}
