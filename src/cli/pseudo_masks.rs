//! `coseg pseudo-masks --data DIR --out DIR [--overlays DIR]`: GrabCut pseudo-masks from the
//! RECIST marks of every lesion, and their quality when DIR/masks/ holds true masks.

use coseg::pseudo::{PseudoMaskParams, pseudo_masks};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Data folder: DL_info.csv and Images_png/ (and masks/ for a quality report).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: one 0/255 PNG per key slice, named as the row's File_name.
    #[arg(long)]
    out: PathBuf,
    /// Also write overlays (crop, pseudo-mask and ellipse outlines, RECIST marks) here.
    #[arg(long)]
    overlays: Option<PathBuf>,
    /// At most this many overlays (the first lesions in file order).
    #[arg(long, default_value_t = 100)]
    max_overlays: usize,
    /// Crop side in pixels GrabCut runs on.
    #[arg(long, default_value_t = 128)]
    crop_size: usize,
    /// Upper bound on GrabCut rounds.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut p = PseudoMaskParams { overlays: a.overlays, max_overlays: Some(a.max_overlays), ..Default::default() };
    p.crop.size = a.crop_size;
    p.grabcut.max_iterations = a.iterations;
    let summary = pseudo_masks(&a.data, &a.out, &p)?;
    print!("{}", summary.report());
    if summary.lesions_segmented == 0 {
        anyhow::bail!("no lesion could be segmented ({} failed, {} rows skipped)", summary.failed.len(), summary.skipped_rows.len());
    }
    Ok(())
}
