//! `coseg train --profile` (or COSEG_PROFILE=1): per-op GPU time of the training steps.
//!
//! From step [`WARMUP_STEPS`]` + 1` of the session on (the first ones load modules, create the
//! cuBLAS handle and fill the allocator's cache), each step runs inside a
//! [`crate::backend::cuda::StepProfiler`]: every kernel launch and cuBLAS call is
//! timed with CUDA events, and the step's wall time is measured from an idle stream to an idle
//! stream (waiting for the next batch, validation and checkpoints are outside). At the end the
//! profile is written to `<out>/profile.csv` (per kernel) and `<out>/profile-parts.csv` (per
//! model part, forward and backward) and returned in the outcome, whose table the CLI prints. On
//! the CPU there is nothing to time per op: a notice says so, and training goes on.

use crate::backend::cuda::{CudaDevice, Profile, StepProfiler};
use crate::device::Device;
use crate::error::Result;
use std::path::Path;

/// Steps of a session trained before profiling starts.
pub const WARMUP_STEPS: usize = 2;

/// Whether COSEG_PROFILE=1 asks for the profile.
pub fn requested_by_env() -> bool {
    std::env::var("COSEG_PROFILE").is_ok_and(|v| v == "1")
}

/// The training loop's profiler: `begin` and `end` around every step; a no-op when off.
pub struct TrainProfiler {
    steps: Option<StepProfiler>,
    /// Steps of this session so far (profiled or warming up).
    seen: usize,
}

impl TrainProfiler {
    /// On when `on` and the run trains on a CUDA device; on the CPU, a notice and off.
    pub fn new(on: bool, device: Device) -> Result<TrainProfiler> {
        let steps = match (on, device) {
            (false, _) => None,
            (true, Device::Cpu) => {
                eprintln!("profile: per-op GPU timing needs a CUDA device; training on the CPU without it");
                None
            }
            (true, Device::Cuda(n)) => {
                eprintln!("profile: per-op GPU time from step {} of this session on (the first {WARMUP_STEPS} warm up)", WARMUP_STEPS + 1);
                Some(StepProfiler::new(CudaDevice::get(n)?)?)
            }
        };
        Ok(TrainProfiler { steps, seen: 0 })
    }

    /// Whether steps are timed per op (asked for, on a CUDA device).
    pub fn on(&self) -> bool {
        self.steps.is_some()
    }

    pub fn begin(&mut self) -> Result<()> {
        match &mut self.steps {
            Some(p) if self.seen >= WARMUP_STEPS => p.begin(),
            _ => Ok(()),
        }
    }

    pub fn end(&mut self) -> Result<()> {
        let warm = self.seen >= WARMUP_STEPS;
        self.seen += 1;
        match &mut self.steps {
            Some(p) if warm => p.end(),
            _ => Ok(()),
        }
    }

    /// The profile of the steps profiled, also written to `<out>/profile.csv` and
    /// `<out>/profile-parts.csv`; None when off or when the session was too short to profile a
    /// step.
    pub fn finish(self, out: &Path) -> Result<Option<Profile>> {
        let Some(p) = self.steps else { return Ok(None) };
        if p.steps() == 0 {
            eprintln!("profile: no step profiled ({} step(s) trained, the first {WARMUP_STEPS} warm up)", self.seen);
            return Ok(None);
        }
        let profile = p.finish()?;
        crate::io::write_atomic(&out.join("profile.csv"), profile.to_csv().as_bytes())?;
        crate::io::write_atomic(&out.join("profile-parts.csv"), profile.parts_to_csv().as_bytes())?;
        Ok(Some(profile))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_or_on_the_cpu_the_profiler_profiles_nothing_and_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("coseg-profile-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for on in [false, true] {
            let mut p = TrainProfiler::new(on, Device::Cpu).unwrap();
            for _ in 0..WARMUP_STEPS + 3 {
                p.begin().unwrap();
                p.end().unwrap();
            }
            assert_eq!(p.finish(&dir).unwrap(), None);
            assert!(!dir.join("profile.csv").exists() && !dir.join("profile-parts.csv").exists());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
