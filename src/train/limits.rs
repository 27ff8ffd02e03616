//! Limits checked before a run allocates: sizes from the config within what the code supports,
//! and an estimate of the memory the run needs compared with what the machine has. A failed
//! allocation aborts the process (Rust's allocator does not return an error), so an absurd
//! `crop_size` or `width` must be refused here, with the key at fault, before anything is built.
//!
//! The estimate is deliberately simple and errs low: the loaded crops, the parameters with their
//! gradients and optimiser state (at most 4 copies), and the encoder's activations kept for the
//! backward pass (3 tensors per convolution: its output, batch norm's and ReLU's), plus a quarter
//! for the attention and decoder. A run refused by it would certainly not have fit.

use crate::error::{Error, Result};
use crate::nn::ModelConfig;
use crate::train::config::TrainConfig;

/// The largest crop side the config accepts (DeepLesion slices are 512 px; the paper crops 128).
pub use crate::data::crop::MAX_CROP_SIZE;
/// The largest channel multiplier (torchvision's widest ResNets use 2).
pub const MAX_WIDTH: f32 = 16.0;
/// The most pairs in one batch.
pub const MAX_BATCH_PAIRS: usize = 65_536;

/// Checks the sizes of a config against the hard limits; the error names the key.
pub fn check_sizes(cfg: &TrainConfig) -> std::result::Result<(), String> {
    if cfg.data.crop_size > MAX_CROP_SIZE {
        return Err(format!("[data] crop_size = {} exceeds {MAX_CROP_SIZE}", cfg.data.crop_size));
    }
    if cfg.data.crop_size < 8 {
        return Err(format!("[data] crop_size = {} is below 8 (the encoder downsamples by 8)", cfg.data.crop_size));
    }
    if cfg.train.batch_pairs > MAX_BATCH_PAIRS {
        return Err(format!("[train] batch_pairs = {} exceeds {MAX_BATCH_PAIRS}", cfg.train.batch_pairs));
    }
    let m = &cfg.model;
    if !(m.width > 0.0 && m.width <= MAX_WIDTH) {
        return Err(format!("[model] width = {} must be in (0, {MAX_WIDTH}]", m.width));
    }
    if m.in_channels > 64 || m.classes > 1024 {
        return Err(format!("[model] in_channels = {} (at most 64) or classes = {} (at most 1024) is too large", m.in_channels, m.classes));
    }
    Ok(())
}

/// Bytes a run is estimated to need, by part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub data: f64,
    pub parameters: f64,
    pub activations: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.data + self.parameters + self.activations
    }
}

/// Encoder parameters and activation floats per input pixel per image, from the ResNet layout.
fn encoder_counts(m: &ModelConfig) -> Result<(f64, f64)> {
    use crate::nn::layers::scaled;
    let (blocks, bottleneck) = m.resnet().layout()?;
    let w = m.width;
    let stem = scaled(64, w) as f64;
    let mut params = 49.0 * m.in_channels as f64 * stem;
    // Stem: conv, bn, relu at 1/2, max-pool at 1/4.
    let mut acts = 3.0 * stem / 4.0 + stem / 16.0;
    let mut cin = stem;
    for (i, &n) in blocks.iter().enumerate() {
        let planes = scaled(64 << i, w) as f64;
        let out = if bottleneck { 4.0 * planes } else { planes };
        // Spatial scale of the stage: 1/4, 1/8, then 1/8 or 1/16 by the output stride.
        let scale = match i {
            0 => 4.0,
            1 => 8.0,
            _ => m.output_stride.max(8) as f64,
        };
        for b in 0..n {
            let c_in = if b == 0 { cin } else { out };
            let (p, per_pixel) = if bottleneck {
                (c_in * planes + 9.0 * planes * planes + planes * out, 3.0 * (2.0 * planes + out))
            } else {
                (9.0 * c_in * planes + 9.0 * planes * planes, 3.0 * 2.0 * planes)
            };
            let shortcut = if b == 0 && c_in != out { c_in * out } else { 0.0 };
            params += p + shortcut;
            acts += per_pixel / (scale * scale);
        }
        cin = out;
    }
    Ok((params, acts))
}

/// The memory a training run of `cfg` over `lesions` loaded lesions needs.
pub fn estimate(cfg: &TrainConfig, lesions: usize) -> Result<MemoryEstimate> {
    let s2 = (cfg.data.crop_size as f64).powi(2);
    // Per lesion: 3 float channels, the pseudo-mask and the true mask (bytes).
    let data = lesions as f64 * s2 * (3.0 * 4.0 + 2.0);
    let (params, acts) = encoder_counts(&cfg.model)?;
    let head = 1.25;
    let images = 2.0 * cfg.train.batch_pairs as f64;
    Ok(MemoryEstimate {
        data,
        // Weights, gradients and up to two optimiser moments.
        parameters: 4.0 * 4.0 * params * head,
        activations: 4.0 * images * s2 * (acts * head + 3.0),
    })
}

/// Bytes the machine can give a run on `device`: the host's available memory (Linux
/// /proc/meminfo MemAvailable) for the CPU, the card's free memory for a GPU; None when unknown.
pub fn available(device: crate::device::Device) -> Option<f64> {
    match device {
        crate::device::Device::Cpu => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024.0)
        }
        crate::device::Device::Cuda(n) => {
            let dev = crate::backend::cuda::CudaDevice::get(n).ok()?;
            let (free, _) = dev.mem_info().ok()?;
            Some((free + dev.memory_stats().cached_bytes) as f64)
        }
    }
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// Refuses a run whose estimate exceeds what `device` has; `origin` names the config. The
/// crops always live in host memory; parameters and activations where the run computes.
pub fn check_memory(cfg: &TrainConfig, lesions: usize, device: crate::device::Device, origin: &str) -> Result<MemoryEstimate> {
    let e = estimate(cfg, lesions)?;
    let describe = || {
        format!(
            "{lesions} lesions of {s}x{s} crops ({}), a {} x{} model with batch_pairs = {} (parameters and optimiser state {}, activations {})",
            gib(e.data),
            cfg.model.depth,
            cfg.model.width,
            cfg.train.batch_pairs,
            gib(e.parameters),
            gib(e.activations),
            s = cfg.data.crop_size
        )
    };
    let on_device = e.parameters + e.activations;
    let host_need = if device == crate::device::Device::Cpu { e.total() } else { e.data };
    if let Some(have) = available(crate::device::Device::Cpu).filter(|have| host_need > *have) {
        return Err(Error::Config(format!(
            "{origin}: the run needs about {} of memory and this machine has {} available: {}; lower [data] crop_size, [train] batch_pairs or [model] width",
            gib(host_need),
            gib(have),
            describe()
        )));
    }
    if let crate::device::Device::Cuda(n) = device {
        if let Some(have) = available(device).filter(|have| on_device > *have) {
            return Err(Error::Config(format!(
                "{origin}: the run needs about {} on cuda:{n} and the card has {} free: {}; lower [data] crop_size, [train] batch_pairs or [model] width",
                gib(on_device),
                gib(have),
                describe()
            )));
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::ParamStore;
    use crate::device::Device;
    use crate::nn::CosegNet;

    const MINIMAL: &str = "[data]\nroot = \"d\"\nmanifest = \"m.json\"\npseudo_masks = \"p\"\n";

    #[test]
    fn the_estimate_follows_the_real_model_and_refuses_what_cannot_fit() {
        // torchvision's ResNet-101 trunk (no fc) has 42.5 M parameters; ResNet-18's 11.2 M.
        for (depth, want) in [(101, 42.5e6), (18, 11.2e6)] {
            let m = ModelConfig { depth, ..ModelConfig::default() };
            let (p, _) = encoder_counts(&m).unwrap();
            assert!((p / want - 1.0).abs() < 0.03, "ResNet-{depth}: {p} vs {want}");
        }
        // Against the built network (attention and decoder included) at small widths.
        for (depth, width) in [(18, 0.125), (18, 0.25), (50, 0.125), (34, 0.25)] {
            let cfg = TrainConfig::parse(&format!("{MINIMAL}[model]\ndepth = {depth}\nwidth = {width}\n"), "t").unwrap();
            let mut store = ParamStore::new(Device::Cpu, 0);
            CosegNet::new(&cfg.model, &mut store).unwrap();
            let real = store.num_trainable() as f64;
            let est = estimate(&cfg, 0).unwrap().parameters / 16.0;
            assert!(est / real > 0.6 && est / real < 1.6, "depth {depth} width {width}: estimate {est} vs {real}");
        }
        // The paper's run fits a workstation; a 4096-px crop with 60 000 pairs a batch fits nothing.
        let paper = TrainConfig::parse(MINIMAL, "paper.toml").unwrap();
        let e = estimate(&paper, 26_000).unwrap();
        assert!(e.total() > 1e9 && e.total() < 64e9, "{e:?}");
        let huge = TrainConfig::parse(&format!("{MINIMAL}crop_size = 4096\n[train]\nbatch_pairs = 60000\n"), "huge.toml").unwrap();
        let err = check_memory(&huge, 100, Device::Cpu, "huge.toml").unwrap_err().to_string();
        assert!(err.contains("huge.toml") && err.contains("needs about") && err.contains("batch_pairs = 60000"), "{err}");
    }
}
