//! `coseg demo [--out DIR]`: the main job on a synthetic set, end to end, in minutes on a CPU:
//! synth -> pseudo-masks -> split -> train -> eval; prints the table and writes
//! DIR/report.md and DIR/report.json.

use coseg::train::demo::{DemoParams, report_table, run_demo};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Synthetic lesions to make.
    #[arg(long)]
    lesions: Option<usize>,
    /// Seed of the synthetic set, the split and the network's initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training iterations (default: the configuration's).
    #[arg(long)]
    iterations: Option<usize>,
    /// Crop side the network sees (default: the configuration's).
    #[arg(long)]
    crop_size: Option<usize>,
    /// GPU convolutions in fp32, tf32 or bf16 (default: bf16 on a GPU).
    #[arg(long)]
    precision: Option<coseg::device::Precision>,
    /// Use the paper's configuration (DRN-MG-101 CSA + D2 at 128x128, SGD) on a GPU.
    #[arg(long)]
    paper: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut p = if a.paper { DemoParams::paper(a.out.clone()) } else { DemoParams::cpu(a.out.clone()) };
    p.seed = a.seed;
    if let Some(n) = a.lesions {
        p.lesions = n;
    }
    if let Some(c) = a.crop_size {
        p.crop_size = c;
    }
    if let Some(it) = a.iterations {
        p.iterations = it;
        // A short run still validates and checkpoints four times.
        p.val_every = Some((it / 4).clamp(1, if a.paper { 1000 } else { 500 }));
    }
    p.precision = a.precision;
    let r = run_demo(&p)?;
    print!("{}", report_table(&r));
    println!("{}", r.verdict());
    println!("{}; report: {}", r.paired_dice.sentence(), a.out.join("report.md").display());
    Ok(())
}
