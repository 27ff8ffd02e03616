//! The `coseg` command line: one file per subcommand, each with its clap arguments and a `run`.

use clap::{Parser, Subcommand};

mod compare;
mod eval_masks;
mod crf;
mod crops;
mod embed;
mod demo;
mod eval;
mod experiment;
mod info;
mod pseudo_masks;
mod segment;
mod split;
mod synth;
mod train;

#[derive(Parser)]
#[command(name = "coseg", version, about = "Weakly supervised lesion co-segmentation on CT from RECIST marks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The network's input tensors of every lesion (float32 [N, 3, 128, 128] .npy + File_name sidecar).
    Crops(crops::Args),
    /// Lesion embeddings: pooled layer4 features of the dilated ResNet encoder (float32 [N, 2048] .npy).
    Embed(embed::Args),
    /// What this build can do: version, devices, kernels.
    Info(info::Args),
    /// Write a synthetic DeepLesion: slices, DL_info.csv and true masks.
    Synth(synth::Args),
    /// Recall, precision, Dice, AVD and VS of a folder of masks against the true masks.
    EvalMasks(eval_masks::Args),
    /// Refine a lesion probability map with the dense CRF (pydensecrf's parameters and defaults).
    Crf(crf::Args),
    /// Cluster lesions, split 80/10/10 by cluster, pair lesions, write the manifest JSON.
    Split(split::Args),
    /// GrabCut pseudo-masks from the RECIST marks of every lesion (quality report if masks/ exists).
    PseudoMasks(pseudo_masks::Args),
    /// Train the co-segmentation network on pseudo-masks (TOML config; resumes automatically).
    Train(train::Args),
    /// Score a checkpoint's masks on a split with the paper's metrics (table or eval-masks JSON).
    Eval(eval::Args),
    /// The main job: synthetic data -> pseudo-masks -> split -> train -> eval, with a report.
    Demo(demo::Args),
    /// Run experiment configs (the paper's Tables 1-3 are in experiments/) and print the tables.
    Experiment(experiment::Args),
    /// Segment one lesion from its slice and RECIST marks with a trained checkpoint.
    Segment(segment::Args),
    /// Training runs side by side: loss and validation curves on one plot, a table of where each ended.
    Compare(compare::Args),
}

/// Declares a `--checkpoint` argument as an input: a checkpoint's three files, or a run folder's
/// checkpoints/ (what `restore` reads).
pub(crate) fn checkpoint_input(o: &mut coseg::output::Outputs, p: &std::path::Path) {
    if p.is_dir() {
        let dir = if p.join("checkpoints").is_dir() { p.join("checkpoints") } else { p.to_path_buf() };
        o.input(dir, "checkpoint folder");
    } else {
        let c = coseg::train::checkpoint::CheckpointPaths::of(p);
        o.input(&c.params, "checkpoint");
        o.input(&c.meta, "checkpoint metadata");
        o.input(&c.optimizer, "optimizer state");
    }
}

/// The `.txt` beside an `--out` .npy that lists the File_name of each of its rows.
pub(crate) fn names_sidecar(out: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let sidecar = out.with_extension("txt");
    if sidecar == out {
        anyhow::bail!("--out {}: the File_name list goes to the same path with .txt; give the .npy another extension", out.display());
    }
    Ok(sidecar)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crops(a) => crops::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Info(a) => info::run(a),
        Command::Synth(a) => synth::run(a),
        Command::EvalMasks(a) => eval_masks::run(a),
        Command::Crf(a) => crf::run(a),
        Command::Split(a) => split::run(a),
        Command::PseudoMasks(a) => pseudo_masks::run(a),
        Command::Train(a) => train::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Segment(a) => segment::run(a),
    }
}
