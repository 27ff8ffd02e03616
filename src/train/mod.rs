//! Training and evaluation of the co-segmentation network (the paper's section 2.4), and the
//! main job.
//!
//! - [`config`]: the TOML run configuration (`[experiment] [data] [model] [train] [eval]`).
//! - [`dataset`]: crops + pseudo-masks of a split, input normalisation, augmentation, batches.
//! - [`optim`]: SGD with momentum + weight decay, Adam with weight decay, the poly schedule.
//! - [`run`]: the training loop (validation, checkpoints, resume, NaN stop, log, curves).
//! - [`feed`]: batches onto the device (double-buffered copies on a second stream on a GPU).
//! - [`step`]: the training step, captured as a CUDA graph on a GPU.
//! - [`monitor`]: the step's loss watch, on the device where the step runs (read at log intervals).
//! - [`profile`]: `--profile` / COSEG_PROFILE=1, per-op GPU time of the training steps.
//! - [`checkpoint`]: atomic safetensors checkpoints with a JSON sidecar and optimiser state.
//! - [`log`]: the JSONL log; [`plot`]: PNG line plots (built-in bitmap font).
//! - [`infer`]: a restored network's lesion probabilities (pairs, test-time flips, dense CRF), shared
//!   by validation, `coseg eval`, `coseg segment`, the demo and the experiment runner.
//! - [`eval`]: a checkpoint's masks on a split, pasted into slices, scored with the paper's metrics.
//! - [`experiment`]: runs experiment configs and prints the paper's tables.
//! - [`demo`]: synth -> pseudo-masks -> split -> train -> eval, the README's first command.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod feed;
pub mod infer;
pub mod limits;
pub mod log;
pub mod monitor;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod run;
pub mod step;

pub use config::TrainConfig;
pub use optim::{Optimizer, OptimizerKind, OptimizerParams, poly_lr};
pub use run::{Resume, TrainOutcome, train, train_profiled};
