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

/// What makes a lesion hard for GrabCut, measured around its RECIST ellipse on the key slice in
/// HU, without a true mask: core = inside the ellipse scaled by 0.7 (clear of the border the marks
/// may misplace), ring = between scales 1.3 and 1.8 (clear of the border on the other side).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LesionDifficulty {
    /// Median HU of the core minus median HU of the ring.
    pub contrast_hu: f32,
    /// Standard deviation of HU in the core (texture, rim, necrosis and noise together).
    pub core_std_hu: f32,
    /// Noise: 1.4826 * median |horizontal neighbour difference| / sqrt 2 over the box of the
    /// ellipse scaled by 2 (edges barely move a median).
    pub noise_hu: f32,
    /// |contrast| / noise.
    pub cnr: f32,
    /// Fraction of ring pixels whose 3x3 mean lies within 20 HU of the core median: tissue of
    /// lesion-like density touching the lesion.
    pub lookalike_ring: f32,
    /// Long diameter of the marks in pixels.
    pub long_px: f32,
    /// Width of the lesion's edge as a fraction of the ellipse radius: over rings of the ellipse
    /// (bins of 0.1 in ellipse radius), the radius where the median HU has fallen 80 % of the way
    /// from core to ring, minus where it has fallen 20 %. Blurred, ill-defined edges are wide.
    pub edge_width: f32,
}

/// [`LesionDifficulty`] of the lesion marked `recist` (DeepLesion order, slice pixels) on `hu`.
pub fn lesion_difficulty(hu: &HuSlice, recist: [[f32; 2]; 4]) -> Result<LesionDifficulty> {
    use crate::pseudo::{Recist, RecistEllipse};
    let r = Recist::from_points(recist);
    let e = RecistEllipse::new(&r, hu.width, hu.height)?;
    let LesionSamples { mut core, ring_px, mut diffs, mut shells } = sample_lesion(hu, &e);
    let (_, core_std) = mean_std(&core);
    let core_med = median_f32(&mut core);
    let mut ring: Vec<f32> = ring_px.iter().map(|&(x, y)| hu_at(hu, x, y)).collect();
    let ring_med = median_f32(&mut ring);
    let noise = 1.4826 * median_f32(&mut diffs) / std::f32::consts::SQRT_2;
    let contrast = core_med - ring_med;
    Ok(LesionDifficulty {
        contrast_hu: contrast,
        core_std_hu: core_std as f32,
        noise_hu: noise,
        cnr: contrast.abs() / noise.max(1.0),
        lookalike_ring: lookalike_fraction(hu, &ring_px, core_med),
        long_px: r.long_len(),
        edge_width: edge_width(&mut shells, core_med, contrast),
    })
}

/// The pixels [`lesion_difficulty`] reads, from the box of the ellipse scaled by 2.
struct LesionSamples {
    /// HU inside 0.7 of the ellipse radius (the centre pixel for a lesion a few pixels across).
    core: Vec<f32>,
    /// Positions between 1.3 and 1.8 of the ellipse radius.
    ring_px: Vec<(usize, usize)>,
    /// |horizontal neighbour difference| of HU.
    diffs: Vec<f32>,
    /// HU in shells of 0.1 ellipse radius, out to 1.8.
    shells: Vec<Vec<f32>>,
}

fn sample_lesion(hu: &HuSlice, e: &crate::pseudo::RecistEllipse) -> LesionSamples {
    let (w, h) = (hu.width, hu.height);
    let (bx0, by0, bx1, by1) = e.bbox();
    let (cx, cy, hx, hy) = ((bx0 + bx1) / 2.0, (by0 + by1) / 2.0, (bx1 - bx0) / 2.0 + 1.0, (by1 - by0) / 2.0 + 1.0);
    let clampx = |v: f32| v.round().clamp(0.0, (w - 1) as f32) as usize;
    let clampy = |v: f32| v.round().clamp(0.0, (h - 1) as f32) as usize;
    let (x0, x1, y0, y1) = (clampx(cx - 2.0 * hx), clampx(cx + 2.0 * hx), clampy(cy - 2.0 * hy), clampy(cy + 2.0 * hy));
    let (mut core, mut ring_px, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    let mut shells: Vec<Vec<f32>> = vec![Vec::new(); 18];
    for y in y0..=y1 {
        for x in x0..=x1 {
            let r2 = e.radius2(x as f32, y as f32);
            if let Some(b) = shells.get_mut((r2.sqrt() * 10.0) as usize) {
                b.push(hu_at(hu, x, y));
            }
            if r2 <= 0.49 {
                core.push(hu_at(hu, x, y));
            } else if (1.69..=3.24).contains(&r2) {
                ring_px.push((x, y));
            }
            if x < x1 {
                diffs.push((hu_at(hu, x + 1, y) - hu_at(hu, x, y)).abs());
            }
        }
    }
    if core.is_empty() {
        // A lesion a few pixels across: its centre pixel stands for the core.
        core.push(hu_at(hu, clampx(cx), clampy(cy)));
    }
    LesionSamples { core, ring_px, diffs, shells }
}

/// HU of pixel (x, y).
fn hu_at(hu: &HuSlice, x: usize, y: usize) -> f32 {
    hu.data[y * hu.width + x] as f32
}

/// The upper median (NaN when empty); sorts `v`.
fn median_f32(v: &mut [f32]) -> f32 {
    v.sort_by(f32::total_cmp);
    if v.is_empty() { f32::NAN } else { v[v.len() / 2] }
}

/// [`LesionDifficulty::lookalike_ring`]: the fraction of `ring_px` whose 3x3 mean HU lies within
/// 20 HU of `core_med`.
fn lookalike_fraction(hu: &HuSlice, ring_px: &[(usize, usize)], core_med: f32) -> f32 {
    let (w, h) = (hu.width, hu.height);
    let local_mean = |x: usize, y: usize| {
        let (mut s, mut n) = (0.0, 0.0);
        for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
            for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                s += hu_at(hu, xx, yy);
                n += 1.0;
            }
        }
        s / n
    };
    ring_px.iter().filter(|&&(x, y)| (local_mean(x, y) - core_med).abs() < 20.0).count() as f32 / ring_px.len().max(1) as f32
}

/// [`LesionDifficulty::edge_width`] from the HU `shells` (sorted here).
fn edge_width(shells: &mut [Vec<f32>], core_med: f32, contrast: f32) -> f32 {
    // Fraction of the core-to-ring fall reached in each shell (bin centre radius), outward from
    // the core; the first shell past 20 % and past 80 %, interpolated linearly.
    let fall: Vec<(f32, f32)> = shells
        .iter_mut()
        .enumerate()
        .skip(5)
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, b)| ((i as f32 + 0.5) / 10.0, (core_med - median_f32(b)) / if contrast.abs() > 1e-3 { contrast } else { 1.0 }))
        .collect();
    let cross = |level: f32| {
        fall.windows(2).find(|p| p[0].1 < level && p[1].1 >= level).map(|p| {
            let t = (level - p[0].1) / (p[1].1 - p[0].1);
            p[0].0 + t * (p[1].0 - p[0].0)
        })
    };
    match (cross(0.2), cross(0.8)) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => f32::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// A disc of `lesion` HU on `background` HU with Gaussian noise of `sigma`, optionally a disc
    /// of lesion density touching it on the right; marks through the disc's diameters.
    fn slice(rng: &mut impl Rng, lesion: f32, background: f32, sigma: f32, touching: bool) -> (HuSlice, [[f32; 2]; 4], f32) {
        let s = 128;
        let r: f32 = rng.random_range(14.0..22.0);
        let (cx, cy) = (64.0 + rng.random_range(-4.0..4.0f32), 64.0 + rng.random_range(-4.0..4.0f32));
        let n = Normal::new(0.0, sigma).unwrap();
        let data = (0..s * s)
            .map(|i| {
                let (x, y) = ((i % s) as f32, (i / s) as f32);
                let inside = (x - cx).powi(2) + (y - cy).powi(2) <= r * r;
                let neighbour = touching && (x - cx - 1.5 * r).powi(2) + (y - cy).powi(2) <= (0.6 * r).powi(2);
                ((if inside || neighbour { lesion } else { background }) + n.sample(rng)).round() as i16
            })
            .collect();
        (HuSlice::new(s, s, 1, data), [[cx - r, cy], [cx + r, cy], [cx, cy - r], [cx, cy + r]], r)
    }

    #[test]
    fn lesion_difficulty_reads_contrast_noise_and_lookalike_neighbours() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for _ in 0..5 {
            let (lesion, background) = (rng.random_range(-10.0..30.0f32), rng.random_range(70.0..120.0f32));
            let sigma = rng.random_range(5.0..15.0f32);
            let (hu, marks, r) = slice(&mut rng, lesion, background, sigma, false);
            let d = lesion_difficulty(&hu, marks).unwrap();
            assert!((d.contrast_hu - (lesion - background)).abs() < 4.0, "{d:?} lesion {lesion} background {background}");
            assert!((d.noise_hu / sigma - 1.0).abs() < 0.2, "{d:?} sigma {sigma}");
            assert!((d.cnr - d.contrast_hu.abs() / d.noise_hu).abs() < 1e-3);
            assert!(d.lookalike_ring < 0.05, "{d:?}");
            assert!((d.long_px - 2.0 * r).abs() < 1e-3);
            // A sharp disc: the fall happens within a pixel or two of the ellipse.
            assert!(d.edge_width < 0.25, "{d:?}");
            let (hu, marks, _) = slice(&mut rng, lesion, background, sigma, true);
            let t = lesion_difficulty(&hu, marks).unwrap();
            assert!(t.lookalike_ring > 0.1, "{t:?}");
        }
    }
}
