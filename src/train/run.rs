//! The training loop: batches of pairs from the training split, pixel-wise 2-class
//! cross-entropy against the pseudo-masks for both images of each pair (the mean of the two),
//! an optimiser step at the scheduled learning rate, validation every `val_every` iterations,
//! checkpoints every `checkpoint_every`, a JSONL log, PNG curves and a progress bar.
//!
//! Determinism and resume: iteration `i` draws its pairs and augmentation from a generator
//! seeded by (seed, i), so a run resumed from a checkpoint after iteration `i` (parameters,
//! batch-norm statistics and optimiser state restored) continues exactly as if never stopped.
//! The step never waits for the host (see [`crate::train::monitor`]): the loss stays on the
//! device, watched there, and is read back every `log_every` iterations (and before validation,
//! checkpoints and the end), when it is logged and checked. A non-finite loss stops training
//! naming its iteration; its optimiser step and every later one were skipped on the device, so the
//! parameters are those of the last good step. A loss that diverges ([`DivergenceGuard`]: far
//! above its recent history, or above its starting value after warm-up) stops training naming its
//! iteration too. Either way no checkpoint is written after it, and the last good one is named.
//! The step itself is [`StepRunner`]'s (`train::step`): kept gradient buffers, the feed's
//! overlapping copies, and on a GPU the step captured as a CUDA graph (`[train] cuda_graph`).

use crate::autograd::ParamStore;
use crate::backend::cuda::conv_tune;
use crate::data::split::{Manifest, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::MetricsSummary;
use crate::nn::CosegNet;
use crate::train::checkpoint::{self, CheckpointMeta, CheckpointPaths};
use crate::train::config::TrainConfig;
use crate::train::dataset::{self, DataSource, HostBatch, Partners, SplitSet};
use crate::train::infer::{crop_metrics, predict};
use crate::train::log::{LogEntry, RunLog};
use crate::train::monitor::LossWatch;
use crate::train::optim::Optimizer;
use crate::train::step::StepRunner;
use crate::train::plot::{PALETTE, Series, write_line_plot};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
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
    /// On a GPU: the most device memory coseg's live tensors held during training (the
    /// allocator's count, from the first step on; the driver's own and the cache excluded).
    pub peak_device_bytes: Option<usize>,
    /// Per-op GPU time of the profiled steps (`--profile` on a GPU; also in `<out>/profile.csv`).
    pub profile: Option<crate::backend::cuda::Profile>,
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
/// Profiles the GPU time per op when COSEG_PROFILE=1 (see [`crate::train::profile`]).
pub fn train(cfg: &TrainConfig, config_toml: &str, resume: &Resume) -> Result<TrainOutcome> {
    train_profiled(cfg, config_toml, resume, crate::train::profile::requested_by_env())
}

/// `train`, with the per-op GPU profile on or off (`coseg train --profile`).
pub fn train_profiled(cfg: &TrainConfig, config_toml: &str, resume: &Resume, profile: bool) -> Result<TrainOutcome> {
    let data = load_run_data(cfg)?;
    train_with(cfg, config_toml, resume, &data, profile)
}

/// `train` on data already loaded (the experiment runner and tests reuse one load).
pub fn train_with(cfg: &TrainConfig, config_toml: &str, resume: &Resume, data: &RunData, profile: bool) -> Result<TrainOutcome> {
    let t = &cfg.train;
    let (mut s, mut outcome) = Session::open(cfg, config_toml, resume, data)?;
    let mut prof = crate::train::profile::TrainProfiler::new(profile, s.device)?;
    if prof.on() {
        // A replay is one launch: the per-op table needs the eager step's launches.
        s.runner.disable_graph("the per-op profile times the eager step");
    }
    let iters = outcome.started_at..t.iterations;
    let gpu = match s.device {
        Device::Cuda(n) => Some(crate::backend::cuda::CudaDevice::get(n)?),
        Device::Cpu => None,
    };
    if let Some(dev) = &gpu {
        dev.reset_peak_memory();
    }
    std::thread::scope(|scope| -> Result<()> {
        let batches = prefetch(scope, cfg, &data.train, iters.clone(), batch_workers(s.device));
        s.interval_start = Instant::now();
        for iter in iters {
            let batch = batches.recv(iter)?;
            prof.begin()?;
            s.step(iter, batch)?;
            prof.end()?;
            let done = iter + 1;
            let last = done == t.iterations;
            let validate = (done % t.val_every == 0 || last) && !data.val.samples.is_empty();
            let checkpoint = done % t.checkpoint_every == 0 || last;
            // Read the losses back, log and check them: before anything that keeps or judges
            // this state, when the watch is full, and at once when the host already knows of a
            // non-finite loss (the CPU does).
            if validate || checkpoint || done % t.log_every == 0 || s.runner.watch.full() || s.runner.watch.known_bad() {
                s.flush()?;
            }
            if validate {
                s.validate(done, &mut outcome)?;
            }
            if checkpoint {
                s.checkpoint(done)?;
            }
            if validate || checkpoint {
                s.interval_start = Instant::now();
            }
            outcome.iterations = done;
        }
        Ok(())
    })?;
    s.bar.finish_and_clear();
    // The loss and lr curves even when there was no validation lesion to trigger them.
    if s.steps > 0 {
        write_plots(&s.out, s.log.path())?;
    }
    if let Some(p) = s.last_ckpt {
        outcome.checkpoint = p;
    }
    if let Some(dev) = gpu.as_ref().filter(|dev| conv_tune::mode(dev).is_ok_and(|m| m != conv_tune::TuneMode::Off)) {
        eprint!("{}", conv_tune::summary(&conv_tune::records(dev)?));
    }
    outcome.peak_device_bytes = gpu.map(|dev| dev.memory_stats().peak_in_use_bytes);
    outcome.profile = prof.finish(&s.out)?;
    outcome.mean_step_ms = if s.steps > 0 { s.step_ms_total / s.steps as f64 } else { f64::NAN };
    Ok(outcome)
}

/// The convolution tuning file in the out folder (`[train] conv_tune`).
pub const CONV_TUNE_FILE: &str = "conv-tune.json";

/// Batches each worker builds ahead of the step, at most.
const PREFETCH: usize = 2;
/// Batch workers at most (a GPU step of a few milliseconds outruns one worker's crops and
/// augmentation for 10 pairs; the CPU's own step keeps the cores busy, so it gets one).
const MAX_WORKERS: usize = 4;

/// The batches of a run's iterations, built ahead on worker threads and handed out in order.
struct Batches {
    /// Worker w builds iterations start + w, start + w + W, ...
    workers: Vec<Receiver<Result<HostBatch>>>,
    start: usize,
}

impl Batches {
    /// Iteration `iter`'s batch (asked for in order).
    fn recv(&self, iter: usize) -> Result<HostBatch> {
        let w = &self.workers[(iter - self.start) % self.workers.len()];
        w.recv().map_err(|_| Error::invalid("train", format!("the batch worker stopped before iteration {}", iter + 1)))?
    }
}

/// Builds the batches of `iters` on `workers` threads, each up to [`PREFETCH`] ahead, so cropping
/// and augmentation overlap the device's work. A batch is drawn from (seed, iteration) alone: the
/// same batch whichever thread builds it, and when. Workers stop when the loop drops the
/// receivers (a step failed or training stopped).
fn prefetch<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    cfg: &'env TrainConfig,
    train: &'env SplitSet,
    iters: std::ops::Range<usize>,
    workers: usize,
) -> Batches {
    let workers = workers.clamp(1, MAX_WORKERS);
    let start = iters.start;
    let receivers = (0..workers)
        .map(|w| {
            let (tx, rx) = sync_channel(PREFETCH);
            let mine = iters.clone().skip(w).step_by(workers);
            scope.spawn(move || {
                for iter in mine {
                    if tx.send(host_batch(cfg, train, iter)).is_err() {
                        break;
                    }
                }
            });
            rx
        })
        .collect();
    Batches { workers: receivers, start }
}

/// Batch workers for a run on `device`: one on the CPU, up to [`MAX_WORKERS`] (the cores but one)
/// beside a GPU.
fn batch_workers(device: Device) -> usize {
    match device {
        Device::Cpu => 1,
        Device::Cuda(_) => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, MAX_WORKERS),
    }
}

/// Iteration `iter`'s batch (0-based), on the host. Its pairs and augmentation come from a
/// generator seeded by (seed, iter), so a resumed run draws what an uninterrupted one would have.
fn host_batch(cfg: &TrainConfig, train: &SplitSet, iter: usize) -> Result<HostBatch> {
    let t = &cfg.train;
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iter as u64);
    let pairs: Vec<[usize; 2]> = if train.pairs.len() >= t.batch_pairs {
        sample(&mut rng, train.pairs.len(), t.batch_pairs).into_iter().map(|k| train.pairs[k]).collect()
    } else {
        (0..t.batch_pairs).map(|k| train.pairs[k % train.pairs.len()]).collect()
    };
    let aug = (t.augment != crate::train::config::Augment::none()).then_some(&t.augment);
    HostBatch::build(train, &pairs, aug, &mut rng)
}

/// Where a run starts: from scratch, or from a checkpoint whose parameters and optimiser state
/// are already loaded.
struct ResumePoint {
    /// The iteration training starts at (0 from scratch).
    iteration: usize,
    /// Training time before this session, carried on in the log and checkpoints.
    prior_seconds: f64,
    /// The checkpoint auto-resume loaded (after a fallback, latest.json still names a damaged one).
    loaded: Option<CheckpointPaths>,
    /// Checkpoints auto-resume passed over, each with why.
    unusable: Vec<(PathBuf, String)>,
}

/// Loads the checkpoint `resume` names into `store` and `opt` (or removes the old checkpoints for
/// a fresh start). Refuses to continue a run of another config, and a given checkpoint with
/// nothing left to train.
fn resume_point(cfg: &TrainConfig, config_toml: &str, resume: &Resume, ckpt_dir: &Path, store: &mut ParamStore, opt: &mut Optimizer) -> Result<ResumePoint> {
    let t = &cfg.train;
    let mut loaded = None;
    let mut unusable = Vec::new();
    let resumed: Option<CheckpointMeta> = match resume {
        Resume::Fresh => {
            remove_checkpoints(ckpt_dir)?;
            None
        }
        Resume::Auto => match checkpoint::latest_loadable(ckpt_dir, store, opt)? {
            Some((p, meta, bad)) => {
                loaded = Some(p.clone());
                unusable = bad.iter().map(|(b, why)| (b.params.clone(), why.clone())).collect();
                for (b, why) in &bad {
                    eprintln!("warning: checkpoint {} cannot be loaded ({why}); resuming from {} instead", b.params.display(), p.params.display());
                }
                if meta.config_toml != config_toml {
                    return Err(Error::Config(format!(
                        "{} holds a run with another config; resume it with that config, or start over (--fresh) or in another out folder",
                        t.out.display()
                    )));
                }
                Some(meta)
            }
            None => None,
        },
        Resume::From(path) => Some(checkpoint::load(&CheckpointPaths::of(path), store, Some(opt))?),
    };
    let Some(m) = resumed else { return Ok(ResumePoint { iteration: 0, prior_seconds: 0.0, loaded, unusable }) };
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
    eprintln!("resuming at iteration {} of {}", m.iteration, t.iterations);
    Ok(ResumePoint { iteration: m.iteration, prior_seconds: m.train_seconds, loaded, unusable })
}

/// A divergence guard that has seen the losses of the iterations before a resume, as the log
/// kept them (so a spike right after a resume is caught).
fn guard_from_log(log: &RunLog) -> Result<DivergenceGuard> {
    Ok(DivergenceGuard::with_history(crate::train::log::read(log.path())?.into_iter().filter_map(|e| match e {
        LogEntry::Train { loss, .. } => Some(loss),
        _ => None,
    })))
}

/// What the training loop carries from one iteration to the next.
struct Session<'a> {
    cfg: &'a TrainConfig,
    config_toml: &'a str,
    data: &'a RunData,
    device: Device,
    out: PathBuf,
    ckpt_dir: PathBuf,
    /// Model, parameters, optimiser, loss watch and feed.
    runner: StepRunner,
    log: RunLog,
    guard: DivergenceGuard,
    partners: Partners,
    /// The newest good checkpoint: named when training stops, returned when it ends.
    last_ckpt: Option<CheckpointPaths>,
    prior_seconds: f64,
    started: Instant,
    bar: ProgressBar,
    /// When the current log interval's steps began (validation and checkpoints excluded).
    interval_start: Instant,
    /// The losses since the last checkpoint; their mean is stored in the next one.
    loss_sum: f64,
    loss_n: usize,
    /// Wall time and count of this session's steps, for the mean step time.
    step_ms_total: f64,
    steps: usize,
}

impl<'a> Session<'a> {
    /// Sets up the device and its precision, claims the out folder, builds the model and the
    /// optimiser, resumes as `resume` says and opens the log; the outcome so far comes with it.
    fn open(cfg: &'a TrainConfig, config_toml: &'a str, resume: &Resume, data: &'a RunData) -> Result<(Self, TrainOutcome)> {
        let t = &cfg.train;
        let device = crate::device::resolve(t.device)?;
        let precision = crate::device::use_precision(device, t.precision)?;
        if let Device::Cuda(n) = device {
            let dev = crate::backend::cuda::CudaDevice::get(n)?;
            let kernels = match precision {
                crate::device::Precision::Fp32 => "SIMT kernels".to_string(),
                _ => format!("{} tensor-core kernels (COSEG_CONV_TC)", dev.tc_variant()),
            };
            if t.conv_tune {
                conv_tune::set_mode(&dev, conv_tune::TuneMode::File(t.out.join(CONV_TUNE_FILE)))?;
            }
            let tuned = match conv_tune::mode(&dev)? {
                conv_tune::TuneMode::Off => String::new(),
                conv_tune::TuneMode::On | conv_tune::TuneMode::AvoidModel => ", plans tuned in the first step".to_string(),
                conv_tune::TuneMode::File(f) => format!(", plans tuned in the first step (kept in {})", f.display()),
            };
            eprintln!("training on {device}, convolutions in {precision} on the {kernels}{tuned}");
        }
        let out = t.out.clone();
        let ckpt_dir = out.join("checkpoints");
        claim_out_folder(cfg)?;
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| Error::io(&ckpt_dir, e))?;

        let mut store = ParamStore::new(device, t.seed);
        let model = CosegNet::new(&cfg.model, &mut store)?;
        let mut opt = Optimizer::new(cfg.optimizer_params())?;
        let from = resume_point(cfg, config_toml, resume, &ckpt_dir, &mut store, &mut opt)?;
        let start = from.iteration;
        let log = RunLog::open(&out.join("log.jsonl"), start)?;
        let guard = guard_from_log(&log)?;
        let partners = dataset::partners(&data.val);
        let last_ckpt = match from.loaded {
            Some(p) => Some(p),
            None => checkpoint::latest(&ckpt_dir)?,
        };
        let outcome = TrainOutcome {
            out: out.clone(),
            checkpoint: last_ckpt.clone().unwrap_or_else(|| CheckpointPaths::of(&ckpt_dir.join("none.safetensors"))),
            iterations: start,
            started_at: start,
            mean_step_ms: f64::NAN,
            val_pseudo: None,
            val_true: None,
            unusable_checkpoints: from.unusable,
            peak_device_bytes: None,
            profile: None,
        };
        let started = Instant::now();
        let bar = crate::progress::bar((t.iterations - start.min(t.iterations)) as u64, "train");
        let prior_seconds = from.prior_seconds;
        let (loss_sum, loss_n, step_ms_total, steps) = (0.0, 0, 0.0, 0);
        let p = cfg.optimizer_params();
        let watch = LossWatch::new(device, cfg.lr_table(), start, opt.steps_taken(), t.log_every, (p.beta1, p.beta2))?;
        let runner = StepRunner::new(model, store, opt, watch, t.batch_pairs, data.train.size, t.cuda_graph)?;
        let interval_start = Instant::now();
        let session = Session {
            cfg, config_toml, data, device, out, ckpt_dir, runner, log, guard, partners, last_ckpt,
            prior_seconds, started, bar, interval_start, loss_sum, loss_n, step_ms_total, steps,
        };
        Ok((session, outcome))
    }

    /// One training step on iteration `iter` (0-based) with its batch: onto the device, forward,
    /// loss (handed to the watch), backward and the optimiser step at the scheduled learning rate.
    /// Nothing is read back: the loss is logged and checked at the next [`Session::flush`].
    fn step(&mut self, iter: usize, batch: HostBatch) -> Result<()> {
        let expected = self.runner.watch.next_iter();
        if expected != iter {
            return Err(Error::invalid("train", format!("step {} taken when the loss watch expects {}", iter + 1, expected + 1)));
        }
        let was_captured = self.runner.captured();
        self.runner.step(batch)?;
        if self.runner.captured() && !was_captured {
            self.bar.println(format!("iteration {}: the training step is captured as a CUDA graph, replayed from now on", iter + 1));
        }
        self.steps += 1;
        Ok(())
    }

    /// Reads back the losses since the last flush (on a GPU the one wait of the interval), then
    /// for each iteration in order: stops the run at a non-finite or diverging loss, else logs it.
    fn flush(&mut self) -> Result<()> {
        if self.runner.watch.pending() == 0 {
            return Ok(());
        }
        let drained = self.runner.watch.drain()?;
        let now = Instant::now();
        let wall_ms = now.duration_since(self.interval_start).as_secs_f64() * 1e3;
        self.interval_start = now;
        self.step_ms_total += wall_ms;
        let ms = wall_ms / drained.losses.len() as f64;
        let time_s = self.prior_seconds + self.started.elapsed().as_secs_f64();
        for (k, &loss) in drained.losses.iter().enumerate() {
            let iter = drained.first_iter + k + 1;
            let lr = self.cfg.lr_at(iter - 1);
            let stop = if drained.first_bad == Some(iter) || !loss.is_finite() {
                Some(format!("the loss is not finite at iteration {iter} (lr {lr:.3e})"))
            } else {
                self.guard.check(iter, loss as f64).map(|why| format!("{why} (lr {lr:.3e})"))
            };
            if let Some(why) = stop {
                return self.stop_diverged(iter, why);
            }
            self.log.write(&LogEntry::Train { iter, loss: loss as f64, lr: lr as f64, ms, time_s })?;
            self.loss_sum += loss as f64;
            self.loss_n += 1;
        }
        if let Some(last) = drained.losses.last() {
            self.bar.set_message(format!("loss {last:.4}"));
        }
        self.bar.inc(drained.losses.len() as u64);
        Ok(())
    }

    /// Ends training at 1-based iteration `iter` for `reason` (a loss that is not finite or
    /// diverges): logged, the curves drawn, and an error naming the last good checkpoint.
    fn stop_diverged(&mut self, iter: usize, reason: String) -> Result<()> {
        self.bar.abandon();
        self.log.write(&LogEntry::Stop { iter, reason: reason.clone() })?;
        write_plots(&self.out, self.log.path()).ok();
        let good = match &self.last_ckpt {
            Some(p) => format!("the last good checkpoint is {} (iteration {})", p.params.display(), checkpoint::read_meta(p)?.iteration),
            None => "no checkpoint was written before it".to_string(),
        };
        Err(Error::invalid("train", format!("{reason}: training stopped; {good}")))
    }

    /// Validation after iteration `done`: crop-space metrics against the pseudo-masks (and the
    /// true masks when every lesion has one), logged, printed, kept in `outcome`, curves redrawn.
    fn validate(&mut self, done: usize, outcome: &mut TrainOutcome) -> Result<()> {
        let t = &self.cfg.train;
        let probs = predict(&self.runner.model, &self.data.val, &self.partners, t.batch_pairs, self.device, t.cuda_graph)?;
        let (vp, vt) = crop_metrics(&self.data.val, &probs)?;
        self.log.write(&LogEntry::val(done, "pseudo", &vp))?;
        if let Some(vt) = &vt {
            self.log.write(&LogEntry::val(done, "true", vt))?;
        }
        self.bar.println(format!(
            "iter {done}: val Dice vs pseudo {:.4}{}",
            vp.metrics.dice.mean,
            vt.as_ref().map(|v| format!(", vs true {:.4}", v.metrics.dice.mean)).unwrap_or_default()
        ));
        outcome.val_pseudo = Some(vp);
        outcome.val_true = vt;
        write_plots(&self.out, self.log.path())
    }

    /// Checkpoint after iteration `done`, with the mean loss since the previous one. A failed
    /// write stops training (logged), naming the last good checkpoint.
    fn checkpoint(&mut self, done: usize) -> Result<()> {
        let t = &self.cfg.train;
        let meta = CheckpointMeta {
            iteration: done,
            total_iterations: t.iterations,
            config_toml: self.config_toml.to_string(),
            loss: self.loss_sum / self.loss_n.max(1) as f64,
            parameters: self.runner.store.num_trainable(),
            optimizer_state: String::new(),
            train_seconds: self.prior_seconds + self.started.elapsed().as_secs_f64(),
        };
        match checkpoint::save(&self.ckpt_dir, &self.runner.store, &self.runner.opt, &meta, t.keep_checkpoints) {
            Ok(p) => self.last_ckpt = Some(p),
            Err(e) => {
                self.bar.abandon();
                let good = self.last_ckpt.as_ref().map(|p| p.params.display().to_string()).unwrap_or_else(|| "none".into());
                self.log.write(&LogEntry::Stop { iter: done, reason: e.to_string() })?;
                return Err(Error::invalid("train", format!("iteration {done}: {e}; training stopped, the last good checkpoint is {good}")));
            }
        }
        self.loss_sum = 0.0;
        self.loss_n = 0;
        Ok(())
    }
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
    fn batches_from_several_workers_come_in_order_as_one_worker_builds_them() {
        let text = "[data]\nroot = \"r\"\nmanifest = \"m.json\"\npseudo_masks = \"p\"\ncrop_size = 8\n[train]\nbatch_pairs = 3\nseed = 9\n";
        let cfg = TrainConfig::parse(text, "prefetch test").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let s = 8;
        let samples = (0..7)
            .map(|i| dataset::Sample {
                name: format!("lesion{i}"),
                row: i + 2,
                cluster: 0,
                image: (0..3 * s * s).map(|_| rng.random_range(0.0..1.0)).collect(),
                pseudo: (0..s * s).map(|_| rng.random_bool(0.4) as u8).collect(),
                truth: None,
                crop_box: crate::data::CropBox { x0: 0.0, y0: 0.0, side: 8.0, size: s },
                recist: [[1.0, 1.0], [6.0, 6.0], [1.0, 6.0], [6.0, 1.0]],
                slice_size: (64, 64),
                neighbour_fallbacks: Vec::new(),
            })
            .collect();
        let pairs = vec![[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 0]];
        let set = SplitSet { split: Split::Train, size: s, samples, pairs, skipped: Vec::new() };
        let iters = 4..20;
        let parts = |b: HostBatch| b.parts().map(|p| p.to_vec());
        let want: Vec<_> = iters.clone().map(|i| parts(host_batch(&cfg, &set, i).unwrap())).collect();
        assert!(want.windows(2).all(|w| w[0] != w[1]), "consecutive batches are the same: the test could not see the order");
        for workers in [1, 3] {
            std::thread::scope(|scope| {
                let batches = prefetch(scope, &cfg, &set, iters.clone(), workers);
                for (k, iter) in iters.clone().enumerate() {
                    assert!(parts(batches.recv(iter).unwrap()) == want[k], "{workers} workers, iteration {iter}");
                }
            });
        }
    }

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
