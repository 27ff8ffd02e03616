//! The training stage end to end on a tiny synthetic set: the demo pipeline (synth ->
//! pseudo-masks -> split -> train -> eval -> report), then on the same data: resume continues
//! exactly, a resume with another config is refused, a NaN loss stops training naming the
//! iteration and keeping the last good checkpoint, and a checkpoint of another architecture
//! names the first tensor that does not fit. One test function: the stages share one data set.

use coseg::Device;
use coseg::autograd::ParamStore;
use coseg::nn::{CosegNet, ModelConfig};
use coseg::train::checkpoint::{self, CheckpointPaths};
use coseg::train::demo::{DemoParams, run_demo};
use coseg::train::{Resume, TrainConfig, train};
use std::path::{Path, PathBuf};

const TINY_MODEL_TRAIN: &str = r#"[model]
depth = 18
width = 0.125
output_stride = 8
channel_attention = "se"
spatial_attention = "msa"
decoder = "D2"

[train]
optimizer = "adam"
lr = 1e-3
batch_pairs = 2
val_every = 2
checkpoint_every = 2
"#;

fn config(dir: &Path, out: &str, train_extra: &str) -> String {
    format!(
        "[data]\nroot = {:?}\nmanifest = {:?}\npseudo_masks = {:?}\ncrop_size = 32\n\n{TINY_MODEL_TRAIN}{train_extra}\nout = {:?}\n",
        dir.join("data").display().to_string(),
        dir.join("manifest.json").display().to_string(),
        dir.join("pseudo").display().to_string(),
        dir.join(out).display().to_string()
    )
}

/// The error of a run that must stop early: 8 iterations into `out`, a checkpoint at every one,
/// `replace` in the config replaced by `with`.
fn diverging_run(dir: &Path, out: &str, replace: &str, with: &str) -> String {
    let text = config(dir, out, "iterations = 8\nseed = 1\n").replace(replace, with).replace("checkpoint_every = 2", "checkpoint_every = 1");
    let cfg = TrainConfig::parse(&text, out).unwrap();
    train(&cfg, &text, &Resume::Fresh).unwrap_err().to_string()
}

fn params_of(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn pipeline_resume_nan_and_misfit() {
    let dir: PathBuf = std::env::temp_dir().join(format!("coseg-train-pipeline-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();

    // The demo pipeline, tiny.
    let demo = DemoParams {
        out: dir.clone(),
        lesions: 30,
        seed: 3,
        clusters: 2,
        crop_size: 32,
        context: 0.5,
        iterations: 4,
        val_every: None,
        precision: None,
        model_train_toml: TINY_MODEL_TRAIN.into(),
    };
    let report = run_demo(&demo).unwrap();
    assert_eq!(report.iterations, 4);
    assert!(report.network.count > 0 && report.pseudo_masks.count > 0);
    assert_eq!(report.network.count + report.network.skipped.len(), report.pseudo_masks.count + report.pseudo_masks.skipped.len());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for key in ["pseudo_masks", "network"] {
        let d = &json[key]["metrics"]["dice"]["mean"];
        assert!(d.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {d}");
        assert!(json[key]["per_image"].as_object().is_some_and(|m| !m.is_empty()), "{key} per_image");
    }
    // The lesion-by-lesion comparison covers every lesion both were scored on.
    let both = report.network.per_image.keys().filter(|k| report.pseudo_masks.per_image.contains_key(*k)).count();
    assert!(both > 0);
    assert_eq!(json["paired_dice"]["lesions"].as_u64(), Some(both as u64));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| co-segmentation network |"));
    assert!(md.contains(&format!("of {both} lesions")), "{md}");
    for f in ["train/loss.png", "train/lr.png", "train/val.png", "train/log.jsonl", "train/checkpoints/latest.json"] {
        assert!(dir.join(f).exists(), "{f}");
    }

    // Resume: a run resumed from its iteration-2 checkpoint ends where the uninterrupted run ends.
    let text = config(&dir, "full", "iterations = 4\nseed = 5\n");
    let cfg = TrainConfig::parse(&text, "full").unwrap();
    let full = train(&cfg, &text, &Resume::Fresh).unwrap();
    assert_eq!((full.started_at, full.iterations), (0, 4));
    let resumed_text = text.replace("\"full\"", "\"resumed\"").replace(&format!("{:?}", dir.join("full").display().to_string()), &format!("{:?}", dir.join("resumed").display().to_string()));
    let resumed_cfg = TrainConfig::parse(&resumed_text, "resumed").unwrap();
    let from = dir.join("full/checkpoints/iter-0000002.safetensors");
    let resumed = train(&resumed_cfg, &resumed_text, &Resume::From(from)).unwrap();
    assert_eq!((resumed.started_at, resumed.iterations), (2, 4));
    let (a, b) = (params_of(&full.checkpoint.params), params_of(&resumed.checkpoint.params));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{na}: resumed differs by {diff}");
    }
    let log = coseg::train::log::read(&dir.join("resumed/log.jsonl")).unwrap();
    let iters: Vec<usize> = log.iter().filter(|e| matches!(e, coseg::train::log::LogEntry::Train { .. })).map(|e| e.iter()).collect();
    assert_eq!(iters, vec![3, 4]);
    // Losses read back in intervals (every 3 iterations, then at the end) log the same trajectory,
    // iteration by iteration, as reads at every checkpoint, and end at the same parameters.
    let spaced = text.replace("\"full\"", "\"spaced\"").replace("checkpoint_every = 2", "checkpoint_every = 4").replace("val_every = 2", "val_every = 4")
        .replace(&format!("{:?}", dir.join("full").display().to_string()), &format!("{:?}", dir.join("spaced").display().to_string()))
        .replace("seed = 5", "seed = 5\nlog_every = 3");
    let spaced_run = train(&TrainConfig::parse(&spaced, "spaced").unwrap(), &spaced, &Resume::Fresh).unwrap();
    let train_entries = |run: &str| -> Vec<(usize, f64, f64)> {
        coseg::train::log::read(&dir.join(run).join("log.jsonl")).unwrap().into_iter().filter_map(|e| match e {
            coseg::train::log::LogEntry::Train { iter, loss, lr, .. } => Some((iter, loss, lr)),
            _ => None,
        }).collect()
    };
    let (want, got) = (train_entries("full"), train_entries("spaced"));
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(want, got, "the interval reads changed the logged trajectory");
    assert_eq!(params_of(&spaced_run.checkpoint.params), a, "the interval reads changed the parameters");

    // Auto-resume of a finished run does nothing; with another config it is refused.
    let again = train(&cfg, &text, &Resume::Auto).unwrap();
    assert_eq!((again.started_at, again.iterations), (4, 4));
    let other = text.replace("lr = 1e-3", "lr = 2e-3");
    let e = train(&TrainConfig::parse(&other, "other").unwrap(), &other, &Resume::Auto).unwrap_err().to_string();
    assert!(e.contains("another config"), "{e}");

    // --resume from a checkpoint at the end: refused, naming it, instead of a silent no-op.
    let last = dir.join("full/checkpoints/iter-0000004.safetensors");
    let e = train(&cfg, &text, &Resume::From(last.clone())).unwrap_err().to_string();
    assert!(e.contains("nothing left to train") && e.contains(&last.display().to_string()) && e.contains("iteration 4"), "{e}");
    assert_eq!(again.checkpoint.params, last, "a finished auto-resume names the checkpoint that exists");
    assert!(again.checkpoint.params.exists());

    // Auto-resume over a truncated newest checkpoint: falls back to the complete one beside it,
    // names the bad one, and ends where the uninterrupted run ended.
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let fell_back = train(&cfg, &text, &Resume::Auto).unwrap();
    assert_eq!((fell_back.started_at, fell_back.iterations), (2, 4));
    assert_eq!(fell_back.unusable_checkpoints.len(), 1, "{:?}", fell_back.unusable_checkpoints);
    assert_eq!(fell_back.unusable_checkpoints[0].0, last);
    for ((na, va), (_, vb)) in a.iter().zip(&params_of(&fell_back.checkpoint.params)) {
        let diff = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{na}: the fallback run differs by {diff}");
    }

    // A checkpoint whose weights hold a NaN is refused naming the tensor (never evaluated to Dice 0).
    let mut store = ParamStore::new(Device::Cpu, 0);
    CosegNet::new(&cfg.model, &mut store).unwrap();
    checkpoint::load(&fell_back.checkpoint, &mut store, None).unwrap();
    let names: Vec<String> = store.iter().map(|(n, _)| n.to_string()).collect();
    let victim = &names[names.len() / 2];
    store.get(victim).unwrap().update("test", |w| w[w.len() / 3] = f32::INFINITY).unwrap();
    let bad_dir = dir.join("nanckpt");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad = CheckpointPaths::of(&bad_dir.join("iter-0000004.safetensors"));
    store.save(&bad.params).unwrap();
    std::fs::copy(&fell_back.checkpoint.meta, &bad.meta).unwrap();
    let e = checkpoint::load(&bad, &mut store, None).unwrap_err().to_string();
    assert!(e.contains(&format!("tensor '{victim}'")) && e.contains("non-finite"), "{e}");
    let e = coseg::train::infer::restore(&bad.params, Device::Cpu).err().expect("restored a NaN checkpoint").to_string();
    assert!(e.contains(victim.as_str()), "{e}");

    // Divergence without NaN: Adam at lr 1e6 blows the loss up by orders of magnitude; training
    // stops at once, naming the iteration, and keeps the iteration-1 checkpoint.
    let e = diverging_run(&dir, "div", "lr = 1e-3", "lr = 1e6\nlr_schedule = \"constant\"");
    assert!(e.contains("diverged at iteration 2") && e.contains("iter-0000001.safetensors"), "{e}");
    assert!(!dir.join("div/checkpoints/iter-0000002.safetensors").exists());

    // An absurd size is refused before allocating, naming the keys to lower.
    let huge = config(&dir, "huge", "iterations = 2\n").replace("crop_size = 32", "crop_size = 4096").replace("batch_pairs = 2", "batch_pairs = 60000");
    let e = train(&TrainConfig::parse(&huge, "huge").unwrap(), &huge, &Resume::Fresh).unwrap_err().to_string();
    assert!(e.contains("needs about") && e.contains("batch_pairs") && e.contains("crop_size"), "{e}");

    // NaN: an absurd learning rate diverges; training stops naming the iteration and the last
    // good checkpoint, whose parameters are finite.
    let e = diverging_run(&dir, "nan", "optimizer = \"adam\"\nlr = 1e-3", "optimizer = \"sgd\"\nlr = 1e30\nlr_schedule = \"constant\"");
    assert!(e.contains("iteration") && e.contains("stopped"), "{e}");
    if let Some(p) = checkpoint::latest(&dir.join("nan/checkpoints")).unwrap() {
        assert!(e.contains(&p.params.display().to_string()), "{e}");
        assert!(params_of(&p.params).iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    }
    let log = std::fs::read_to_string(dir.join("nan/log.jsonl")).unwrap();
    assert!(log.lines().last().unwrap().contains("\"stop\""), "{log}");

    // Another architecture: the first tensor that does not fit is named.
    let mut params = ParamStore::new(Device::Cpu, 0);
    let deeper = ModelConfig { depth: 34, width: 0.125, ..cfg.model.clone() };
    CosegNet::new(&deeper, &mut params).unwrap();
    let e = checkpoint::load(&CheckpointPaths::of(&full.checkpoint.params), &mut params, None).unwrap_err().to_string();
    assert!(e.contains("tensor '"), "{e}");

    std::fs::remove_dir_all(&dir).ok();
}
