//! HU statistics of CT slices, to compare synthetic slices with real ones: the fraction of
//! pixels per HU band, soft-tissue and fat mean/std, and noise measured in flat regions.
//! `coseg synth --compare-with DIR` prints these side by side for two data sets.

use super::dl_info::{read_dl_info, CoarseType};
use std::collections::HashSet;
use super::slice::{load_hu, HuSlice};
use crate::error::Result;
use std::fmt::Write as _;
use std::path::Path;

/// HU bands as [lo, hi): air and lung, transition (partial volume, ground glass), fat,
/// soft tissue (incl. unenhanced organs, fluid, muscle), enhanced (contrast blood, enhancing
/// organs), bone.
pub const BANDS: [(&str, f32, f32); 6] = [
    ("air+lung <-500", f32::NEG_INFINITY, -500.0),
    ("-500..-200", -500.0, -200.0),
    ("fat -200..-30", -200.0, -30.0),
    ("soft -30..150", -30.0, 150.0),
    ("enh 150..300", 150.0, 300.0),
    ("bone >=300", 300.0, f32::INFINITY),
];

/// Statistics of one slice or (averaged) of a set of slices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HuStats {
    pub slices: usize,
    /// Fraction of all pixels in each of [`BANDS`].
    pub band_fraction: [f64; 6],
    /// Among pixels above -500 HU (the body and table), fraction per band 1..6.
    pub body_band_fraction: [f64; 6],
    pub soft_mean: f64,
    pub soft_std: f64,
    pub fat_mean: f64,
    pub fat_std: f64,
    /// Median over 8x8 blocks lying wholly in the soft-tissue band of the block std (HU).
    pub noise_soft: f64,
    /// The same in fat.
    pub noise_fat: f64,
    /// Lowest HU (FOV padding shows here).
    pub min_hu: f64,
    /// 40-HU histogram from -1100 to 1300, normalised to sum 1.
    pub histogram: Vec<f64>,
}

const HIST_LO: f32 = -1100.0;
const HIST_BIN: f32 = 40.0;
const HIST_BINS: usize = 60;

fn band_of(v: f32) -> usize {
    BANDS.iter().position(|b| v >= b.1 && v < b.2).unwrap_or(5)
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Statistics of one slice.
pub fn slice_stats(hu: &HuSlice) -> HuStats {
    let n = hu.data.len() as f64;
    let mut counts = [0usize; 6];
    let mut hist = vec![0f64; HIST_BINS];
    let (mut soft, mut fat) = (Vec::new(), Vec::new());
    for &v in &hu.data {
        let v = v as f32;
        let b = band_of(v);
        counts[b] += 1;
        let hb = ((v - HIST_LO) / HIST_BIN).floor().clamp(0.0, (HIST_BINS - 1) as f32) as usize;
        hist[hb] += 1.0 / n;
        match b {
            2 => fat.push(v),
            3 => soft.push(v),
            _ => {}
        }
    }
    let body: usize = counts[1..].iter().sum();
    let mut body_band_fraction = [0f64; 6];
    for b in 1..6 {
        body_band_fraction[b] = counts[b] as f64 / body.max(1) as f64;
    }
    let (soft_mean, soft_std) = mean_std(&soft);
    let (fat_mean, fat_std) = mean_std(&fat);
    let (mut ns, mut nf) = (Vec::new(), Vec::new());
    const B: usize = 8;
    for by in (0..hu.height.saturating_sub(B - 1)).step_by(B) {
        for bx in (0..hu.width.saturating_sub(B - 1)).step_by(B) {
            let block: Vec<f32> = (0..B * B).map(|i| hu.data[(by + i / B) * hu.width + bx + i % B] as f32).collect();
            let bands: Vec<usize> = block.iter().map(|v| band_of(*v)).collect();
            let (_, s) = mean_std(&block);
            if bands.iter().all(|b| *b == 3) {
                ns.push(s);
            } else if bands.iter().all(|b| *b == 2) {
                nf.push(s);
            }
        }
    }
    HuStats {
        slices: 1,
        band_fraction: counts.map(|c| c as f64 / n),
        body_band_fraction,
        soft_mean,
        soft_std,
        fat_mean,
        fat_std,
        noise_soft: median(ns),
        noise_fat: median(nf),
        min_hu: hu.data.iter().copied().min().unwrap_or(0) as f64,
        histogram: hist,
    }
}

/// Per-slice statistics averaged over slices (NaN entries, e.g. a slice without fat blocks,
/// are left out of that entry's mean).
pub fn average(stats: &[HuStats]) -> HuStats {
    let avg = |f: &dyn Fn(&HuStats) -> f64| {
        let v: Vec<f64> = stats.iter().map(f).filter(|x| x.is_finite()).collect();
        if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
    };
    let mut out = HuStats { slices: stats.len(), histogram: vec![0.0; HIST_BINS], ..Default::default() };
    for b in 0..6 {
        out.band_fraction[b] = avg(&|s| s.band_fraction[b]);
        out.body_band_fraction[b] = avg(&|s| s.body_band_fraction[b]);
    }
    out.soft_mean = avg(&|s| s.soft_mean);
    out.soft_std = avg(&|s| s.soft_std);
    out.fat_mean = avg(&|s| s.fat_mean);
    out.fat_std = avg(&|s| s.fat_std);
    out.noise_soft = avg(&|s| s.noise_soft);
    out.noise_fat = avg(&|s| s.noise_fat);
    out.min_hu = stats.iter().map(|s| s.min_hu).fold(f64::INFINITY, f64::min);
    for i in 0..HIST_BINS {
        out.histogram[i] = avg(&|s| s.histogram[i]);
    }
    out
}

/// Averaged statistics of the key slices of a data set (at most `max_slices` rows, in file
/// order; only rows of the given coarse types when `types` is set, so that, say, the liver
/// slices of two sets are compared with each other). Rows whose key slice cannot be read are
/// returned as messages in the second value, not hidden.
pub fn dataset_stats(root: &Path, max_slices: usize, types: Option<&HashSet<CoarseType>>) -> Result<(HuStats, Vec<String>)> {
    let info = read_dl_info(root.join("DL_info.csv"))?;
    let mut stats = Vec::new();
    let mut failed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &info.records {
        if stats.len() >= max_slices {
            break;
        }
        if types.is_some_and(|t| !t.contains(&r.coarse_type)) {
            continue;
        }
        let p = r.slice_path(root, 0);
        if !seen.insert(p.clone()) {
            continue; // several lesions on one key slice: count the slice once
        }
        match load_hu(&p) {
            Ok(hu) => stats.push(slice_stats(&hu)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    Ok((average(&stats), failed))
}

/// Histogram intersection of two normalised histograms: 1 = identical, 0 = disjoint.
pub fn histogram_overlap(a: &HuStats, b: &HuStats) -> f64 {
    a.histogram.iter().zip(&b.histogram).map(|(x, y)| x.min(*y)).sum()
}

/// A side-by-side text table of two sets' statistics.
pub fn compare_report(name_a: &str, a: &HuStats, name_b: &str, b: &HuStats) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<28} {:>12} {:>12}", "HU statistic", name_a, name_b);
    let _ = writeln!(s, "{:<28} {:>12} {:>12}", "key slices", a.slices, b.slices);
    for (i, band) in BANDS.iter().enumerate() {
        let _ = writeln!(s, "{:<28} {:>12.3} {:>12.3}", format!("frac {}", band.0), a.band_fraction[i], b.band_fraction[i]);
    }
    for (i, band) in BANDS.iter().enumerate().skip(1) {
        let _ = writeln!(s, "{:<28} {:>12.3} {:>12.3}", format!("body frac {}", band.0), a.body_band_fraction[i], b.body_band_fraction[i]);
    }
    let rows: [(&str, f64, f64); 7] = [
        ("soft tissue mean HU", a.soft_mean, b.soft_mean),
        ("soft tissue std HU", a.soft_std, b.soft_std),
        ("fat mean HU", a.fat_mean, b.fat_mean),
        ("fat std HU", a.fat_std, b.fat_std),
        ("noise in soft tissue HU", a.noise_soft, b.noise_soft),
        ("noise in fat HU", a.noise_fat, b.noise_fat),
        ("min HU", a.min_hu, b.min_hu),
    ];
    for (n, x, y) in rows {
        let _ = writeln!(s, "{n:<28} {x:>12.1} {y:>12.1}");
    }
    let _ = writeln!(s, "{:<28} {:>25.3}", "histogram overlap (0..1)", histogram_overlap(a, b));
    s
}
