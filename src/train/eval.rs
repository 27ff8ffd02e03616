//! Evaluation of a trained network on a split, as `coseg eval` and the demo run it (the network
//! is run by [`crate::train::infer`]): every
//! lesion segmented with a partner from its split (itself when it has none), its probability
//! averaged over the 8 flips training draws from (`[eval] tta`), optionally refined with the
//! dense CRF in crop space, reduced to the lesion the RECIST marks point at as GrabCut's masks
//! are (`[eval] marked_lesion`), pasted back into its key slice with the probability
//! interpolated and thresholded at 0.5 there (the lesions of one slice united, as the
//! pseudo-masks are), and scored against the slice's mask with the paper's metrics. The summary is `metrics::MetricsSummary`, the JSON of
//! `coseg eval-masks --json`.

use crate::crf::CrfParams;
use crate::data::split::{Manifest, Split};
use crate::error::{Error, Result};
use crate::metrics::{Mask, MetricsSummary};
use crate::train::config::EvalConfig;
use crate::train::dataset::{self, DataSource, SplitSet};
use crate::train::infer::{Restored, crop_for_paste, predict_restored};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let probs = predict_restored(r, &set, &partners, r.config.train.batch_pairs, crf_params)?;
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

