//! `coseg train --config FILE [--fresh | --resume CKPT] [--profile]`: trains the co-segmentation
//! network as the config says; resumes automatically from the newest checkpoint of its out folder.

use coseg::train::{Resume, TrainConfig, train_profiled};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML config ([experiment] [data] [model] [train] [eval]).
    #[arg(long)]
    config: PathBuf,
    /// Start over, removing the out folder's checkpoints.
    #[arg(long, conflicts_with = "resume")]
    fresh: bool,
    /// Resume from this checkpoint (.safetensors) instead of the newest in the out folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Per-op GPU time (CUDA events around every launch) from the third step on: a table at the
    /// end, per kernel and per model part, and <out>/profile.csv, <out>/profile-parts.csv. Also
    /// COSEG_PROFILE=1. Needs a CUDA device.
    #[arg(long)]
    profile: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let loaded = TrainConfig::load(&a.config)?;
    let resume = match (a.fresh, a.resume) {
        (true, _) => Resume::Fresh,
        (false, Some(p)) => Resume::From(p),
        (false, None) => Resume::Auto,
    };
    let profile = a.profile || coseg::train::profile::requested_by_env();
    let o = train_profiled(&loaded.config, &loaded.text, &resume, profile)?;
    let steps_per_s = 1e3 / o.mean_step_ms;
    println!(
        "trained iterations {}..{} ({:.0} ms per step: {steps_per_s:.2} steps/s, {:.1} pairs/s); checkpoint {}; log {}",
        o.started_at,
        o.iterations,
        o.mean_step_ms,
        steps_per_s * loaded.config.train.batch_pairs as f64,
        o.checkpoint.params.display(),
        o.out.join("log.jsonl").display()
    );
    if let Some(bytes) = o.peak_device_bytes {
        println!("peak device memory in live tensors: {:.0} MiB", bytes as f64 / (1 << 20) as f64);
    }
    if let Some(p) = &o.profile {
        print!("{}", p.table());
        println!("profile written to {} and {}", o.out.join("profile.csv").display(), o.out.join("profile-parts.csv").display());
    }
    if let Some(v) = &o.val_pseudo {
        print!("{}", v.table("val vs pseudo-masks (crop space)"));
    }
    if let Some(v) = &o.val_true {
        print!("{}", v.table("val vs true masks (crop space)"));
    }
    Ok(())
}
