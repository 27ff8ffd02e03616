//! `coseg pseudo-masks`: GrabCut on the crop around every lesion of a DeepLesion-format data set,
//! pasted back to a full-slice 0/255 mask per key slice; with true masks at hand, the quality of
//! the pseudo-masks beside the plain RECIST ellipse.

use super::grabcut::{GrabCutParams, grabcut};
use super::overlay::{CYAN, GREEN, Overlay, RED, YELLOW};
use super::seeds::{Recist, ellipse_mask};
use crate::data::crop::{CropBox, CropParams};
use crate::data::slice::{load_hu, window_unit};
use crate::data::{LesionRecord, SkippedRow, read_dl_info};
use crate::error::{Error, Result};
use crate::metrics::{Mask, MetricsSummary, edge_case, evaluate};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct PseudoMaskParams {
    pub grabcut: GrabCutParams,
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
    /// Mask files written (one per key slice; lesions sharing a slice share its mask).
    pub masks_written: usize,
    /// Slices holding more than one lesion (their mask is the union).
    pub multi_lesion_slices: usize,
    pub overlays_written: usize,
    /// Present when the data folder has masks/.
    pub quality: Option<Quality>,
    pub seconds: f64,
}

/// One lesion's pseudo-mask and RECIST ellipse at full slice size, and what its overlay needs.
struct LesionResult {
    pseudo: Mask,
    ellipse: Mask,
    overlay: Option<(Vec<f32>, Mask, Recist, CropBox)>,
}

/// GrabCut on the crop around `rec` (window: the crop params' or the row's DICOM window).
fn segment_lesion(root: &Path, rec: &LesionRecord, p: &PseudoMaskParams, want_overlay: bool) -> Result<LesionResult> {
    let path = rec.slice_path(root, 0);
    let hu = load_hu(&path)?;
    let [w, h] = rec.image_size.map(|v| v as usize);
    if (hu.width, hu.height) != (w, h) {
        return Err(Error::format(&path, Some(rec.row), format!("slice is {}x{}, Image_size says {w}x{h}", hu.width, hu.height)));
    }
    let crop_box = CropBox::around(rec, &p.crop)?;
    let window = p.crop.window.unwrap_or(rec.window);
    let crop: Vec<f32> = crop_box.crop_hu(&hu).into_iter().map(|v| window_unit(v, window)).collect();
    let recist = Recist::from_points(crop_box.recist_in_crop(rec));
    let s = p.crop.size;
    let cut = grabcut(&crop, s, s, &recist, &p.grabcut)?;
    let pasted = crop_box.paste_mask(&cut.mask.to_image().data, w, h)?;
    let pseudo = Mask::from_image(&pasted)?;
    if pseudo.is_empty() {
        return Err(Error::invalid("pseudo-masks", "the pseudo-mask vanished when pasted back to the slice (lesion below one pixel?)"));
    }
    let ellipse = ellipse_mask(&Recist::from_points(rec.recist), w, h)?;
    let overlay = want_overlay.then(|| (crop, cut.mask, recist, crop_box));
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
    if truth_dir.is_some() {
        pseudo_q.finish();
        ellipse_q.finish();
        summary.quality = Some(Quality { pseudo: pseudo_q, ellipse: ellipse_q });
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

type Scored = (crate::metrics::ImageMetrics, crate::metrics::EdgeCase);

struct SliceOutcome {
    segmented: usize,
    failed: Vec<FailedLesion>,
    written: bool,
    overlays: usize,
    /// (name, pseudo score, ellipse score), or (name, why not scored); None without true masks
    /// or when no lesion of the slice could be segmented.
    quality: Option<std::result::Result<(String, Scored, Scored), (String, String)>>,
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
    let mut o = SliceOutcome { segmented: 0, failed: Vec::new(), written: false, overlays: 0, quality: None };
    let mut union: Option<(Mask, Mask)> = None;
    let truth = truth_dir.map(|d| crate::io::read_gray8(d.join(name)));
    for &(index, rec) in lesions {
        let want_overlay = p.overlays.is_some() && index < overlay_limit;
        let result = segment_lesion(root, rec, p, want_overlay).and_then(|r| {
            if let (Some(dir), Some((crop, mask, recist, crop_box))) = (&p.overlays, &r.overlay) {
                let s = p.crop.size;
                let mut ov = Overlay::new(crop, s, s, 3)?;
                if let Some(Ok(t)) = &truth {
                    if (t.width, t.height) == (r.pseudo.width, r.pseudo.height) {
                        let t_crop = crop_box.crop_mask(t);
                        ov.outline(&Mask::new(s, s, t_crop.iter().map(|&v| v != 0).collect())?, CYAN)?;
                    }
                }
                let ell = super::seeds::RecistEllipse::new(recist, s, s)?.mask(s, s, 1.0);
                ov.outline(&ell, YELLOW)?;
                ov.outline(mask, GREEN)?;
                ov.recist(recist, RED);
                let stem = name.strip_suffix(".png").unwrap_or(name);
                ov.write(dir.join(format!("{stem}_row{}.png", rec.row)))?;
                o.overlays += 1;
            }
            Ok(r)
        });
        match result {
            Ok(r) => {
                o.segmented += 1;
                union = Some(match union {
                    None => (r.pseudo, r.ellipse),
                    Some((mut a, mut b)) => {
                        a.data.iter_mut().zip(&r.pseudo.data).for_each(|(x, y)| *x |= y);
                        b.data.iter_mut().zip(&r.ellipse.data).for_each(|(x, y)| *x |= y);
                        (a, b)
                    }
                });
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
        return o;
    }
    o.written = true;
    o.quality = truth.map(|t| {
        let scored = t.and_then(|t| {
            let t = Mask::from_image(&t)?;
            let ps = evaluate(&pseudo, &t)?;
            let es = evaluate(&ellipse, &t)?;
            Ok(((ps, edge_case(&pseudo, &t)), (es, edge_case(&ellipse, &t))))
        });
        match scored {
            Ok((ps, es)) => Ok((name.to_string(), ps, es)),
            Err(e) => Err((name.to_string(), e.to_string())),
        }
    });
    o
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
        if let Some(q) = &self.quality {
            s += "\nQuality against masks/ (true masks):\n";
            s += &q.pseudo.table("pseudo-masks (GrabCut)");
            s += &q.ellipse.table("RECIST ellipse");
            s += &format!(
                "mean Dice: pseudo-masks {:.3} vs RECIST ellipse {:.3}\n",
                q.pseudo.metrics.dice.mean, q.ellipse.metrics.dice.mean
            );
        }
        s
    }
}
