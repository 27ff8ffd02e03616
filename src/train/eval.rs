//! Evaluation of a trained network on a split, as `coseg eval` and the demo run it: every
//! lesion segmented with a partner from its split (itself when it has none), its probability
//! averaged over the 8 flips training draws from (`[eval] tta`), optionally refined with the
//! dense CRF in crop space, reduced to the lesion the RECIST marks point at as GrabCut's masks
//! are (`[eval] marked_lesion`), pasted back into its key slice with the probability
//! interpolated and thresholded at 0.5 there (the lesions of one slice united, as the
//! pseudo-masks are), and scored against the slice's mask with the paper's metrics. The summary is `metrics::MetricsSummary`, the JSON of
//! `coseg eval-masks --json`.

use crate::autograd::ParamStore;
use crate::crf::{self, CrfParams};
use crate::data::split::{Manifest, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::Image;
use crate::metrics::{Mask, MetricsSummary};
use crate::nn::CosegNet;
use crate::train::checkpoint::{self, CheckpointMeta, CheckpointPaths};
use crate::train::config::TrainConfig;
use crate::train::dataset::{self, DataSource, Sample, SplitSet};
use crate::pseudo::{GrabCutParams, Recist, keep_marked_lesion};
use crate::train::config::EvalConfig;
use crate::train::run::predict_averaged;
use std::collections::BTreeMap;
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
    let config = TrainConfig::parse(&meta.config_toml, &format!("{} (stored config)", paths.meta.display()))?;
    // The precision the model was trained at, until the caller (`--precision`) says otherwise.
    crate::device::use_precision(device, config.train.precision)?;
    let mut params = ParamStore::new(device, config.train.seed);
    let model = CosegNet::new(&config.model, &mut params)?;
    checkpoint::load(&paths, &mut params, None)?;
    Ok(Restored { config, meta, model, params, device })
}

/// What to score the predictions against.
#[derive(Clone, Debug, PartialEq)]
pub enum Against {
    /// The data set's true masks (synthetic data).
    True(PathBuf),
    /// The pseudo-masks (real DeepLesion has no true masks).
    Pseudo(PathBuf),
}

/// The outcome of evaluating one split.
#[derive(Clone, Debug)]
pub struct SplitEval {
    pub summary: MetricsSummary,
    /// Lesions segmented paired with themselves (no partner in the split), by name.
    pub self_paired: Vec<String>,
    /// Lesions kept without the marked-lesion finish (their RECIST marks do not cross), named
    /// with the reason.
    pub unfinished: Vec<String>,
    pub lesions: usize,
}

/// Data-location overrides for evaluating elsewhere than where the model was trained.
#[derive(Clone, Debug, Default)]
pub struct EvalData {
    pub root: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
}

/// Segments every lesion of `split` and scores the slice masks against `against`. With
/// `masks_out`, the predicted slice masks are written there as 0/255 PNGs by File_name.
pub fn evaluate(r: &Restored, data: &EvalData, split: Split, against: &Against, crf_params: Option<&CrfParams>, masks_out: Option<&Path>) -> Result<SplitEval> {
    let root = data.root.clone().unwrap_or_else(|| r.config.data.root.clone());
    let manifest_path = data.manifest.clone().unwrap_or_else(|| r.config.data.manifest.clone());
    let manifest = Manifest::load(&manifest_path)?;
    let records = dataset::records_by_row(&root)?;
    let src = DataSource { root: &root, manifest: &manifest, pseudo_masks: None, true_masks: None, crop: r.config.crop_params() };
    let set = dataset::load_split(&src, &records, split, 0)?;
    if set.samples.is_empty() {
        return Err(Error::Config(format!("{}: the {split:?} split has no loadable lesion ({} skipped)", manifest_path.display(), set.skipped.len())));
    }
    let partners = dataset::partners(&set);
    let mut probs = predict_averaged(&r.model, &set, &partners, r.config.train.batch_pairs, r.device, symmetries(&r.config.eval))?;
    if let Some(p) = crf_params {
        probs = refine_with_crf(&set, &probs, p, r.device)?;
    }
    let (slices, unfinished) = paste_to_slices(&set, &probs, &r.config.eval)?;
    if let Some(dir) = masks_out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, m) in &slices {
            m.write(dir.join(name))?;
        }
    }
    let mut summary = score_slices(&slices, against)?;
    for s in &set.skipped {
        summary.skip(format!("{} (row {})", s.name, s.row), s.reason.clone());
    }
    summary.finish();
    Ok(SplitEval { summary, self_paired: partners.self_paired, unfinished, lesions: set.samples.len() })
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

/// Pastes each lesion's crop (`crop_for_paste`) into its key slice; lesions of one slice united.
/// A lesion whose RECIST marks cannot be finished on (diameters that do not cross) is pasted
/// without the marked-lesion finish and named, with the reason, in the second value.
pub fn paste_to_slices(set: &SplitSet, probs: &[Vec<f32>], e: &EvalConfig) -> Result<(BTreeMap<String, Mask>, Vec<String>)> {
    let mut out: BTreeMap<String, Mask> = BTreeMap::new();
    let mut unfinished = Vec::new();
    for (smp, p) in set.samples.iter().zip(probs) {
        let crop = match crop_for_paste(smp, p, set.size, e) {
            Ok(c) => c,
            Err(err @ Error::Invalid { .. }) if e.marked_lesion => {
                unfinished.push(format!("{} (row {}): {err}", smp.name, smp.row));
                crop_for_paste(smp, p, set.size, &EvalConfig { marked_lesion: false, ..e.clone() })?
            }
            Err(err) => return Err(err),
        };
        let (w, h) = smp.slice_size;
        let pasted = Mask::from_image(&smp.crop_box.paste_mask(&crop, w, h)?)?;
        let merged = match out.remove(&smp.name) {
            Some(m) => Mask::from_fn(w, h, |x, y| m.get(x, y) || pasted.get(x, y)),
            None => pasted,
        };
        out.insert(smp.name.clone(), merged);
    }
    Ok((out, unfinished))
}

/// Scores slice masks against the reference folder's files of the same names; a missing or
/// unreadable reference is skipped and named.
pub fn score_slices(slices: &BTreeMap<String, Mask>, against: &Against) -> Result<MetricsSummary> {
    let dir = match against {
        Against::True(d) | Against::Pseudo(d) => d,
    };
    let mut pairs = Vec::new();
    let mut skipped = Vec::new();
    for (name, pred) in slices {
        match Mask::read(dir.join(name)) {
            Ok(t) if (t.width, t.height) == (pred.width, pred.height) => pairs.push((name.clone(), pred.clone(), t)),
            Ok(t) => skipped.push((name.clone(), format!("reference is {}x{}, prediction {}x{}", t.width, t.height, pred.width, pred.height))),
            Err(e) => skipped.push((name.clone(), e.to_string())),
        }
    }
    let mut summary = MetricsSummary::from_pairs(&pairs);
    for (n, r) in skipped {
        summary.skip(n, r);
    }
    summary.finish();
    Ok(summary)
}

/// The pseudo-masks of the lesions of `split` scored against the true masks: the baseline the
/// network must beat (same slices, same metrics).
pub fn score_pseudo_masks(manifest: &Manifest, split: Split, pseudo_dir: &Path, truth_dir: &Path) -> Result<MetricsSummary> {
    let mut names: Vec<&str> = manifest.lesions.iter().filter(|l| l.split == split).map(|l| l.file_name.as_str()).collect();
    names.sort();
    names.dedup();
    let mut slices = BTreeMap::new();
    let mut unreadable = Vec::new();
    for n in names {
        match Mask::read(pseudo_dir.join(n)) {
            Ok(m) => {
                slices.insert(n.to_string(), m);
            }
            Err(e) => unreadable.push((n.to_string(), e.to_string())),
        }
    }
    let mut summary = score_slices(&slices, &Against::True(truth_dir.to_path_buf()))?;
    for (n, r) in unreadable {
        summary.skip(n, r);
    }
    summary.finish();
    Ok(summary)
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
    let partners = dataset::Partners { partner: vec![1, 0], self_paired: Vec::new() };
    let mut probs = predict_averaged(&r.model, &set, &partners, 1, r.device, symmetries(&r.config.eval))?;
    if let Some(p) = crf {
        probs = refine_with_crf(&set, &probs, p, r.device)?;
    }
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
