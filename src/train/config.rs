//! The TOML configuration of a training run (`coseg train --config FILE`, one file per experiment).
//!
//! ```toml
//! [experiment]            # optional: how the row is labelled in tables
//! name = "DRN-MG-101 + CSA + D2"
//! table = 2
//!
//! [data]
//! root = "data/deeplesion"         # DL_info.csv + Images_png/ (+ masks/ when true masks exist)
//! manifest = "data/manifest.json"  # `coseg split` output: clusters, splits, pairs
//! pseudo_masks = "data/pseudo"     # `coseg pseudo-masks` output: one PNG per File_name
//! crop_size = 128
//!
//! [model]                 # the network (crate::nn::ModelConfig)
//! depth = 101
//!
//! [train]
//! optimizer = "sgd"       # or "adam"
//! lr = 0.01
//! iterations = 24000
//! batch_pairs = 10
//! out = "runs/drn-mg-101-csa-d2"
//!
//! [eval]
//! crf = false
//! ```
//!
//! Every table refuses unknown keys, and any error (unknown key, wrong type, bad value) names
//! the section and key at fault. Relative paths are relative to the working directory.

use crate::crf::CrfParams;
use crate::error::{Error, Result};
use crate::nn::ModelConfig;
use crate::train::optim::{OptimizerKind, OptimizerParams};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub experiment: ExperimentInfo,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainParams,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentInfo {
    /// Row label in the experiment tables (default: the config file's stem).
    pub name: Option<String>,
    /// Which of the paper's tables (1, 2, 3) the row belongs to.
    pub table: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub root: PathBuf,
    pub manifest: PathBuf,
    pub pseudo_masks: PathBuf,
    /// True masks (0/255 PNG per File_name); default `<root>/masks` when it exists.
    #[serde(default)]
    pub true_masks: Option<PathBuf>,
    #[serde(default = "default_crop_size")]
    pub crop_size: usize,
    /// Context on each side of the RECIST box, as a fraction of its longer side.
    #[serde(default = "default_context")]
    pub context: f32,
    /// Smallest crop side in slice pixels (smaller lesions get more context than `context`).
    #[serde(default = "default_min_side_px")]
    pub min_side_px: f32,
    /// HU window [lo, hi] for every lesion; default: each row's DICOM window.
    #[serde(default)]
    pub window: Option<[f32; 2]>,
}

fn default_crop_size() -> usize {
    128
}
fn default_context() -> f32 {
    crate::data::CropParams::default().context
}
fn default_min_side_px() -> f32 {
    crate::data::CropParams::default().min_side_px
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr * (1 - iter/iterations)^poly_power`, every iteration.
    Poly,
    Constant,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub poly_power: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub iterations: usize,
    pub batch_pairs: usize,
    /// Validate every this many iterations (and after the last).
    pub val_every: usize,
    /// Read the losses back and log them every this many iterations (and before validation,
    /// checkpoints and the end). On a GPU the steps in between never wait for the host: each
    /// step's loss and a non-finite flag stay on the device until then. A non-finite loss still
    /// stops the run naming its iteration (the parameters stay those of the step before it).
    pub log_every: usize,
    /// On a GPU, capture the training step as a CUDA graph after two eager steps and replay it
    /// (one launch a step instead of about 1,300); if it cannot be captured, the run says why
    /// and goes on eagerly. Ignored on the CPU.
    pub cuda_graph: bool,
    /// On a GPU, time each tensor-core convolution's candidate plans (tiles, the weight
    /// gradient's splits) in the first step and run the fastest from then on, as PyTorch's
    /// `cudnn.benchmark`; the choices and every candidate's time go to `<out>/conv-tune.json`,
    /// which a resumed run reads back (`ops::conv::tune`). Ignored on the CPU and at fp32.
    pub conv_tune: bool,
    /// At most this many validation lesions (0 = all), for quick curves on big sets.
    pub val_max: usize,
    /// Write a checkpoint every this many iterations (and after the last).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub augment: Augment,
    /// "auto", "cpu", "cuda" or "cuda:N" (checked as the file is read).
    pub device: crate::device::DeviceRequest,
    /// The GPU convolutions' arithmetic: "fp32", "tf32" or "bf16" (default: bf16 on a GPU; the
    /// CPU always computes in fp32).
    pub precision: Option<crate::device::Precision>,
    /// Output folder: checkpoints/, log.jsonl, plots.
    pub out: PathBuf,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            lr_schedule: LrSchedule::Poly,
            poly_power: 0.9,
            momentum: 0.99,
            weight_decay: 5e-4,
            iterations: 24_000,
            batch_pairs: 10,
            val_every: 1000,
            log_every: 20,
            cuda_graph: true,
            conv_tune: false,
            val_max: 0,
            checkpoint_every: 1000,
            keep_checkpoints: 2,
            seed: 0,
            augment: Augment::default(),
            device: crate::device::DeviceRequest::Auto,
            precision: None,
            out: PathBuf::from("runs/train"),
        }
    }
}

/// Training-time augmentation, applied identically to a crop and its pseudo-mask.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random horizontal and vertical flips and transposition (the 8 symmetries of the square).
    pub flips: bool,
    /// Intensity jitter: each crop's windowed values become `a * x + b` with
    /// a in [1 - contrast, 1 + contrast] and b in [-brightness, brightness] (image only).
    pub contrast: f32,
    pub brightness: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { flips: true, contrast: 0.1, brightness: 0.05 }
    }
}

impl Augment {
    pub fn none() -> Self {
        Augment { flips: false, contrast: 0.0, brightness: 0.0 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Refine the network's lesion probability with the dense CRF before thresholding.
    pub crf: bool,
    pub crf_params: CrfParams,
    /// Test-time augmentation: average P(lesion) over the 8 symmetries of the square (the flips
    /// training draws from), each mapped back before averaging.
    pub tta: bool,
    /// Keep only the lesion the RECIST marks point at: the foreground connected to the marks,
    /// holes filled, exactly as GrabCut's pseudo-masks are finished (`pseudo::keep_marked_lesion`).
    pub marked_lesion: bool,
    /// P(lesion) above which a pixel is lesion (choose it on the validation split against the
    /// pseudo-masks, never on test).
    pub threshold: f32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { crf: false, crf_params: CrfParams::default(), tta: true, marked_lesion: true, threshold: 0.5 }
    }
}

/// A config file read once: the checked config and the text it was parsed from. Training keeps
/// the text as it is (every checkpoint stores it, so `coseg eval` rebuilds the model from it and
/// a resume can tell the same run from another).
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: TrainConfig,
    pub text: String,
}

impl TrainConfig {
    /// Reads a config file once and checks it; errors name the file, section and key.
    pub fn load(path: &Path) -> Result<LoadedConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config = Self::parse(&text, &path.display().to_string())?;
        Ok(LoadedConfig { config, text })
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<TrainConfig> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| Error::Config(describe_toml_error(text, origin, &e)))?;
        cfg.validate().map_err(|m| Error::Config(format!("{origin}: {m}")))?;
        Ok(cfg)
    }

    /// The optimiser hyper-parameters of `[train]`.
    pub fn optimizer_params(&self) -> OptimizerParams {
        let base = match self.train.optimizer {
            OptimizerKind::Sgd => OptimizerParams::paper_sgd(),
            OptimizerKind::Adam => OptimizerParams::paper_adam(),
        };
        OptimizerParams { momentum: self.train.momentum, weight_decay: self.train.weight_decay, ..base }
    }

    /// The learning rate for iteration `iter` (0-based).
    /// Every iteration's learning rate, in order (the table the GPU's step reads).
    pub fn lr_table(&self) -> Vec<f32> {
        (0..self.train.iterations).map(|i| self.lr_at(i)).collect()
    }

    pub fn lr_at(&self, iter: usize) -> f32 {
        let t = &self.train;
        match t.lr_schedule {
            LrSchedule::Poly => crate::train::optim::poly_lr(t.lr, iter, t.iterations, t.poly_power),
            LrSchedule::Constant => t.lr,
        }
    }

    pub fn crop_params(&self) -> crate::data::CropParams {
        crate::data::CropParams {
            size: self.data.crop_size,
            context: self.data.context,
            min_side_px: self.data.min_side_px,
            window: self.data.window,
        }
    }

    /// The true-mask folder: the configured one, else `<root>/masks` if it exists.
    pub fn true_masks_dir(&self) -> Option<PathBuf> {
        match &self.data.true_masks {
            Some(p) => Some(p.clone()),
            None => Some(self.data.root.join("masks")).filter(|p| p.is_dir()),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        let positive = [
            ("[data] crop_size", self.data.crop_size),
            ("[train] iterations", t.iterations),
            ("[train] batch_pairs", t.batch_pairs),
            ("[train] val_every", t.val_every),
            ("[train] log_every", t.log_every),
            ("[train] checkpoint_every", t.checkpoint_every),
            ("[train] keep_checkpoints", t.keep_checkpoints),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if !(self.eval.threshold > 0.0 && self.eval.threshold < 1.0) {
            return Err(format!("[eval] threshold = {} must lie strictly between 0 and 1", self.eval.threshold));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(format!("[train] lr = {} must be a positive number", t.lr));
        }
        if !(t.momentum >= 0.0 && t.momentum < 1.0) {
            return Err(format!("[train] momentum = {} must be in [0, 1)", t.momentum));
        }
        if !(t.weight_decay >= 0.0) {
            return Err(format!("[train] weight_decay = {} must be >= 0", t.weight_decay));
        }
        if !(t.poly_power > 0.0) {
            return Err(format!("[train] poly_power = {} must be > 0", t.poly_power));
        }
        let a = &t.augment;
        if !(0.0..1.0).contains(&a.contrast) || !(0.0..1.0).contains(&a.brightness) {
            return Err(format!("[train.augment] contrast {} and brightness {} must be in [0, 1)", a.contrast, a.brightness));
        }
        if !(self.data.context >= 0.0) {
            return Err(format!("[data] context = {} must be >= 0", self.data.context));
        }
        crate::train::limits::check_sizes(self)?;
        if let Some(w) = self.data.window {
            crate::data::recist::check_window(w).map_err(|why| format!("[data] window: {why}"))?;
        }
        Ok(())
    }
}

/// toml's message plus the `[section] key` its span points at, so the key is named even when
/// the message is only "invalid type: ...".
fn describe_toml_error(text: &str, origin: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    let Some(span) = e.span() else { return format!("{origin}: {msg}") };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.to_string());
    // A span on a table header points at that table, not at a key of the section before it:
    // an unknown section is reported under its own name, a missing key under its table.
    let header = Some(line.trim()).filter(|l| l.starts_with('[')).map(|l| l.split('#').next().unwrap_or(l).trim().to_string());
    if let Some(h) = &header {
        if msg.starts_with("unknown field") {
            return format!("{origin}, line {line_no}: unknown section {h}: {msg}");
        }
        return format!("{origin}, line {line_no}: {h}: {msg}");
    }
    if msg.starts_with("missing field") {
        // The span covers the table that lacks the key; its first line is a key of that table.
        let at = section.unwrap_or_else(|| "top level".into());
        return format!("{origin}, line {line_no}: {at}: {msg}");
    }
    let key = line.split_once('=').map(|(k, _)| k.trim().to_string()).filter(|k| !k.is_empty() && !k.starts_with('['));
    let at = match (section, key) {
        (Some(s), Some(k)) => format!("{s} {k}"),
        (None, Some(k)) => k,
        (Some(s), None) => s,
        (None, None) => String::new(),
    };
    format!("{origin}, line {line_no}: {at}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[data]\nroot = \"d\"\nmanifest = \"m.json\"\npseudo_masks = \"p\"\n";

    #[test]
    fn defaults_are_the_papers() {
        let c = TrainConfig::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.train.optimizer, OptimizerKind::Sgd);
        assert_eq!((c.train.lr, c.train.momentum, c.train.weight_decay, c.train.poly_power), (0.01, 0.99, 5e-4, 0.9));
        assert_eq!((c.train.iterations, c.train.batch_pairs, c.data.crop_size), (24_000, 10, 128));
        assert!((c.lr_at(12_000) - 0.01 * 0.5f32.powf(0.9)).abs() < 1e-8);
        let adam = TrainConfig::parse(&format!("{MINIMAL}[train]\noptimizer = \"adam\"\nlr = 1e-5\nlr_schedule = \"constant\"\n"), "t").unwrap();
        assert_eq!(adam.optimizer_params().kind, OptimizerKind::Adam);
        assert_eq!(adam.lr_at(20_000), 1e-5);
    }

    #[test]
    fn conv_tune_is_a_train_switch_off_by_default() {
        assert!(!TrainConfig::parse(MINIMAL, "t").unwrap().train.conv_tune);
        assert!(TrainConfig::parse(&format!("{MINIMAL}[train]\nconv_tune = true\n"), "t").unwrap().train.conv_tune);
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nconv_tune = \"fast\"\n"), "c.toml").unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("conv_tune"), "{e}");
    }

    #[test]
    fn precision_is_a_train_key_with_three_values() {
        use crate::device::Precision;
        assert_eq!(TrainConfig::parse(MINIMAL, "t").unwrap().train.precision, None);
        for p in Precision::ALL {
            let c = TrainConfig::parse(&format!("{MINIMAL}[train]\nprecision = \"{p}\"\n"), "t").unwrap();
            assert_eq!(c.train.precision, Some(p));
        }
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nprecision = \"fp16\"\n"), "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("precision") && e.contains("fp16"), "{e}");
        // The CPU has only f32 arithmetic, whatever was asked for.
        assert_eq!(crate::device::use_precision(crate::Device::Cpu, Some(Precision::Bf16)).unwrap(), Precision::Fp32);
        assert_eq!("tf32".parse::<Precision>().unwrap(), Precision::Tf32);
        let e = "half".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("half") && e.contains("fp32, tf32, bf16"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nlearning_rate = 0.1\n"), "a.toml").unwrap_err().to_string();
        assert!(e.contains("a.toml") && e.contains("learning_rate") && e.contains("[train]"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\niterations = \"many\"\n"), "b.toml").unwrap_err().to_string();
        assert!(e.contains("[train] iterations") && e.contains("line 6"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[train.augment]\nflips = 1\n"), "c.toml").unwrap_err().to_string();
        assert!(e.contains("[train.augment] flips"), "{e}");
        let e = TrainConfig::parse("[data]\nroot = \"d\"\n", "d.toml").unwrap_err().to_string();
        assert!(e.contains("manifest"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nbatch_pairs = 0\n"), "e.toml").unwrap_err().to_string();
        assert!(e.contains("batch_pairs"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\ndevice = \"tpu\"\n"), "f.toml").unwrap_err().to_string();
        assert!(e.contains("device") && e.contains("tpu"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[eval.crf_params]\nsxy = 3\n"), "g.toml").unwrap_err().to_string();
        assert!(e.contains("sxy"), "{e}");
    }

    #[test]
    fn unknown_sections_and_missing_keys_are_named_under_their_own_section() {
        let e = TrainConfig::parse(&format!("{MINIMAL}[train]\nlr = 0.1\n\n[trian]\niterations = 5\n"), "s.toml").unwrap_err().to_string();
        eprintln!("{e}");
        assert!(e.contains("[trian]") && e.contains("unknown section") && !e.contains("[train]:"), "{e}");
        let e = TrainConfig::parse("[train]\nlr = 0.1\n\n[data]\nmanifest = \"m.json\"\npseudo_masks = \"p\"\n\n[eval]\ncrf = true\n", "r.toml").unwrap_err().to_string();
        eprintln!("{e}");
        assert!(e.contains("[data]") && e.contains("root") && !e.contains("[eval]") && !e.contains("[train]"), "{e}");
        let e = TrainConfig::parse("[model]\ndepth = 18\n[data]\nroot = \"d\"\nmanifest = \"m\"\n", "q.toml").unwrap_err().to_string();
        eprintln!("{e}");
        assert!(e.contains("[data]") && e.contains("pseudo_masks") && !e.contains("[model]"), "{e}");
        let e = TrainConfig::parse(&format!("{MINIMAL}[data.extra]\nx = 1\n"), "t.toml").unwrap_err().to_string();
        eprintln!("{e}");
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn sizes_are_refused_before_anything_is_allocated() {
        for (key, table, value) in [("crop_size", "data", "1000000000"), ("batch_pairs", "train", "100000000000"), ("width", "model", "1e9")] {
            let text = if table == "data" { format!("{MINIMAL}{key} = {value}\n") } else { format!("{MINIMAL}[{table}]\n{key} = {value}\n") };
            let e = TrainConfig::parse(&text, "big.toml").unwrap_err().to_string();
            assert!(e.contains("big.toml") && e.contains(&format!("[{table}] {key}")), "{e}");
        }
        let e = TrainConfig::parse(&format!("{MINIMAL}window = [400.0, -100.0]\n"), "w.toml").unwrap_err().to_string();
        assert!(e.contains("[data] window") && e.contains("reversed"), "{e}");
    }
}
