//! `coseg split`: lesion embeddings -> k-means -> stratified split -> pairs -> manifest JSON.

use coseg::data::split::{build_manifest, PairRule, Split, SplitParams};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// DeepLesion-layout folder (DL_info.csv, Images_png/).
    #[arg(long)]
    pub data: PathBuf,
    /// Number of k-means clusters (the paper: 200). More than the lesions is clamped, with a note.
    #[arg(long, default_value_t = 200)]
    pub clusters: usize,
    /// Manifest JSON to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pair every two lesions of a (cluster, split) group ("all").
    #[arg(long, value_parser = ["all"], conflicts_with = "pairs_per_lesion")]
    pub pairs: Option<String>,
    /// Pair each lesion with K others of its group (K x lesions pairs; all pairs in groups of at most 2K+1).
    #[arg(long, default_value_t = 5)]
    pub pairs_per_lesion: usize,
    /// Train, validation, test fractions.
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.8, 0.1, 0.1])]
    pub ratios: Vec<f64>,
    /// Float32 [N, D] .npy of embeddings (rows = kept DL_info rows in file order) used instead
    /// of the hand-made features.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Replace an existing file that coseg did not write (never an input of this run).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let mut outputs = coseg::output::Outputs::new("split", Some(a.overwrite));
    outputs.data_inputs(&a.data);
    if let Some(e) = &a.embeddings {
        outputs.input(e, "embeddings");
    }
    outputs.claim(&a.out)?;
    let info = coseg::data::read_dl_info(a.data.join("DL_info.csv"))?;
    let mut clusters = a.clusters;
    if clusters > info.records.len() {
        eprintln!("note: --clusters {clusters} > {} lesions in {}: using {}", info.records.len(), a.data.display(), info.records.len());
        clusters = info.records.len();
    }
    let params = SplitParams {
        clusters,
        seed: a.seed,
        ratios: [a.ratios[0], a.ratios[1], a.ratios[2]],
        pair_rule: if a.pairs.is_some() { PairRule::All } else { PairRule::PerLesion(a.pairs_per_lesion) },
        embeddings: a.embeddings.clone(),
        max_iter: 100,
    };
    let m = build_manifest(&a.data, &params)?;
    m.save(&a.out)?;
    for s in &m.skipped {
        eprintln!("skipped row {} ({}): {}", s.row, s.file_name, s.reason);
    }
    let counts = m.lesion_counts();
    println!(
        "{} lesions ({} skipped), {} clusters, embedding {}, pairs {:?}",
        m.lesions.len(),
        m.skipped.len(),
        m.clusters,
        m.embedding,
        m.pair_rule
    );
    for s in Split::ALL {
        println!("{:>6}: {:>7} lesions {:>9} pairs", format!("{s:?}").to_lowercase(), counts[s.index()], m.pairs_of(s).len());
    }
    println!("wrote {} in {:.1} s", a.out.display(), t.elapsed().as_secs_f64());
    Ok(())
}
