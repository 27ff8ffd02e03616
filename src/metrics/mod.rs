//! The paper's segmentation metrics (Taha & Hanbury's EvaluateSegmentation definitions, which the
//! paper's tables use): recall, precision, Dice, AVD (average Hausdorff distance, pixels) and VS
//! (volumetric similarity), per image and as mean ± std over a set.
//!
//! - [`Mask`]: a binary mask; any nonzero PNG pixel is foreground (0/1 and 0/255 masks both work).
//! - [`evaluate`]: the five metrics of one prediction against its truth.
//! - [`MetricsSummary`]: per-image values, mean ± std, skipped pairs by name; the JSON that
//!   `coseg eval-masks --json`, `coseg eval` and the demo report all write.
//! - [`evaluate_dirs`]: pairs the PNGs of two folders by file name.
//!
//! # Edge cases
//! With TP, FP, FN the pixel counts of the confusion matrix:
//! - both masks empty: a perfect answer, Rec = Prec = Dice = VS = 1, AVD = 0;
//! - exactly one mask empty: a complete failure, Rec = Prec = Dice = VS = 0 and AVD = the image
//!   diagonal (the largest distance two pixels of the image can have), so that a missed lesion or
//!   a hallucinated one still weighs on the mean rather than being dropped as NaN.
//!   (VS = 1 - |FN - FP| / (2TP + FP + FN) would give 0 here too.)
//!
//! Means and standard deviations are over the images evaluated; std is the population std
//! (divide by n, as numpy's default). The summary counts each edge case.

mod distance;
mod folder;
mod mask;
mod overlap;
mod summary;

pub use distance::{average_hausdorff, directed_mean_distance, squared_distance_transform};
pub use folder::evaluate_dirs;
pub use mask::Mask;
pub use overlap::{Confusion, ImageMetrics, evaluate};
pub use summary::{EdgeCase, MeanStd, MetricStats, MetricsSummary, Skipped, edge_case};
