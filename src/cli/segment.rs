//! `coseg segment --checkpoint FILE --image PNG --recist "x1,y1,...,y4" [--pair PNG
//! --pair-recist ...] --out mask.png`: one lesion's mask. Without a partner the lesion is paired
//! with a training lesion of its cluster (from the manifest the checkpoint was trained with).

use coseg::train::infer::{LesionInput, restore, sample_from_slice, segment_pair, training_partner, window_for_slice};
use coseg::device::DeviceRequest;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Key slice: DeepLesion 16-bit PNG (HU + 32768).
    #[arg(long)]
    image: PathBuf,
    /// RECIST marks: long axis x1,y1,x2,y2 then short axis x3,y3,x4,y4 (slice pixels).
    #[arg(long)]
    recist: String,
    /// The partner lesion's key slice.
    #[arg(long, requires = "pair_recist")]
    pair: Option<PathBuf>,
    #[arg(long, requires = "pair")]
    pair_recist: Option<String>,
    /// HU window lo,hi for the crops (default: the config's [data] window; else the DICOM window of the slice's DL_info row in the training data, as in training; else -160,240 soft tissue).
    #[arg(long)]
    window: Option<String>,
    /// Output mask PNG (0/255, slice size).
    #[arg(long)]
    out: PathBuf,
    /// auto | cpu | cuda | cuda:N (the network, and the CRF with --crf).
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// GPU convolutions in fp32, tf32 or bf16 (default: the precision the model was trained at).
    #[arg(long)]
    precision: Option<coseg::device::Precision>,
    /// Refine the lesion's probability with the dense CRF (the run config's [eval.crf_params]) before thresholding.
    #[arg(long)]
    crf: bool,
    /// Replace an existing file that coseg did not write (never an input of this run).
    #[arg(long)]
    overwrite: bool,
}

fn recist(flag: &str, s: &str) -> anyhow::Result<[[f32; 2]; 4]> {
    coseg::data::recist::parse_recist(flag, s).map_err(anyhow::Error::msg)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut outputs = coseg::output::Outputs::new("segment", Some(a.overwrite));
    super::checkpoint_input(&mut outputs, &a.checkpoint);
    outputs.input(&a.image, "key slice (--image)");
    if let Some(p) = &a.pair {
        outputs.input(p, "partner slice (--pair)");
    }
    outputs.claim(&a.out)?;
    let r = restore(&a.checkpoint, coseg::device::resolve(a.device)?)?;
    if a.precision.is_some() {
        coseg::device::use_precision(r.device, a.precision)?;
    }
    let window = match &a.window {
        Some(w) => coseg::data::recist::parse_window("--window", w).map_err(anyhow::Error::msg)?,
        None => {
            let (w, why) = window_for_slice(&r, &a.image)?;
            eprintln!("window {w:?} HU: {why}");
            w
        }
    };
    let crop = r.config.crop_params();
    let input = LesionInput { slice: a.image.clone(), recist: recist("--recist", &a.recist)? };
    let lesion = sample_from_slice(&input, &crop, window)?;
    // clap's `requires` makes --pair and --pair-recist come together or not at all.
    let (partner, partner_name) = match a.pair.as_ref().zip(a.pair_recist.as_ref()) {
        Some((p, pr)) => (sample_from_slice(&LesionInput { slice: p.clone(), recist: recist("--pair-recist", pr)? }, &crop, window)?, p.display().to_string()),
        None => {
            let t = training_partner(&r, &input)?;
            let name = format!("training lesion {}", t.name);
            (t, name)
        }
    };
    let crf = a.crf.then_some(r.config.eval.crf_params);
    let mask = segment_pair(&r, &lesion, &partner, crf.as_ref())?;
    coseg::io::write_u8(&a.out, &mask)?;
    let area = mask.data.iter().filter(|&&v| v > 0).count();
    let refined = if a.crf { format!(", dense CRF on {}", r.device) } else { String::new() };
    println!("{}: {}x{}, {area} lesion pixels (paired with {partner_name}{refined})", a.out.display(), mask.width, mask.height);
    Ok(())
}
