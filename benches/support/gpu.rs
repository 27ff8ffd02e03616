//! What the GPU benches share (included with `#[path]`; not a bench of its own).

use coseg::backend::cuda::CudaDevice;
use std::sync::Arc;

/// cuda:0, or None after telling stderr that `bench` is skipped for want of a GPU.
pub fn device_or_skip(bench: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::get(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            eprintln!("{bench}: skipped, no GPU ({e})");
            None
        }
    }
}

/// One configuration the step benches time: precision, tensor-core kernels, batch-norm
/// statistics from the convolutions' epilogue or not, convolution plans tuned by timing or the
/// model's, and the label the bench ids end in.
#[allow(dead_code)] // not every bench that includes this file times steps
pub struct StepConfig {
    pub precision: coseg::device::Precision,
    pub variant: coseg::device::TcVariant,
    pub fuse_bn_stats: bool,
    pub tuned: bool,
    pub label: String,
}

#[allow(dead_code)]
impl StepConfig {
    /// Sets the device up for this configuration (tuning on with no choices yet, or off).
    pub fn apply(&self, dev: &CudaDevice) {
        use coseg::backend::cuda::conv_tune::{self, TuneMode};
        dev.set_precision(self.precision);
        dev.set_tc_variant(self.variant);
        dev.set_fuse_bn_stats(self.fuse_bn_stats);
        conv_tune::set_mode(dev, if self.tuned { TuneMode::On } else { TuneMode::Off }).expect("no file to read");
    }

    /// After a tuned configuration's steps: the tuner's table (each convolution pass met, the
    /// model's plan and time against the chosen one's) on stderr.
    pub fn report_tuning(&self, dev: &CudaDevice) {
        use coseg::backend::cuda::conv_tune;
        let records = conv_tune::records(dev).expect("tuning state");
        if self.tuned && !records.is_empty() {
            eprint!("conv plans of {}:\n{}", self.label, conv_tune::table(&records));
        }
    }
}

/// What the step benches time: every precision on the default kernels (pipelined tensor-core
/// kernels with batch-norm statistics from their epilogue; ids end in the precision, as before),
/// tf32 and bf16 on the staged kernels (`_staged`), bf16 pipelined without the fusion
/// (`_unfused`), bf16 on the channels-last kernels with it (`_nhwc`), and bf16 with the plans
/// tuned by timing (`ops::conv::tune`) on the pipelined and the channels-last kernels
/// (`_tuned`, `_nhwc_tuned`).
#[allow(dead_code)]
pub fn step_configs() -> Vec<StepConfig> {
    use coseg::device::{Precision, TcVariant};
    let config = |precision: Precision, variant, fuse_bn_stats, suffix: &str| StepConfig { precision, variant, fuse_bn_stats, tuned: suffix.ends_with("_tuned"), label: format!("{precision}{suffix}") };
    let mut out: Vec<_> = Precision::ALL.into_iter().map(|p| config(p, TcVariant::default(), true, "")).collect();
    out.push(config(Precision::Tf32, TcVariant::Staged, false, "_staged"));
    out.push(config(Precision::Bf16, TcVariant::Staged, false, "_staged"));
    out.push(config(Precision::Bf16, TcVariant::Pipelined, false, "_unfused"));
    out.push(config(Precision::Bf16, TcVariant::Nhwc, true, "_nhwc"));
    out.push(config(Precision::Bf16, TcVariant::Pipelined, true, "_tuned"));
    out.push(config(Precision::Bf16, TcVariant::Nhwc, true, "_nhwc_tuned"));
    // (On a GPU other than sm_90 the device runs nhwc for these: the rows repeat those above.)
    out.push(config(Precision::Bf16, TcVariant::Wgmma, true, "_wgmma"));
    out.push(config(Precision::Bf16, TcVariant::Wgmma, true, "_wgmma_tuned"));
    out
}
