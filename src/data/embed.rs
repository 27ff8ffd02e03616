//! Lesion embedding for clustering: a vector of hand-made features per lesion, standardised
//! per feature (zero mean, unit standard deviation over the data set; a constant feature
//! becomes 0). Measured on the key slice in HU, around the RECIST marks:
//!
//! - the "lesion ellipse": centred on the long axis' midpoint, semi-axes half the long and
//!   half the short diameter, oriented along the long axis;
//! - the "ring": pixels whose normalised ellipse distance lies in [1.3, 2.0) (surroundings).
//!
//! | index | feature |
//! | --- | --- |
//! | 0-4 | HU inside the ellipse: mean, std, 10th, 50th, 90th percentile |
//! | 5-7 | HU in the ring: mean, std, 50th percentile |
//! | 8 | contrast: inside mean - ring mean |
//! | 9 | texture: mean gradient magnitude inside (central differences, HU / pixel) |
//! | 10 | texture: mean 3x3 local standard deviation inside (HU) |
//! | 11-12 | long and short diameter in mm |
//! | 13 | axis ratio short / long |
//! | 14-22 | coarse type one-hot (Unknown, Bone, Abdomen, Mediastinum, Liver, Lung, Kidney, Soft tissue, Pelvis) |
//! | 23-25 | normalised location x, y, z (DL_info column) |
//!
//! HU are clamped to [-1024, 3071] first so padding outside the field of view (-2048) does
//! not dominate. The network may later supply its own features (`coseg split --embeddings`).

use super::dl_info::{CoarseType, LesionRecord};
use super::slice::{load_hu, HuSlice};
use crate::error::Result;
use rayon::prelude::*;
use std::path::Path;

/// Number of features in [`lesion_features`].
pub const FEATURES: usize = 26;

/// Names of the features, in order.
pub fn feature_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "in_mean", "in_std", "in_p10", "in_p50", "in_p90", "ring_mean", "ring_std", "ring_p50", "contrast",
        "in_grad_mean", "in_local_std", "long_mm", "short_mm", "axis_ratio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(CoarseType::ALL.iter().map(|t| format!("type_{t:?}")));
    v.extend(["loc_x", "loc_y", "loc_z"].iter().map(|s| s.to_string()));
    v
}

fn percentile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f32 * q).round() as usize]
}

fn mean_std(v: &[f32]) -> (f32, f32) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let m = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32;
    (m, var.sqrt())
}

/// The raw (unstandardised) features of one lesion on its key slice.
pub fn lesion_features(hu: &HuSlice, rec: &LesionRecord) -> [f32; FEATURES] {
    let (w, h) = (hu.width, hu.height);
    let px = |x: usize, y: usize| (hu.data[y * w + x] as f32).clamp(-1024.0, 3071.0);
    let [p1, p2, _, _] = rec.recist;
    let c = [(p1[0] + p2[0]) / 2.0, (p1[1] + p2[1]) / 2.0];
    let a = (rec.long_axis_px() / 2.0).max(0.5);
    let b = (rec.short_axis_px() / 2.0).max(0.5);
    let d = [(p2[0] - p1[0]) / (2.0 * a), (p2[1] - p1[1]) / (2.0 * a)];
    let reach = 2.0 * a + 2.0;
    let (x0, x1) = ((c[0] - reach).floor().max(0.0) as usize, ((c[0] + reach).ceil() as usize + 1).min(w));
    let (y0, y1) = ((c[1] - reach).floor().max(0.0) as usize, ((c[1] + reach).ceil() as usize + 1).min(h));
    let (mut inside, mut ring, mut grad, mut local) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 - c[0], y as f32 - c[1]);
            let u = (dx * d[0] + dy * d[1]) / a;
            let v = (-dx * d[1] + dy * d[0]) / b;
            let l = (u * u + v * v).sqrt();
            let v0 = px(x, y);
            if l < 1.0 {
                inside.push(v0);
                if x > 0 && y > 0 && x + 1 < w && y + 1 < h {
                    let gx = (px(x + 1, y) - px(x - 1, y)) / 2.0;
                    let gy = (px(x, y + 1) - px(x, y - 1)) / 2.0;
                    grad.push((gx * gx + gy * gy).sqrt());
                    let nb: Vec<f32> = (0..9).map(|k| px(x + k % 3 - 1, y + k / 3 - 1)).collect();
                    local.push(mean_std(&nb).1);
                }
            } else if (1.3..2.0).contains(&l) {
                ring.push(v0);
            }
        }
    }
    if inside.is_empty() {
        // Sub-pixel lesion: the pixel under its centre.
        inside.push(px((c[0].round() as usize).min(w - 1), (c[1].round() as usize).min(h - 1)));
    }
    let (in_mean, in_std) = mean_std(&inside);
    let (ring_mean, ring_std) = if ring.is_empty() { (in_mean, 0.0) } else { mean_std(&ring) };
    inside.sort_by(|a, b| a.total_cmp(b));
    ring.sort_by(|a, b| a.total_cmp(b));
    let long_mm = rec.long_axis_px() * rec.spacing[0];
    let short_mm = rec.short_axis_px() * rec.spacing[0];
    let mut f = [0f32; FEATURES];
    f[..14].copy_from_slice(&[
        in_mean,
        in_std,
        percentile(&inside, 0.1),
        percentile(&inside, 0.5),
        percentile(&inside, 0.9),
        ring_mean,
        ring_std,
        if ring.is_empty() { in_mean } else { percentile(&ring, 0.5) },
        in_mean - ring_mean,
        mean_std(&grad).0,
        mean_std(&local).0,
        long_mm,
        short_mm,
        short_mm / long_mm.max(1e-6),
    ]);
    f[14 + rec.coarse_type.index()] = 1.0;
    f[23..26].copy_from_slice(&rec.location);
    f
}

/// Standardises columns of a row-major [n, d] matrix in place (constant columns become 0).
pub fn standardize(data: &mut [f32], d: usize) {
    let n = data.len() / d.max(1);
    if n == 0 {
        return;
    }
    for j in 0..d {
        let m = (0..n).map(|i| data[i * d + j] as f64).sum::<f64>() / n as f64;
        let var = (0..n).map(|i| (data[i * d + j] as f64 - m).powi(2)).sum::<f64>() / n as f64;
        let s = var.sqrt();
        for i in 0..n {
            let v = &mut data[i * d + j];
            *v = if s > 1e-9 { ((*v as f64 - m) / s) as f32 } else { 0.0 };
        }
    }
}

/// Embeddings of many lesions.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// Row-major [n, FEATURES], standardised.
    pub data: Vec<f32>,
    /// Indices (into the input records) of the rows, in row order.
    pub kept: Vec<usize>,
    /// Records whose key slice could not be read: (index, message).
    pub failed: Vec<(usize, String)>,
}

/// Reads each record's key slice (in parallel) and computes standardised features.
/// Unreadable slices are listed in `failed`, never silently dropped.
pub fn embed_dataset(root: &Path, records: &[LesionRecord]) -> Embeddings {
    let bar = crate::progress::bar(records.len() as u64, "embed");
    let rows: Vec<Result<[f32; FEATURES]>> = records
        .par_iter()
        .map(|r| {
            let out = load_hu(r.slice_path(root, 0)).map(|hu| lesion_features(&hu, r));
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    let (mut data, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.into_iter().enumerate() {
        match row {
            Ok(f) => {
                data.extend_from_slice(&f);
                kept.push(i);
            }
            Err(e) => failed.push((i, format!("row {} ({}): {e}", records[i].row, records[i].file_name))),
        }
    }
    standardize(&mut data, FEATURES);
    Embeddings { data, kept, failed }
}
