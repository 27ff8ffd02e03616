//! `coseg eval --checkpoint FILE --split test [--crf] [--json]`: the network's masks of a split,
//! scored with the paper's metrics; `--json` prints the object `coseg eval-masks --json` prints.

use coseg::data::split::Split;
use coseg::train::eval::{Against, EvalData, evaluate};
use coseg::train::infer::restore;
use coseg::output::Outputs;
use coseg::device::DeviceRequest;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint parameters (.safetensors; its .json sidecar sits beside it).
    #[arg(long)]
    checkpoint: PathBuf,
    /// train, val or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Refine with the dense CRF (the config's [eval.crf_params]).
    #[arg(long)]
    crf: bool,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
    /// Score against the pseudo-masks even when true masks exist.
    #[arg(long)]
    vs_pseudo: bool,
    /// Data root other than the one the model was trained on.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Manifest other than the one the model was trained on.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Write the predicted slice masks (0/255 PNG by File_name) here.
    #[arg(long)]
    masks_out: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// GPU convolutions in fp32, tf32 or bf16 (default: the precision the model was trained at).
    #[arg(long)]
    precision: Option<coseg::device::Precision>,
    /// No test-time augmentation (overrides the config's [eval] tta).
    #[arg(long)]
    no_tta: bool,
    /// Keep every blob of the network's mask, not only the lesion the RECIST marks point at
    /// (overrides the config's [eval] marked_lesion).
    #[arg(long)]
    all_blobs: bool,
    /// P(lesion) threshold (overrides the config's [eval] threshold).
    #[arg(long)]
    threshold: Option<f32>,
    /// Write into a folder holding data coseg did not write, replacing files of the same names
    /// (never an input of this run).
    #[arg(long)]
    overwrite: bool,
}

pub fn parse_split(s: &str) -> anyhow::Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "val" => Ok(Split::Val),
        "test" => Ok(Split::Test),
        _ => anyhow::bail!("--split '{s}' is not one of train, val, test"),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let split = parse_split(&a.split)?;
    let mut r = restore(&a.checkpoint, coseg::device::resolve(a.device)?)?;
    if a.precision.is_some() {
        coseg::device::use_precision(r.device, a.precision)?;
    }
    r.config.eval.tta &= !a.no_tta;
    r.config.eval.marked_lesion &= !a.all_blobs;
    if let Some(t) = a.threshold {
        r.config.eval.threshold = t;
    }
    let data = EvalData { root: a.data.clone(), manifest: a.manifest.clone() };
    let truth = match &a.data {
        Some(root) => Some(root.join("masks")).filter(|p| p.is_dir()),
        None => r.config.true_masks_dir(),
    };
    let (against, label) = match truth.clone().filter(|_| !a.vs_pseudo) {
        Some(d) => (Against::True(d), "true masks"),
        None => (Against::Pseudo(r.config.data.pseudo_masks.clone()), "pseudo-masks"),
    };
    if let Some(dir) = &a.masks_out {
        // The predictions must never land on what they are scored against, or on the data.
        let mut outputs = Outputs::new("eval", Some(a.overwrite));
        super::checkpoint_input(&mut outputs, &a.checkpoint);
        outputs.data_inputs(data.root.as_ref().unwrap_or(&r.config.data.root));
        outputs.input(data.manifest.as_ref().unwrap_or(&r.config.data.manifest), "manifest");
        outputs.input(&r.config.data.pseudo_masks, "pseudo-mask folder");
        if let Some(t) = &truth {
            outputs.input(t, "true-mask folder");
        }
        outputs.folder(dir)?;
    }
    let crf = a.crf.then(|| r.config.eval.crf_params);
    let ev = evaluate(&r, &data, split, &against, crf.as_ref(), a.masks_out.as_deref())?;
    if a.json {
        println!("{}", ev.summary.to_json()?);
    } else {
        print!("{}", ev.summary.table(&format!("{} {} vs {label}", a.split, if a.crf { "+CRF" } else { "" })));
        for u in &ev.unfinished {
            println!("kept without the marked-lesion finish: {u}");
        }
        if !ev.self_paired.is_empty() {
            println!("{} lesion(s) had no partner in the split and were paired with themselves", ev.self_paired.len());
        }
    }
    if ev.summary.count == 0 {
        anyhow::bail!("no lesion could be evaluated ({} skipped)", ev.summary.skipped.len());
    }
    Ok(())
}
