//! The run's JSONL log (`<out>/log.jsonl`): one object per line,
//! `{"kind":"train","iter":i,"loss":..,"lr":..,"ms":..,"time_s":..}` per iteration (`iter` is
//! 1-based: the iterations finished; `ms` is the mean wall time per step over the log interval the
//! iteration was read back in, see `[train] log_every`), `{"kind":"val","iter":i,"vs":"pseudo"|"true",
//! "recall":..,"precision":..,"dice":..,"avd":..,"vs_":..}` per validation, and
//! `{"kind":"stop","iter":i,"reason":..}` when training stops early.
//!
//! On resume from iteration `i` the lines after `i` (written after the checkpoint, then lost)
//! are dropped, so the log and the curves never show an iteration twice.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LogEntry {
    Train { iter: usize, loss: f64, lr: f64, ms: f64, time_s: f64 },
    Val { iter: usize, against: String, recall: f64, precision: f64, dice: f64, avd: f64, vs: f64, count: usize },
    Stop { iter: usize, reason: String },
}

impl LogEntry {
    pub fn iter(&self) -> usize {
        match self {
            LogEntry::Train { iter, .. } | LogEntry::Val { iter, .. } | LogEntry::Stop { iter, .. } => *iter,
        }
    }
    /// The entry for a validation summary against `against` ("pseudo" or "true").
    pub fn val(iter: usize, against: &str, s: &crate::metrics::MetricsSummary) -> LogEntry {
        let m = &s.metrics;
        LogEntry::Val {
            iter,
            against: against.into(),
            recall: m.recall.mean,
            precision: m.precision.mean,
            dice: m.dice.mean,
            avd: m.avd.mean,
            vs: m.vs.mean,
            count: s.count,
        }
    }
}

pub struct RunLog {
    path: PathBuf,
    file: std::fs::File,
}

impl RunLog {
    /// Opens `path` for appending, first dropping entries after iteration `keep_upto` (resume)
    /// or every entry (`keep_upto` = 0, a fresh run).
    pub fn open(path: &Path, keep_upto: usize) -> Result<RunLog> {
        let kept = if keep_upto > 0 && path.exists() {
            read(path)?.into_iter().filter(|e| e.iter() <= keep_upto && !matches!(e, LogEntry::Stop { .. })).collect()
        } else {
            Vec::new()
        };
        let mut text = String::new();
        for e in &kept {
            text += &serde_json::to_string(e).map_err(|e| Error::invalid("log", e.to_string()))?;
            text.push('\n');
        }
        crate::io::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(RunLog { path: path.to_path_buf(), file })
    }
    pub fn write(&mut self, e: &LogEntry) -> Result<()> {
        let line = serde_json::to_string(e).map_err(|e| Error::invalid("log", e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every entry of a log file; a malformed line is an error naming its line number.
pub fn read(path: &Path) -> Result<Vec<LogEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(path, Some(i + 1), e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_lost_lines() {
        let path = std::env::temp_dir().join(format!("coseg-log-{}.jsonl", std::process::id()));
        let mut log = RunLog::open(&path, 0).unwrap();
        for i in 1..=5 {
            log.write(&LogEntry::Train { iter: i, loss: 1.0 / i as f64, lr: 0.01, ms: 3.0, time_s: i as f64 }).unwrap();
        }
        log.write(&LogEntry::Stop { iter: 5, reason: "NaN".into() }).unwrap();
        drop(log);
        assert_eq!(read(&path).unwrap().len(), 6);
        let mut log = RunLog::open(&path, 3).unwrap();
        log.write(&LogEntry::Train { iter: 4, loss: 0.2, lr: 0.01, ms: 3.0, time_s: 4.0 }).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.iter().map(LogEntry::iter).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(back[3], LogEntry::Train { iter: 4, loss: 0.2, lr: 0.01, ms: 3.0, time_s: 4.0 });
        std::fs::write(&path, "{\"kind\":\"train\"}\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("row 1"), "{e}");
        std::fs::remove_file(&path).ok();
    }
}
