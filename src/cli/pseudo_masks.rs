//! `coseg pseudo-masks --data DIR --out DIR [--overlays DIR] [--method M] [--json FILE]`:
//! pseudo-masks from the RECIST marks of every lesion, their RECIST consistency (mask diameters
//! against the marks), and their quality when DIR/masks/ holds true masks.

use coseg::pseudo::{PseudoMaskParams, PseudoMethod, pseudo_masks};
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
    /// grabcut: one GrabCut; recist-fit: of two GrabCuts (shape prior 16 and 48) and the ellipse,
    /// the mask whose diameters agree best with the marks; ellipse: the RECIST ellipse.
    #[arg(long, default_value = "grabcut")]
    method: PseudoMethod,
    /// Also write the summary as JSON here (per-lesion RECIST consistency, failures, quality).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write into a folder holding data coseg did not write, replacing files of the same names
    /// (never an input of this run).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut outputs = coseg::output::Outputs::new("pseudo-masks", Some(a.overwrite));
    outputs.data_inputs(&a.data);
    outputs.folder(&a.out)?;
    if let Some(d) = &a.overlays {
        outputs.folder(d)?;
    }
    if let Some(j) = &a.json {
        outputs.claim(j)?;
    }
    let mut p = PseudoMaskParams { overlays: a.overlays, max_overlays: Some(a.max_overlays), ..Default::default() };
    p.crop.size = a.crop_size;
    p.method = a.method;
    p.grabcut.max_iterations = a.iterations;
    for c in &mut p.fit.candidates {
        c.grabcut.max_iterations = a.iterations;
    }
    let summary = pseudo_masks(&a.data, &a.out, &p)?;
    print!("{}", summary.report());
    if let Some(path) = &a.json {
        coseg::io::write_atomic(path, summary.to_json()?.as_bytes())?;
    }
    if summary.lesions_segmented == 0 {
        anyhow::bail!("no lesion could be segmented ({} failed, {} rows skipped)", summary.failed.len(), summary.skipped_rows.len());
    }
    Ok(())
}
