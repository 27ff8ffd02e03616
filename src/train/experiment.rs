//! `coseg experiment run FILES...`: trains each config (resuming a run its out folder already
//! holds), evaluates its test split (against the true masks when the data set has them, else
//! the pseudo-masks; with the dense CRF when `[eval] crf = true`), and prints the rows in the
//! paper's form (Rec., Prec., Dice, AVD, VS as mean ± std), grouped by `[experiment] table`,
//! also written as Markdown and CSV.

use crate::data::split::Split;
use crate::error::{Error, Result};
use crate::metrics::MetricsSummary;
use crate::train::config::TrainConfig;
use crate::train::eval::{Against, EvalData, evaluate};
use crate::train::infer::restore_trained;
use crate::train::run::{Resume, train};
use std::path::{Path, PathBuf};

/// One experiment's result.
#[derive(Clone, Debug)]
pub struct ExperimentRow {
    pub name: String,
    pub table: Option<u32>,
    pub config: PathBuf,
    /// "true" or "pseudo": what the test masks were scored against.
    pub against: String,
    pub summary: MetricsSummary,
}

/// Trains and evaluates each config in turn.
pub fn run_experiments(files: &[PathBuf]) -> Result<Vec<ExperimentRow>> {
    let mut rows = Vec::new();
    for (k, file) in files.iter().enumerate() {
        let loaded = TrainConfig::load(file)?;
        let cfg = &loaded.config;
        let name = cfg
            .experiment
            .name
            .clone()
            .unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default());
        eprintln!("[{}/{}] {name} ({})", k + 1, files.len(), file.display());
        let outcome = train(cfg, &loaded.text, &Resume::Auto)?;
        let restored = restore_trained(cfg, &loaded.text, &outcome.checkpoint.params, crate::device::resolve(cfg.train.device)?)?;
        let (against, label) = match cfg.true_masks_dir() {
            Some(d) => (Against::True(d), "true"),
            None => (Against::Pseudo(cfg.data.pseudo_masks.clone()), "pseudo"),
        };
        let crf = cfg.eval.crf.then(|| cfg.eval.crf_params);
        let ev = evaluate(&restored, &EvalData::default(), Split::Test, &against, crf.as_ref(), None)?;
        rows.push(ExperimentRow { name, table: cfg.experiment.table, config: file.clone(), against: label.into(), summary: ev.summary });
    }
    Ok(rows)
}

fn groups(rows: &[ExperimentRow]) -> Vec<(Option<u32>, Vec<&ExperimentRow>)> {
    let mut tables: Vec<Option<u32>> = rows.iter().map(|r| r.table).collect();
    tables.sort();
    tables.dedup();
    tables.into_iter().map(|t| (t, rows.iter().filter(|r| r.table == t).collect())).collect()
}

fn title(t: Option<u32>) -> String {
    t.map_or("Other experiments".into(), |t| format!("Table {t}"))
}

/// The plain-text table, one block per paper table.
pub fn table_text(rows: &[ExperimentRow]) -> String {
    let w = rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(5).max(5);
    let mut s = String::new();
    for (t, rs) in groups(rows) {
        s += &format!("{}\n{:<w$}  {:<13}  {:<13}  {:<13}  {:<13}  {:<13}  vs\n", title(t), "", "Rec.↑", "Prec.↑", "Dice↑", "AVD↓", "VS↑");
        for r in rs {
            let m = &r.summary.metrics;
            s += &format!(
                "{:<w$}  {:<13}  {:<13}  {:<13}  {:<13}  {:<13}  {}\n",
                r.name,
                m.recall.to_string(),
                m.precision.to_string(),
                m.dice.to_string(),
                m.avd.to_string(),
                m.vs.to_string(),
                r.against
            );
        }
        s.push('\n');
    }
    s
}

pub fn table_markdown(rows: &[ExperimentRow]) -> String {
    let mut s = String::new();
    for (t, rs) in groups(rows) {
        s += &format!("## {}\n\n| Method | Rec. | Prec. | Dice | AVD | VS | images | scored against |\n|---|---|---|---|---|---|---|---|\n", title(t));
        for r in rs {
            let m = &r.summary.metrics;
            s += &format!("| {} | {} | {} | {} | {} | {} | {} | {} masks |\n", r.name, m.recall, m.precision, m.dice, m.avd, m.vs, r.summary.count, r.against);
        }
        s.push('\n');
    }
    s
}

pub fn table_csv(rows: &[ExperimentRow]) -> String {
    let mut s = String::from("table,name,config,against,count,recall_mean,recall_std,precision_mean,precision_std,dice_mean,dice_std,avd_mean,avd_std,vs_mean,vs_std\n");
    for r in rows {
        let m = &r.summary.metrics;
        let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.table.map(|t| t.to_string()).unwrap_or_default(),
            quote(&r.name),
            quote(&r.config.display().to_string()),
            r.against,
            r.summary.count,
            m.recall.mean,
            m.recall.std,
            m.precision.mean,
            m.precision.std,
            m.dice.mean,
            m.dice.std,
            m.avd.mean,
            m.avd.std,
            m.vs.mean,
            m.vs.std
        );
    }
    s
}

/// Writes `results.md` and `results.csv` into `out`.
pub fn write_tables(out: &Path, rows: &[ExperimentRow]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for (name, text) in [("results.md", table_markdown(rows)), ("results.csv", table_csv(rows))] {
        let p = out.join(name);
        crate::io::write_atomic(&p, text.as_bytes())?;
    }
    Ok(())
}
