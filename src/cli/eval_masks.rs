//! `coseg eval-masks --pred DIR --truth DIR [--json]`: the paper's metrics over two folders of
//! masks paired by file name.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of predicted masks (PNG, nonzero = lesion).
    #[arg(long)]
    pred: PathBuf,
    /// Folder of true masks with the same file names.
    #[arg(long)]
    truth: PathBuf,
    /// Print one JSON object (mean and std per metric, per-image values, skipped pairs) instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let summary = coseg::metrics::evaluate_dirs(&a.pred, &a.truth)?;
    if a.json {
        println!("{}", summary.to_json()?);
    } else {
        print!("{}", summary.table(&a.pred.display().to_string()));
    }
    if summary.count == 0 {
        anyhow::bail!("no pair of masks could be evaluated ({} skipped)", summary.skipped.len());
    }
    if summary.count == summary.missing_prediction.len() {
        anyhow::bail!(
            "no predicted mask in {} has a true mask of the same name in {} (all {} lesions scored as failures)",
            a.pred.display(),
            a.truth.display(),
            summary.count
        );
    }
    Ok(())
}
