//! RECIST consistency of a mask, needing no true mask: measure the mask as a reader would (longest
//! chord, then the longest chord perpendicular to it, `data::recist::recist_from_mask`) and compare
//! both diameters with the marks. The marks are a measurement of the lesion, so a mask whose
//! diameters disagree with them disagrees with the radiologist.

use super::seeds::Recist;
use crate::data::recist::recist_from_mask;
use crate::metrics::Mask;
use serde::Serialize;

/// Signed relative errors of a mask's diameters against the marks: (mask - marks) / marks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RecistConsistency {
    pub long_error: f32,
    pub short_error: f32,
}

impl RecistConsistency {
    /// Mean absolute relative error of the two diameters (0 = the mask measures as marked).
    pub fn mean_abs(&self) -> f32 {
        0.5 * (self.long_error.abs() + self.short_error.abs())
    }
}

impl Recist {
    pub fn long_len(&self) -> f32 {
        seg_len(self.long)
    }
    pub fn short_len(&self) -> f32 {
        seg_len(self.short)
    }
}

fn seg_len(s: [(f32, f32); 2]) -> f32 {
    ((s[1].0 - s[0].0).powi(2) + (s[1].1 - s[0].1).powi(2)).sqrt()
}

/// (long, short) RECIST diameters of a mask in pixels, between outermost pixel centres; None when
/// the mask is under two pixels across. Only the mask's bounding box is scanned, so a full slice
/// costs about what the lesion's crop does.
pub fn mask_diameters(mask: &Mask) -> Option<(f32, f32)> {
    let (w, h) = (mask.width, mask.height);
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in mask.data.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if x0 == usize::MAX || h == 0 {
        return None;
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let sub: Vec<u8> = (0..bw * bh).map(|i| mask.data[(y0 + i / bw) * w + x0 + i % bw] as u8).collect();
    let p = recist_from_mask(&sub, bw, bh)?;
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    Some((d(p[0], p[1]), d(p[2], p[3])))
}

/// The mask's diameters against the marks (both in the mask's pixel coordinates); None when the
/// mask cannot be measured (under two pixels across) or the marks are degenerate.
pub fn recist_consistency(mask: &Mask, recist: &Recist) -> Option<RecistConsistency> {
    let (ml, ms) = mask_diameters(mask)?;
    let (rl, rs) = (recist.long_len(), recist.short_len());
    if !(rl > 0.0 && rs > 0.0) {
        return None;
    }
    Some(RecistConsistency { long_error: (ml - rl) / rl, short_error: (ms - rs) / rs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Axis-aligned rectangles of random size and place: the long diameter is the diagonal, the
    /// short one the longest chord across it; a mask drawn from marks of those lengths scores 0.
    #[test]
    fn rectangles_measure_their_diagonal_and_errors_are_relative() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            let (w, h) = (rng.random_range(40..90), rng.random_range(40..90));
            let (rw, rh) = (rng.random_range(6..30usize), rng.random_range(6..30usize));
            let (ox, oy) = (rng.random_range(0..w - rw), rng.random_range(0..h - rh));
            let m = Mask::from_fn(w, h, |x, y| (ox..ox + rw).contains(&x) && (oy..oy + rh).contains(&y));
            let (l, s) = mask_diameters(&m).unwrap();
            let diag = (((rw - 1).pow(2) + (rh - 1).pow(2)) as f32).sqrt();
            assert!((l - diag).abs() < 1e-3, "long {l} vs diagonal {diag}");
            assert!(s > 0.0 && s <= l, "short {s} long {l}");
            // Marks 10 % longer than the mask's own diameters and 20 % shorter.
            let r = Recist {
                long: [(0.0, 0.0), (l * 1.1, 0.0)],
                short: [(l * 0.55, -s * 0.4), (l * 0.55, s * 0.4)],
            };
            let c = recist_consistency(&m, &r).unwrap();
            assert!((c.long_error - (1.0 / 1.1 - 1.0)).abs() < 1e-4, "{c:?}");
            assert!((c.short_error - (1.0 / 0.8 - 1.0)).abs() < 1e-3, "{c:?}");
            assert!((c.mean_abs() - 0.5 * (c.long_error.abs() + c.short_error.abs())).abs() < 1e-6);
        }
        assert!(mask_diameters(&Mask::empty(8, 8)).is_none());
        assert!(mask_diameters(&Mask::from_fn(8, 8, |x, y| (x, y) == (3, 3))).is_none());
    }
}
