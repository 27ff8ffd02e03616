//! `coseg synth`: write a synthetic DeepLesion (slices, DL_info.csv, true masks).

use coseg::data::synth::{synth_dataset, SynthParams};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (created): DL_info.csv, Images_png/, masks/.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of lesions (one per key slice).
    #[arg(long, default_value_t = 100)]
    pub lesions: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Slice side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Do not write the neighbour slices key-1 and key+1.
    #[arg(long)]
    pub no_neighbours: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let params = SynthParams { lesions: a.lesions, seed: a.seed, size: a.size, neighbours: !a.no_neighbours };
    let t = std::time::Instant::now();
    let s = synth_dataset(&a.out, &params)?;
    println!(
        "wrote {} lesions ({} slices) to {} in {:.1} s",
        s.lesions,
        s.slices_written,
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
