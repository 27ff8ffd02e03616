//! `coseg synth`: a synthetic DeepLesion. Each lesion gets its own synthetic patient (a
//! [`anatomy::Phantom`] of the chest, upper abdomen or pelvis), a lesion of its coarse type in a
//! plausible host tissue ([`lesion::Lesion`]), partial-volume blur and correlated noise, the
//! key slice and its neighbours key-1, key+1 as 16-bit PNG, the true mask, and a DL_info.csv
//! row whose RECIST marks are measured on the true mask ([`crate::data::recist`]) and then moved
//! the way a reader's hand moves them ([`as_drawn`]): real marks are not the exact extremes.
//!
//! Deterministic for a seed: lesion `i` draws from ChaCha8 stream `i` of the seed, whatever the
//! thread count.

pub mod anatomy;
pub mod lesion;
pub mod shape;

use crate::data::dl_info::{recist_box_of, write_dl_info, CoarseType, LesionRecord, OfficialSplit};
use crate::data::recist::recist_from_mask;
use crate::data::slice::{save_hu, HuSlice};
use crate::error::{Error, Result};
use crate::io::{write_u8, Image};
use anatomy::{Phantom, Region};
use lesion::{region_for, Lesion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::path::Path;

/// Settings of a synthetic set.
#[derive(Clone, Debug)]
pub struct SynthParams {
    pub lesions: usize,
    pub seed: u64,
    /// Slice side in pixels (DeepLesion: 512).
    pub size: usize,
    /// Write slices key-1 and key+1 as well.
    pub neighbours: bool,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams { lesions: 100, seed: 0, size: 512, neighbours: true }
    }
}

/// One generated lesion in memory.
#[derive(Clone, Debug)]
pub struct SynthLesion {
    pub record: LesionRecord,
    /// Slices key-1, key, key+1 in HU.
    pub slices: [HuSlice; 3],
    /// True lesion mask of the key slice, 0/255.
    pub mask: Image<u8>,
    pub lesion: Lesion,
}

/// Coarse types with DeepLesion's test-split frequencies (bone 108 ... pelvis 409 of 4,927).
const TYPE_WEIGHTS: [(CoarseType, u32); 8] = [
    (CoarseType::Bone, 108),
    (CoarseType::Abdomen, 1173),
    (CoarseType::Mediastinum, 864),
    (CoarseType::Liver, 700),
    (CoarseType::Lung, 1100),
    (CoarseType::Kidney, 234),
    (CoarseType::SoftTissue, 339),
    (CoarseType::Pelvis, 409),
];

fn draw_type(rng: &mut impl Rng) -> CoarseType {
    let total: u32 = TYPE_WEIGHTS.iter().map(|w| w.1).sum();
    let mut pick = rng.random_range(0..total);
    for (t, w) in TYPE_WEIGHTS {
        if pick < w {
            return t;
        }
        pick -= w;
    }
    CoarseType::Abdomen
}

/// The RNG of lesion `index` for `seed`.
pub fn lesion_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// Side of the shared noise texture (a power of two: wrapping is a mask).
const NOISE_SIDE: usize = 1024;

/// A generator for one synthetic set: the seed, the slice size, and a texture of correlated
/// unit-variance CT noise shared by all slices (each slice reads it at its own random offset
/// and sign, which is far cheaper than drawing 3 x 512 x 512 normals per lesion).
pub struct Synthesizer {
    seed: u64,
    size: usize,
    noise: Vec<f32>,
}

impl Synthesizer {
    pub fn new(seed: u64, size: usize) -> Result<Synthesizer> {
        if !(64..=4096).contains(&size) {
            return Err(Error::invalid("synth", format!("slice size {size} is outside 64..=4096 pixels")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f_6973_65); // own stream: "noise"
        let n = NOISE_SIDE;
        let white: Vec<f32> = (0..n * n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
        // CT noise is spatially correlated: [1,2,1]/4 in x and y (with wrap-around), then
        // rescaled to unit variance (the kernel leaves sqrt(6/16)^2 = 0.375 of the std).
        let idx = |x: usize, y: usize| (y % n) * n + (x % n);
        let mut tmp = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                tmp[idx(x, y)] = 0.25 * (white[idx(x + n - 1, y)] + white[idx(x + 1, y)]) + 0.5 * white[idx(x, y)];
            }
        }
        let mut noise = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                noise[idx(x, y)] = (0.25 * (tmp[idx(x, y + n - 1)] + tmp[idx(x, y + 1)]) + 0.5 * tmp[idx(x, y)]) / 0.375;
            }
        }
        Ok(Synthesizer { seed, size, noise })
    }

    /// Generates lesion `index`: deterministic for (seed, index, size).
    pub fn lesion(&self, index: usize) -> Result<SynthLesion> {
        let (seed, size) = (self.seed, self.size);
        let mut rng = lesion_rng(seed, index);
        let coarse_type = draw_type(&mut rng);
        for _attempt in 0..20 {
            let region = region_for(coarse_type, &mut rng);
            // Reconstruction field of view 320-500 mm over the slice, as in clinical CT.
            let fov_mm = [320.0f32, 340.0, 350.0, 360.0, 380.0, 400.0, 420.0, 460.0, 500.0][rng.random_range(0..9)];
            let spacing = fov_mm / size as f32;
            let z_spacing = match rng.random_range(0..100) {
                0..=46 => 1.0,
                47..=48 => 2.0,
                49 => 2.5,
                _ => 5.0,
            };
            let phantom = Phantom::new(&mut rng, region, spacing, size, size);
            let Some(lesion) = Lesion::place(&mut rng, &phantom, coarse_type) else { continue };
            let mut mask = vec![0u8; size * size];
            let mut planes = [vec![0f32; size * size], vec![0f32; size * size], vec![0f32; size * size]];
            for (k, plane) in planes.iter_mut().enumerate() {
                let dz = (k as f32 - 1.0) * z_spacing;
                phantom.render(dz, plane);
                let m = if k == 1 { Some(mask.as_mut_slice()) } else { None };
                lesion.render(dz, plane, size, size, m);
            }
            let Some(exact) = recist_from_mask(&mask, size, size) else { continue };
            let recist = as_drawn(&mut rng, exact, lesion.margin_px, size);
            let slices = planes.map(|p| self.finish_slice(&mut rng, p, &phantom));
            let record = make_record(&mut rng, index, coarse_type, region, recist, &lesion, spacing, z_spacing, size);
            return Ok(SynthLesion { record, slices, mask: Image::new(size, size, 1, mask), lesion });
        }
        Err(Error::invalid("synth", format!("lesion {index} (seed {seed}): no placement found in 20 patients")))
    }

    /// Partial-volume blur, correlated noise, rounding to integer HU in the scanner range.
    fn finish_slice(&self, rng: &mut impl Rng, mut hu: Vec<f32>, ph: &Phantom) -> HuSlice {
        let (w, h) = (ph.width, ph.height);
        blur3(&mut hu, w, h, ph.blur_w);
        let n = NOISE_SIDE;
        let (ox, oy) = (rng.random_range(0..n), rng.random_range(0..n));
        let gain = if rng.random_bool(0.5) { ph.noise_hu } else { -ph.noise_hu };
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            let noise_row = &self.noise[((y + oy) % n) * n..][..n];
            for (x, v) in hu[y * w..(y + 1) * w].iter().enumerate() {
                // Quantum noise is lower in the air around the patient.
                let g = if *v < -900.0 { 0.4 * gain } else { gain };
                let noisy = v + g * noise_row[(x + ox) % n];
                data.push(noisy.round().clamp(-1024.0, 3071.0) as i16);
            }
        }
        if let Some(pad) = ph.fov_pad {
            // Outside the reconstruction circle scanners store a constant.
            let (c, r2) = ((w as f32 - 1.0) / 2.0, (w.min(h) as f32 / 2.0).powi(2));
            for (i, v) in data.iter_mut().enumerate() {
                let (x, y) = ((i % w) as f32 - c, (i / w) as f32 - c);
                if x * x + y * y > r2 {
                    *v = pad;
                }
            }
        }
        Image::new(w, h, 1, data)
    }
}

/// Generates lesion `index` of the set with `seed` (builds a [`Synthesizer`]; prefer one
/// `Synthesizer` for many lesions).
pub fn synth_lesion(seed: u64, index: usize, size: usize) -> Result<SynthLesion> {
    Synthesizer::new(seed, size)?.lesion(index)
}

/// Separable 3-tap blur [wt, 1 - 2 wt, wt] along x then y, edges clamped.
fn blur3(v: &mut [f32], w: usize, h: usize, wt: f32) {
    let c = 1.0 - 2.0 * wt;
    let mut tmp = vec![0f32; v.len()];
    for y in 0..h {
        let row = &v[y * w..(y + 1) * w];
        let out = &mut tmp[y * w..(y + 1) * w];
        for x in 0..w {
            let l = row[x.saturating_sub(1)];
            let r = row[(x + 1).min(w - 1)];
            out[x] = wt * (l + r) + c * row[x];
        }
    }
    for y in 0..h {
        let (up, dn) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            v[y * w + x] = wt * (tmp[up * w + x] + tmp[dn * w + x]) + c * tmp[y * w + x];
        }
    }
}

/// Spread of a reader's end point along its diameter: this fraction of the diameter...
const READER_SD_FRACTION: f32 = 0.04;
/// ...plus this many pixels, plus a quarter of the lesion's margin width (a fading edge has no
/// one place to put the end point).
const READER_SD_PX: f32 = 0.2;
/// Spread of where along the long axis the short one is drawn, as a fraction of the long axis.
const READER_SHIFT_FRACTION: f32 = 0.06;

/// The marks a radiologist draws for the exact RECIST `exact` (long p1, p2, short p3, p4, the
/// short axis perpendicular): each end point lands N(0, sd) pixels beyond (or, negative, short
/// of) the exact one along its own diameter, sd = READER_SD_FRACTION * length + READER_SD_PX +
/// margin_px / 4, and the short axis is drawn N(0, READER_SHIFT_FRACTION * long) pixels off along the long axis,
/// staying perpendicular; no diameter is drawn under half its true length, nor the short one longer
/// than 0.98 of the long one. About 7-11 % of a diameter in all (one standard deviation): a modelling
/// choice of the order of inter-reader RECIST variability. These errors are what make GrabCut's
/// masks wander around the true outline from lesion to lesion while the image stays the same,
/// which a network trained on many of them can average out (the paper's premise).
pub fn as_drawn(rng: &mut impl Rng, exact: [[f32; 2]; 4], margin_px: f32, size: usize) -> [[f32; 2]; 4] {
    let sub = |a: [f32; 2], b: [f32; 2]| [a[0] - b[0], a[1] - b[1]];
    let len = |v: [f32; 2]| (v[0] * v[0] + v[1] * v[1]).sqrt();
    let (long_v, short_v) = (sub(exact[1], exact[0]), sub(exact[3], exact[2]));
    let (long_len, short_len) = (len(long_v), len(short_v));
    if long_len < 1.0 || short_len < 1.0 {
        return exact;
    }
    let d = [long_v[0] / long_len, long_v[1] / long_len];
    let n = [short_v[0] / short_len, short_v[1] / short_len];
    let mut nudge = |axis_len: f32| -> f32 {
        let sd = READER_SD_FRACTION * axis_len + READER_SD_PX + 0.25 * margin_px;
        rng.sample::<f32, _>(StandardNormal) * sd
    };
    let (e1, e2) = (nudge(long_len), nudge(long_len));
    let (e3, e4) = (nudge(short_len), nudge(short_len));
    let shift = rng.sample::<f32, _>(StandardNormal) * READER_SHIFT_FRACTION * long_len;
    let at = |p: [f32; 2], dir: [f32; 2], t: f32| [p[0] + dir[0] * t, p[1] + dir[1] * t];
    let (mut p1, mut p2) = (at(exact[0], d, -e1), at(exact[1], d, e2));
    let (mut p3, mut p4) = (at(at(exact[2], d, shift), n, -e3), at(at(exact[3], d, shift), n, e4));
    // Set a drawn diameter to `length` about its middle (it stays on its line).
    let resize = |a: [f32; 2], b: [f32; 2], dir: [f32; 2], length: f32| {
        let mid = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
        (at(mid, dir, -length / 2.0), at(mid, dir, length / 2.0))
    };
    // No reader draws a diameter under half its true length (tiny lesions would lose their
    // marks), nor the short axis longer than the long one.
    let drawn_long = len(sub(p2, p1));
    if drawn_long < 0.5 * long_len {
        (p1, p2) = resize(p1, p2, d, 0.5 * long_len);
    }
    let drawn_long = drawn_long.max(0.5 * long_len);
    let drawn_short = len(sub(p4, p3));
    let want_short = drawn_short.max(0.5 * short_len).max(1.0).min(0.98 * drawn_long);
    if (want_short - drawn_short).abs() > 1e-6 {
        (p3, p4) = resize(p3, p4, n, want_short);
    }
    let lim = (size - 1) as f32;
    [p1, p2, p3, p4].map(|p| p.map(|v| v.clamp(0.0, lim)))
}

#[allow(clippy::too_many_arguments)]
fn make_record(
    rng: &mut impl Rng,
    index: usize,
    coarse_type: CoarseType,
    region: Region,
    recist: [[f32; 2]; 4],
    lesion: &Lesion,
    spacing: f32,
    z_spacing: f32,
    size: usize,
) -> LesionRecord {
    let round3 = |v: f32| (v * 1000.0).round() / 1000.0;
    let recist = recist.map(|p| p.map(round3));
    let lim = (size - 1) as f32;
    // DeepLesion's Bounding_boxes: the RECIST box grown by 5 px, kept on the image.
    let [x0, y0, x1, y1] = recist_box_of(&recist);
    let bbox = [(x0 - 5.0).max(0.0), (y0 - 5.0).max(0.0), (x1 + 5.0).min(lim), (y1 + 5.0).min(lim)];
    let d = |a: [f32; 2], b: [f32; 2]| round3(((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt());
    // Patients get 1-3 studies; one lesion per series and key slice.
    let patient = (index / 3 + 1) as u32;
    let study = (index % 3 + 1) as u32;
    let slices_in_volume = (rng.random_range(60.0..400.0) / z_spacing) as u32 + 10;
    let key_slice = rng.random_range(5..slices_in_volume.max(10) - 3);
    let half = (lesion.rz_mm / z_spacing).ceil() as u32 + rng.random_range(2..6);
    let slice_range = [key_slice.saturating_sub(half).max(1), key_slice + half];
    let z = match region {
        Region::Chest => rng.random_range(0.15..0.45),
        Region::Abdomen => rng.random_range(0.4..0.62),
        Region::Pelvis => rng.random_range(0.6..0.85),
    };
    let window = match coarse_type {
        CoarseType::Lung if rng.random_bool(0.85) => [-1500.0, 500.0],
        CoarseType::Bone if rng.random_bool(0.7) => [-1500.0, 500.0],
        _ if rng.random_bool(0.05) => [-160.0, 240.0],
        _ => [-175.0, 275.0],
    };
    let split = match rng.random_range(0..100) {
        0..=69 => OfficialSplit::Train,
        70..=84 => OfficialSplit::Val,
        _ => OfficialSplit::Test,
    };
    let (cx, cy) = ((recist[0][0] + recist[1][0]) / 2.0, (recist[0][1] + recist[1][1]) / 2.0);
    let spacing = (spacing * 1e6).round() / 1e6;
    let series = 1;
    LesionRecord {
        row: 0,
        file_name: format!("{patient:06}_{study:02}_{series:02}_{key_slice:03}.png"),
        patient,
        study,
        series,
        key_slice,
        recist,
        bbox: bbox.map(round3),
        diameters_px: [d(recist[0], recist[1]), d(recist[2], recist[3])],
        location: [cx / size as f32, cy / size as f32, z].map(|v| (v * 1e5).round() / 1e5),
        coarse_type,
        possibly_noisy: rng.random_bool(0.003),
        slice_range,
        spacing: [spacing, spacing, z_spacing],
        image_size: [size as u32, size as u32],
        window,
        gender: if rng.random_bool(0.55) { "M" } else { "F" }.to_string(),
        age: Some(rng.random_range(18..90) as f32),
        split,
    }
}

/// What `synth_dataset` wrote.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    pub lesions: usize,
    pub slices_written: usize,
}

/// Writes a synthetic set under `out`: DL_info.csv, `Images_png/<series>/<slice>.png` (key and,
/// when asked, key +- 1) and masks/<File_name>.png (0/255).
pub fn synth_dataset(out: &Path, params: &SynthParams) -> Result<SynthSummary> {
    if params.lesions == 0 {
        return Err(Error::invalid("synth", "--lesions must be at least 1"));
    }
    let synth = Synthesizer::new(params.seed, params.size)?;
    let bar = crate::progress::bar(params.lesions as u64, "synth");
    let records = (0..params.lesions)
        .into_par_iter()
        .map(|i| {
            let s = synth.lesion(i)?;
            let rec = &s.record;
            let offsets: &[i32] = if params.neighbours { &[-1, 0, 1] } else { &[0] };
            for &o in offsets {
                save_hu(rec.slice_path(out, o), &s.slices[(o + 1) as usize])?;
            }
            write_u8(out.join("masks").join(&rec.file_name), &s.mask)?;
            bar.inc(1);
            Ok(s.record)
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let records: Vec<LesionRecord> =
        records.into_iter().enumerate().map(|(i, r)| LesionRecord { row: i + 2, ..r }).collect();
    write_dl_info(out.join("DL_info.csv"), &records)?;
    let per = if params.neighbours { 3 } else { 1 };
    Ok(SynthSummary { lesions: records.len(), slices_written: records.len() * per })
}
