//! `coseg segment` and `coseg experiment run` end to end on a tiny trained demo: a lone slice is
//! cropped exactly as training cropped it (neighbour slices, window, box), the CLI's mask is the
//! library's, and an experiment config trains, evaluates and lands in results.csv / results.md.

use coseg::data::{CropParams, lesion_crop, read_dl_info};
use coseg::train::demo::{DemoParams, run_demo};
use coseg::train::infer::{LesionInput, restore, sample_from_slice, segment_pair, window_for_slice};
use std::path::Path;
use std::process::Command;

const TINY: &str = "[model]\ndepth = 18\nwidth = 0.125\noutput_stride = 8\n\n[train]\noptimizer = \"adam\"\nlr = 1e-3\nbatch_pairs = 2\nval_every = 2\ncheckpoint_every = 2\n";

fn coseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coseg")).args(args).env("COSEG_NO_PROGRESS", "1").output().unwrap()
}

#[test]
fn segment_crops_like_training_and_experiments_run() {
    let dir = std::env::temp_dir().join(format!("coseg-cli-segment-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let demo = DemoParams { out: dir.clone(), lesions: 24, seed: 4, clusters: 2, crop_size: 32, context: 0.5, iterations: 2, val_every: None, precision: None, model_train_toml: TINY.into() };
    run_demo(&demo).unwrap();
    let data = dir.join("data");
    let run = restore(&dir.join("train"), coseg::Device::Cpu).unwrap();
    let info = read_dl_info(data.join("DL_info.csv")).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    for rec in info.records.iter().take(4) {
        let slice = rec.slice_path(&data, 0);
        let (window, why) = window_for_slice(&run, &slice).unwrap();
        assert_eq!(window, rec.window, "{}: {why}", rec.file_name);
        let lone = sample_from_slice(&LesionInput { slice: slice.clone(), recist: rec.recist }, &run.config.crop_params(), window).unwrap();
        let trained = lesion_crop(&data, rec, &CropParams { size: 32, ..run.config.crop_params() }).unwrap().channels.concat();
        let worst = lone.image.iter().zip(&trained).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{}: the lone slice's crop differs from training's by {worst}", rec.file_name);
    }

    // The CLI's mask, paired as asked, is the library's.
    let (a, b) = (&info.records[0], &info.records[1]);
    let recist = |r: &coseg::data::LesionRecord| r.recist.iter().flat_map(|p| [p[0].to_string(), p[1].to_string()]).collect::<Vec<_>>().join(",");
    let out = dir.join("seg.png");
    let o = coseg(&["segment", "--checkpoint", &s(&dir.join("train")), "--image", &s(&a.slice_path(&data, 0)), "--recist", &recist(a), "--pair", &s(&b.slice_path(&data, 0)), "--pair-recist", &recist(b), "--out", &s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let crop = run.config.crop_params();
    let lesion = sample_from_slice(&LesionInput { slice: a.slice_path(&data, 0), recist: a.recist }, &crop, a.window).unwrap();
    let partner = sample_from_slice(&LesionInput { slice: b.slice_path(&data, 0), recist: b.recist }, &crop, a.window).unwrap();
    let want = segment_pair(&run, &lesion, &partner, None).unwrap();
    assert_eq!(coseg::io::read_u8(&out).unwrap().data, want.data);
    // Marks the DL_info reader would skip, and reversed or empty windows: refused with the
    // reason and a non-zero exit, never an empty mask.
    let w = a.image_size[0] as f32;
    let r = a.recist;
    let marks = |p: [[f32; 2]; 4]| p.iter().flat_map(|q| [q[0].to_string(), q[1].to_string()]).collect::<Vec<_>>().join(",");
    let shift = |dx: f32| [r[0], r[1], [r[2][0] + dx, r[2][1]], [r[3][0] + dx, r[3][1]]];
    let long = (r[1][0] - r[0][0]).hypot(r[1][1] - r[0][1]);
    // Moved clear of the long axis along it (whatever its direction), the short axis misses it.
    let d = [(r[1][0] - r[0][0]) / long, (r[1][1] - r[0][1]) / long];
    let away = 2.0 * long + 4.0;
    let apart = [r[0], r[1], [r[2][0] + d[0] * away, r[2][1] + d[1] * away], [r[3][0] + d[0] * away, r[3][1] + d[1] * away]];
    let bad: Vec<(String, Option<&str>, &str)> = vec![
        (marks([[w + 3.0, r[0][1]], r[1], r[2], r[3]]), None, "outside"),
        (marks(shift(-(r[2][0].max(r[3][0]) + 2.0))), None, "negative"),
        (marks(apart), None, "do not cross"),
        (recist(a), Some("240,-160"), "reversed"),
        (recist(a), Some("40,40"), "empty"),
    ];
    let image = s(&a.slice_path(&data, 0));
    for (marks, window, why) in &bad {
        let refused = dir.join("refused.png");
        let mut args: Vec<String> = vec![
            "segment".into(),
            "--checkpoint".into(),
            s(&dir.join("train")),
            "--image".into(),
            image.clone(),
            "--recist".into(),
            marks.clone(),
            "--pair".into(),
            s(&b.slice_path(&data, 0)),
            "--pair-recist".into(),
            recist(b),
            "--out".into(),
            s(&refused),
        ];
        if let Some(wnd) = window {
            args.extend(["--window".to_string(), wnd.to_string()]);
        }
        let o = coseg(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{marks} {window:?}: expected '{why}', got {err}");
        assert!(!refused.exists(), "{marks} {window:?}: a mask was written");
    }

    // A folder without checkpoints is named.
    let o = coseg(&["segment", "--checkpoint", &s(&data), "--image", &s(&a.slice_path(&data, 0)), "--recist", &recist(a), "--out", &s(&out)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("without a checkpoint"), "{}", String::from_utf8_lossy(&o.stderr));

    // An experiment: trains, evaluates, writes the table.
    let cfg = dir.join("exp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[experiment]\nname = \"tiny run\"\n\n[data]\nroot = {:?}\nmanifest = {:?}\npseudo_masks = {:?}\ncrop_size = 32\n\n{TINY}iterations = 2\nout = {:?}\n",
            s(&data),
            s(&dir.join("manifest.json")),
            s(&dir.join("pseudo")),
            s(&dir.join("exp_run"))
        ),
    )
    .unwrap();
    let o = coseg(&["experiment", "run", &s(&cfg), "--out", &s(&dir.join("results"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(dir.join("results/results.csv")).unwrap();
    let row = csv.lines().find(|l| l.contains("tiny run")).unwrap_or_else(|| panic!("no row in {csv}"));
    let cols: Vec<&str> = row.split(',').collect();
    let count: usize = cols[4].parse().unwrap();
    let dice: f64 = cols[9].parse().unwrap();
    assert!(count > 0 && (0.0..=1.0).contains(&dice), "{row}");
    assert!(std::fs::read_to_string(dir.join("results/results.md")).unwrap().contains("tiny run"));
    std::fs::remove_dir_all(&dir).ok();
}
