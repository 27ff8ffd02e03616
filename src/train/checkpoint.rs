//! Checkpoints: a run's parameters, optimiser state and metadata, written atomically.
//!
//! A checkpoint after iteration `i` is three files in `<out>/checkpoints/`:
//! - `iter-<i>.safetensors`: every parameter and buffer (`ParamStore::save`), torchvision names;
//! - `iter-<i>.optim.safetensors`: the optimiser state (`Optimizer::save`);
//! - `iter-<i>.json`: [`CheckpointMeta`] (iteration, the run's config text, loss, validation).
//!
//! Each file is written to a `.tmp` name and renamed into place (a rename is atomic on one file
//! system), the metadata last, and `latest.json` (the name of the newest checkpoint) after that:
//! a run killed at any point leaves the previous checkpoint whole and `latest.json` pointing at a
//! complete one. Older checkpoints beyond `keep` are deleted after the new one is in place.

use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::train::optim::Optimizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Iterations finished (training resumes at this 0-based iteration).
    pub iteration: usize,
    pub total_iterations: usize,
    /// The run's config file, verbatim: rebuilds the model, and names the data and manifest.
    pub config_toml: String,
    /// Mean training loss over the iterations since the previous checkpoint.
    pub loss: f64,
    /// Trainable scalars of the model.
    pub parameters: usize,
    /// The file name of the optimiser state, next to this file.
    pub optimizer_state: String,
    /// Seconds of training so far (summed over resumed sessions).
    pub train_seconds: f64,
}

/// A checkpoint's paths, derived from its parameter file.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointPaths {
    pub params: PathBuf,
    pub optimizer: PathBuf,
    pub meta: PathBuf,
}

impl CheckpointPaths {
    /// From the `.safetensors` parameter file (what users pass as `--checkpoint`).
    pub fn of(params: &Path) -> CheckpointPaths {
        let stem = params.file_stem().and_then(|s| s.to_str()).unwrap_or("checkpoint").to_string();
        let dir = params.parent().map(Path::to_path_buf).unwrap_or_default();
        CheckpointPaths {
            params: params.to_path_buf(),
            optimizer: dir.join(format!("{stem}.optim.safetensors")),
            meta: dir.join(format!("{stem}.json")),
        }
    }
    fn at_iteration(dir: &Path, iteration: usize) -> CheckpointPaths {
        Self::of(&dir.join(format!("iter-{iteration:07}.safetensors")))
    }
}

fn tmp_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Writes a checkpoint into `dir` (created if needed), points `latest.json` at it, and deletes
/// all but the newest `keep` checkpoints. Refuses parameters that are not finite, so the last
/// checkpoint on disk is always a usable one.
pub fn save(dir: &Path, store: &ParamStore, opt: &Optimizer, meta: &CheckpointMeta, keep: usize) -> Result<CheckpointPaths> {
    for (name, t) in store.iter() {
        if let Some(i) = t.to_vec()?.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "checkpoint",
                format!("'{name}' has a non-finite value at flat index {i} after iteration {}; not saved", meta.iteration),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let paths = CheckpointPaths::at_iteration(dir, meta.iteration);
    let mut meta = meta.clone();
    meta.optimizer_state = paths.optimizer.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();

    store.save(tmp_of(&paths.params))?;
    opt.save(&tmp_of(&paths.optimizer))?;
    rename(&tmp_of(&paths.params), &paths.params)?;
    rename(&tmp_of(&paths.optimizer), &paths.optimizer)?;
    let json = serde_json::to_string_pretty(&meta).map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    write_atomic(&paths.meta, json.as_bytes())?;
    let name = paths.params.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    write_atomic(&dir.join("latest.json"), serde_json::json!({ "checkpoint": name, "iteration": meta.iteration }).to_string().as_bytes())?;

    let mut all = list(dir)?;
    all.sort_by_key(|(it, _)| std::cmp::Reverse(*it));
    for (_, old) in all.into_iter().skip(keep.max(1)) {
        for p in [&old.params, &old.optimizer, &old.meta] {
            std::fs::remove_file(p).ok();
        }
    }
    Ok(paths)
}

/// The complete checkpoints in `dir` (metadata present), with their iterations.
fn list(dir: &Path) -> Result<Vec<(usize, CheckpointPaths)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(it) = name.strip_prefix("iter-").and_then(|r| r.strip_suffix(".json")).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        out.push((it, CheckpointPaths::at_iteration(dir, it)));
    }
    Ok(out)
}

/// The checkpoint `latest.json` in `dir` points at, if there is one.
pub fn latest(dir: &Path) -> Result<Option<CheckpointPaths>> {
    let pointer = dir.join("latest.json");
    if !pointer.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&pointer, None, e.to_string()))?;
    let name = v["checkpoint"].as_str().ok_or_else(|| Error::format(&pointer, None, "no \"checkpoint\" name"))?;
    Ok(Some(CheckpointPaths::of(&dir.join(name))))
}

/// The newest checkpoint in `dir` that loads whole into `store` and `opt`: the one `latest.json`
/// names, else (when that one is truncated, damaged or gone) the newest complete one beside it.
/// Returns it, its metadata, and each checkpoint passed over with why, so the caller can name
/// them; None when `dir` has no checkpoint; an error listing every failure when none loads.
#[allow(clippy::type_complexity)]
pub fn latest_loadable(
    dir: &Path,
    store: &mut ParamStore,
    opt: &mut Optimizer,
) -> Result<Option<(CheckpointPaths, CheckpointMeta, Vec<(CheckpointPaths, String)>)>> {
    let mut candidates: Vec<CheckpointPaths> = Vec::new();
    let mut bad = Vec::new();
    match latest(dir) {
        Ok(Some(p)) => candidates.push(p),
        Ok(None) => {}
        Err(e) => bad.push((CheckpointPaths::of(&dir.join("latest.json")), e.to_string())),
    }
    if dir.is_dir() {
        let mut all = list(dir)?;
        all.sort_by_key(|(it, _)| std::cmp::Reverse(*it));
        let first = candidates.first().cloned();
        candidates.extend(all.into_iter().map(|(_, p)| p).filter(|p| Some(p) != first.as_ref()));
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    for p in candidates {
        match load(&p, store, Some(opt)) {
            Ok(meta) => return Ok(Some((p, meta, bad))),
            Err(e) => bad.push((p, e.to_string())),
        }
    }
    Err(Error::invalid(
        "resume",
        format!(
            "no checkpoint in {} can be loaded: {}",
            dir.display(),
            bad.iter().map(|(p, e)| format!("{} ({e})", p.params.display())).collect::<Vec<_>>().join("; ")
        ),
    ))
}

/// Reads a checkpoint's metadata.
pub fn read_meta(paths: &CheckpointPaths) -> Result<CheckpointMeta> {
    let text = std::fs::read_to_string(&paths.meta).map_err(|e| {
        Error::io(&paths.meta, std::io::Error::new(e.kind(), format!("{e} (the checkpoint's metadata, written beside its .safetensors)")))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::format(&paths.meta, None, e.to_string()))
}

/// Loads the parameters into `store` (each must be there with its shape: a checkpoint of
/// another architecture fails naming the first tensor that does not fit) and, when given, the
/// optimiser state.
pub fn load(paths: &CheckpointPaths, store: &mut ParamStore, opt: Option<&mut Optimizer>) -> Result<CheckpointMeta> {
    let meta = read_meta(paths)?;
    store.load(&paths.params)?;
    if let Some(opt) = opt {
        opt.load(&paths.optimizer)?;
        opt.check_fits(store)?;
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Init;
    use crate::device::Device;
    use crate::train::optim::OptimizerParams;

    fn store(seed: u64, k: usize) -> ParamStore {
        let mut s = ParamStore::new(Device::Cpu, seed);
        s.var("conv.weight", [k, 3, 3, 3], Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        s.buffer("bn.running_var", [k], Init::Uniform { lo: 0.5, hi: 2.0 }).unwrap();
        s
    }
    fn meta(iteration: usize) -> CheckpointMeta {
        CheckpointMeta {
            iteration,
            total_iterations: 10,
            config_toml: "[data]\n".into(),
            loss: 0.5,
            parameters: 108,
            optimizer_state: String::new(),
            train_seconds: 1.0,
        }
    }

    #[test]
    fn save_rotate_latest_and_reload() {
        let dir = std::env::temp_dir().join(format!("coseg-ckpt-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let s = store(1, 4);
        let opt = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
        for it in [2, 4, 6] {
            save(&dir, &s, &opt, &meta(it), 2).unwrap();
        }
        let last = latest(&dir).unwrap().unwrap();
        assert_eq!(read_meta(&last).unwrap().iteration, 6);
        let mut kept: Vec<usize> = list(&dir).unwrap().into_iter().map(|(i, _)| i).collect();
        kept.sort();
        assert_eq!(kept, vec![4, 6]);
        assert!(!dir.join("iter-0000002.safetensors").exists());
        assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

        let mut t = store(2, 4);
        let mut o = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
        let m = load(&last, &mut t, Some(&mut o)).unwrap();
        assert_eq!(m.iteration, 6);
        assert_eq!(m.optimizer_state, "iter-0000006.optim.safetensors");
        assert_eq!(s.get("conv.weight").unwrap().to_vec().unwrap(), t.get("conv.weight").unwrap().to_vec().unwrap());

        // Another architecture: the first misfit is named.
        let mut other = store(3, 5);
        let e = load(&last, &mut other, None).unwrap_err().to_string();
        assert!(e.contains("'bn.running_var'") && e.contains("[5]"), "{e}");

        // Non-finite parameters are never written.
        s.get("conv.weight").unwrap().update("test", |w| w[7] = f32::NAN).unwrap();
        let e = save(&dir, &s, &opt, &meta(8), 2).unwrap_err().to_string();
        assert!(e.contains("conv.weight") && e.contains("index 7") && e.contains("iteration 8"), "{e}");
        assert_eq!(read_meta(&latest(&dir).unwrap().unwrap()).unwrap().iteration, 6);
        std::fs::remove_dir_all(&dir).ok();
    }
}
