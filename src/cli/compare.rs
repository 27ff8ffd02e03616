//! `coseg compare RUN... --out DIR`: training runs side by side (an ablation, or one run at
//! several precisions): compare_loss.png, compare_val.png, compare.csv, and a table.

use coseg::train::compare::{OUTPUTS, Run, compare};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Runs: each a log.jsonl, a training out folder, or a demo folder.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// A label per run, in order (default: each run's folder name).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Folder for the plots and the CSV.
    #[arg(long)]
    out: PathBuf,
    /// Replace files of the same names in a folder coseg did not write.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.labels.is_empty() && a.labels.len() != a.runs.len() {
        anyhow::bail!("{} --label for {} runs: give one per run, or none", a.labels.len(), a.runs.len());
    }
    let runs = a
        .runs
        .iter()
        .enumerate()
        .map(|(i, p)| Run::load(p, a.labels.get(i).map(String::as_str)))
        .collect::<coseg::Result<Vec<_>>>()?;
    let mut outputs = coseg::output::Outputs::new("compare", Some(a.overwrite));
    for r in &runs {
        outputs.input(&r.log, "training log");
    }
    outputs.folder(&a.out)?;
    for f in OUTPUTS {
        outputs.claim(&a.out.join(f))?;
    }
    let summaries = compare(&runs, &a.out)?;
    println!("| run | iterations | loss (mean of last 50) | last validation Dice | median ms per step |");
    println!("| --- | --- | --- | --- | --- |");
    for s in &summaries {
        let dice: Vec<String> = s.last_val_dice.iter().map(|(against, d)| format!("{d:.4} vs {against}")).collect();
        let dice = if dice.is_empty() { "-".to_string() } else { dice.join(", ") };
        println!("| {} | {} | {:.4} | {dice} | {:.1} |", s.label, s.iterations, s.final_loss, s.median_step_ms);
    }
    println!("plots: {}, {}; table: {}", a.out.join(OUTPUTS[0]).display(), a.out.join(OUTPUTS[1]).display(), a.out.join(OUTPUTS[2]).display());
    Ok(())
}
