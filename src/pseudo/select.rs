//! RECIST-fit pseudo-masks: several candidate masks for one lesion (GrabCut under different
//! settings or HU windows, the RECIST ellipse, their pixel-wise vote), and the one whose long and
//! short diameters agree best with the marks is kept. The marks are a measurement of the lesion,
//! so this uses what GrabCut's energy ignores. After ULS23's DeepLesion pipeline
//! (`semi_supervised_processor.py`), with two differences: the diameters are measured as RECIST is
//! (longest chord, longest perpendicular chord) rather than as moment-ellipse axes, and each is
//! compared with its own mark (ULS23 compares both with the long one).

use super::consistency::{RecistConsistency, recist_consistency};
use super::grabcut::{GrabCutParams, grabcut};
use super::seeds::{Recist, RecistEllipse};
use crate::data::slice::window_unit;
use crate::error::{Error, Result};
use crate::metrics::Mask;

/// How a pseudo-mask is made from the marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PseudoMethod {
    /// The RECIST ellipse itself.
    Ellipse,
    /// One GrabCut with [`GrabCutParams`].
    GrabCut,
    /// The candidate most consistent with the marks ([`recist_fit`]).
    #[default]
    RecistFit,
}

impl std::str::FromStr for PseudoMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ellipse" => Ok(PseudoMethod::Ellipse),
            "grabcut" => Ok(PseudoMethod::GrabCut),
            "recist-fit" => Ok(PseudoMethod::RecistFit),
            _ => Err(Error::invalid("pseudo method", format!("unknown method {s:?} (ellipse, grabcut, recist-fit)"))),
        }
    }
}

impl std::fmt::Display for PseudoMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PseudoMethod::Ellipse => "ellipse",
            PseudoMethod::GrabCut => "grabcut",
            PseudoMethod::RecistFit => "recist-fit",
        })
    }
}

/// The HU window a GrabCut candidate sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CandidateWindow {
    /// The crop's own window (the row's DICOM window unless the crop params set one).
    Crop,
    /// The 5th to 95th percentile of HU inside the ellipse's core (scale 0.7), widened by this
    /// many HU on each side: tissue far from the lesion's density is clipped to one value.
    Lesion { margin_hu: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrabCutCandidate {
    pub grabcut: GrabCutParams,
    pub window: CandidateWindow,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecistFitParams {
    pub candidates: Vec<GrabCutCandidate>,
    /// Also offer the pixel-wise majority vote of the GrabCut candidates and the ellipse.
    pub vote: bool,
    /// Added to the ellipse's score (mean absolute relative diameter error) so that a GrabCut mask
    /// about as consistent as the ellipse is preferred: it at least follows the image.
    pub ellipse_penalty: f32,
}

impl Default for RecistFitParams {
    fn default() -> Self {
        RecistFitParams {
            candidates: vec![GrabCutCandidate { grabcut: GrabCutParams::default(), window: CandidateWindow::Crop }],
            vote: false,
            ellipse_penalty: 0.025,
        }
    }
}

/// What [`recist_fit`] chose.
#[derive(Clone, Debug)]
pub struct FitOutput {
    pub mask: Mask,
    /// Index into the candidates; `candidates.len()` = the ellipse, `+ 1` = the vote.
    pub chosen: usize,
    /// The chosen mask's consistency with the marks (None when it could not be measured).
    pub consistency: Option<RecistConsistency>,
}

/// Which candidate `chosen` names, for reports.
pub fn candidate_name(p: &RecistFitParams, chosen: usize) -> String {
    let n = p.candidates.len();
    if chosen == n {
        "ellipse".into()
    } else if chosen == n + 1 {
        "vote".into()
    } else {
        format!("grabcut#{chosen}")
    }
}

/// The candidate whose diameters agree best with the marks, for a `width` x `height` crop in HU
/// (`hu`), `window` the crop's own window, marks in crop coordinates.
pub fn recist_fit(hu: &[f32], width: usize, height: usize, window: [f32; 2], recist: &Recist, p: &RecistFitParams) -> Result<FitOutput> {
    if hu.len() != width * height {
        return Err(Error::shape("pseudo::recist_fit", format!("{} HU values for a {width}x{height} crop", hu.len())));
    }
    let ellipse = RecistEllipse::new(recist, width, height)?;
    let mut masks: Vec<Mask> = Vec::with_capacity(p.candidates.len() + 2);
    for c in &p.candidates {
        let w = match c.window {
            CandidateWindow::Crop => window,
            CandidateWindow::Lesion { margin_hu } => lesion_window(hu, width, height, &ellipse, margin_hu).unwrap_or(window),
        };
        let image: Vec<f32> = hu.iter().map(|&v| window_unit(v, w)).collect();
        masks.push(grabcut(&image, width, height, recist, &c.grabcut)?.mask);
    }
    let ellipse_mask = ellipse.mask(width, height, 1.0);
    if p.vote {
        let voters = masks.len() + 1;
        let vote = Mask::from_fn(width, height, |x, y| {
            let i = y * width + x;
            2 * (masks.iter().filter(|m| m.data[i]).count() + ellipse_mask.data[i] as usize) > voters
        });
        masks.push(ellipse_mask);
        masks.push(vote);
    } else {
        masks.push(ellipse_mask);
    }
    let n = p.candidates.len();
    let mut best: Option<(f32, usize, Option<RecistConsistency>)> = None;
    for (i, m) in masks.iter().enumerate() {
        let c = recist_consistency(m, recist);
        let score = c.map_or(f32::INFINITY, |c| c.mean_abs()) + if i == n { p.ellipse_penalty } else { 0.0 };
        if best.as_ref().is_none_or(|b| score < b.0) {
            best = Some((score, i, c));
        }
    }
    let (score, mut chosen, mut consistency) = best.expect("the ellipse is always a candidate");
    if !score.is_finite() {
        // Nothing measurable (a lesion under two pixels across): keep the ellipse.
        chosen = n;
        consistency = None;
    }
    Ok(FitOutput { mask: masks.swap_remove(chosen), chosen, consistency })
}

/// [lo - margin, hi + margin] for lo, hi the 5th and 95th HU percentiles inside the ellipse's
/// core; None when the core holds no pixel centre.
fn lesion_window(hu: &[f32], w: usize, h: usize, e: &RecistEllipse, margin: f32) -> Option<[f32; 2]> {
    let mut core: Vec<f32> = (0..w * h).filter(|&i| e.radius2((i % w) as f32, (i / w) as f32) <= 0.49).map(|i| hu[i]).collect();
    if core.is_empty() {
        return None;
    }
    core.sort_by(f32::total_cmp);
    let at = |q: f32| core[((core.len() - 1) as f32 * q).round() as usize];
    let (lo, hi) = (at(0.05) - margin, at(0.95) + margin);
    Some([lo, hi.max(lo + 1.0)])
}
