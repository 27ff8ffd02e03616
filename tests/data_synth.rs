//! The synthetic DeepLesion: layout, determinism, masks agree with RECIST marks, every type.

use coseg::data::synth::{synth_dataset, synth_lesion, SynthParams};
use coseg::data::*;
use coseg::io::read_gray8;
use std::collections::HashSet;

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

#[test]
fn writes_the_deeplesion_layout_with_masks_and_neighbours() {
    let dir = std::env::temp_dir().join(format!("coseg-synth-{}", std::process::id()));
    let params = SynthParams { lesions: 6, seed: 17, size: 256, neighbours: true };
    let s = synth_dataset(&dir, &params).unwrap();
    assert_eq!((s.lesions, s.slices_written), (6, 18));
    let header = std::fs::read_to_string(dir.join("DL_info.csv")).unwrap();
    assert_eq!(header.lines().next().unwrap(), dl_info::DL_INFO_COLUMNS.join(","));
    let info = read_dl_info(dir.join("DL_info.csv")).unwrap();
    assert_eq!((info.records.len(), info.skipped.len()), (6, 0));
    for r in &info.records {
        let sl = load_lesion_slices(&dir, r).unwrap();
        assert_eq!(sl.has_neighbour, [true, true], "{}", r.file_name);
        assert_ne!(sl.channels[0], sl.channels[1]);
        let mask = read_gray8(dir.join("masks").join(&r.file_name)).unwrap();
        assert!(mask.data.iter().all(|v| *v == 0 || *v == 255));
        // The marks are a reader's: each near the mask, within a generous bound on a reader's slip.
        let long = dist(r.recist[0], r.recist[1]);
        for p in r.recist {
            let near = (0..256 * 256)
                .filter(|i| mask.data[*i] == 255)
                .map(|i| dist(p, [(i % 256) as f32, (i / 256) as f32]))
                .fold(f32::INFINITY, f32::min);
            assert!(near <= 0.3 * long + 4.0, "{}: mark {p:?} is {near} px off the mask", r.file_name);
        }
        assert!(r.bbox[0] <= r.recist_box()[0] - 4.99 || r.bbox[0] == 0.0);
    }
    // Same seed, same bytes.
    let again = synth_lesion(17, 3, 256).unwrap();
    let key = load_hu(info.records[3].slice_path(&dir, 0)).unwrap();
    assert_eq!(again.slices[1], key);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn lesions_cover_every_type_size_and_density_class() {
    let mut types = HashSet::new();
    let mut outlines = HashSet::new();
    let (mut hypo, mut hyper) = (0, 0);
    let mut long_mm = Vec::new();
    for i in 0..60 {
        let s = synth_lesion(4, i, 256).unwrap();
        let r = &s.record;
        types.insert(r.coarse_type);
        outlines.insert(format!("{:?}", s.lesion.outline));
        // RECIST agrees with the mask: long axis >= short axis, perpendicular, area plausible.
        let (l, sh) = (r.long_axis_px(), r.short_axis_px());
        assert!(l >= sh && sh >= 1.0, "{}: {l} {sh}", r.file_name);
        let dl = [r.recist[1][0] - r.recist[0][0], r.recist[1][1] - r.recist[0][1]];
        let ds = [r.recist[3][0] - r.recist[2][0], r.recist[3][1] - r.recist[2][1]];
        assert!((dl[0] * ds[0] + dl[1] * ds[1]).abs() / (l * sh) < 0.01);
        let area = s.mask.data.iter().filter(|v| **v > 0).count() as f32;
        let ellipse = std::f32::consts::PI / 4.0 * (l + 1.0) * (sh + 1.0);
        assert!(area > 0.4 * ellipse && area < 1.8 * ellipse, "{}: area {area} vs {ellipse}", r.file_name);
        assert!(dist(r.recist[0], r.recist[1]) == l);
        long_mm.push(l * r.spacing[0]);
        // Lesion contrast against the ring around it, measured on the key slice.
        let key = &s.slices[1];
        let (mut inside, mut ni) = (0.0f64, 0);
        for (i, m) in s.mask.data.iter().enumerate() {
            if *m > 0 {
                inside += key.data[i] as f64;
                ni += 1;
            }
        }
        let d = s.lesion.core_hu - s.lesion.host_hu;
        if d < -20.0 { hypo += 1 }
        if d > 20.0 { hyper += 1 }
        assert!(ni > 0 && (inside / ni as f64).is_finite());
    }
    assert_eq!(types.len(), 8, "{types:?}");
    assert_eq!(outlines.len(), 3);
    assert!(hypo > 5 && hyper > 5, "hypo {hypo} hyper {hyper}");
    let min = long_mm.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = long_mm.iter().cloned().fold(0.0, f32::max);
    assert!(min < 10.0 && max > 30.0 && max < 75.0, "long axes {min}..{max} mm");
}

/// Alpha of a lesion's paint per pixel (rendered over two flat hosts), and its true mask.
fn lesion_alpha(lesion: &coseg::data::synth::lesion::Lesion, side: usize) -> (Vec<f32>, Vec<u8>) {
    let mut lesion = lesion.clone();
    lesion.abutting = None;
    let (mut a, mut b, mut mask) = (vec![0f32; side * side], vec![1000f32; side * side], vec![0u8; side * side]);
    lesion.render(0.0, &mut a, side, side, Some(&mut mask));
    lesion.render(0.0, &mut b, side, side, None);
    (a.iter().zip(&b).map(|(a, b)| 1.0 - (b - a) / 1000.0).collect(), mask)
}

#[test]
fn ill_defined_margins_fade_over_their_width_and_the_mask_is_their_middle() {
    let side = 256;
    let (mut sharp, mut soft) = (0, 0);
    for i in 0..120 {
        let s = synth_lesion(8, i, side).unwrap();
        let (alpha, mask) = lesion_alpha(&s.lesion, side);
        let partial = alpha.iter().filter(|a| **a > 0.02 && **a < 0.98).count() as f32;
        // Mask pixels with a 4-neighbour outside: the outline's length in pixels.
        let edge = (1..side - 1)
            .flat_map(|y| (1..side - 1).map(move |x| (x, y)))
            .filter(|&(x, y)| mask[y * side + x] > 0 && [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)].iter().any(|&(u, v)| mask[v * side + u] == 0))
            .count() as f32;
        let m = s.lesion.margin_px;
        // The mask is where the fade passes one half.
        for (a, k) in alpha.iter().zip(&mask) {
            if *k > 0 {
                assert!(*a >= 0.45, "lesion {i}: a mask pixel painted at alpha {a}");
            } else {
                assert!(*a <= 0.55, "lesion {i}: a pixel outside the mask painted at alpha {a}");
            }
        }
        if m >= 2.0 && edge > 20.0 {
            soft += 1;
            assert!(partial / edge > 0.5 * m, "lesion {i}: margin {m} px but {partial} partial pixels along {edge}");
        } else if m == 1.0 && edge > 20.0 {
            sharp += 1;
            assert!(partial / edge < 2.0, "lesion {i}: a sharp margin with {partial} partial pixels along {edge}");
        }
    }
    assert!(sharp > 20 && soft > 5, "sharp {sharp}, ill-defined {soft}");
}

#[test]
fn abutting_structures_are_painted_at_lesion_density_but_not_masked() {
    let side = 256;
    let mut checked = 0;
    for i in 0..120 {
        let s = synth_lesion(9, i, side).unwrap();
        let Some((neighbour, value)) = s.lesion.abutting.clone() else { continue };
        assert!((value - s.lesion.core_hu).abs() <= 15.0, "lesion {i}: neighbour {value} HU, lesion core {} HU", s.lesion.core_hu);
        let (x, y) = (neighbour.cx.round() as usize, neighbour.cy.round() as usize);
        if x >= side || y >= side || neighbour.rx < 1.5 {
            continue;
        }
        let mut plane = vec![-500f32; side * side];
        let mut mask = vec![0u8; side * side];
        s.lesion.render(0.0, &mut plane, side, side, Some(&mut mask));
        let (alpha, _) = lesion_alpha(&s.lesion, side);
        if alpha[y * side + x] > 0.0 {
            continue; // the lesion's own fade reaches the neighbour's centre
        }
        assert_eq!(mask[y * side + x], 0, "lesion {i}: the neighbour's centre is in the mask");
        assert!((plane[y * side + x] - value).abs() < 0.5, "lesion {i}: {} HU at the neighbour's centre, want {value}", plane[y * side + x]);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} lesions with an abutting structure checked");
}

#[test]
fn reader_marks_scatter_around_the_exact_ones_without_bias() {
    use coseg::data::synth::as_drawn;
    use rand::SeedableRng;
    // An exact RECIST: a 40 px long axis at an angle, a 20 px short axis across its middle.
    let (c, d, n) = ([200.0f32, 180.0], [0.8f32, 0.6], [-0.6f32, 0.8]);
    let at = |u: f32, v: f32| [c[0] + u * d[0] + v * n[0], c[1] + u * d[1] + v * n[1]];
    let exact = [at(-20.0, 0.0), at(20.0, 0.0), at(0.0, -10.0), at(0.0, 10.0)];
    let along = |p: [f32; 2], q: [f32; 2], dir: [f32; 2]| (p[0] - q[0]) * dir[0] + (p[1] - q[1]) * dir[1];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let spread = |rng: &mut rand_chacha::ChaCha8Rng, margin: f32| {
        let trials = 4000;
        let (mut sum, mut sum2) = (0.0f64, 0.0f64);
        for _ in 0..trials {
            let m = as_drawn(rng, exact, margin, 512);
            let (l, s) = (dist(m[0], m[1]), dist(m[2], m[3]));
            assert!(s <= 0.98 * l + 1e-3 && s >= 1.0, "short {s} long {l}");
            // The short axis stays perpendicular to the long one.
            let dot = (m[1][0] - m[0][0]) * (m[3][0] - m[2][0]) + (m[1][1] - m[0][1]) * (m[3][1] - m[2][1]);
            assert!(dot.abs() < 1e-3 * l * s, "dot {dot}");
            // Overshoot of the long axis's second end point along the axis.
            let e = along(m[1], exact[1], d) as f64;
            sum += e;
            sum2 += e * e;
        }
        let mean = sum / trials as f64;
        (mean, (sum2 / trials as f64 - mean * mean).sqrt())
    };
    let (mean, sd) = spread(&mut rng, 1.0);
    let want = 0.04 * 40.0 + 0.2 + 0.25;
    assert!(mean.abs() < 4.0 * want / 4000f64.sqrt(), "biased: mean {mean}");
    assert!((sd / want - 1.0).abs() < 0.06, "sd {sd} want {want}");
    // A fading margin spreads the marks wider.
    let (_, wide) = spread(&mut rng, 5.0);
    assert!((wide / (want + 1.0) - 1.0).abs() < 0.06, "sd {wide} want {}", want + 1.0);
    // A tiny lesion (3 x 1.5 px), whose slips are as large as itself, keeps usable marks: no
    // diameter under half its true length, the short one at least 1 px and under the long one.
    let tiny = [at(-1.5, 0.0), at(1.5, 0.0), at(0.0, -0.75), at(0.0, 0.75)];
    let mut shrunk = 0;
    for _ in 0..2000 {
        let m = as_drawn(&mut rng, tiny, 3.0, 512);
        let (l, s) = (dist(m[0], m[1]), dist(m[2], m[3]));
        assert!(l >= 1.5 - 1e-3 && s >= 1.0 - 1e-3 && s <= 0.98 * l + 1e-3, "long {l} short {s}");
        shrunk += (l < 3.0) as usize;
    }
    assert!(shrunk > 200, "the floor, not the slips, decided every length ({shrunk} of 2000 shorter)");
}
