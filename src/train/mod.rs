//! Training and evaluation of the co-segmentation network (the paper's section 2.4).
//!
//! - [`optim`]: SGD with momentum + weight decay, Adam with weight decay, the poly schedule.
//! - [`plot`]: PNG line plots of the loss and metric curves (built-in bitmap font).

pub mod optim;
pub mod plot;

pub use optim::{Optimizer, OptimizerKind, OptimizerParams, poly_lr};
