//! The RECIST marks in crop coordinates, the region they span, and the GrabCut trimap seeded from
//! them.

use crate::error::{Error, Result};
use crate::metrics::Mask;

/// The two RECIST diameters, end points as (x, y) in pixel coordinates of the image they are drawn
/// on, pixel centres at integers (as in `data::crop`): pixel (x, y) covers [x - 0.5, x + 0.5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recist {
    pub long: [(f32, f32); 2],
    pub short: [(f32, f32); 2],
}

impl Recist {
    /// From DeepLesion's order: long axis p1, p2, then short axis p3, p4.
    pub fn from_points(p: [[f32; 2]; 4]) -> Self {
        Recist { long: [(p[0][0], p[0][1]), (p[1][0], p[1][1])], short: [(p[2][0], p[2][1]), (p[3][0], p[3][1])] }
    }
}

/// A pixel's seed class. GrabCut relabels only the probable ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    CertainBackground,
    ProbableBackground,
    ProbableForeground,
    CertainForeground,
}

impl Seed {
    pub fn is_certain(self) -> bool {
        matches!(self, Seed::CertainBackground | Seed::CertainForeground)
    }
    pub fn is_foreground(self) -> bool {
        matches!(self, Seed::ProbableForeground | Seed::CertainForeground)
    }
}

/// How the trimap is drawn from the RECIST marks.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedParams {
    /// Certain foreground: the central `diameter_keep` fraction of each diameter (its ends lie on
    /// the lesion border, where the drawn line may stray outside)...
    pub diameter_keep: f32,
    /// ...dilated by this radius in pixels.
    pub diameter_radius: f32,
    /// Also certain foreground: the RECIST ellipse shrunk by this factor about its centre (0 = off).
    pub inner_ellipse_scale: f32,
    /// Probable foreground: the RECIST ellipse (four quarter-ellipse arcs through the end points)
    /// grown by this factor about its centre.
    pub probable_ellipse_scale: f32,
    /// Probable background: the bounding box of the RECIST ellipse, enlarged on each side by this
    /// fraction of its width and height. Everything beyond is certain background.
    pub box_margin: f32,
}

impl Default for SeedParams {
    fn default() -> Self {
        SeedParams {
            diameter_keep: 0.8,
            diameter_radius: 1.0,
            inner_ellipse_scale: 0.0,
            probable_ellipse_scale: 1.0,
            box_margin: 0.3,
        }
    }
}

/// The RECIST ellipse: the closed curve of four quarter-ellipse arcs, each through two adjacent end
/// points and centred where the diameters cross. Arc k is centre + cos t * u + sin t * v,
/// t in [0, pi/2], for u, v the vectors to two adjacent end points; so a point is inside when, in
/// the cone of some (u, v), its coordinates (a, b) along u and v have a² + b² <= 1.
#[derive(Clone, Debug)]
pub struct RecistEllipse {
    centre: (f32, f32),
    /// The four quarters as inverse 2x2 bases: (a, b) = inv * (p - centre).
    quarters: [[f32; 4]; 4],
    /// Bounding box (x0, y0, x1, y1) of the ellipse at scale 1.
    bbox: (f32, f32, f32, f32),
}

impl RecistEllipse {
    /// Checks the marks (finite, non-degenerate, inside a `width` x `height` image) and builds the
    /// ellipse.
    pub fn new(r: &Recist, width: usize, height: usize) -> Result<Self> {
        let pts = [r.long[0], r.short[0], r.long[1], r.short[1]];
        for &(x, y) in &pts {
            let (xmax, ymax) = (width as f32 - 0.5, height as f32 - 0.5);
            if !(x.is_finite() && y.is_finite()) || x < -0.5 || y < -0.5 || x > xmax || y > ymax {
                return Err(Error::invalid(
                    "pseudo::RecistEllipse",
                    format!("RECIST point ({x}, {y}) lies outside the {width}x{height} image"),
                ));
            }
        }
        let len = |s: [(f32, f32); 2]| ((s[1].0 - s[0].0).powi(2) + (s[1].1 - s[0].1).powi(2)).sqrt();
        let (ll, ls) = (len(r.long), len(r.short));
        if ll < 1.0 || ls < 0.5 {
            return Err(Error::invalid(
                "pseudo::RecistEllipse",
                format!("degenerate RECIST marks: long diameter {ll:.2} px, short {ls:.2} px (need >= 1 and >= 0.5)"),
            ));
        }
        let centre = crossing(r).unwrap_or(((r.long[0].0 + r.long[1].0) / 2.0, (r.long[0].1 + r.long[1].1) / 2.0));
        let mut quarters = [[0.0; 4]; 4];
        for k in 0..4 {
            let (u, v) = (pts[k], pts[(k + 1) % 4]);
            let (ux, uy, vx, vy) = (u.0 - centre.0, u.1 - centre.1, v.0 - centre.0, v.1 - centre.1);
            let det = ux * vy - uy * vx;
            if det.abs() < 1e-6 {
                return Err(Error::invalid(
                    "pseudo::RecistEllipse",
                    format!("RECIST diameters are parallel or do not cross: {r:?}"),
                ));
            }
            quarters[k] = [vy / det, -vx / det, -uy / det, ux / det];
        }
        // Bounding box: sample the arcs densely (exact enough for a seed box).
        let mut bbox = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for k in 0..4 {
            let (u, v) = (pts[k], pts[(k + 1) % 4]);
            for s in 0..=32 {
                let t = s as f32 / 32.0 * std::f32::consts::FRAC_PI_2;
                let x = centre.0 + t.cos() * (u.0 - centre.0) + t.sin() * (v.0 - centre.0);
                let y = centre.1 + t.cos() * (u.1 - centre.1) + t.sin() * (v.1 - centre.1);
                bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x), bbox.3.max(y));
            }
        }
        Ok(RecistEllipse { centre, quarters, bbox })
    }

    /// (a² + b²) for the point: <= s² means inside the ellipse scaled by s about its centre.
    pub fn radius2(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        let mut best = f32::INFINITY;
        for q in &self.quarters {
            let a = q[0] * dx + q[1] * dy;
            let b = q[2] * dx + q[3] * dy;
            if a >= -1e-6 && b >= -1e-6 {
                best = best.min(a * a + b * b);
            }
        }
        best
    }

    /// The pixels whose centres lie inside the ellipse scaled by `scale`.
    pub fn mask(&self, width: usize, height: usize, scale: f32) -> Mask {
        Mask::from_fn(width, height, |x, y| self.radius2(x as f32, y as f32) <= scale * scale)
    }

    pub fn bbox(&self) -> (f32, f32, f32, f32) {
        self.bbox
    }
}

/// Where the two diameter lines cross, if they are not parallel.
fn crossing(r: &Recist) -> Option<(f32, f32)> {
    let (p, q) = (r.long[0], r.short[0]);
    let d1 = (r.long[1].0 - p.0, r.long[1].1 - p.1);
    let d2 = (r.short[1].0 - q.0, r.short[1].1 - q.1);
    let den = d1.0 * d2.1 - d1.1 * d2.0;
    if den.abs() < 1e-6 {
        return None;
    }
    let t = ((q.0 - p.0) * d2.1 - (q.1 - p.1) * d2.0) / den;
    Some((p.0 + t * d1.0, p.1 + t * d1.1))
}

/// The plain RECIST ellipse as a mask: the baseline pseudo-masks must beat.
pub fn ellipse_mask(r: &Recist, width: usize, height: usize) -> Result<Mask> {
    Ok(RecistEllipse::new(r, width, height)?.mask(width, height, 1.0))
}

/// Distance from point p to segment a-b.
fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let l2 = dx * dx + dy * dy;
    let t = if l2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / l2).clamp(0.0, 1.0) } else { 0.0 };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// The central `keep` fraction of segment s.
fn central_part(s: [(f32, f32); 2], keep: f32) -> [(f32, f32); 2] {
    let c = ((s[0].0 + s[1].0) / 2.0, (s[0].1 + s[1].1) / 2.0);
    let at = |p: (f32, f32)| (c.0 + keep * (p.0 - c.0), c.1 + keep * (p.1 - c.1));
    [at(s[0]), at(s[1])]
}

/// The trimap of a `width` x `height` image (row-major), and the ellipse it came from.
pub fn trimap(r: &Recist, width: usize, height: usize, p: &SeedParams) -> Result<(Vec<Seed>, RecistEllipse)> {
    let ellipse = RecistEllipse::new(r, width, height)?;
    let (bx0, by0, bx1, by1) = ellipse.bbox();
    // Pixel edges, not centres, bound the box: half a pixel more on each side.
    let (bx0, by0, bx1, by1) = (bx0 - 0.5, by0 - 0.5, bx1 + 0.5, by1 + 0.5);
    let (mx, my) = ((bx1 - bx0) * p.box_margin, (by1 - by0) * p.box_margin);
    let (bx0, by0, bx1, by1) = (bx0 - mx, by0 - my, bx1 + mx, by1 + my);
    let long = central_part(r.long, p.diameter_keep);
    let short = central_part(r.short, p.diameter_keep);
    // The seed line is at least a pixel wide so that a thin diameter still hits pixel centres.
    let radius = p.diameter_radius.max(0.71);
    let mut seeds = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let c = (x as f32, y as f32);
            let r2 = ellipse.radius2(c.0, c.1);
            let on_diameter = segment_distance(c, long[0], long[1]) <= radius
                || segment_distance(c, short[0], short[1]) <= radius;
            seeds.push(if on_diameter || r2 <= p.inner_ellipse_scale * p.inner_ellipse_scale {
                Seed::CertainForeground
            } else if r2 <= p.probable_ellipse_scale * p.probable_ellipse_scale {
                Seed::ProbableForeground
            } else if c.0 >= bx0 && c.0 <= bx1 && c.1 >= by0 && c.1 <= by1 {
                Seed::ProbableBackground
            } else {
                Seed::CertainBackground
            });
        }
    }
    Ok((seeds, ellipse))
}
