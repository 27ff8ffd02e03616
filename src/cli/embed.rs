//! `coseg embed`: global-average-pooled layer4 features of the dilated encoder for every lesion
//! (float32 [N, 2048]), one row per DL_info row the reader keeps, in file order, as
//! `coseg split --embeddings` wants them (File_names also in a `.txt` sidecar).

use anyhow::Context;
use coseg::Device;
use coseg::autograd::ParamStore;
use coseg::data::npy::write_npy_f32;
use coseg::data::{CropParams, read_dl_info};
use coseg::nn::input::lesion_input;
use coseg::nn::{CosegNet, ModelConfig, load_encoder_weights};
use coseg::tensor::Tensor;
use rayon::prelude::*;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Encoder weights: a torchvision ResNet state dict (.safetensors, torchvision's names) or a
    /// coseg checkpoint.
    #[arg(long)]
    pub weights: PathBuf,
    /// DeepLesion-layout folder (DL_info.csv, Images_png/).
    #[arg(long)]
    pub data: PathBuf,
    /// Float32 .npy to write, [N, C4] (C4 = 2048 for ResNet-50/101/152).
    #[arg(long)]
    pub out: PathBuf,
    /// Model configuration TOML (ModelConfig keys); default: torchvision's dilated ResNet-101
    /// (depth 101, output stride 8, no multi-grid).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Crops per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Replace an existing file that coseg did not write (never an input of this run).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let sidecar = super::names_sidecar(&a.out)?;
    let mut outputs = coseg::output::Outputs::new("embed", Some(a.overwrite));
    outputs.data_inputs(&a.data).input(&a.weights, "encoder weights");
    if let Some(m) = &a.model {
        outputs.input(m, "model configuration");
    }
    outputs.claim(&a.out)?;
    outputs.claim(&sidecar)?;
    let cfg = match &a.model {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| coseg::Error::io(p, e))?;
            toml::from_str::<ModelConfig>(&text).map_err(|e| coseg::Error::Config(format!("{}: {e}", p.display())))?
        }
        None => ModelConfig { multi_grid: false, ..ModelConfig::default() },
    };
    let mut params = ParamStore::new(Device::Cpu, 0);
    let net = CosegNet::new(&cfg, &mut params)?;
    let report = load_encoder_weights(&a.weights, &mut params, "encoder")?;
    eprintln!("{}: {} encoder tensors loaded, {} in the file unused", a.weights.display(), report.loaded.len(), report.unexpected.len());

    let info = read_dl_info(a.data.join("DL_info.csv"))?;
    for s in &info.skipped {
        eprintln!("skipped DL_info row {} ({}): {}", s.row, s.file_name, s.reason);
    }
    if info.records.is_empty() {
        anyhow::bail!("{}: no usable lesion row ({} skipped, reasons above); nothing written", a.data.join("DL_info.csv").display(), info.skipped.len());
    }
    let crop = CropParams::default();
    let side = crop.size;
    let batch = a.batch.max(1);
    let bar = coseg::progress::bar(info.records.len() as u64, "embed");
    let mut rows = Vec::new();
    let mut dim = 0;
    for chunk in info.records.chunks(batch) {
        // Rows must line up with DL_info for `coseg split`: a lesion that cannot be cropped is an error.
        let images = chunk
            .par_iter()
            .map(|rec| lesion_input(&a.data, rec, &crop).with_context(|| format!("DL_info row {} ({})", rec.row, rec.file_name)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let x = Tensor::from_vec(images.concat(), [chunk.len(), 3, side, side], Device::Cpu)?;
        let e = net.embed(&x)?;
        dim = e.dims()[1];
        rows.extend(e.to_vec()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_npy_f32(&a.out, &[info.records.len(), dim], &rows)?;
    let names: String = info.records.iter().map(|r| format!("{}\n", r.file_name)).collect();
    coseg::io::write_atomic(&sidecar, names.as_bytes())?;
    println!("wrote {} embeddings [{}, {dim}] ({}) to {}", info.records.len(), info.records.len(), cfg.name(), a.out.display());
    Ok(())
}
