//! The training loop: batches of pairs from the training split, pixel-wise 2-class
//! cross-entropy against the pseudo-masks for both images of each pair (the mean of the two),
//! an optimiser step at the scheduled learning rate, validation every `val_every` iterations,
//! checkpoints every `checkpoint_every`, a JSONL log, PNG curves and a progress bar.
//!
//! Determinism and resume: iteration `i` draws its pairs and augmentation from a generator
//! seeded by (seed, i), so a run resumed from a checkpoint after iteration `i` (parameters,
//! batch-norm statistics and optimiser state restored) continues exactly as if never stopped.
//! A non-finite loss, or one that diverges ([`DivergenceGuard`]: far above its recent history, or
//! above its starting value after warm-up), stops training before the optimiser step, naming
//! the iteration and the last good checkpoint.

use crate::autograd::ParamStore;
use crate::data::split::{Manifest, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::MetricsSummary;
use crate::nn::CosegNet;
use crate::tensor::Tensor;
use crate::train::checkpoint::{self, CheckpointMeta, CheckpointPaths};
use crate::train::config::TrainConfig;
use crate::train::dataset::{self, DataSource, SplitSet};
use crate::train::infer::{crop_metrics, predict};
use crate::train::log::{LogEntry, RunLog};
use crate::train::optim::Optimizer;
use crate::train::plot::{PALETTE, Series, write_line_plot};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where training starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// From the newest checkpoint in `<out>/checkpoints` when there is one (its config must be
    /// the same), else from scratch.
    Auto,
    /// From scratch; existing checkpoints in the output folder are removed.
    Fresh,
    /// From this checkpoint (.safetensors).
    From(PathBuf),
}

/// What a finished run leaves.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub out: PathBuf,
    pub checkpoint: CheckpointPaths,
    pub iterations: usize,
    /// The iteration training (re)started at.
    pub started_at: usize,
    /// Mean wall time of a training step (forward, backward, optimiser) in this session.
    pub mean_step_ms: f64,
    /// The last validation, against pseudo-masks and (when available) true masks, crop space.
    pub val_pseudo: Option<MetricsSummary>,
    pub val_true: Option<MetricsSummary>,
    /// Checkpoints auto-resume passed over (truncated or damaged), each with why.
    pub unusable_checkpoints: Vec<(PathBuf, String)>,
}

/// Losses of the iterations a spike is measured against.
pub const DIVERGENCE_WINDOW: usize = 50;
/// A loss this many times the median of the recent window (and above the starting loss) is a
/// divergence: a healthy step never multiplies the loss by ten; Adam at lr 1e6 multiplies it by 1e12.
pub const DIVERGENCE_SPIKE: f64 = 10.0;
/// Iterations after which the loss must have come down: from then on a recent median above
/// [`DIVERGENCE_ABOVE_START`] times the starting loss is a divergence.
pub const DIVERGENCE_WARMUP: usize = 50;
/// The median (not one batch) must exceed the start by this much, so a run that merely stalls
/// near its starting loss is not stopped for batch noise.
pub const DIVERGENCE_ABOVE_START: f64 = 1.5;

/// Watches the training loss for divergence beside the NaN check: a loss far above its recent
/// history, or, after warm-up, a recent history above the starting loss.
#[derive(Clone, Debug, Default)]
pub struct DivergenceGuard {
    /// The losses of the first [`DIVERGENCE_WINDOW`] iterations; their median is the starting
    /// loss (one batch alone is too noisy a reference).
    first: Vec<f64>,
    recent: std::collections::VecDeque<f64>,
    /// Iterations seen (including those before a resume).
    seen: usize,
}

impl DivergenceGuard {
    /// A guard that has seen `losses` (iterations 1.. in order), as a resumed run's log holds them.
    pub fn with_history(losses: impl IntoIterator<Item = f64>) -> Self {
        let mut g = DivergenceGuard::default();
        for l in losses {
            g.push(l);
        }
        g
    }

    fn push(&mut self, loss: f64) {
        if self.first.len() < DIVERGENCE_WINDOW {
            self.first.push(loss);
        }
        self.recent.push_back(loss);
        if self.recent.len() > DIVERGENCE_WINDOW {
            self.recent.pop_front();
        }
        self.seen += 1;
    }

    fn median(&self) -> Option<f64> {
        median(self.recent.iter().copied())
    }

    fn start(&self) -> Option<f64> {
        median(self.first.iter().copied())
    }

    /// Records the (finite) loss of 1-based iteration `iter`; Some(why) when it shows divergence
    /// (the loss is then not added to the history).
    pub fn check(&mut self, iter: usize, loss: f64) -> Option<String> {
        if let (Some(start), Some(med)) = (self.start(), self.median()) {
            if loss > DIVERGENCE_SPIKE * med && loss > start {
                return Some(format!(
                    "the loss diverged at iteration {iter}: {loss:.4e} is {:.3e} times the median {med:.4} of the previous {} iterations (starting loss, the median of the first iterations, {start:.4})",
                    loss / med,
                    self.recent.len()
                ));
            }
        }
        self.push(loss);
        if self.seen > DIVERGENCE_WARMUP {
            if let (Some(start), Some(med)) = (self.start(), self.median()) {
                if med > DIVERGENCE_ABOVE_START * start {
                    return Some(format!(
                        "the loss diverged by iteration {iter}: after {DIVERGENCE_WARMUP} warm-up iterations the median of the last {} losses, {med:.4}, is above {DIVERGENCE_ABOVE_START} times the starting loss {start:.4}",
                        self.recent.len()
                    ));
                }
            }
        }
        None
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The data a run reads, loaded once.
pub struct RunData {
    pub manifest: Manifest,
    pub train: SplitSet,
    pub val: SplitSet,
}

fn describe_skips(set: &SplitSet) {
    // Neighbours replaced by the key slice, missing or damaged alike: counted and named.
    let fallbacks: Vec<&String> = set.samples.iter().flat_map(|s| &s.neighbour_fallbacks).collect();
    if !fallbacks.is_empty() {
        eprintln!("{:?} split: {} neighbour slice(s) replaced by the key slice:", set.split, fallbacks.len());
        for f in fallbacks.iter().take(20) {
            eprintln!("  {f}");
        }
        if fallbacks.len() > 20 {
            eprintln!("  ... and {} more", fallbacks.len() - 20);
        }
    }
    if set.skipped.is_empty() {
        return;
    }
    eprintln!("{:?} split: {} lesion(s) skipped:", set.split, set.skipped.len());
    for s in &set.skipped {
        eprintln!("  {} (row {}): {}", s.name, s.row, s.reason);
    }
}

/// Loads the manifest, the training split and (up to `val_max`) the validation split.
pub fn load_run_data(cfg: &TrainConfig) -> Result<RunData> {
    let manifest = Manifest::load(&cfg.data.manifest)?;
    // Before any crop is allocated: an absurd size would abort the process, not fail.
    let counts = manifest.lesion_counts();
    let val = if cfg.train.val_max > 0 { counts[Split::Val.index()].min(cfg.train.val_max) } else { counts[Split::Val.index()] };
    crate::train::limits::check_memory(cfg, counts[Split::Train.index()] + val, crate::device::resolve(cfg.train.device)?, "the run's config")?;
    let records = dataset::records_by_row(&cfg.data.root)?;
    let truth = cfg.true_masks_dir();
    let src = DataSource {
        root: &cfg.data.root,
        manifest: &manifest,
        pseudo_masks: Some(&cfg.data.pseudo_masks),
        true_masks: truth.as_deref(),
        crop: cfg.crop_params(),
    };
    let train = dataset::load_split(&src, &records, Split::Train, 0)?;
    describe_skips(&train);
    if train.pairs.is_empty() {
        return Err(Error::Config(format!(
            "{}: the training split has no pair of loadable lesions ({} lesions, {} skipped)",
            cfg.data.manifest.display(),
            train.samples.len(),
            train.skipped.len()
        )));
    }
    let val = dataset::load_split(&src, &records, Split::Val, cfg.train.val_max)?;
    describe_skips(&val);
    Ok(RunData { manifest, train, val })
}

/// Trains as `cfg` says, writing into `cfg.train.out`. `config_toml` is the config's text,
/// stored in every checkpoint (it rebuilds the model for `coseg eval` and guards resumes).
pub fn train(cfg: &TrainConfig, config_toml: &str, resume: &Resume) -> Result<TrainOutcome> {
    let data = load_run_data(cfg)?;
    train_with(cfg, config_toml, resume, &data)
}

/// `train` on data already loaded (the experiment runner and tests reuse one load).
pub fn train_with(cfg: &TrainConfig, config_toml: &str, resume: &Resume, data: &RunData) -> Result<TrainOutcome> {
    let t = &cfg.train;
    let device = crate::device::resolve(t.device)?;
    let precision = crate::device::use_precision(device, t.precision)?;
    if device != Device::Cpu {
        eprintln!("training on {device}, convolutions in {precision}");
    }
    let out = t.out.clone();
    let ckpt_dir = out.join("checkpoints");
    claim_out_folder(cfg)?;
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| Error::io(&ckpt_dir, e))?;

    let mut store = ParamStore::new(device, t.seed);
    let model = CosegNet::new(&cfg.model, &mut store)?;
    let mut opt = Optimizer::new(cfg.optimizer_params())?;

    let mut prior_seconds = 0.0;
    let mut resumed_from: Option<CheckpointPaths> = None;
    let mut unusable = Vec::new();
    let resumed: Option<CheckpointMeta> = match resume {
        Resume::Fresh => {
            remove_checkpoints(&ckpt_dir)?;
            None
        }
        Resume::Auto => match checkpoint::latest_loadable(&ckpt_dir, &mut store, &mut opt)? {
            Some((p, meta, bad)) => {
                resumed_from = Some(p.clone());
                unusable = bad.iter().map(|(b, why)| (b.params.clone(), why.clone())).collect();
                for (b, why) in &bad {
                    eprintln!("warning: checkpoint {} cannot be loaded ({why}); resuming from {} instead", b.params.display(), p.params.display());
                }
                if meta.config_toml != config_toml {
                    return Err(Error::Config(format!(
                        "{} holds a run with another config; resume it with that config, or start over (--fresh) or in another out folder",
                        out.display()
                    )));
                }
                Some(meta)
            }
            None => None,
        },
        Resume::From(path) => Some(checkpoint::load(&CheckpointPaths::of(path), &mut store, Some(&mut opt))?),
    };
    let start = resumed.as_ref().map_or(0, |m| m.iteration);
    if let Some(m) = &resumed {
        // Resuming a given checkpoint with nothing left to train is a mistake (a wrong file or a
        // forgotten `iterations`): say so instead of finishing "successfully" without a step.
        // Auto-resume of a finished run stays a no-op, so re-running an experiment is safe.
        if let Resume::From(p) = resume {
            if m.iteration >= t.iterations {
                return Err(Error::Config(format!(
                    "{} is at iteration {} and [train] iterations = {}: nothing left to train; raise iterations to continue, or evaluate that checkpoint",
                    p.display(),
                    m.iteration,
                    t.iterations
                )));
            }
        }
        prior_seconds = m.train_seconds;
        eprintln!("resuming at iteration {} of {}", m.iteration, t.iterations);
    }
    let mut log = RunLog::open(&out.join("log.jsonl"), start)?;
    // The guard sees the losses of the iterations before a resume, as the log kept them.
    let mut guard = DivergenceGuard::with_history(
        crate::train::log::read(log.path())?
            .into_iter()
            .filter_map(|e| match e {
                LogEntry::Train { loss, .. } => Some(loss),
                _ => None,
            }),
    );
    let partners = dataset::partners(&data.val);
    // After a fallback, latest.json still names the damaged checkpoint; the loaded one is the good one.
    let mut last_ckpt = match resumed_from {
        Some(p) => Some(p),
        None => checkpoint::latest(&ckpt_dir)?,
    };
    let mut outcome = TrainOutcome {
        out: out.clone(),
        checkpoint: last_ckpt.clone().unwrap_or_else(|| CheckpointPaths::of(&ckpt_dir.join("none.safetensors"))),
        iterations: start,
        started_at: start,
        mean_step_ms: f64::NAN,
        val_pseudo: None,
        val_true: None,
        unusable_checkpoints: unusable,
    };

    let session = Instant::now();
    let bar = crate::progress::bar((t.iterations - start.min(t.iterations)) as u64, "train");
    let (mut loss_sum, mut loss_n, mut step_ms_total, mut steps) = (0.0f64, 0usize, 0.0f64, 0usize);
    for iter in start..t.iterations {
        let step_start = Instant::now();
        let lr = cfg.lr_at(iter);
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iter as u64);
        let pairs: Vec<[usize; 2]> = if data.train.pairs.len() >= t.batch_pairs {
            sample(&mut rng, data.train.pairs.len(), t.batch_pairs).into_iter().map(|k| data.train.pairs[k]).collect()
        } else {
            (0..t.batch_pairs).map(|k| data.train.pairs[k % data.train.pairs.len()]).collect()
        };
        let aug = (t.augment != crate::train::config::Augment::none()).then_some(&t.augment);
        let batch = dataset::make_batch(&data.train, &pairs, aug, &mut rng, device)?;

        store.zero_grads();
        let (la, lb) = model.forward_pair(&batch.a, &batch.b, true)?;
        let finite = all_finite(&la)? && all_finite(&lb)?;
        let loss = if finite {
            let l = la.cross_entropy_2class(&batch.target_a, None)?.add(&lb.cross_entropy_2class(&batch.target_b, None)?)?.mul_scalar(0.5)?;
            Some((l.to_scalar()?, l))
        } else {
            None
        };
        let diverged = match &loss {
            Some((v, _)) if v.is_finite() => guard.check(iter + 1, *v as f64).map(|why| format!("{why} (lr {lr:.3e})")),
            _ => Some(format!("the loss is not finite at iteration {} (lr {lr:.3e})", iter + 1)),
        };
        // Stopped before the optimiser step: the parameters and the checkpoints on disk are
        // those of the last good iteration.
        let (Some((loss_value, loss)), None) = (loss, &diverged) else {
            bar.abandon();
            let reason = diverged.unwrap_or_default();
            log.write(&LogEntry::Stop { iter: iter + 1, reason: reason.clone() })?;
            write_plots(&out, log.path()).ok();
            let good = match &last_ckpt {
                Some(p) => format!("the last good checkpoint is {} (iteration {})", p.params.display(), checkpoint::read_meta(p)?.iteration),
                None => "no checkpoint was written before it".to_string(),
            };
            return Err(Error::invalid("train", format!("{reason}: training stopped; {good}")));
        };
        loss.backward()?;
        opt.step(&store, lr)?;
        let ms = step_start.elapsed().as_secs_f64() * 1e3;
        step_ms_total += ms;
        steps += 1;
        loss_sum += loss_value as f64;
        loss_n += 1;
        let done = iter + 1;
        log.write(&LogEntry::Train {
            iter: done,
            loss: loss_value as f64,
            lr: lr as f64,
            ms,
            time_s: prior_seconds + session.elapsed().as_secs_f64(),
        })?;
        bar.set_message(format!("loss {loss_value:.4}"));
        bar.inc(1);

        let last = done == t.iterations;
        if (done % t.val_every == 0 || last) && !data.val.samples.is_empty() {
            let probs = predict(&model, &data.val, &partners, t.batch_pairs, device)?;
            let (vp, vt) = crop_metrics(&data.val, &probs)?;
            log.write(&LogEntry::val(done, "pseudo", &vp))?;
            if let Some(vt) = &vt {
                log.write(&LogEntry::val(done, "true", vt))?;
            }
            bar.println(format!(
                "iter {done}: val Dice vs pseudo {:.4}{}",
                vp.metrics.dice.mean,
                vt.as_ref().map(|v| format!(", vs true {:.4}", v.metrics.dice.mean)).unwrap_or_default()
            ));
            outcome.val_pseudo = Some(vp);
            outcome.val_true = vt;
            write_plots(&out, log.path())?;
        }
        if done % t.checkpoint_every == 0 || last {
            let meta = CheckpointMeta {
                iteration: done,
                total_iterations: t.iterations,
                config_toml: config_toml.to_string(),
                loss: loss_sum / loss_n.max(1) as f64,
                parameters: store.num_trainable(),
                optimizer_state: String::new(),
                train_seconds: prior_seconds + session.elapsed().as_secs_f64(),
            };
            match checkpoint::save(&ckpt_dir, &store, &opt, &meta, t.keep_checkpoints) {
                Ok(p) => last_ckpt = Some(p),
                Err(e) => {
                    bar.abandon();
                    let good = last_ckpt.as_ref().map(|p| p.params.display().to_string()).unwrap_or_else(|| "none".into());
                    log.write(&LogEntry::Stop { iter: done, reason: e.to_string() })?;
                    return Err(Error::invalid("train", format!("iteration {done}: {e}; training stopped, the last good checkpoint is {good}")));
                }
            }
            loss_sum = 0.0;
            loss_n = 0;
        }
        outcome.iterations = done;
    }
    bar.finish_and_clear();
    // The loss and lr curves even when there was no validation lesion to trigger them.
    if steps > 0 {
        write_plots(&out, log.path())?;
    }
    if let Some(p) = last_ckpt {
        outcome.checkpoint = p;
    }
    outcome.mean_step_ms = if steps > 0 { step_ms_total / steps as f64 } else { f64::NAN };
    Ok(outcome)
}

fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.to_vec()?.iter().all(|v| v.is_finite()))
}

/// The output policy for a run's out folder (see `crate::output`): never an input of the run,
/// never a folder holding other data; an earlier run's folder is reused. A run folder written
/// before folders were marked is recognised by its `checkpoints/latest.json` and marked.
fn claim_out_folder(cfg: &TrainConfig) -> Result<()> {
    let out = &cfg.train.out;
    let mut outputs = crate::output::Outputs::new("train", None);
    outputs.data_inputs(&cfg.data.root).input(&cfg.data.manifest, "manifest").input(&cfg.data.pseudo_masks, "pseudo-mask folder");
    if let Some(t) = cfg.true_masks_dir() {
        outputs.input(t, "true-mask folder");
    }
    if out.join("checkpoints").join("latest.json").is_file() && !crate::output::in_coseg_folder(out) {
        crate::output::mark_folder(out, "train")?;
    }
    outputs.folder(out)
}

fn remove_checkpoints(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("iter-") || name == "latest.json" {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// `loss.png` (per-iteration loss and its running mean over 50), `lr.png` and `val.png`
/// (validation Dice, recall and precision against pseudo and true masks) from the log.
pub fn write_plots(out: &Path, log_path: &Path) -> Result<()> {
    let entries = crate::train::log::read(log_path)?;
    let mut loss = Vec::new();
    let mut lr = Vec::new();
    let mut val: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for e in &entries {
        match e {
            LogEntry::Train { iter, loss: l, lr: r, .. } => {
                loss.push((*iter as f64, *l));
                lr.push((*iter as f64, *r));
            }
            LogEntry::Val { iter, against, recall, precision, dice, .. } => {
                for (m, v) in [("dice", dice), ("recall", recall), ("precision", precision)] {
                    val.entry(format!("{m} vs {against}")).or_default().push((*iter as f64, *v));
                }
            }
            LogEntry::Stop { .. } => {}
        }
    }
    if loss.is_empty() {
        return Ok(());
    }
    let smooth = crate::train::compare::running_mean(&loss, crate::train::compare::LOSS_WINDOW);
    write_line_plot(
        &out.join("loss.png"),
        "Training loss",
        "iteration",
        "cross-entropy",
        &[Series { name: "loss".into(), color: [180, 200, 230], points: loss }, Series { name: "mean of 50".into(), color: PALETTE[0], points: smooth }],
    )?;
    write_line_plot(&out.join("lr.png"), "Learning rate", "iteration", "lr", &[Series { name: "lr".into(), color: PALETTE[1], points: lr }])?;
    if !val.is_empty() {
        let series: Vec<Series> =
            val.into_iter().enumerate().map(|(k, (name, points))| Series { name, color: PALETTE[k % PALETTE.len()], points }).collect();
        write_line_plot(&out.join("val.png"), "Validation (crop space)", "iteration", "metric", &series)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn the_guard_stops_divergence_and_lets_noisy_training_run() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for run in 0..50 {
            // Healthy: decays from ~0.7 towards 0.05 with batch noise up to 3x, over 2000 steps.
            let mut g = DivergenceGuard::default();
            let tau = rng.random_range(50.0..800.0);
            for i in 0..2000 {
                let base = 0.05 + 0.65 * (-(i as f64) / tau).exp();
                let loss = base * rng.random_range(0.4..3.0);
                assert_eq!(g.check(i + 1, loss), None, "run {run}: healthy loss {loss} at {}", i + 1);
            }
            // Exploding after a few good steps: caught at the first spike.
            let mut g = DivergenceGuard::default();
            let start = rng.random_range(2..30);
            for i in 0..start {
                assert_eq!(g.check(i + 1, 0.69 * rng.random_range(0.8..1.1)), None);
            }
            let why = g.check(start + 1, rng.random_range(1e2..1e12)).expect("a 100x spike passed");
            assert!(why.contains(&format!("iteration {}", start + 1)), "{why}");
            // Creeping up after warm-up (no single spike): caught once the median passes 1.5x start.
            let mut g = DivergenceGuard::default();
            let mut stopped = None;
            for i in 0..400 {
                let loss = 0.69 * (1.0 + i as f64 / 60.0) * rng.random_range(0.9..1.1);
                if let Some(why) = g.check(i + 1, loss) {
                    stopped = Some((i + 1, why));
                    break;
                }
            }
            let (at, why) = stopped.expect("a loss creeping to 7x its start was never stopped");
            assert!(at > DIVERGENCE_WARMUP && at < 160 && why.contains("starting loss"), "{at}: {why}");
        }
        // The history of a resumed run counts: a spike right after the resume is caught.
        let mut g = DivergenceGuard::with_history([0.7, 0.5, 0.4, 0.3]);
        assert!(g.check(5, 9.0).is_some());
    }
}
