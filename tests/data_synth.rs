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
        // The marks lie on the true mask.
        for p in r.recist {
            assert_eq!(mask.data[p[1].round() as usize * 256 + p[0].round() as usize], 255, "{}", r.file_name);
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
