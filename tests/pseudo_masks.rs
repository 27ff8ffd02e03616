//! `pseudo_masks` end to end: on a small synthetic set the pseudo-masks beat the RECIST ellipse;
//! bad rows and broken files are named in the summary; the real DeepLesion sample gets masks and
//! overlays for every lesion.

use coseg::data::synth::{SynthParams, synth_dataset};
use coseg::metrics::Mask;
use coseg::pseudo::{PseudoMaskParams, PseudoMethod, Recist, pseudo_masks, recist_consistency};
use std::path::PathBuf;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("coseg-pseudo-{name}-{}", std::process::id()))
}

/// A synthetic set (one lesion per slice, no neighbour slices) in a fresh temporary folder:
/// the folder, and the set's root inside it.
fn synth_set(name: &str, lesions: usize, seed: u64, size: usize) -> (PathBuf, PathBuf) {
    let dir = temp(name);
    let data = dir.join("data");
    synth_dataset(&data, &SynthParams { lesions, seed, size, neighbours: false }).unwrap();
    (dir, data)
}

fn shared_dir() -> PathBuf {
    std::env::var("COSEG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

#[test]
fn pseudo_masks_beat_the_recist_ellipse_on_a_synthetic_set() {
    let (dir, data) = synth_set("synth", 16, 3, 512);
    let s = pseudo_masks(&data, &dir.join("out"), &PseudoMaskParams::default()).unwrap();
    eprint!("{}", s.report());
    let q = s.quality.as_ref().expect("synthetic set has masks/");
    assert_eq!(s.lesions_segmented + s.failed.len() + s.skipped_rows.len(), 16, "every row accounted for");
    assert!(s.lesions_segmented >= 14, "{}", s.report());
    assert_eq!(q.pseudo.count, s.masks_written);
    let (pseudo, ellipse) = (q.pseudo.metrics.dice.mean, q.ellipse.metrics.dice.mean);
    assert!(pseudo > ellipse && pseudo >= 0.85, "pseudo Dice {pseudo} vs ellipse {ellipse}");
    // Masks are full-slice 0/255 PNGs named as the rows' File_name.
    let name = q.pseudo.per_image.keys().next().unwrap();
    let img = coseg::io::read_gray8(dir.join("out").join(name)).unwrap();
    assert_eq!((img.width, img.height), (512, 512));
    assert!(img.data.iter().all(|&v| v == 0 || v == 255) && img.data.contains(&255));
    std::fs::remove_dir_all(dir).ok();
}

/// Every method on one synthetic set: RECIST-fit beats the ellipse; every lesion's consistency in
/// the summary and its JSON is what the written mask measures against the row's marks.
#[test]
fn recist_fit_beats_the_ellipse_and_reports_each_masks_consistency() {
    let (dir, data) = synth_set("fit", 12, 8, 256);
    let info = coseg::data::read_dl_info(data.join("DL_info.csv")).unwrap();
    let run = |method| {
        let p = PseudoMaskParams { method, ..Default::default() };
        let s = pseudo_masks(&data, &dir.join(format!("{method}")), &p).unwrap();
        eprint!("{}", s.report());
        s
    };
    let (fit, ellipse) = (run(PseudoMethod::RecistFit), run(PseudoMethod::Ellipse));
    let dice = |s: &coseg::pseudo::PseudoMaskSummary| s.quality.as_ref().unwrap().pseudo.metrics.dice.mean;
    assert!(dice(&fit) > dice(&ellipse), "recist-fit {} vs ellipse {}", dice(&fit), dice(&ellipse));
    // The ellipse method draws it on the crop and pastes it back; the reference draws it on the slice.
    assert!((dice(&ellipse) - ellipse.quality.as_ref().unwrap().ellipse.metrics.dice.mean).abs() < 0.02);
    assert_eq!(fit.lesions.len(), fit.lesions_segmented);
    assert!(fit.lesions.iter().all(|l| l.chosen.starts_with("grabcut#") || l.chosen == "ellipse"));
    let json: serde_json::Value = serde_json::from_str(&fit.to_json().unwrap()).unwrap();
    assert_eq!(json["method"], "recist-fit");
    assert_eq!(json["lesions"].as_array().unwrap().len(), fit.lesions_segmented);
    for (l, j) in fit.lesions.iter().zip(json["lesions"].as_array().unwrap()) {
        let rec = info.records.iter().find(|r| r.row == l.row).unwrap();
        let m = Mask::read(dir.join("recist-fit").join(&rec.file_name)).unwrap();
        let c = recist_consistency(&m, &Recist::from_points(rec.recist));
        assert_eq!(l.consistency, c, "row {}", l.row);
        if let Some(c) = c {
            assert!((j["consistency"]["long_error"].as_f64().unwrap() - c.long_error as f64).abs() < 1e-6);
            assert!(l.consistency.is_some_and(|x| (x.long_error, x.short_error) != (0.0, 0.0)), "row {}", l.row);
        }
    }
    let stats = fit.consistency_stats();
    assert_eq!(stats.measured + stats.unmeasured, fit.lesions_segmented);
    assert!(stats.mean_abs.0 > 0.0 && stats.mean_abs.0 < 0.3, "{stats:?}");
    assert_eq!(json["recist_consistency"]["measured"], stats.measured);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_rows_and_missing_slices_are_named_not_dropped() {
    let (dir, data) = synth_set("bad", 3, 5, 256);
    let info = coseg::data::read_dl_info(data.join("DL_info.csv")).unwrap();
    assert_eq!(info.records.len(), 3, "the synthetic rows are valid");
    // Row 3 (second record): its slice goes missing. Row 4: its RECIST marks leave the image.
    std::fs::remove_file(info.records[1].slice_path(&data, 0)).unwrap();
    let csv = std::fs::read_to_string(data.join("DL_info.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    let name = info.records[2].file_name.clone();
    let first_coord = format!("\"{}", info.records[2].recist[0][0]);
    let pos = lines[3].find(&first_coord).expect("coordinates column");
    lines[3].replace_range(pos..pos + first_coord.len(), "\"-40");
    std::fs::write(data.join("DL_info.csv"), lines.join("\n") + "\n").unwrap();
    // And a true mask of the wrong size for the first.
    let first = info.records[0].file_name.clone();
    Mask::empty(10, 10).write(data.join("masks").join(&first)).unwrap();

    let s = pseudo_masks(&data, &dir.join("out"), &PseudoMaskParams::default()).unwrap();
    let report = s.report();
    assert_eq!(s.rows, 3, "{report}");
    assert_eq!(s.skipped_rows.len(), 1, "{report}");
    assert_eq!(s.skipped_rows[0].file_name, name);
    assert!(s.skipped_rows[0].reason.contains("outside"), "{report}");
    assert_eq!(s.failed.len(), 1, "{report}");
    assert_eq!(s.failed[0].file_name, info.records[1].file_name);
    assert!(s.failed[0].reason.contains(".png"), "{report}");
    assert_eq!((s.lesions_segmented, s.masks_written), (1, 1));
    let q = s.quality.unwrap();
    assert_eq!(q.pseudo.count, 0);
    assert_eq!(q.pseudo.skipped.len(), 1);
    assert!(q.pseudo.skipped[0].reason.contains("10x10"), "{:?}", q.pseudo.skipped);
    assert!(report.contains(&name) && report.contains(&info.records[1].file_name), "{report}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn real_sample_gets_a_mask_and_an_overlay_per_lesion() {
    let data = shared_dir().join("data/deeplesion-sample");
    if !data.join("DL_info.csv").exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI: sample data missing at {}", data.display());
        eprintln!("skipping: no DeepLesion sample at {}", data.display());
        return;
    }
    let dir = temp("real");
    let p = PseudoMaskParams { overlays: Some(dir.join("overlays")), ..Default::default() };
    let s = pseudo_masks(&data, &dir.join("masks"), &p).unwrap();
    eprint!("{}", s.report());
    let info = coseg::data::read_dl_info(data.join("DL_info.csv")).unwrap();
    assert!(s.failed.is_empty(), "{}", s.report());
    assert_eq!(s.lesions_segmented, info.records.len());
    assert_eq!(s.overlays_written, info.records.len());
    for rec in &info.records {
        let m = Mask::read(dir.join("masks").join(&rec.file_name)).unwrap();
        assert_eq!([m.width as u32, m.height as u32], rec.image_size);
        // The mask covers the RECIST centre and stays near the marks: its area lies between a
        // quarter of the ellipse's and four times it.
        let [cx, cy] = rec.centre();
        assert!(m.get(cx.round() as usize, cy.round() as usize), "{}", rec.file_name);
        let ellipse = std::f32::consts::PI / 4.0 * rec.long_axis_px() * rec.short_axis_px();
        let area = m.area() as f32;
        assert!(area > 0.25 * ellipse && area < 4.0 * ellipse, "{}: area {area} vs ellipse {ellipse}", rec.file_name);
        let stem = rec.file_name.trim_end_matches(".png");
        let ov = coseg::io::read_u8(dir.join("overlays").join(format!("{stem}_row{}.png", rec.row))).unwrap();
        assert_eq!((ov.channels, ov.width), (3, 3 * p.crop.size));
    }
    std::fs::remove_dir_all(dir).ok();
}
