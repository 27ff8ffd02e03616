//! Inference: a trained network's lesion probabilities, shared by training's validation, `coseg
//! eval`, the demo, the experiment runner and `coseg segment`. A network is restored from a
//! checkpoint with the config it was trained with ([`restore`]); each lesion is segmented with a
//! partner ([`predict`]), its probability averaged over test-time symmetries
//! ([`predict_averaged`]) and, as a restored network's config says, refined by the dense CRF
//! when asked ([`predict_restored`]); [`crop_for_paste`] turns a crop's probability into what is
//! pasted into its slice, and [`segment_pair`] does all of it for one lesion given by a slice and
//! its RECIST marks.

use crate::autograd::{ParamStore, no_grad};
use crate::crf::{self, CrfParams};
use crate::data::split::{Manifest, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::Image;
use crate::metrics::{Mask, MetricsSummary};
use crate::nn::CosegNet;
use crate::pseudo::{GrabCutParams, Recist, keep_marked_lesion};
use crate::tensor::Tensor;
use crate::train::checkpoint::{self, CheckpointMeta, CheckpointPaths};
use crate::train::config::{EvalConfig, TrainConfig};
use crate::train::dataset::{self, DataSource, Partners, Sample, SplitSet};
use crate::train::step::GraphState;
use std::path::{Path, PathBuf};

/// A network restored from a checkpoint, with the config it was trained with.
pub struct Restored {
    pub config: TrainConfig,
    pub meta: CheckpointMeta,
    pub model: CosegNet,
    pub params: ParamStore,
    pub device: Device,
}

/// Rebuilds the model from the checkpoint's stored config and loads its parameters (a
/// checkpoint of another architecture fails naming the first tensor that does not fit).
/// `checkpoint` is a checkpoint's .safetensors, or a training run's folder (or its
/// `checkpoints/`), which stands for the newest checkpoint there.
pub fn restore(checkpoint: &Path, device: Device) -> Result<Restored> {
    let paths = if checkpoint.is_dir() {
        let dir = if checkpoint.join("checkpoints").is_dir() { checkpoint.join("checkpoints") } else { checkpoint.to_path_buf() };
        checkpoint::latest(&dir)?.ok_or_else(|| {
            Error::invalid("restore", format!("{} is a folder without a checkpoint (no latest.json): name a checkpoint's .safetensors", dir.display()))
        })?
    } else {
        CheckpointPaths::of(checkpoint)
    };
    let meta = checkpoint::read_meta(&paths)?;
    let config = parse_stored_config(&meta, &paths)?;
    load_model(config, meta, &paths, device)
}

/// As [`restore`], for the checkpoint (.safetensors) a run just trained from `config`, parsed
/// from `config_toml` (the demo and the experiment runner): the checkpoint stores that text, so
/// it is not parsed a second time. A checkpoint holding other text is restored from its own.
pub fn restore_trained(config: &TrainConfig, config_toml: &str, checkpoint: &Path, device: Device) -> Result<Restored> {
    let paths = CheckpointPaths::of(checkpoint);
    let meta = checkpoint::read_meta(&paths)?;
    let config = if meta.config_toml == config_toml { config.clone() } else { parse_stored_config(&meta, &paths)? };
    load_model(config, meta, &paths, device)
}

/// The config a checkpoint stores, as it was trained with; errors name the checkpoint.
fn parse_stored_config(meta: &CheckpointMeta, paths: &CheckpointPaths) -> Result<TrainConfig> {
    TrainConfig::parse(&meta.config_toml, &format!("{} (stored config)", paths.meta.display()))
}

/// The model `config` describes, on `device`, with the checkpoint's parameters.
fn load_model(config: TrainConfig, meta: CheckpointMeta, paths: &CheckpointPaths, device: Device) -> Result<Restored> {
    // The precision the model was trained at, until the caller (`--precision`) says otherwise.
    crate::device::use_precision(device, config.train.precision)?;
    let mut params = ParamStore::new(device, config.train.seed);
    let model = CosegNet::new(&config.model, &mut params)?;
    checkpoint::load(paths, &mut params, None)?;
    Ok(Restored { config, meta, model, params, device })
}

/// Lesion probabilities (S x S each, crop space) for every sample of `set`, each segmented with
/// its partner, `batch` pairs at a time, in evaluation mode. `graph`: on a GPU, replay the
/// forward as a captured CUDA graph (see [`ForwardGraph`]).
pub fn predict(model: &CosegNet, set: &SplitSet, partners: &Partners, batch: usize, device: Device, graph: bool) -> Result<Vec<Vec<f32>>> {
    predict_averaged(model, set, partners, batch, device, &[0], graph)
}

/// As [`predict`], averaged over the given symmetries of the square (0..8, as
/// `dataset::symmetric_input` numbers them): both images of a pair are transformed alike and
/// each prediction is mapped back before averaging (test-time augmentation).
pub fn predict_averaged(
    model: &CosegNet,
    set: &SplitSet,
    partners: &Partners,
    batch: usize,
    device: Device,
    symmetries: &[u8],
    graph: bool,
) -> Result<Vec<Vec<f32>>> {
    let s = set.size;
    if symmetries.is_empty() || symmetries.iter().any(|&k| k >= 8) {
        return Err(Error::invalid("predict", format!("symmetries {symmetries:?} (need at least one, each in 0..8)")));
    }
    let batch = batch.max(1);
    let mut out = vec![vec![0.0f32; s * s]; set.samples.len()];
    let order: Vec<usize> = (0..set.samples.len()).collect();
    let full_batches = symmetries.len() * (order.len() / batch);
    // A graph pays off over a few full batches: the first runs eagerly (it fills the allocator's
    // cache the capture draws from), the second is captured.
    let mut forward = ForwardPass::new(graph && device != Device::Cpu && full_batches >= 3, 1);
    for &k in symmetries {
        for chunk in order.chunks(batch) {
            let (mut xa, mut xb) = (Vec::new(), Vec::new());
            for &i in chunk {
                xa.extend(dataset::symmetric_input(&set.samples[i], s, k));
                xb.extend(dataset::symmetric_input(&set.samples[partners.partner[i]], s, k));
            }
            let n = chunk.len();
            let a = Tensor::from_vec(xa, [n, 3, s, s], device)?;
            let b = Tensor::from_vec(xb, [n, 3, s, s], device)?;
            let la = forward_logits(&mut forward, model, &a, &b, n == batch)?;
            for (&i, p) in chunk.iter().zip(lesion_probability(&la)?) {
                for (acc, v) in out[i].iter_mut().zip(dataset::undo_symmetry(&p, k, s)) {
                    *acc += v / symmetries.len() as f32;
                }
            }
        }
    }
    Ok(out)
}

/// The evaluation-mode forward of a batch of pairs, eager or replayed from a captured graph; only
/// full batches (the captured shape) count towards the warm-up and replay.
type ForwardPass = GraphState<ForwardGraph>;

/// The evaluation forward captured once as a CUDA graph for one batch shape: fixed inputs, the
/// logits written to a fixed output each replay. A batch is copied into the inputs, replayed,
/// and its logits read. Parameters and running statistics are read where they live, so a graph
/// made during training sees the current weights.
pub struct ForwardGraph {
    a: Tensor,
    b: Tensor,
    logits: Tensor,
    graph: crate::backend::cuda::graph::CapturedGraph,
}

impl ForwardGraph {
    /// Captures `model`'s evaluation forward on inputs shaped as `a` and `b` (on a GPU), and
    /// runs it once on them.
    pub fn capture(model: &CosegNet, a: &Tensor, b: &Tensor) -> Result<ForwardGraph> {
        let Device::Cuda(n) = a.device() else {
            return Err(Error::WrongDevice { op: "forward graph", needs: "a CUDA device", found: a.device() });
        };
        let dev = crate::backend::cuda::CudaDevice::get(n)?;
        let (fa, fb) = (Tensor::zeros(a.shape().clone(), a.device())?, Tensor::zeros(b.shape().clone(), b.device())?);
        fa.copy_from(a)?;
        fb.copy_from(b)?;
        let (graph, logits) = crate::backend::cuda::graph::capture(&dev, || no_grad(|| model.forward_pair(&fa, &fb, false)).map(|(la, _)| la))?;
        graph.replay()?;
        Ok(ForwardGraph { a: fa, b: fb, logits, graph })
    }

    /// The logits for `a` and `b` (shaped as at the capture): copied in, replayed.
    pub fn run(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.a.copy_from(a)?;
        self.b.copy_from(b)?;
        self.graph.replay()?;
        Ok(self.logits.clone())
    }
}

/// Logits of `a` paired with `b` through `pass`; `full`: the batch has the size a graph is made for.
fn forward_logits(pass: &mut ForwardPass, model: &CosegNet, a: &Tensor, b: &Tensor, full: bool) -> Result<Tensor> {
    let eager = |a, b| Ok(no_grad(|| model.forward_pair(a, b, false))?.0);
    match pass {
        GraphState::Captured(g) if full => g.run(a, b),
        GraphState::Warming(0) if full => match ForwardGraph::capture(model, a, b) {
            Ok(g) => {
                let logits = g.logits.clone();
                *pass = GraphState::Captured(g);
                Ok(logits)
            }
            Err(e) => {
                eprintln!("cuda graph: the evaluation forward cannot be captured ({e}); going on eagerly");
                *pass = GraphState::Off;
                eager(a, b)
            }
        },
        GraphState::Warming(n) if full => {
            *n -= 1;
            eager(a, b)
        }
        _ => eager(a, b),
    }
}

/// P(lesion) per pixel from (N,2,H,W) logits: sigmoid(z1 - z0), one Vec per image.
pub fn lesion_probability(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let d = logits.dims();
    if d.len() != 4 || d[1] != 2 {
        return Err(Error::shape("lesion_probability", format!("logits {} must be (N,2,H,W)", logits.shape())));
    }
    let plane = d[2] * d[3];
    let v = logits.to_vec()?;
    Ok(v.chunks(2 * plane)
        .map(|img| img[..plane].iter().zip(&img[plane..]).map(|(z0, z1)| 1.0 / (1.0 + (z0 - z1).exp())).collect())
        .collect())
}

fn crop_mask(bits: impl Iterator<Item = bool>, s: usize) -> Result<Mask> {
    Mask::new(s, s, bits.collect())
}

/// The paper's metrics in crop space: predictions (p > 0.5) against the pseudo-masks and, when
/// every sample has one, against the true masks.
pub fn crop_metrics(set: &SplitSet, probs: &[Vec<f32>]) -> Result<(MetricsSummary, Option<MetricsSummary>)> {
    let s = set.size;
    let mut vs_pseudo = Vec::new();
    let mut vs_true = Vec::new();
    for (smp, p) in set.samples.iter().zip(probs) {
        let pred = crop_mask(p.iter().map(|&v| v > 0.5), s)?;
        let key = format!("{}#{}", smp.name, smp.row);
        vs_pseudo.push((key.clone(), pred.clone(), crop_mask(smp.pseudo.iter().map(|&v| v > 0), s)?));
        if let Some(t) = &smp.truth {
            vs_true.push((key, pred, crop_mask(t.iter().map(|&v| v > 0), s)?));
        }
    }
    let truth = (!vs_true.is_empty() && vs_true.len() == vs_pseudo.len()).then(|| MetricsSummary::from_pairs(&vs_true));
    Ok((MetricsSummary::from_pairs(&vs_pseudo), truth))
}

/// P(lesion) of every sample of `set` (S x S each, crop space) as `coseg eval` and `coseg
/// segment` compute it: each sample segmented with its partner, `batch` pairs at a time,
/// averaged over the config's test-time symmetries (`[eval] tta`), then refined by the dense CRF
/// on the run's device when `crf` is given.
pub fn predict_restored(r: &Restored, set: &SplitSet, partners: &Partners, batch: usize, crf: Option<&CrfParams>) -> Result<Vec<Vec<f32>>> {
    let probs = predict_averaged(&r.model, set, partners, batch, r.device, symmetries(&r.config.eval), r.config.train.cuda_graph)?;
    match crf {
        Some(p) => refine_with_crf(set, &probs, p, r.device),
        None => Ok(probs),
    }
}

/// Refines each crop's lesion probability with the dense CRF on its key slice channel, on
/// `device` (a CUDA device refines the crops as one batch).
pub fn refine_with_crf(set: &SplitSet, probs: &[Vec<f32>], p: &CrfParams, device: Device) -> Result<Vec<Vec<f32>>> {
    let s = set.size;
    let images: Vec<Image<u8>> = set.samples.iter().map(|smp| key_slice_image(smp, s)).collect();
    let maps: Vec<Image<f32>> = probs.iter().map(|p| Image::new(s, s, 1, p.clone())).collect();
    Ok(crf::refine_batch_on(device, &images, &maps, p)?.into_iter().map(|q| q.data).collect())
}

/// The crop's key slice channel as the CRF's 8-bit guide image.
fn key_slice_image(smp: &dataset::Sample, s: usize) -> Image<u8> {
    Image::new(s, s, 1, smp.image[s * s..2 * s * s].iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect())
}

/// The symmetries test-time augmentation averages over: all 8 with `tta`, else the identity.
fn symmetries(e: &EvalConfig) -> &'static [u8] {
    if e.tta { &[0, 1, 2, 3, 4, 5, 6, 7] } else { &[0] }
}

/// One lesion's crop as it is pasted into its slice: P(lesion) scaled to 0..=255, so that the
/// paste interpolates probabilities and thresholds them at `[eval] threshold` in slice space
/// (finer than a crop-pixel staircase). With `[eval] marked_lesion`, the crop mask P > threshold is first reduced to the
/// lesion the RECIST marks point at (`pseudo::keep_marked_lesion`, GrabCut's own finish): other
/// blobs are zeroed and enclosed holes set to lesion.
pub fn crop_for_paste(smp: &Sample, prob: &[f32], s: usize, e: &EvalConfig) -> Result<Vec<u8>> {
    if prob.len() != s * s {
        return Err(Error::shape("crop_for_paste", format!("{}: {} probabilities for a {s}x{s} crop", smp.name, prob.len())));
    }
    let t = e.threshold;
    if !(t > 0.0 && t < 1.0) {
        return Err(Error::invalid("crop_for_paste", format!("[eval] threshold {t} must lie in (0, 1)")));
    }
    // Rescaled so that the threshold lands on the paste's 0.5.
    let scaled = |v: f32| {
        let u = if v <= t { 0.5 * v / t } else { 0.5 + 0.5 * (v - t) / (1.0 - t) };
        (u.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    if !e.marked_lesion {
        return Ok(prob.iter().map(|&v| scaled(v)).collect());
    }
    let mut mask = Mask::new(s, s, prob.iter().map(|&v| v > t).collect())?;
    keep_marked_lesion(&mut mask, &Recist::from_points(smp.recist), &GrabCutParams::default())?;
    Ok(prob
        .iter()
        .zip(&mask.data)
        .map(|(&v, &keep)| match (keep, v > t) {
            (true, _) => scaled(v).max(128),
            (false, true) => 0,
            (false, false) => scaled(v),
        })
        .collect())
}

/// One lesion given by a slice file and RECIST marks (`coseg segment`).
#[derive(Clone, Debug)]
pub struct LesionInput {
    /// A DeepLesion 16-bit PNG (HU + 32768).
    pub slice: PathBuf,
    /// Long axis p1, p2 then short axis p3, p4, slice pixel coordinates.
    pub recist: [[f32; 2]; 4],
}

/// The slices key-1 and key+1 beside a DeepLesion key slice (`Images_png/<series>/NNN.png`
/// next to NNN-1 and NNN+1, as the network was trained), each None when absent.
fn neighbour_slices(key: &Path, hu: &crate::data::HuSlice) -> ([Option<crate::data::HuSlice>; 2], Vec<String>) {
    let stem = key.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let Ok(index) = stem.parse::<i64>() else { return ([None, None], Vec::new()) };
    let mut fallbacks = Vec::new();
    let pair = [-1, 1].map(|offset| {
        if index + offset < 0 {
            return None;
        }
        let path = key.with_file_name(format!("{:0w$}.png", index + offset, w = stem.len()));
        crate::data::slice::load_neighbour(&path, hu, None).map_err(|why| fallbacks.push(why)).ok()
    });
    (pair, fallbacks)
}

/// A lesion's network input: slices key-1, key, key+1 cropped around its RECIST box and
/// windowed, as a [`dataset::Sample`] without targets. Neighbours are read from beside the key
/// slice (DeepLesion's numbering); a missing one is replaced by the key slice, as in training.
pub fn sample_from_slice(input: &LesionInput, crop: &crate::data::CropParams, window: [f32; 2]) -> Result<dataset::Sample> {
    // The reader's checks: a mark or window it would skip is refused here too, not segmented
    // into an empty mask.
    crate::data::recist::check_window(window).map_err(|why| Error::invalid("window", why))?;
    let hu = crate::data::load_hu(&input.slice)?;
    crate::data::recist::check_recist(&input.recist, hu.width, hu.height)
        .map_err(|why| Error::format(&input.slice, None, format!("RECIST marks: {why}")))?;
    let ([below, above], neighbour_fallbacks) = neighbour_slices(&input.slice, &hu);
    let crop_box = crate::data::CropBox::around_box(crate::data::recist_box_of(&input.recist), crop)?;
    let channel = |slice: &crate::data::HuSlice| -> Vec<f32> { crop_box.crop_hu(slice).into_iter().map(|v| crate::data::slice::window_unit(v, window)).collect() };
    let image = [channel(below.as_ref().unwrap_or(&hu)), channel(&hu), channel(above.as_ref().unwrap_or(&hu))].concat();
    let recist = input.recist.map(|p| crop_box.to_crop(p));
    let name = input.slice.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    Ok(dataset::Sample { name, row: 0, cluster: 0, image, pseudo: Vec::new(), truth: None, crop_box, recist, slice_size: (hu.width, hu.height), neighbour_fallbacks })
}

/// DeepLesion's File_name of a key slice `Images_png/<series>/<file>`: `<series>_<file>`.
fn deeplesion_file_name(slice: &Path) -> String {
    match (slice.parent().and_then(|p| p.file_name()), slice.file_name()) {
        (Some(series), Some(file)) => format!("{}_{}", series.to_string_lossy(), file.to_string_lossy()),
        _ => String::new(),
    }
}

/// The HU window a lone slice is cropped with, as the network was trained: the config's
/// `[data] window` when it set one; else, training having used each row's DICOM window, that of
/// the slice's DL_info row in the training data when it is there; else soft tissue, -160..240.
/// The second value says which.
pub fn window_for_slice(r: &Restored, slice: &Path) -> Result<([f32; 2], String)> {
    if let Some(w) = r.config.data.window {
        return Ok((w, "the config's [data] window".into()));
    }
    let name = deeplesion_file_name(slice);
    let info = crate::data::read_dl_info(r.config.data.root.join("DL_info.csv"))?;
    Ok(match info.records.iter().find(|rec| rec.file_name == name) {
        Some(rec) => (rec.window, format!("the DICOM window of DL_info row {} ({name})", rec.row)),
        None => ([-160.0, 240.0], "soft tissue (the slice is not in the training data's DL_info)".into()),
    })
}

/// The partner for a lesion that came without one: a training lesion of the same cluster. The
/// lesion's cluster is its manifest entry's when the slice is a manifest lesion (File_name =
/// `<series folder>_<slice file>`); otherwise that of the training lesion whose RECIST long axis
/// is closest in length.
pub fn training_partner(r: &Restored, input: &LesionInput) -> Result<dataset::Sample> {
    let manifest = Manifest::load(&r.config.data.manifest)?;
    let records = dataset::records_by_row(&r.config.data.root)?;
    let file_name = deeplesion_file_name(&input.slice);
    let long = |p: &[[f32; 2]; 4]| ((p[0][0] - p[1][0]).powi(2) + (p[0][1] - p[1][1]).powi(2)).sqrt();
    let own = long(&input.recist);
    let training: Vec<usize> = (0..manifest.lesions.len()).filter(|&i| manifest.lesions[i].split == Split::Train).collect();
    let cluster = match manifest.lesions.iter().find(|l| l.file_name == file_name) {
        Some(l) => l.cluster,
        None => training
            .iter()
            .filter_map(|&i| records.get(&manifest.lesions[i].row).map(|rec| ((long(&rec.recist) - own).abs(), manifest.lesions[i].cluster)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
            .ok_or_else(|| Error::Config(format!("{}: no training lesion to pair with", r.config.data.manifest.display())))?,
    };
    let src = DataSource { root: &r.config.data.root, manifest: &manifest, pseudo_masks: None, true_masks: None, crop: r.config.crop_params() };
    let mut last_err = None;
    for &i in training.iter().filter(|&&i| manifest.lesions[i].cluster == cluster && manifest.lesions[i].file_name != file_name) {
        match dataset::load_sample(&src, &records, i) {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(Error::Config(format!(
        "no loadable training lesion in cluster {cluster} to pair with{}",
        last_err.map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )))
}

/// Segments `lesion` paired with `partner`: the slice mask (0/255 where P(lesion) > 0.5).
/// With `crf`, the lesion's probability is refined by the dense CRF (on the run's device) first.
pub fn segment_pair(r: &Restored, lesion: &dataset::Sample, partner: &dataset::Sample, crf: Option<&CrfParams>) -> Result<Image<u8>> {
    let s = r.config.data.crop_size;
    let set = SplitSet { split: Split::Test, size: s, samples: vec![lesion.clone(), partner.clone()], pairs: vec![[0, 1]], skipped: Vec::new() };
    let partners = dataset::partners(&set);
    let probs = predict_restored(r, &set, &partners, 1, crf)?;
    let crop = crop_for_paste(lesion, &probs[0], s, &r.config.eval)?;
    lesion.crop_box.paste_mask(&crop, lesion.slice_size.0, lesion.slice_size.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::CropBox;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A 32 x 32 crop, RECIST cross about (16, 16): a random-probability disc on the cross, a
    /// confident blob apart from it, and low-probability noise elsewhere.
    #[test]
    fn crop_for_paste_keeps_the_marked_lesion_and_moves_the_threshold_to_the_middle() {
        let s = 32;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let disc = |x: usize, y: usize| (x as f32 - 16.0).powi(2) + (y as f32 - 16.0).powi(2) <= 25.0;
        let apart = |x: usize, y: usize| (24..27).contains(&x) && (6..9).contains(&y);
        let prob: Vec<f32> = (0..s * s)
            .map(|i| {
                let (x, y) = (i % s, i / s);
                if disc(x, y) || apart(x, y) { rng.random_range(0.75..1.0) } else { rng.random_range(0.0..0.25) }
            })
            .collect();
        let smp = Sample {
            name: "a.png".into(),
            row: 2,
            cluster: 0,
            image: vec![0.5; 3 * s * s],
            pseudo: Vec::new(),
            truth: None,
            crop_box: CropBox { x0: 0.0, y0: 0.0, side: s as f32, size: s },
            recist: [[11.0, 16.0], [21.0, 16.0], [16.0, 11.0], [16.0, 21.0]],
            slice_size: (s, s),
            neighbour_fallbacks: Vec::new(),
        };
        let e = EvalConfig { threshold: 0.7, ..EvalConfig::default() };
        let out = crop_for_paste(&smp, &prob, s, &e).unwrap();
        for (i, (&o, &p)) in out.iter().zip(&prob).enumerate() {
            let (x, y) = (i % s, i / s);
            if disc(x, y) {
                assert!(o >= 128, "({x}, {y}): P {p} kept as lesion, got {o}");
            } else if apart(x, y) {
                assert_eq!(o, 0, "({x}, {y}): the unmarked blob is dropped");
            } else {
                assert!(o < 128 && (o as f32 - 127.5 * p / 0.7).abs() <= 1.0, "({x}, {y}): P {p} -> {o}");
            }
        }
        // Without the finish the blob stays, and a threshold outside (0, 1) is refused.
        let all = crop_for_paste(&smp, &prob, s, &EvalConfig { marked_lesion: false, ..e.clone() }).unwrap();
        assert!(all[7 * s + 25] >= 128);
        assert!(crop_for_paste(&smp, &prob, s, &EvalConfig { threshold: 1.0, ..e }).is_err());
        assert!(crop_for_paste(&smp, &prob[1..], s, &EvalConfig::default()).is_err());
    }
}
