//! Several training runs side by side (`coseg compare`): their training losses (running mean over
//! 50 iterations) on one plot, their validation Dice on another, and a table of where each ended:
//! the comparison an ablation or a precision choice needs.

use crate::error::{Error, Result};
use crate::train::log::{self, LogEntry};
use crate::train::plot::{PALETTE, Series, write_line_plot};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Iterations in the running mean of the loss curves (as `loss.png`).
pub const LOSS_WINDOW: usize = 50;

/// One run's log, under a label.
pub struct Run {
    pub label: String,
    pub log: PathBuf,
    pub entries: Vec<LogEntry>,
}

impl Run {
    /// `path` is a log.jsonl, a run's out folder holding one, or a demo folder (its train/).
    /// Without a label, the run is named after its folder (the demo folder, not "train").
    pub fn load(path: &Path, label: Option<&str>) -> Result<Run> {
        let log = [path.to_path_buf(), path.join("log.jsonl"), path.join("train").join("log.jsonl")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| Error::invalid("compare", format!("{}: no log.jsonl there, nor in its train/ folder", path.display())))?;
        let entries = log::read(&log)?;
        let label = label.map(str::to_string).unwrap_or_else(|| {
            let dir = log.parent().unwrap_or(Path::new("."));
            let dir = if dir.file_name().is_some_and(|n| n == "train") { dir.parent().unwrap_or(dir) } else { dir };
            dir.file_name().map_or_else(|| log.display().to_string(), |n| n.to_string_lossy().into_owned())
        });
        Ok(Run { label, log, entries })
    }

    fn losses(&self) -> Vec<(f64, f64)> {
        self.entries.iter().filter_map(|e| if let LogEntry::Train { iter, loss, .. } = e { Some((*iter as f64, *loss)) } else { None }).collect()
    }
}

/// Where a run ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunSummary {
    pub label: String,
    pub iterations: usize,
    /// Mean loss over the last `LOSS_WINDOW` iterations.
    pub final_loss: f64,
    /// The last validation Dice against each reference ("pseudo", "true"), in log order.
    pub last_val_dice: Vec<(String, f64)>,
    /// Median milliseconds per step, the first 10 steps left out (warm-up).
    pub median_step_ms: f64,
}

/// The running mean of `points`' values over the last `window` points (the first ones over fewer).
pub fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, v))| {
            sum += v;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

pub fn summarize(run: &Run) -> RunSummary {
    let losses = run.losses();
    let tail = &losses[losses.len().saturating_sub(LOSS_WINDOW)..];
    let mut last_val: Vec<(String, f64)> = Vec::new();
    let mut ms: Vec<f64> = Vec::new();
    for e in &run.entries {
        match e {
            LogEntry::Val { against, dice, .. } => match last_val.iter_mut().find(|(a, _)| a == against) {
                Some(slot) => slot.1 = *dice,
                None => last_val.push((against.clone(), *dice)),
            },
            LogEntry::Train { ms: m, .. } => ms.push(*m),
            LogEntry::Stop { .. } => {}
        }
    }
    let mut steady: Vec<f64> = ms.iter().skip(10.min(ms.len().saturating_sub(1))).copied().collect();
    steady.sort_by(f64::total_cmp);
    RunSummary {
        label: run.label.clone(),
        iterations: losses.last().map_or(0, |p| p.0 as usize),
        final_loss: if tail.is_empty() { f64::NAN } else { tail.iter().map(|p| p.1).sum::<f64>() / tail.len() as f64 },
        last_val_dice: last_val,
        median_step_ms: steady.get(steady.len() / 2).copied().unwrap_or(f64::NAN),
    }
}

/// The files `compare` writes into its out folder.
pub const OUTPUTS: [&str; 3] = ["compare_loss.png", "compare_val.png", "compare.csv"];

/// Writes `OUTPUTS` into `out` (an existing folder) and returns each run's summary. The
/// validation plot is written when some run validated.
pub fn compare(runs: &[Run], out: &Path) -> Result<Vec<RunSummary>> {
    if runs.is_empty() {
        return Err(Error::invalid("compare", "no runs to compare"));
    }
    let color = |k: usize| PALETTE[k % PALETTE.len()];
    let loss: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(k, r)| Series { name: r.label.clone(), color: color(k), points: running_mean(&r.losses(), LOSS_WINDOW) })
        .collect();
    write_line_plot(&out.join(OUTPUTS[0]), &format!("Training loss, mean of {LOSS_WINDOW}"), "iteration", "cross-entropy", &loss)?;
    let mut val = Vec::new();
    for (k, r) in runs.iter().enumerate() {
        let mut by_ref: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for e in &r.entries {
            if let LogEntry::Val { iter, against, dice, .. } = e {
                match by_ref.iter_mut().find(|(a, _)| a == against) {
                    Some((_, pts)) => pts.push((*iter as f64, *dice)),
                    None => by_ref.push((against.clone(), vec![(*iter as f64, *dice)])),
                }
            }
        }
        let several = by_ref.len() > 1;
        for (j, (against, points)) in by_ref.into_iter().enumerate() {
            let name = if several { format!("{} vs {against}", r.label) } else { r.label.clone() };
            let c = color(k);
            // A second reference of the same run: the same hue, lighter.
            let c = if j == 0 { c } else { c.map(|v| v / 2 + 127) };
            val.push(Series { name, color: c, points });
        }
    }
    if !val.is_empty() {
        write_line_plot(&out.join(OUTPUTS[1]), "Validation Dice (crop space)", "iteration", "Dice", &val)?;
    }
    let summaries: Vec<RunSummary> = runs.iter().map(summarize).collect();
    let mut csv = String::from("run,iterations,final_loss,last_val_dice,median_step_ms,log\n");
    for (s, r) in summaries.iter().zip(runs) {
        let dice: Vec<String> = s.last_val_dice.iter().map(|(a, d)| format!("{a} {d:.4}")).collect();
        csv += &format!("{},{},{:.5},{},{:.2},{}\n", s.label.replace(',', ";"), s.iterations, s.final_loss, dice.join("; "), s.median_step_ms, r.log.display());
    }
    crate::io::write_atomic(&out.join(OUTPUTS[2]), csv.as_bytes())?;
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_is_the_mean_of_the_last_window() {
        let pts: Vec<(f64, f64)> = (0..7).map(|i| (i as f64, (i * i) as f64)).collect();
        let m = running_mean(&pts, 3);
        assert_eq!(m[0], (0.0, 0.0));
        assert_eq!(m[1], (1.0, 0.5));
        assert_eq!(m[6], (6.0, (16.0 + 25.0 + 36.0) / 3.0));
    }

    #[test]
    fn runs_are_summarized_and_plotted_side_by_side() {
        let dir = std::env::temp_dir().join(format!("coseg-compare-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let mut runs = Vec::new();
        for (k, name) in ["fp32", "bf16"].iter().enumerate() {
            let run_dir = dir.join(name).join("train");
            std::fs::create_dir_all(&run_dir).unwrap();
            let mut lines = String::new();
            for i in 1..=120usize {
                let loss = 1.0 / i as f64 + 0.01 * k as f64;
                lines += &serde_json::to_string(&LogEntry::Train { iter: i, loss, lr: 0.01, ms: 40.0 + (i % 3) as f64 + 10.0 * k as f64, time_s: i as f64 }).unwrap();
                lines += "\n";
                if i % 60 == 0 {
                    let v = LogEntry::Val { iter: i, against: "pseudo".into(), recall: 0.8, precision: 0.8, dice: 0.5 + i as f64 / 1000.0, avd: 0.1, vs: 0.9, count: 4 };
                    lines += &serde_json::to_string(&v).unwrap();
                    lines += "\n";
                }
            }
            std::fs::write(run_dir.join("log.jsonl"), lines).unwrap();
            runs.push(Run::load(&dir.join(name), None).unwrap());
        }
        assert_eq!(runs[0].label, "fp32", "a demo folder is named after itself, not its train/");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let s = compare(&runs, &out).unwrap();
        for f in OUTPUTS {
            assert!(out.join(f).is_file(), "{f}");
        }
        let want_loss: f64 = (71..=120).map(|i| 1.0 / i as f64).sum::<f64>() / 50.0;
        assert!((s[0].final_loss - want_loss).abs() < 1e-12);
        assert!((s[1].final_loss - want_loss - 0.01).abs() < 1e-12);
        assert_eq!(s[1].last_val_dice, vec![("pseudo".to_string(), 0.62)]);
        assert_eq!((s[0].iterations, s[0].median_step_ms, s[1].median_step_ms), (120, 41.0, 51.0));
        let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(2).unwrap().starts_with("bf16,120,"), "{csv}");
        let e = Run::load(&dir.join("missing"), None).err().unwrap().to_string();
        assert!(e.contains("missing") && e.contains("log.jsonl"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
