//! Overlap metrics from the confusion counts, and the per-image evaluation.

use super::{Mask, distance};
use crate::error::{Error, Result};
use serde::Serialize;

/// Pixel counts of a prediction against its truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

impl Confusion {
    pub fn of(pred: &Mask, truth: &Mask) -> Result<Self> {
        check_same_shape("metrics::Confusion::of", pred, truth)?;
        let mut c = Confusion::default();
        for (&p, &t) in pred.data.iter().zip(&truth.data) {
            match (p, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        Ok(c)
    }
}

/// The five metrics of the paper's tables for one image. Serialised with these field names.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ImageMetrics {
    pub recall: f64,
    pub precision: f64,
    pub dice: f64,
    /// Average Hausdorff distance in pixels: smaller is better.
    pub avd: f64,
    pub vs: f64,
}

impl ImageMetrics {
    /// The metric values in table order (Rec, Prec, Dice, AVD, VS).
    pub fn values(&self) -> [f64; 5] {
        [self.recall, self.precision, self.dice, self.avd, self.vs]
    }
}

pub(crate) fn check_same_shape(op: &'static str, pred: &Mask, truth: &Mask) -> Result<()> {
    if (pred.width, pred.height) != (truth.width, truth.height) {
        return Err(Error::shape(
            op,
            format!(
                "prediction is {}x{} but truth is {}x{} (width x height)",
                pred.width, pred.height, truth.width, truth.height
            ),
        ));
    }
    Ok(())
}

/// Recall, precision, Dice, AVD and VS of `pred` against `truth` (same size; see the module docs
/// for the empty-mask conventions).
pub fn evaluate(pred: &Mask, truth: &Mask) -> Result<ImageMetrics> {
    let c = Confusion::of(pred, truth)?;
    let pred_area = c.tp + c.fp;
    let truth_area = c.tp + c.fn_;
    match (pred_area, truth_area) {
        (0, 0) => return Ok(ImageMetrics { recall: 1.0, precision: 1.0, dice: 1.0, avd: 0.0, vs: 1.0 }),
        (0, _) | (_, 0) => {
            let diagonal = ((pred.width * pred.width + pred.height * pred.height) as f64).sqrt();
            return Ok(ImageMetrics { recall: 0.0, precision: 0.0, dice: 0.0, avd: diagonal, vs: 0.0 });
        }
        _ => {}
    }
    let (tp, fp, fn_) = (c.tp as f64, c.fp as f64, c.fn_ as f64);
    Ok(ImageMetrics {
        recall: tp / (tp + fn_),
        precision: tp / (tp + fp),
        dice: 2.0 * tp / (2.0 * tp + fp + fn_),
        avd: distance::average_hausdorff(pred, truth)?,
        vs: 1.0 - (fn_ - fp).abs() / (2.0 * tp + fp + fn_),
    })
}
