//! Pseudo-masks from RECIST marks (the paper's section 2.1): GrabCut seeded from the diameters.
//!
//! - [`seeds`]: the RECIST marks, the ellipse through their end points (also the baseline mask),
//!   and the trimap: diameters = certain lesion, ellipse = probable lesion, enlarged box = probable
//!   background, beyond = certain background.
//! - [`gmm`]: Gaussian mixtures over pixel features; [`maxflow`]: Boykov-Kolmogorov min-cut.
//! - [`grabcut`](mod@grabcut): the iterated GMM refit + min-cut on one crop.
//! - [`consistency`]: a mask's RECIST diameters against the marks (needs no true mask).
//! - [`select`]: RECIST-fit pseudo-masks: the candidate (GrabCut settings, HU windows, the
//!   ellipse, their vote) whose diameters agree best with the marks.
//! - [`batch`]: every lesion of a data set -> full-slice masks, quality against true masks.
//! - [`overlay`]: crop + outlines + RECIST as an RGB PNG.

pub mod batch;
pub mod consistency;
pub mod gmm;
pub mod grabcut;
pub mod maxflow;
pub mod overlay;
pub mod seeds;
pub mod select;

pub use batch::{
    DISAGREE_ABOVE, FailedLesion, LesionPseudoMask, LesionReport, PseudoMaskParams, PseudoMaskSummary, Quality, lesion_pseudo_mask,
    pseudo_masks,
};
pub use consistency::{RecistConsistency, mask_diameters, recist_consistency};
pub use select::{CandidateWindow, FitOutput, GrabCutCandidate, PseudoMethod, RecistFitParams, choose, lesion_window, recist_fit};
pub use grabcut::{GrabCutOutput, GrabCutParams, grabcut, keep_marked_lesion};
pub use maxflow::MaxFlow;
pub use seeds::{Recist, RecistEllipse, Seed, SeedParams, ellipse_mask, trimap};
