//! The output policy end to end (issue 17): no command replaces an input of its run, a file coseg
//! did not write, or writes into a folder holding other data; earlier coseg outputs are replaced
//! and said; `--overwrite` replaces a foreign file but never an input; a command that produces
//! nothing useful exits non-zero. A DeepLesion folder made by the library (not by a command) has
//! no provenance record, so it stands for a user's real data here.

use coseg::data::synth::{SynthParams, synth_dataset};
use coseg::data::read_dl_info;
use coseg::io::{Image, write_u8};
use coseg::train::demo::{DemoParams, run_demo};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coseg")).args(args).env("COSEG_NO_PROGRESS", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts the command failed, with every `needles` in its stderr.
fn refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal, got success: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

fn fresh(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coseg-cli-outputs-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn no_command_replaces_user_data_and_own_outputs_are_replaced_aloud() {
    let dir = fresh("data");
    let real = dir.join("real");
    synth_dataset(&real, &SynthParams { lesions: 5, seed: 8, size: 160, neighbours: false }).unwrap();
    let before = snapshot(&real);
    assert!(before.keys().any(|p| p.starts_with(real.join("masks"))));

    // Defect 2: synth onto a real DeepLesion folder; pseudo-masks onto its true masks (even with
    // --overwrite: an input of the run); split and crops onto its DL_info.csv.
    refused(&coseg(&["synth", "--out", &s(&real), "--lesions", "3", "--size", "128"]), &["did not write", "DL_info.csv"]);
    refused(&coseg(&["pseudo-masks", "--data", &s(&real), "--out", &s(&real.join("masks"))]), &["true-mask folder", "input"]);
    refused(&coseg(&["pseudo-masks", "--data", &s(&real), "--out", &s(&real.join("masks")), "--overwrite"]), &["input"]);
    refused(&coseg(&["split", "--data", &s(&real), "--clusters", "2", "--out", &s(&real.join("DL_info.csv"))]), &["DL_info.csv this run reads"]);
    refused(&coseg(&["crops", "--data", &s(&real), "--out", &s(&real.join("DL_info.csv"))]), &["DL_info.csv this run reads"]);
    // Another data set's split aimed at this one's DL_info.csv: not an input, but not coseg's.
    let other = dir.join("other");
    synth_dataset(&other, &SynthParams { lesions: 4, seed: 9, size: 160, neighbours: false }).unwrap();
    refused(&coseg(&["split", "--data", &s(&other), "--clusters", "2", "--out", &s(&real.join("DL_info.csv"))]), &["not written by coseg", "--overwrite"]);
    assert!(before == snapshot(&real), "the user's data set changed");

    // crf --out equal to --prob (another spelling of it, too).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let (guide, prob) = (dir.join("guide.png"), dir.join("prob.png"));
    write_u8(&guide, &Image::new(24, 20, 1, (0..480).map(|_| rng.random()).collect())).unwrap();
    write_u8(&prob, &Image::new(24, 20, 1, (0..480).map(|_| rng.random()).collect())).unwrap();
    let prob_bytes = std::fs::read(&prob).unwrap();
    let prob_again = dir.join("real/../prob.png");
    refused(&coseg(&["crf", "--image", &s(&guide), "--prob", &s(&prob), "--out", &s(&prob_again), "--device", "cpu"]), &["probability map"]);
    refused(&coseg(&["crf", "--image", &s(&guide), "--prob", &s(&prob), "--out", &s(&guide), "--device", "cpu", "--overwrite"]), &["guide image"]);
    assert_eq!(std::fs::read(&prob).unwrap(), prob_bytes);

    // A file the user wrote is refused, then replaced with --overwrite (said); coseg's own
    // output is replaced without it (said).
    let notes = dir.join("notes.json");
    std::fs::write(&notes, b"{\"mine\": true}").unwrap();
    refused(&coseg(&["split", "--data", &s(&other), "--clusters", "2", "--out", &s(&notes)]), &["not written by coseg"]);
    assert_eq!(std::fs::read(&notes).unwrap(), b"{\"mine\": true}");
    let o = coseg(&["split", "--data", &s(&other), "--clusters", "2", "--out", &s(&notes), "--overwrite"]);
    assert!(o.status.success() && stderr(&o).contains("not written by coseg; --overwrite"), "{}", stderr(&o));
    let m = dir.join("m.json");
    for round in 0..2 {
        let o = coseg(&["split", "--data", &s(&other), "--clusters", "2", "--out", &s(&m)]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o).contains("earlier output of coseg"), round == 1, "{}", stderr(&o));
    }
    assert!(coseg::data::split::Manifest::load(&m).is_ok());

    // synth into a new folder, then again over its own output; pseudo-masks likewise. No
    // temporary file is left behind.
    let syn = dir.join("syn");
    for round in 0..2 {
        let o = coseg(&["synth", "--out", &s(&syn), "--lesions", "3", "--size", "128", "--seed", &round.to_string()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o).contains("earlier output folder of coseg"), round == 1, "{}", stderr(&o));
        let o = coseg(&["pseudo-masks", "--data", &s(&syn), "--out", &s(&dir.join("pseudo"))]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(read_dl_info(syn.join("DL_info.csv")).unwrap().records.len(), 3);
    assert!(snapshot(&dir).keys().all(|p| !p.to_string_lossy().ends_with(".coseg-tmp")));
    // A folder holding other data is refused for a folder output, and --overwrite writes into it
    // without adopting it.
    let theirs = dir.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("readme.txt"), b"keep").unwrap();
    refused(&coseg(&["pseudo-masks", "--data", &s(&syn), "--out", &s(&theirs)]), &["readme.txt", "did not write"]);
    let o = coseg(&["pseudo-masks", "--data", &s(&syn), "--out", &s(&theirs), "--overwrite"]);
    assert!(o.status.success() && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(theirs.join("readme.txt")).unwrap(), b"keep");
    assert!(!theirs.join(coseg::output::FOLDER_MARKER).exists());

    // Defect 7: crops where every lesion fails exits non-zero with the reason and writes nothing.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(real.join("DL_info.csv"), broken.join("DL_info.csv")).unwrap();
    let npy = dir.join("broken.npy");
    refused(&coseg(&["crops", "--data", &s(&broken), "--out", &s(&npy)]), &["no crop written", "5 of 5 lesions failed"]);
    assert!(!npy.exists() && !dir.join("broken.txt").exists());

    // Defect 7: eval-masks scores a missing prediction as a failure (Dice 0), named.
    let (truth, pred) = (real.join("masks"), dir.join("pred"));
    let names: Vec<String> = std::fs::read_dir(&truth).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names.len(), 5);
    for n in &names[1..] {
        std::fs::create_dir_all(&pred).unwrap();
        std::fs::copy(truth.join(n), pred.join(n)).unwrap();
    }
    let o = coseg(&["eval-masks", "--pred", &s(&pred), "--truth", &s(&truth), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["count"], 5);
    assert_eq!(j["missing_prediction"][0], names[0].as_str());
    assert!((j["metrics"]["dice"]["mean"].as_f64().unwrap() - 0.8).abs() < 1e-9, "{j}");
    // No prediction at all is nothing useful: non-zero.
    let empty = dir.join("empty_pred");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&coseg(&["eval-masks", "--pred", &s(&empty), "--truth", &s(&truth)]), &["no predicted mask"]);
    std::fs::remove_dir_all(&dir).ok();
}

const TINY: &str = "[model]\ndepth = 18\nwidth = 0.125\noutput_stride = 8\n\n[train]\noptimizer = \"adam\"\nlr = 1e-3\nbatch_pairs = 2\nval_every = 2\ncheckpoint_every = 2\n";

#[test]
fn eval_segment_and_train_never_write_over_their_inputs() {
    let dir = fresh("model");
    let demo = DemoParams { out: dir.join("demo"), lesions: 20, seed: 6, clusters: 2, crop_size: 32, context: 0.5, iterations: 2, val_every: None, precision: None, model_train_toml: TINY.into() };
    run_demo(&demo).unwrap();
    // A second demo over its own earlier output works, and so does one over a demo folder an
    // older coseg wrote (no marker), while a folder holding anything else is refused.
    run_demo(&demo).unwrap();
    std::fs::remove_file(dir.join("demo").join(coseg::output::FOLDER_MARKER)).unwrap();
    run_demo(&demo).unwrap();
    let odd = DemoParams { out: dir.join("odd"), ..demo.clone() };
    std::fs::create_dir_all(dir.join("odd/data")).unwrap();
    std::fs::write(dir.join("odd/data/DL_info.csv"), b"x").unwrap();
    std::fs::write(dir.join("odd/scan.dcm"), b"x").unwrap();
    assert!(run_demo(&odd).unwrap_err().to_string().contains("scan.dcm"));
    let (data, run) = (dir.join("demo/data"), dir.join("demo/train"));
    let truth_before = snapshot(&data.join("masks"));

    // Defect 1: predictions written over the true masks they are scored against.
    refused(&coseg(&["eval", "--checkpoint", &s(&run), "--masks-out", &s(&data.join("masks")), "--no-tta"]), &["true-mask folder", "input"]);
    refused(&coseg(&["eval", "--checkpoint", &s(&run), "--masks-out", &s(&data.join("masks")), "--overwrite"]), &["input"]);
    assert!(truth_before == snapshot(&data.join("masks")), "the true masks changed");
    // Into a new folder, twice (the second replaces the first, said); the scores are the ones
    // against the untouched truth.
    let pred = dir.join("pred");
    for round in 0..2 {
        let o = coseg(&["eval", "--checkpoint", &s(&run), "--masks-out", &s(&pred), "--no-tta", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o).contains("earlier output folder of coseg"), round == 1, "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(j["metrics"]["dice"]["mean"].as_f64().unwrap() < 1.0, "{j}");
    }

    // Defect 2: segment --out equal to --image.
    let info = read_dl_info(data.join("DL_info.csv")).unwrap();
    let rec = &info.records[0];
    let slice = rec.slice_path(&data, 0);
    let slice_bytes = std::fs::read(&slice).unwrap();
    let recist = rec.recist.iter().flat_map(|p| [p[0].to_string(), p[1].to_string()]).collect::<Vec<_>>().join(",");
    refused(&coseg(&["segment", "--checkpoint", &s(&run), "--image", &s(&slice), "--recist", &recist, "--out", &s(&slice), "--device", "cpu"]), &["key slice"]);
    assert_eq!(std::fs::read(&slice).unwrap(), slice_bytes);
    let o = coseg(&["segment", "--checkpoint", &s(&run), "--image", &s(&slice), "--recist", &recist, "--out", &s(&dir.join("seg.png")), "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // train: an out folder that is the data set, or holds other data, is refused before any write.
    let cfg_text = |out: &Path| {
        format!(
            "[data]\nroot = {:?}\nmanifest = {:?}\npseudo_masks = {:?}\ncrop_size = 32\n\n{TINY}iterations = 2\nout = {:?}\n",
            s(&data),
            s(&dir.join("demo/manifest.json")),
            s(&dir.join("demo/pseudo")),
            s(out)
        )
    };
    let cfg = dir.join("t.toml");
    std::fs::write(&cfg, cfg_text(&data)).unwrap();
    refused(&coseg(&["train", "--config", &s(&cfg), "--fresh"]), &["input"]);
    let theirs = dir.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("study.csv"), b"keep").unwrap();
    std::fs::write(&cfg, cfg_text(&theirs)).unwrap();
    refused(&coseg(&["train", "--config", &s(&cfg), "--fresh"]), &["study.csv", "did not write"]);
    assert!(!theirs.join("checkpoints").exists());
    // A run folder an older coseg wrote (checkpoints, no marker) still auto-resumes, and is marked.
    let solo = dir.join("solo");
    std::fs::write(&cfg, cfg_text(&solo)).unwrap();
    let o = coseg(&["train", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(solo.join(coseg::output::FOLDER_MARKER)).unwrap();
    let o = coseg(&["train", "--config", &s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(solo.join(coseg::output::FOLDER_MARKER).is_file());
    // --profile on the CPU: said plainly, and training goes on, without a profile.
    let cpu_run = dir.join("cpu-profile");
    std::fs::write(&cfg, format!("{}device = \"cpu\"\n", cfg_text(&cpu_run))).unwrap();
    let o = coseg(&["train", "--config", &s(&cfg), "--profile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("per-op GPU timing needs a CUDA device"), "{}", stderr(&o));
    assert!(cpu_run.join("checkpoints").is_dir() && !cpu_run.join("profile.csv").exists());
    assert!(truth_before == snapshot(&data.join("masks")));
    std::fs::remove_dir_all(&dir).ok();
}
