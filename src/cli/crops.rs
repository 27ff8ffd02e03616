//! `coseg crops`: the network's input tensors for every lesion of a DeepLesion folder, exactly
//! as fed (float32 [N, 3, S, S], windowed and normalised), with the File_name order in a
//! `.txt` sidecar next to the .npy.

use coseg::data::npy::write_npy_f32;
use coseg::data::{CropParams, read_dl_info};
use coseg::nn::input::lesion_input;
use coseg::output::Outputs;
use rayon::prelude::*;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// DeepLesion-layout folder (DL_info.csv, Images_png/).
    #[arg(long)]
    pub data: PathBuf,
    /// Float32 .npy to write, [N, 3, S, S]; File_names go to the same path with .txt.
    #[arg(long)]
    pub out: PathBuf,
    /// Crop side S in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Replace an existing file that coseg did not write (never an input of this run).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let sidecar = super::names_sidecar(&a.out)?;
    let mut outputs = Outputs::new("crops", Some(a.overwrite));
    outputs.data_inputs(&a.data);
    outputs.claim(&a.out)?;
    outputs.claim(&sidecar)?;
    let info = read_dl_info(a.data.join("DL_info.csv"))?;
    for s in &info.skipped {
        eprintln!("skipped DL_info row {} ({}): {}", s.row, s.file_name, s.reason);
    }
    let params = CropParams { size: a.size, ..CropParams::default() };
    let bar = coseg::progress::bar(info.records.len() as u64, "crops");
    let results: Vec<_> = info
        .records
        .par_iter()
        .map(|rec| {
            let r = lesion_input(&a.data, rec, &params);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let (mut data, mut names, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for (rec, r) in info.records.iter().zip(results) {
        match r {
            Ok(image) => {
                data.extend(image);
                names.push(rec.file_name.clone());
            }
            Err(e) => {
                failed += 1;
                eprintln!("skipped DL_info row {} ({}): {e}", rec.row, rec.file_name);
            }
        }
    }
    // An empty array is not a result: say why nothing was written and exit non-zero.
    if names.is_empty() {
        anyhow::bail!(
            "no crop written: {} of {} lesions failed and {} DL_info rows were skipped (reasons above); {} not written",
            failed,
            info.records.len(),
            info.skipped.len(),
            a.out.display()
        );
    }
    write_npy_f32(&a.out, &[names.len(), 3, a.size, a.size], &data)?;
    let mut text = names.join("\n");
    text.push('\n');
    coseg::io::write_atomic(&sidecar, text.as_bytes())?;
    println!(
        "wrote {} crops [{}, 3, {}, {}] to {} and their File_names to {} ({} rows skipped by the reader, {failed} lesions failed)",
        names.len(),
        names.len(),
        a.size,
        a.size,
        a.out.display(),
        sidecar.display(),
        info.skipped.len()
    );
    Ok(())
}
