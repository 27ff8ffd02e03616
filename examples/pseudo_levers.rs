//! Measures pseudo-mask levers on synthetic lesions (true masks) and the difficulty of synthetic
//! against real slices (no true masks needed). Not part of the library: the tool behind the
//! figures in the README's pseudo-mask paragraph.
//!
//! cargo run --release --example pseudo_levers -- levers SEEDS LESIONS [TYPE]
//!   every candidate (GrabCut settings and windows, the ellipse) and selection rule, Dice against
//!   the true masks lesion by lesion, mean ± standard error, and the paired difference to the ellipse.
//! cargo run --release --example pseudo_levers -- difficulty REAL_DIR SEEDS LESIONS [TYPE]
//!   contrast, core spread, noise, look-alike ring, GrabCut-vs-ellipse agreement and GrabCut's
//!   RECIST consistency on the real slices and on synthetic ones of TYPE (a coarse-type number).

use coseg::data::crop::{CropBox, CropParams};
use coseg::data::hu_stats::{LesionDifficulty, lesion_difficulty};
use coseg::data::slice::{HuSlice, load_hu, window_unit};
use coseg::data::synth::Synthesizer;
use coseg::data::{LesionRecord, read_dl_info};
use coseg::metrics::Mask;
use coseg::pseudo::{GrabCutParams, Recist, RecistEllipse, choose, grabcut, lesion_window, recist_consistency};
use rayon::prelude::*;

fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n).sqrt())
}

fn dice(a: &Mask, b: &Mask) -> f64 {
    let inter = a.data.iter().zip(&b.data).filter(|(x, y)| **x && **y).count();
    let s = a.area() + b.area();
    if s == 0 { 1.0 } else { 2.0 * inter as f64 / s as f64 }
}

/// (name, window: None = the row's, Some(margin) = lesion window, grabcut params).
fn candidates() -> Vec<(String, Option<f32>, GrabCutParams)> {
    let d = GrabCutParams::default();
    let mut v = vec![("gc".to_string(), None, d.clone())];
    for prior in [4.0f32, 48.0] {
        v.push((format!("gc_prior{prior}"), None, GrabCutParams { shape_prior: prior, ..d.clone() }));
    }
    v.push(("gc_gamma30".into(), None, GrabCutParams { gamma: 30.0, ..d.clone() }));
    for m in [50.0f32, 100.0] {
        v.push((format!("gc_lesionwin{m}"), Some(m), d.clone()));
    }
    v
}

/// Crop masks of every candidate, then the ellipse (last).
fn candidate_masks(hu: &HuSlice, rec: &LesionRecord) -> coseg::Result<(Vec<Mask>, Recist, CropBox)> {
    let cp = CropParams::default();
    let cb = CropBox::around(rec, &cp)?;
    let s = cp.size;
    let crop_hu = cb.crop_hu(hu);
    let recist = Recist::from_points(cb.recist_in_crop(rec));
    let e = RecistEllipse::new(&recist, s, s)?;
    let mut masks = Vec::new();
    for (_, win, p) in candidates() {
        let w = win.and_then(|m| lesion_window(&crop_hu, s, s, &e, m)).unwrap_or(rec.window);
        let img: Vec<f32> = crop_hu.iter().map(|&v| window_unit(v, w)).collect();
        masks.push(grabcut(&img, s, s, &recist, &p)?.mask);
    }
    masks.push(e.mask(s, s, 1.0));
    Ok((masks, recist, cb))
}

fn paste(cb: &CropBox, m: &Mask, w: usize, h: usize) -> Mask {
    Mask::from_image(&cb.paste_mask(&m.to_image().data, w, h).unwrap()).unwrap()
}

/// Selection rules: (name, candidate indices offered besides the ellipse, ellipse penalty, vote).
fn rules() -> Vec<(String, Vec<usize>, f32, bool)> {
    let mut v = Vec::new();
    for pen in [0.0f32, 0.025, 0.05, 0.1] {
        v.push((format!("fit[gc]+ell pen{pen}"), vec![0], pen, false));
        v.push((format!("fit[gc,prior4]+ell pen{pen}"), vec![0, 1], pen, false));
        v.push((format!("fit[gc,prior48]+ell pen{pen}"), vec![0, 2], pen, false));
        v.push((format!("fit[gc,lw50]+ell pen{pen}"), vec![0, 4], pen, false));
        v.push((format!("fit[gc,lw100]+ell pen{pen}"), vec![0, 5], pen, false));
        v.push((format!("fit[gc,gamma30]+ell pen{pen}"), vec![0, 3], pen, false));
        v.push((format!("fit[all]+ell pen{pen}"), vec![0, 1, 2, 3, 4, 5], pen, false));
        v.push((format!("fit[gc,prior4]+ell+vote pen{pen}"), vec![0, 1], pen, true));
    }
    v.push(("fit[gc] no ellipse".into(), vec![0], f32::INFINITY, false));
    v.push(("fit[gc,prior48] no ellipse".into(), vec![0, 2], f32::INFINITY, false));
    v.push(("fit[gc,lw100] no ellipse".into(), vec![0, 5], f32::INFINITY, false));
    v.push(("fit[gc,gamma30] no ellipse".into(), vec![0, 3], f32::INFINITY, false));
    v.push(("fit[all] no ellipse".into(), vec![0, 1, 2, 3, 4, 5], f32::INFINITY, false));
    v
}

fn synth_records(seed: u64, n: usize, ty: Option<i32>) -> Vec<(HuSlice, LesionRecord, Mask)> {
    let synth = Synthesizer::new(seed, 512).unwrap();
    // With a type filter, draw lesions until n of that type are found.
    let want = |i: usize| synth.lesion(i).ok().filter(|l| ty.is_none_or(|t| l.record.coarse_type as i32 == t));
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n && i < n * 40 {
        let batch: Vec<_> = (i..i + 64).into_par_iter().filter_map(want).collect();
        for l in batch {
            if out.len() < n {
                let [s0, s1, s2] = l.slices;
                let _ = (s0, s2);
                out.push((s1, l.record, Mask::from_image(&l.mask).unwrap()));
            }
        }
        i += 64;
    }
    out
}

fn levers(seeds: &[u64], n: usize, ty: Option<i32>, exact: bool) {
    let names: Vec<String> = candidates().into_iter().map(|c| c.0).chain(["ellipse".to_string()]).collect();
    let rules = rules();
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); names.len() + rules.len()];
    for &seed in seeds {
        let mut set = synth_records(seed, n, ty);
        if exact {
            // The marks measured on the true mask, as in the expert-mask slices.
            for (_, rec, truth) in &mut set {
                let m: Vec<u8> = truth.data.iter().map(|&b| b as u8).collect();
                if let Some(r) = coseg::data::recist::recist_from_mask(&m, truth.width, truth.height) {
                    rec.recist = r;
                }
            }
        }
        let rows: Vec<Vec<f64>> = set
            .par_iter()
            .filter_map(|(hu, rec, truth)| {
                let (masks, recist, cb) = candidate_masks(hu, rec).ok()?;
                let full: Vec<Mask> = masks.iter().map(|m| paste(&cb, m, hu.width, hu.height)).collect();
                let mut d: Vec<f64> = full.iter().map(|m| dice(m, truth)).collect();
                let ell = masks.len() - 1;
                for (_, idx, pen, vote) in &rules {
                    let mut offered: Vec<Mask> = idx.iter().map(|&i| masks[i].clone()).collect();
                    let mut offered_full: Vec<&Mask> = idx.iter().map(|&i| &full[i]).collect();
                    offered.push(masks[ell].clone());
                    offered_full.push(&full[ell]);
                    let vote_full;
                    if *vote {
                        let voters = offered.len();
                        let v = Mask::from_fn(128, 128, |x, y| 2 * offered.iter().filter(|m| m.get(x, y)).count() > voters);
                        vote_full = paste(&cb, &v, hu.width, hu.height);
                        offered.push(v);
                        offered_full.push(&vote_full);
                    }
                    let (k, _) = choose(&offered, &recist, idx.len(), *pen);
                    d.push(dice(offered_full[k], truth));
                }
                Some(d)
            })
            .collect();
        let e = names.len() - 1;
        println!("seed {seed}: {} lesions scored", rows.len());
        for (j, name) in names.iter().chain(rules.iter().map(|r| &r.0)).enumerate() {
            let v: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            let diff: Vec<f64> = rows.iter().map(|r| r[j] - r[e]).collect();
            let (m, se) = mean_se(&v);
            let (dm, dse) = mean_se(&diff);
            println!("  {name:<36} {m:.4} ± {se:.4}   vs ellipse {dm:+.4} ± {dse:.4}");
            all[j].extend(rows.iter().map(|r| r[j] - r[e]));
        }
    }
    println!("pooled over seeds {seeds:?}: paired difference to the ellipse");
    for (j, name) in names.iter().chain(rules.iter().map(|r| &r.0)).enumerate() {
        let (dm, dse) = mean_se(&all[j]);
        println!("  {name:<36} {dm:+.4} ± {dse:.4}  ({:.1} SE, n={})", dm / dse.max(1e-12), all[j].len());
    }
}

/// (difficulty, Dice(GrabCut, ellipse), GrabCut's mean absolute diameter error).
fn measure(hu: &HuSlice, rec: &LesionRecord) -> Option<(LesionDifficulty, f64, f64)> {
    let d = lesion_difficulty(hu, rec.recist).ok()?;
    let (masks, recist, _) = candidate_masks(hu, rec).ok()?;
    let ell = masks.last().unwrap();
    let agree = dice(&masks[0], ell);
    let c = recist_consistency(&masks[0], &recist)?.mean_abs() as f64;
    Some((d, agree, c))
}

fn print_dist(label: &str, rows: &[(LesionDifficulty, f64, f64)]) {
    let cols: [(&str, fn(&(LesionDifficulty, f64, f64)) -> f64); 9] = [
        ("edge width (radius)", |r| r.0.edge_width as f64),
        ("|contrast| HU", |r| r.0.contrast_hu.abs() as f64),
        ("core std HU", |r| r.0.core_std_hu as f64),
        ("noise HU", |r| r.0.noise_hu as f64),
        ("CNR", |r| r.0.cnr as f64),
        ("look-alike ring", |r| r.0.lookalike_ring as f64),
        ("long px", |r| r.0.long_px as f64),
        ("Dice(GC, ellipse)", |r| r.1),
        ("GC diameter err", |r| r.2),
    ];
    println!("{label} ({} lesions): mean ± SE [q25 median q75]", rows.len());
    for (n, f) in cols {
        let mut v: Vec<f64> = rows.iter().map(f).filter(|x| x.is_finite()).collect();
        let (m, se) = mean_se(&v);
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!("  {n:<20} {m:>8.3} ± {se:<7.3} [{:.3} {:.3} {:.3}]", q(0.25), q(0.5), q(0.75));
    }
}

fn difficulty(real: &str, seeds: &[u64], n: usize, ty: Option<i32>) {
    let info = read_dl_info(std::path::Path::new(real).join("DL_info.csv")).unwrap();
    let rows: Vec<_> = info
        .records
        .iter()
        .filter_map(|r| {
            let hu = load_hu(r.slice_path(std::path::Path::new(real), 0)).ok()?;
            measure(&hu, r)
        })
        .collect();
    print_dist("real", &rows);
    for &seed in seeds {
        let set = synth_records(seed, n, ty);
        let rows: Vec<_> = set.par_iter().filter_map(|(hu, rec, _)| measure(hu, rec)).collect();
        print_dist(&format!("synthetic seed {seed}"), &rows);
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let seeds = |s: &str| s.split(',').map(|v| v.parse().unwrap()).collect::<Vec<u64>>();
    match a.get(1).map(String::as_str) {
        Some("levers") => levers(&seeds(&a[2]), a[3].parse().unwrap(), a.get(4).and_then(|t| t.parse().ok()), a.iter().any(|v| v == "exact")),
        Some("difficulty") => difficulty(&a[2], &seeds(&a[3]), a[4].parse().unwrap(), a.get(5).map(|t| t.parse().unwrap())),
        _ => eprintln!("usage: pseudo_levers levers SEEDS LESIONS [TYPE] | difficulty REAL_DIR SEEDS LESIONS [TYPE]"),
    }
}
