//! Evaluation of a folder of predicted masks against a folder of true masks, paired by file name.

use super::{Mask, MetricsSummary, edge_case, evaluate};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

fn png_names(dir: &Path) -> Result<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.to_ascii_lowercase().ends_with(".png") && entry.path().is_file() {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Evaluates every `pred/NAME.png` against `truth/NAME.png`. Nothing is dropped silently: a truth
/// with no prediction, a prediction with no truth, an unreadable PNG or a size mismatch is listed
/// in `skipped` with its reason. Errors only when a folder cannot be listed.
pub fn evaluate_dirs(pred_dir: &Path, truth_dir: &Path) -> Result<MetricsSummary> {
    let truth_names = png_names(truth_dir)?;
    let pred_names = png_names(pred_dir)?;
    let mut summary = MetricsSummary::empty();
    for name in pred_names.difference(&truth_names) {
        summary.skip(name.clone(), format!("no true mask {}", truth_dir.join(name).display()));
    }
    // A truth without a prediction is a lesion the method failed on: scored as an empty
    // prediction (Dice 0) and named, never dropped (dropping it would inflate the mean).
    for name in truth_names.difference(&pred_names) {
        match Mask::read(truth_dir.join(name)) {
            Ok(truth) => {
                let empty = Mask::empty(truth.width, truth.height);
                let m = evaluate(&empty, &truth)?;
                summary.insert(name.clone(), m, edge_case(&empty, &truth));
                summary.missing_prediction.push(name.clone());
            }
            Err(e) => summary.skip(name.clone(), format!("no predicted mask {}, and the true mask cannot be read: {e}", pred_dir.join(name).display())),
        }
    }
    let common: Vec<&String> = truth_names.intersection(&pred_names).collect();
    let bar = crate::progress::bar(common.len() as u64, "eval-masks");
    let outcomes: Vec<_> = common
        .par_iter()
        .map(|name| {
            let outcome = (|| {
                let pred = Mask::read(pred_dir.join(name))?;
                let truth = Mask::read(truth_dir.join(name))?;
                let m = evaluate(&pred, &truth)?;
                Ok::<_, Error>((m, edge_case(&pred, &truth)))
            })();
            bar.inc(1);
            ((*name).clone(), outcome)
        })
        .collect();
    bar.finish_and_clear();
    for (name, outcome) in outcomes {
        match outcome {
            Ok((m, edge)) => summary.insert(name, m, edge),
            Err(e) => summary.skip(name, e.to_string()),
        }
    }
    summary.finish();
    Ok(summary)
}
