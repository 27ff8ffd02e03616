//! `coseg synth`: write a synthetic DeepLesion (slices, DL_info.csv, true masks).

use coseg::data::hu_stats::{compare_report, dataset_stats};
use coseg::data::{read_dl_info, CoarseType};
use std::collections::HashSet;
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
    /// After writing, compare HU statistics of the key slices with those of this DeepLesion
    /// folder (e.g. the real sample) and print the table.
    #[arg(long)]
    pub compare_with: Option<PathBuf>,
    /// Key slices per set used by --compare-with.
    #[arg(long, default_value_t = 200)]
    pub compare_slices: usize,
    /// Write into a folder holding data coseg did not write, replacing files of the same names
    /// (never an input of this run).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let params = SynthParams { lesions: a.lesions, seed: a.seed, size: a.size, neighbours: !a.no_neighbours };
    let mut outputs = coseg::output::Outputs::new("synth", Some(a.overwrite));
    if let Some(real) = &a.compare_with {
        outputs.data_inputs(real);
    }
    outputs.folder(&a.out)?;
    let t = std::time::Instant::now();
    let s = synth_dataset(&a.out, &params)?;
    println!(
        "wrote {} lesions ({} slices) to {} in {:.1} s",
        s.lesions,
        s.slices_written,
        a.out.display(),
        t.elapsed().as_secs_f64()
    );
    if let Some(real) = &a.compare_with {
        // Like with like: synthetic key slices of the coarse types the real set holds.
        let real_info = read_dl_info(real.join("DL_info.csv"))?;
        let types: HashSet<CoarseType> = real_info.records.iter().map(|r| r.coarse_type).collect();
        let (r, r_failed) = dataset_stats(real, a.compare_slices, None)?;
        let (y, y_failed) = dataset_stats(&a.out, a.compare_slices, Some(&types))?;
        let mut names: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
        names.sort();
        println!("synthetic key slices of coarse types {} (those of {}):", names.join(", "), real.display());
        for f in r_failed.iter().chain(&y_failed) {
            eprintln!("not compared: {f}");
        }
        print!("{}", compare_report("real", &r, "synthetic", &y));
    }
    Ok(())
}
