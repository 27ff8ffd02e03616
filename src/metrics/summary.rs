//! Mean ± std over a set of images, the per-image values, what was skipped and why; printed as
//! the paper's table or serialised as the JSON every evaluating command writes.

use super::{ImageMetrics, Mask, evaluate};
use crate::error::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Mean and population standard deviation of one metric over a set (NaN, written as JSON null,
/// when the set is empty).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return MeanStd { mean: f64::NAN, std: f64::NAN };
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        MeanStd { mean, std: var.sqrt() }
    }
}

impl fmt::Display for MeanStd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} ± {:.2}", self.mean, self.std)
    }
}

/// Mean ± std of each metric, in the paper's table order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MetricStats {
    pub recall: MeanStd,
    pub precision: MeanStd,
    pub dice: MeanStd,
    pub avd: MeanStd,
    pub vs: MeanStd,
}

/// A pair that could not be evaluated, by name, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The evaluation of a set of masks:
/// `{"count":N,"metrics":{"recall":{"mean":..,"std":..},..},"per_image":{"a.png":{"dice":..,..}},
///   "empty_prediction":k,"empty_truth":k,"both_empty":k,"skipped":[{"name":..,"reason":..}]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsSummary {
    /// Images evaluated (the skipped ones are not counted here).
    pub count: usize,
    pub metrics: MetricStats,
    pub per_image: BTreeMap<String, ImageMetrics>,
    /// Edge cases among the evaluated images (see the module docs for their scores).
    pub empty_prediction: usize,
    pub empty_truth: usize,
    pub both_empty: usize,
    /// Images with a truth but no prediction: scored as an empty prediction (Dice 0), since a
    /// lesion the method did not segment is a lesion it failed on. Included in `count`.
    pub missing_prediction: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl MetricsSummary {
    /// Evaluates named (prediction, truth) pairs in parallel. A pair whose masks differ in size is
    /// not evaluated but listed in `skipped` with the two sizes.
    pub fn from_pairs(pairs: &[(String, Mask, Mask)]) -> Self {
        let outcomes: Vec<_> = pairs
            .par_iter()
            .map(|(name, pred, truth)| (name.clone(), evaluate(pred, truth).map(|m| (m, edge_case(pred, truth)))))
            .collect();
        let mut s = Self::empty();
        for (name, outcome) in outcomes {
            match outcome {
                Ok((m, edge)) => s.insert(name, m, edge),
                Err(e) => s.skip(name, e.to_string()),
            }
        }
        s.finish();
        s
    }

    /// A summary with nothing in it; fill it with [`insert`](Self::insert) / [`skip`](Self::skip)
    /// and call [`finish`](Self::finish).
    pub fn empty() -> Self {
        let nan = MeanStd::of([]);
        MetricsSummary {
            count: 0,
            metrics: MetricStats { recall: nan, precision: nan, dice: nan, avd: nan, vs: nan },
            per_image: BTreeMap::new(),
            empty_prediction: 0,
            empty_truth: 0,
            both_empty: 0,
            missing_prediction: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Adds one evaluated image; `edge` says which masks were empty (see [`edge_case`]).
    pub fn insert(&mut self, name: String, m: ImageMetrics, edge: EdgeCase) {
        match edge {
            EdgeCase::None => {}
            EdgeCase::EmptyPrediction => self.empty_prediction += 1,
            EdgeCase::EmptyTruth => self.empty_truth += 1,
            EdgeCase::BothEmpty => self.both_empty += 1,
        }
        self.per_image.insert(name, m);
    }

    /// Records a pair that could not be evaluated.
    pub fn skip(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skipped { name: name.into(), reason: reason.into() });
    }

    /// Recomputes the count and the mean ± std from the per-image values.
    pub fn finish(&mut self) {
        let col = |f: fn(&ImageMetrics) -> f64| MeanStd::of(self.per_image.values().map(f));
        self.metrics = MetricStats {
            recall: col(|m| m.recall),
            precision: col(|m| m.precision),
            dice: col(|m| m.dice),
            avd: col(|m| m.avd),
            vs: col(|m| m.vs),
        };
        self.count = self.per_image.len();
        self.skipped.sort_by(|a, b| a.name.cmp(&b.name));
        self.missing_prediction.sort();
    }

    /// The JSON object described on the type.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| crate::error::Error::invalid("MetricsSummary::to_json", e.to_string()))
    }

    /// The paper's table (Rec.↑ Prec.↑ Dice↑ AVD↓ VS↑ as mean ± std) under a row label, followed by
    /// the counts and every skipped pair.
    pub fn table(&self, label: &str) -> String {
        let m = &self.metrics;
        let w = label.chars().count().max(5);
        let mut out = format!(
            "{:<w$}  {:<13}  {:<13}  {:<13}  {:<13}  {:<13}\n",
            "", "Rec.↑", "Prec.↑", "Dice↑", "AVD↓", "VS↑"
        );
        out += &format!(
            "{:<w$}  {:<13}  {:<13}  {:<13}  {:<13}  {:<13}\n",
            label,
            m.recall.to_string(),
            m.precision.to_string(),
            m.dice.to_string(),
            m.avd.to_string(),
            m.vs.to_string()
        );
        out += &format!(
            "{} images evaluated ({} empty prediction, {} empty truth, {} both empty), {} skipped\n",
            self.count,
            self.empty_prediction,
            self.empty_truth,
            self.both_empty,
            self.skipped.len()
        );
        if !self.missing_prediction.is_empty() {
            out += &format!("{} image(s) without a prediction, scored as failures (Dice 0):\n", self.missing_prediction.len());
            for n in &self.missing_prediction {
                out += &format!("  no prediction {n}\n");
            }
        }
        for s in &self.skipped {
            out += &format!("  skipped {}: {}\n", s.name, s.reason);
        }
        out
    }
}

/// Which of the two masks of a pair are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeCase {
    None,
    EmptyPrediction,
    EmptyTruth,
    BothEmpty,
}

pub fn edge_case(pred: &Mask, truth: &Mask) -> EdgeCase {
    match (pred.is_empty(), truth.is_empty()) {
        (false, false) => EdgeCase::None,
        (true, false) => EdgeCase::EmptyPrediction,
        (false, true) => EdgeCase::EmptyTruth,
        (true, true) => EdgeCase::BothEmpty,
    }
}
