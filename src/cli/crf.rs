//! `coseg crf`: refine one lesion probability map with the dense CRF, as pydensecrf would.

use anyhow::Context;
use coseg::crf::{self, CrfParams};
use coseg::io::{self, Image};
use coseg::device::DeviceRequest;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Guide image: 8-bit grey or RGB PNG (grey is used as RGB with r = g = b, as pydensecrf users pass it).
    #[arg(long)]
    image: PathBuf,
    /// Lesion probability: 8-bit grey PNG, probability = value / 255.
    #[arg(long)]
    prob: PathBuf,
    /// Output mask PNG: 255 for lesion, 0 for background.
    #[arg(long)]
    out: PathBuf,
    /// Smoothness kernel width in pixels (addPairwiseGaussian sxy).
    #[arg(long, default_value_t = 3.0)]
    gauss_sxy: f32,
    /// Smoothness kernel Potts weight (addPairwiseGaussian compat).
    #[arg(long, default_value_t = 3.0)]
    gauss_compat: f32,
    /// Appearance kernel width in pixels (addPairwiseBilateral sxy).
    #[arg(long, default_value_t = 80.0)]
    bilateral_sxy: f32,
    /// Appearance kernel width in intensity levels (addPairwiseBilateral srgb).
    #[arg(long, default_value_t = 13.0)]
    bilateral_srgb: f32,
    /// Appearance kernel Potts weight (addPairwiseBilateral compat).
    #[arg(long, default_value_t = 10.0)]
    bilateral_compat: f32,
    /// Mean-field iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// auto | cpu | cuda | cuda:N: where the CRF runs (auto: the GPU when there is one).
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Replace an existing file that coseg did not write (never an input of this run).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut outputs = coseg::output::Outputs::new("crf", Some(a.overwrite));
    outputs.input(&a.image, "guide image (--image)").input(&a.prob, "probability map (--prob)");
    outputs.claim(&a.out)?;
    let params = CrfParams {
        gauss_sxy: a.gauss_sxy,
        gauss_compat: a.gauss_compat,
        bilateral_sxy: a.bilateral_sxy,
        bilateral_srgb: a.bilateral_srgb,
        bilateral_compat: a.bilateral_compat,
        iters: a.iters,
    };
    let image = io::read_u8(&a.image)?;
    let prob8 = io::read_u8(&a.prob)?;
    if prob8.channels != 1 {
        anyhow::bail!(
            "{}: the probability map must be a grey PNG, found {} channels",
            a.prob.display(),
            prob8.channels
        );
    }
    let prob = Image::new(
        prob8.width,
        prob8.height,
        1,
        prob8.data.iter().map(|&v| v as f32 / 255.0).collect(),
    );
    let device = coseg::device::resolve(a.device)?;
    let q = crf::refine_batch_on(device, std::slice::from_ref(&image), std::slice::from_ref(&prob), &params)
        .with_context(|| format!("crf on {} with {}", a.image.display(), a.prob.display()))?
        .remove(0);
    let mask = crf::mask_from_marginal(&q);
    io::write_u8(&a.out, &mask)?;
    let lesion = mask.data.iter().filter(|&&v| v > 0).count();
    let before = prob8.data.iter().filter(|&&v| v > 127).count();
    println!(
        "{}: {}x{}, lesion pixels {before} before the CRF, {lesion} after ({device})",
        a.out.display(),
        mask.width,
        mask.height
    );
    Ok(())
}
