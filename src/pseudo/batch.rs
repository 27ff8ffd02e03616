//! `coseg pseudo-masks`: GrabCut on the crop around every lesion of a DeepLesion-format data set,
//! pasted back to a full-slice 0/255 mask per key slice; with true masks at hand, the quality of
//! the pseudo-masks beside the plain RECIST ellipse.

use super::consistency::{RecistConsistency, recist_consistency};
use super::grabcut::{GrabCutParams, grabcut};
use super::overlay::{CYAN, GREEN, Overlay, RED, YELLOW};
use super::seeds::{Recist, RecistEllipse, ellipse_mask};
use super::select::{PseudoMethod, RecistFitParams, candidate_name, recist_fit};
use crate::data::crop::{CropBox, CropParams};
use crate::data::slice::{HuSlice, load_hu, window_unit};
use crate::data::{LesionRecord, SkippedRow, read_dl_info};
use crate::error::{Error, Result};
use crate::metrics::{Mask, MetricsSummary, edge_case, evaluate};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct PseudoMaskParams {
    pub method: PseudoMethod,
    /// The GrabCut of `PseudoMethod::GrabCut`.
    pub grabcut: GrabCutParams,
    /// The candidates of `PseudoMethod::RecistFit`.
    pub fit: RecistFitParams,
    pub crop: CropParams,
    /// Write overlays (crop, pseudo-mask outline, RECIST marks, true outline if any) here...
    pub overlays: Option<PathBuf>,
    /// ...for at most this many lesions, the first in file order (None = all).
    pub max_overlays: Option<usize>,
}

/// A lesion whose pseudo-mask could not be made.
#[derive(Clone, Debug)]
pub struct FailedLesion {
    pub row: usize,
    pub file_name: String,
    pub reason: String,
}

/// One segmented lesion in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct LesionReport {
    pub row: usize,
    pub file_name: String,
    pub chosen: String,
    /// The pasted mask's diameters against the row's marks; None when under two pixels across.
    pub consistency: Option<RecistConsistency>,
}

/// A mask disagrees with the radiologist when its diameters are off the marks by more than this
/// on average (mean absolute relative error of long and short).
pub const DISAGREE_ABOVE: f32 = 0.2;

/// Pseudo-masks against true masks, next to the RECIST ellipse against the same masks.
#[derive(Clone, Debug)]
pub struct Quality {
    pub pseudo: MetricsSummary,
    pub ellipse: MetricsSummary,
}

#[derive(Clone, Debug)]
pub struct PseudoMaskSummary {
    /// Rows DL_info.csv held, kept or not.
    pub rows: usize,
    /// Rows the reader rejected (bad values), by row and name.
    pub skipped_rows: Vec<SkippedRow>,
    pub lesions_segmented: usize,
    pub failed: Vec<FailedLesion>,
    pub method: PseudoMethod,
    /// Every segmented lesion, by row: which candidate was kept and the RECIST consistency.
    pub lesions: Vec<LesionReport>,
    /// Mask files written (one per key slice; lesions sharing a slice share its mask).
    pub masks_written: usize,
    /// Slices holding more than one lesion (their mask is the union).
    pub multi_lesion_slices: usize,
    pub overlays_written: usize,
    /// Present when the data folder has masks/.
    pub quality: Option<Quality>,
    pub seconds: f64,
}

/// One lesion's pseudo-mask and (when it will be scored) RECIST ellipse at full slice size, and
/// what its overlay needs.
struct LesionResult {
    pseudo: LesionPseudoMask,
    ellipse: Option<Mask>,
    overlay: Option<(Vec<f32>, Recist, CropBox)>,
}

/// One lesion's pseudo-mask at full slice size, with what [`PseudoMethod::RecistFit`] chose and
/// how its diameters compare with the row's marks.
#[derive(Clone, Debug)]
pub struct LesionPseudoMask {
    pub mask: Mask,
    /// The mask in crop coordinates.
    pub crop_mask: Mask,
    pub crop_box: CropBox,
    /// "grabcut", "ellipse", or the RECIST-fit candidate kept ("grabcut#k", "ellipse", "vote").
    pub chosen: String,
    /// The full-slice mask's diameters against the row's marks (None: under two pixels across).
    pub consistency: Option<RecistConsistency>,
}

/// The pseudo-mask of lesion `rec` on its key slice `hu` (window: the crop params' or the row's
/// DICOM window).
pub fn lesion_pseudo_mask(hu: &HuSlice, rec: &LesionRecord, p: &PseudoMaskParams) -> Result<LesionPseudoMask> {
    lesion_pseudo_mask_with_crop(hu, rec, p).map(|(m, _, _)| m)
}

fn lesion_pseudo_mask_with_crop(hu: &HuSlice, rec: &LesionRecord, p: &PseudoMaskParams) -> Result<(LesionPseudoMask, Vec<f32>, Recist)> {
    let [w, h] = rec.image_size.map(|v| v as usize);
    if (hu.width, hu.height) != (w, h) {
        return Err(Error::invalid(
            "pseudo-masks",
            format!("row {} ({}): slice is {}x{}, Image_size says {w}x{h}", rec.row, rec.file_name, hu.width, hu.height),
        ));
    }
    let crop_box = CropBox::around(rec, &p.crop)?;
    let window = p.crop.window.unwrap_or(rec.window);
    let crop_hu = crop_box.crop_hu(hu);
    let crop: Vec<f32> = crop_hu.iter().map(|&v| window_unit(v, window)).collect();
    let recist = Recist::from_points(crop_box.recist_in_crop(rec));
    let s = p.crop.size;
    let (crop_mask, chosen) = match p.method {
        PseudoMethod::GrabCut => (grabcut(&crop, s, s, &recist, &p.grabcut)?.mask, "grabcut".to_string()),
        PseudoMethod::Ellipse => (RecistEllipse::new(&recist, s, s)?.mask(s, s, 1.0), "ellipse".to_string()),
        PseudoMethod::RecistFit => {
            let fit = recist_fit(&crop_hu, s, s, window, &recist, &p.fit)?;
            (fit.mask, candidate_name(&p.fit, fit.chosen))
        }
    };
    let pasted = crop_box.paste_mask(&crop_mask.to_image().data, w, h)?;
    let mask = Mask::from_image(&pasted)?;
    if mask.is_empty() {
        return Err(Error::invalid("pseudo-masks", "the pseudo-mask vanished when pasted back to the slice (lesion below one pixel?)"));
    }
    let consistency = recist_consistency(&mask, &Recist::from_points(rec.recist));
    Ok((LesionPseudoMask { mask, crop_mask, crop_box, chosen, consistency }, crop, recist))
}

/// The pseudo-mask of `rec`, read from its key slice under `root`.
fn segment_lesion(root: &Path, rec: &LesionRecord, p: &PseudoMaskParams, want_overlay: bool, want_ellipse: bool) -> Result<LesionResult> {
    let path = rec.slice_path(root, 0);
    let hu = load_hu(&path)?;
    let [w, h] = rec.image_size.map(|v| v as usize);
    if (hu.width, hu.height) != (w, h) {
        return Err(Error::format(&path, Some(rec.row), format!("slice is {}x{}, Image_size says {w}x{h}", hu.width, hu.height)));
    }
    let (pseudo, crop, recist) = lesion_pseudo_mask_with_crop(&hu, rec, p)?;
    let ellipse = if want_ellipse { Some(ellipse_mask(&Recist::from_points(rec.recist), w, h)?) } else { None };
    let overlay = want_overlay.then_some((crop, recist, pseudo.crop_box));
    Ok(LesionResult { pseudo, ellipse, overlay })
}

/// Makes the pseudo-masks of every lesion in `root/DL_info.csv` and writes them to
/// `out/<File_name>` (0/255, full slice size). Lesions are processed in parallel, grouped by key
/// slice. Bad rows and failed lesions are counted and named in the summary, never dropped
/// silently. Errors only when DL_info.csv cannot be read or the output folder cannot be made.
pub fn pseudo_masks(root: &Path, out: &Path, p: &PseudoMaskParams) -> Result<PseudoMaskSummary> {
    let start = std::time::Instant::now();
    let info = read_dl_info(root.join("DL_info.csv"))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let truth_dir = root.join("masks");
    let truth_dir = truth_dir.is_dir().then_some(truth_dir);

    let mut slices: BTreeMap<&str, Vec<(usize, &LesionRecord)>> = BTreeMap::new();
    for (i, rec) in info.records.iter().enumerate() {
        slices.entry(rec.file_name.as_str()).or_default().push((i, rec));
    }
    let overlay_limit = p.max_overlays.unwrap_or(usize::MAX);
    let bar = crate::progress::bar(info.records.len() as u64, "pseudo-masks");
    let outcomes: Vec<SliceOutcome> = slices
        .par_iter()
        .map(|(name, lesions)| {
            let o = process_slice(root, out, name, lesions, p, overlay_limit, truth_dir.as_deref());
            bar.inc(lesions.len() as u64);
            o
        })
        .collect();
    bar.finish_and_clear();

    let mut summary = PseudoMaskSummary {
        rows: info.records.len() + info.skipped.len(),
        skipped_rows: info.skipped,
        lesions_segmented: 0,
        failed: Vec::new(),
        method: p.method,
        lesions: Vec::new(),
        masks_written: 0,
        multi_lesion_slices: slices.values().filter(|l| l.len() > 1).count(),
        overlays_written: 0,
        quality: None,
        seconds: 0.0,
    };
    let (mut pseudo_q, mut ellipse_q) = (MetricsSummary::empty(), MetricsSummary::empty());
    for o in outcomes {
        summary.lesions_segmented += o.segmented;
        summary.failed.extend(o.failed);
        summary.lesions.extend(o.lesions);
        summary.masks_written += o.written as usize;
        summary.overlays_written += o.overlays;
        match o.quality {
            Some(Ok((name, pq, eq))) => {
                pseudo_q.insert(name.clone(), pq.0, pq.1);
                ellipse_q.insert(name, eq.0, eq.1);
            }
            Some(Err((name, reason))) => {
                pseudo_q.skip(name.clone(), reason.clone());
                ellipse_q.skip(name, reason);
            }
            None => {}
        }
    }
    summary.failed.sort_by_key(|f| f.row);
    summary.lesions.sort_by_key(|l| l.row);
    if truth_dir.is_some() {
        pseudo_q.finish();
        ellipse_q.finish();
        summary.quality = Some(Quality { pseudo: pseudo_q, ellipse: ellipse_q });
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

type Scored = (crate::metrics::ImageMetrics, crate::metrics::EdgeCase);
/// (name, pseudo score, ellipse score), or (name, why it could not be scored).
type SliceQuality = std::result::Result<(String, Scored, Scored), (String, String)>;

struct SliceOutcome {
    segmented: usize,
    failed: Vec<FailedLesion>,
    lesions: Vec<LesionReport>,
    written: bool,
    overlays: usize,
    /// None without true masks or when no lesion of the slice could be segmented.
    quality: Option<SliceQuality>,
}

/// All lesions of one key slice: their union is the slice's pseudo-mask.
fn process_slice(
    root: &Path,
    out: &Path,
    name: &str,
    lesions: &[(usize, &LesionRecord)],
    p: &PseudoMaskParams,
    overlay_limit: usize,
    truth_dir: Option<&Path>,
) -> SliceOutcome {
    let mut o = SliceOutcome { segmented: 0, failed: Vec::new(), lesions: Vec::new(), written: false, overlays: 0, quality: None };
    let mut union: Option<(Mask, Option<Mask>)> = None;
    let truth = truth_dir.map(|d| crate::io::read_gray8(d.join(name)));
    for &(index, rec) in lesions {
        let want_overlay = p.overlays.is_some() && index < overlay_limit;
        let result = segment_lesion(root, rec, p, want_overlay, truth.is_some()).and_then(|r| {
            if let (Some(dir), Some(view)) = (&p.overlays, &r.overlay) {
                write_overlay(dir, name, rec, &r, view, truth.as_ref().and_then(|t| t.as_ref().ok()), p.crop.size)?;
                o.overlays += 1;
            }
            Ok(r)
        });
        match result {
            Ok(r) => {
                o.segmented += 1;
                o.lesions.push(LesionReport {
                    row: rec.row,
                    file_name: name.to_string(),
                    chosen: r.pseudo.chosen.clone(),
                    consistency: r.pseudo.consistency,
                });
                union = Some(add_to_union(union, r));
            }
            Err(e) => o.failed.push(FailedLesion { row: rec.row, file_name: name.to_string(), reason: e.to_string() }),
        }
    }
    let Some((pseudo, ellipse)) = union else { return o };
    if let Err(e) = pseudo.write(out.join(name)) {
        for &(_, rec) in lesions {
            o.failed.push(FailedLesion { row: rec.row, file_name: name.to_string(), reason: e.to_string() });
        }
        o.segmented = 0;
        o.lesions.clear();
        return o;
    }
    o.written = true;
    o.quality = truth.map(|t| match t.and_then(|t| score_slice(&pseudo, ellipse, &t)) {
        Ok((ps, es)) => Ok((name.to_string(), ps, es)),
        Err(e) => Err((name.to_string(), e.to_string())),
    });
    o
}

/// One lesion's overlay: its crop, the true mask's outline when there is one of the slice's size,
/// the RECIST ellipse, the pseudo-mask and the marks.
fn write_overlay(
    dir: &Path,
    name: &str,
    rec: &LesionRecord,
    r: &LesionResult,
    (crop, recist, crop_box): &(Vec<f32>, Recist, CropBox),
    truth: Option<&crate::io::Image<u8>>,
    s: usize,
) -> Result<()> {
    let mut ov = Overlay::new(crop, s, s, 3)?;
    if let Some(t) = truth
        && (t.width, t.height) == (r.pseudo.mask.width, r.pseudo.mask.height)
    {
        let t_crop = crop_box.crop_mask(t);
        ov.outline(&Mask::new(s, s, t_crop.iter().map(|&v| v != 0).collect())?, CYAN)?;
    }
    let ell = super::seeds::RecistEllipse::new(recist, s, s)?.mask(s, s, 1.0);
    ov.outline(&ell, YELLOW)?;
    ov.outline(&r.pseudo.crop_mask, GREEN)?;
    ov.recist(recist, RED);
    let stem = name.strip_suffix(".png").unwrap_or(name);
    ov.write(dir.join(format!("{stem}_row{}.png", rec.row)))
}

/// A slice's masks are the union of its lesions' (pseudo-masks, and ellipses when drawn).
fn add_to_union(union: Option<(Mask, Option<Mask>)>, r: LesionResult) -> (Mask, Option<Mask>) {
    match union {
        None => (r.pseudo.mask, r.ellipse),
        Some((mut a, mut b)) => {
            a.data.iter_mut().zip(&r.pseudo.mask.data).for_each(|(x, y)| *x |= y);
            if let (Some(b), Some(e)) = (&mut b, &r.ellipse) {
                b.data.iter_mut().zip(&e.data).for_each(|(x, y)| *x |= y);
            }
            (a, b)
        }
    }
}

/// The slice's pseudo-mask and ellipse against its true mask.
fn score_slice(pseudo: &Mask, ellipse: Option<Mask>, truth: &crate::io::Image<u8>) -> Result<(Scored, Scored)> {
    let t = Mask::from_image(truth)?;
    let ellipse = ellipse.expect("ellipses are drawn when true masks exist");
    let ps = evaluate(pseudo, &t)?;
    let es = evaluate(&ellipse, &t)?;
    Ok(((ps, edge_case(pseudo, &t)), (es, edge_case(&ellipse, &t))))
}

impl PseudoMaskSummary {
    /// The report printed at the end of `coseg pseudo-masks`.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} rows: {} lesions segmented, {} failed, {} rows skipped by the reader; {} masks written ({} slices with several lesions); {:.1} s ({:.1} ms per lesion)\n",
            self.rows,
            self.lesions_segmented,
            self.failed.len(),
            self.skipped_rows.len(),
            self.masks_written,
            self.multi_lesion_slices,
            self.seconds,
            1e3 * self.seconds / self.lesions_segmented.max(1) as f64,
        );
        for r in &self.skipped_rows {
            s += &format!("  skipped {r}\n");
        }
        for f in &self.failed {
            s += &format!("  failed row {} ({}): {}\n", f.row, f.file_name, f.reason);
        }
        if self.overlays_written > 0 {
            s += &format!("{} overlays written (green: pseudo-mask, yellow: RECIST ellipse, red: RECIST, cyan: true mask)\n", self.overlays_written);
        }
        s += &self.consistency_report();
        if let Some(q) = &self.quality {
            s += "\nQuality against masks/ (true masks):\n";
            s += &q.pseudo.table(&format!("pseudo-masks ({})", self.method));
            s += &q.ellipse.table("RECIST ellipse");
            s += &format!(
                "mean Dice: pseudo-masks {:.3} vs RECIST ellipse {:.3}\n",
                q.pseudo.metrics.dice.mean, q.ellipse.metrics.dice.mean
            );
        }
        s
    }

    /// Mean absolute relative errors of the long and short diameters over the measurable masks
    /// (with standard errors), the count measured, and the lesions above [`DISAGREE_ABOVE`].
    pub fn consistency_stats(&self) -> ConsistencyStats {
        let measured: Vec<&RecistConsistency> = self.lesions.iter().filter_map(|l| l.consistency.as_ref()).collect();
        let mean_se = |f: &dyn Fn(&RecistConsistency) -> f64| {
            let n = measured.len() as f64;
            if measured.is_empty() {
                return (f64::NAN, f64::NAN);
            }
            let m = measured.iter().map(|c| f(c)).sum::<f64>() / n;
            let var = measured.iter().map(|c| (f(c) - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            (m, (var / n).sqrt())
        };
        ConsistencyStats {
            measured: measured.len(),
            unmeasured: self.lesions.len() - measured.len(),
            long_abs: mean_se(&|c| c.long_error.abs() as f64),
            short_abs: mean_se(&|c| c.short_error.abs() as f64),
            mean_abs: mean_se(&|c| c.mean_abs() as f64),
            disagreeing: self.lesions.iter().filter(|l| l.consistency.is_some_and(|c| c.mean_abs() > DISAGREE_ABOVE)).cloned().collect(),
        }
    }

    fn consistency_report(&self) -> String {
        let c = self.consistency_stats();
        let mut s = format!(
            "RECIST consistency ({} method; mask diameters vs the marks, mean absolute relative error ± standard error, {} lesions measured{}):\n  long {:.3} ± {:.3}, short {:.3} ± {:.3}, both {:.3} ± {:.3}; {} lesions off by more than {:.0} %\n",
            self.method,
            c.measured,
            if c.unmeasured > 0 { format!(", {} under two pixels across", c.unmeasured) } else { String::new() },
            c.long_abs.0,
            c.long_abs.1,
            c.short_abs.0,
            c.short_abs.1,
            c.mean_abs.0,
            c.mean_abs.1,
            c.disagreeing.len(),
            100.0 * DISAGREE_ABOVE,
        );
        for l in &c.disagreeing {
            let e = l.consistency.expect("disagreeing lesions were measured");
            s += &format!(
                "  row {} ({}): long {:+.0} %, short {:+.0} % ({})\n",
                l.row,
                l.file_name,
                100.0 * e.long_error,
                100.0 * e.short_error,
                l.chosen
            );
        }
        if self.method == PseudoMethod::RecistFit {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for l in &self.lesions {
                *counts.entry(l.chosen.as_str()).or_default() += 1;
            }
            let list: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!("  candidates kept: {}\n", list.join(", "));
        }
        s
    }

    /// The summary as JSON: counts, failures, skipped rows, every lesion's consistency, and the
    /// quality against true masks when present (each `coseg eval-masks --json`'s object).
    pub fn to_json(&self) -> Result<String> {
        let c = self.consistency_stats();
        let pair = |v: (f64, f64)| serde_json::json!({"mean": finite(v.0), "se": finite(v.1)});
        let v = serde_json::json!({
            "method": self.method.to_string(),
            "rows": self.rows,
            "lesions_segmented": self.lesions_segmented,
            "masks_written": self.masks_written,
            "skipped_rows": self.skipped_rows.iter().map(|r| serde_json::json!({"row": r.row, "file_name": r.file_name, "reason": r.reason})).collect::<Vec<_>>(),
            "failed": self.failed.iter().map(|f| serde_json::json!({"row": f.row, "file_name": f.file_name, "reason": f.reason})).collect::<Vec<_>>(),
            "recist_consistency": {
                "measured": c.measured,
                "unmeasured": c.unmeasured,
                "long_abs_error": pair(c.long_abs),
                "short_abs_error": pair(c.short_abs),
                "mean_abs_error": pair(c.mean_abs),
                "disagree_above": DISAGREE_ABOVE,
                "disagreeing_rows": c.disagreeing.iter().map(|l| l.row).collect::<Vec<_>>(),
            },
            "lesions": self.lesions,
            "quality": self.quality.as_ref().map(|q| serde_json::json!({"pseudo": q.pseudo, "ellipse": q.ellipse})),
            "seconds": self.seconds,
        });
        serde_json::to_string_pretty(&v).map_err(|e| Error::invalid("PseudoMaskSummary::to_json", e.to_string()))
    }
}

/// NaN (nothing measured) as JSON null.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Aggregate RECIST consistency of a run: (mean, standard error) of absolute relative errors.
#[derive(Clone, Debug)]
pub struct ConsistencyStats {
    pub measured: usize,
    pub unmeasured: usize,
    pub long_abs: (f64, f64),
    pub short_abs: (f64, f64),
    pub mean_abs: (f64, f64),
    pub disagreeing: Vec<LesionReport>,
}
