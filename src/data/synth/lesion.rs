//! Synthetic lesions: where each coarse type lives, its size, outline (round, lobulated,
//! irregular), density (hypo-, iso-, hyper-dense, cystic, sclerotic), rim and necrotic centre,
//! and its extent in z (an ellipsoid, so neighbour slices show a smaller cross-section).

use super::anatomy::{Phantom, Region, Tissue};
use super::shape::{random_harmonics, Blob};
use crate::data::dl_info::CoarseType;
use rand::Rng;

/// Outline family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outline {
    Round,
    Lobulated,
    Irregular,
}

/// A lesion placed in a phantom.
#[derive(Clone, Debug)]
pub struct Lesion {
    pub coarse_type: CoarseType,
    pub host: Tissue,
    pub outline: Outline,
    /// Cross-section at the key slice, in pixels.
    pub blob: Blob,
    /// Half extent in z, mm.
    pub rz_mm: f32,
    pub core_hu: f32,
    /// HU of the host tissue's parenchyma (hypo-/hyper-density is relative to it).
    pub host_hu: f32,
    /// (HU, thickness as a fraction of the radius) of an enhancing rim.
    pub rim: Option<(f32, f32)>,
    /// (HU, radius fraction) of a necrotic or cystic centre.
    pub centre: Option<(f32, f32)>,
    /// Low-frequency texture: (amplitude HU, wave vector x, y in 1/px, phase).
    pub texture: Vec<(f32, f32, f32, f32)>,
    /// Width in pixels of the margin over which the lesion fades into its host: 1 for a
    /// well-defined lesion (one pixel of anti-aliasing), several for an ill-defined,
    /// infiltrative one. The true mask is the middle of the fade.
    pub margin_px: f32,
    /// A structure of about the lesion's density that touches it (a vessel, a bowel loop, a
    /// neighbouring node): (outline in pixels, HU). Painted, never part of the mask: this is
    /// where GrabCut's colour model cannot tell lesion from neighbour.
    pub abutting: Option<(Blob, f32)>,
}

/// The body region a lesion of this type is drawn in.
pub fn region_for(t: CoarseType, rng: &mut impl Rng) -> Region {
    match t {
        CoarseType::Lung | CoarseType::Mediastinum => Region::Chest,
        CoarseType::Liver | CoarseType::Kidney | CoarseType::Abdomen => Region::Abdomen,
        CoarseType::Pelvis => Region::Pelvis,
        CoarseType::Bone | CoarseType::SoftTissue | CoarseType::Unknown => {
            [Region::Chest, Region::Abdomen, Region::Pelvis][rng.random_range(0..3)]
        }
    }
}

/// Host tissues of a type in a region, tried in order of preference by a weighted draw.
fn hosts(t: CoarseType, region: Region) -> &'static [(Tissue, f32)] {
    match t {
        CoarseType::Lung => &[(Tissue::Lung, 1.0)],
        CoarseType::Liver => &[(Tissue::Liver, 1.0)],
        CoarseType::Kidney => &[(Tissue::Kidney, 1.0)],
        CoarseType::Mediastinum => &[(Tissue::VisceralFat, 1.0)],
        CoarseType::Abdomen => &[(Tissue::VisceralFat, 0.5), (Tissue::Spleen, 0.25), (Tissue::Pancreas, 0.25)],
        CoarseType::Pelvis => &[(Tissue::VisceralFat, 0.8), (Tissue::Muscle, 0.2)],
        CoarseType::SoftTissue => &[(Tissue::Muscle, 0.5), (Tissue::SubcutFat, 0.5)],
        CoarseType::Bone => &[(Tissue::Marrow, 1.0)],
        CoarseType::Unknown => match region {
            Region::Chest => &[(Tissue::Lung, 0.5), (Tissue::VisceralFat, 0.3), (Tissue::Muscle, 0.2)],
            Region::Abdomen => &[(Tissue::Liver, 0.4), (Tissue::VisceralFat, 0.3), (Tissue::Kidney, 0.15), (Tissue::Spleen, 0.15)],
            Region::Pelvis => &[(Tissue::VisceralFat, 0.6), (Tissue::Muscle, 0.4)],
        },
    }
}

/// Long-diameter range in mm typical of the type (DeepLesion: 3-60 mm overall).
fn diameter_range(host: Tissue) -> (f32, f32) {
    match host {
        Tissue::Lung => (3.0, 40.0),
        Tissue::Liver => (5.0, 60.0),
        Tissue::Kidney => (5.0, 50.0),
        Tissue::Marrow => (8.0, 45.0),
        Tissue::Muscle | Tissue::SubcutFat => (8.0, 60.0),
        Tissue::Spleen | Tissue::Pancreas => (6.0, 45.0),
        _ => (6.0, 45.0), // lymph nodes and masses in fat
    }
}

/// Host HU of a tissue in this phantom (first item painted with it), for relative densities.
fn host_hu(ph: &Phantom, host: Tissue) -> f32 {
    ph.items.iter().find(|i| i.tissue == host).map_or(40.0, |i| i.hu)
}

impl Lesion {
    /// Draws a lesion of type `t` in phantom `ph`. Returns None when no host pixel was found
    /// (the caller draws another patient).
    pub fn place(rng: &mut impl Rng, ph: &Phantom, t: CoarseType) -> Option<Lesion> {
        let options = hosts(t, ph.region);
        let total: f32 = options.iter().map(|o| o.1).sum();
        let mut pick = rng.random_range(0.0..total);
        let host = options.iter().find(|o| { pick -= o.1; pick < 0.0 }).map_or(options[0].0, |o| o.0);

        let (dmin, dmax) = diameter_range(host);
        // Log-uniform: small lesions are more common than large ones.
        let d_mm = (rng.random_range(dmin.ln()..dmax.ln())).exp();
        let r_px = d_mm / 2.0 / ph.spacing;
        let outline = match rng.random_range(0..100) + if host == Tissue::Lung { 15 } else { 0 } {
            0..=39 => Outline::Round,
            40..=74 => Outline::Lobulated,
            _ => Outline::Irregular,
        };
        let (aspect, harmonics) = match outline {
            Outline::Round => (rng.random_range(0.75..1.0), random_harmonics(rng, 2..=3, 0.04)),
            Outline::Lobulated => (rng.random_range(0.55..0.95), random_harmonics(rng, 2..=5, 0.16)),
            Outline::Irregular => (rng.random_range(0.5..0.9), random_harmonics(rng, 3..=9, 0.11)),
        };
        let amp_sum: f32 = harmonics.iter().map(|h| h.amp).sum();
        let rx = r_px / (1.0 + 0.5 * amp_sum);

        // Centre: a host pixel; most lesions lie inside their organ, some straddle its border.
        let interior = rng.random_bool(0.7);
        let (bx0, bx1, by0, by1) = ph.body.bounds(ph.width, ph.height);
        let mut centre = None;
        for attempt in 0..4000 {
            let x = rng.random_range(bx0 as f32..bx1 as f32);
            let y = rng.random_range(by0 as f32..by1 as f32);
            if ph.tissue_at(x, y, 0.0) != host {
                continue;
            }
            let probe = if interior && attempt < 3000 { 0.6 * rx } else { 0.0 };
            let inside = (0..8).all(|k| {
                let a = k as f32 * std::f32::consts::FRAC_PI_4;
                probe == 0.0 || ph.tissue_at(x + probe * a.cos(), y + probe * a.sin(), 0.0) == host
            });
            if inside {
                centre = Some((x, y));
                break;
            }
        }
        let (cx, cy) = centre?;
        let blob = Blob { cx, cy, rx, ry: rx * aspect, angle: rng.random_range(0.0..std::f32::consts::PI), harmonics };

        let base = host_hu(ph, host);
        let (core_hu, rim, centre) = density(rng, host, base);
        let amp = rng.random_range(2.0..10.0);
        let texture = (0..3)
            .map(|_| {
                let k = rng.random_range(0.15..0.6);
                let a: f32 = rng.random_range(0.0..std::f32::consts::TAU);
                (amp, k * a.cos(), k * a.sin(), rng.random_range(0.0..std::f32::consts::TAU))
            })
            .collect();
        let rz_mm = d_mm / 2.0 * rng.random_range(0.6..1.2);
        // About a third of lesions have ill-defined margins (1.5-4 mm of fade, never more than
        // half the radius), where GrabCut's cut wanders from lesion to lesion.
        let margin_px = if rng.random_bool(0.35) { (rng.random_range(1.5..4.0) / ph.spacing).min(r_px * 0.5).max(1.0) } else { 1.0 };
        let abutting = rng.random_bool(0.3).then(|| {
            let r = blob.rx.min(blob.ry) * rng.random_range(0.3..0.7);
            let a: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            // Centre just outside the lesion's outline along a random direction, so the two touch.
            let reach = blob.rx.max(blob.ry) + 0.4 * r;
            let mut dist = 0.0f32;
            while dist < reach && blob.level(cx + dist * a.cos(), cy + dist * a.sin()) < 1.0 {
                dist += 0.25;
            }
            let d = dist + 0.4 * r;
            (Blob::circle(cx + d * a.cos(), cy + d * a.sin(), r), core_hu + rng.random_range(-15.0..15.0))
        });
        Some(Lesion { coarse_type: t, host, outline, blob, rz_mm, core_hu, host_hu: base, rim, centre, texture, margin_px, abutting })
    }

    /// The cross-section `dz_mm` from the key slice, or None once past the lesion's end.
    pub fn section(&self, dz_mm: f32) -> Option<Blob> {
        let s2 = 1.0 - (dz_mm / self.rz_mm).powi(2);
        (s2 > 0.04).then(|| {
            let mut b = self.blob.scaled(s2.sqrt());
            // A lesion's centre drifts a little from slice to slice.
            b.cx += 0.03 * dz_mm * self.blob.rx;
            b.cy -= 0.02 * dz_mm * self.blob.ry;
            b
        })
    }

    /// Paints the section at `dz_mm` over `hu` and, when given, sets `mask` (0/255) where the
    /// pixel centre lies inside the lesion.
    pub fn render(&self, dz_mm: f32, hu: &mut [f32], w: usize, h: usize, mut mask: Option<&mut [u8]>) {
        if let Some((neighbour, value)) = &self.abutting {
            // Runs through the neighbouring slices unchanged, like a vessel.
            paint_soft(hu, w, h, neighbour, *value);
        }
        let Some(blob) = self.section(dz_mm) else { return };
        let grow = 1.0 + 0.5 * self.margin_px / blob.rx.min(blob.ry).max(0.5);
        let (x0, x1, y0, y1) = blob.scaled(grow).bounds(w, h);
        let r = blob.rx.min(blob.ry).max(0.5);
        let blob = blob.prepare();
        for y in y0..y1 {
            for x in x0..x1 {
                let (xf, yf) = (x as f32, y as f32);
                let l = blob.level(xf, yf);
                // (1 - l) r: roughly the distance inside the outline, in pixels.
                let a = smooth_step(-0.5, 0.5, (1.0 - l) * r / self.margin_px);
                if a <= 0.0 {
                    continue;
                }
                let mut v = self.core_hu;
                if let Some((rim_hu, thick)) = self.rim {
                    v += (rim_hu - self.core_hu) * smooth_step(1.0 - thick, 1.0 - thick * 0.4, l);
                }
                if let Some((c_hu, frac)) = self.centre {
                    v += (c_hu - v) * (1.0 - smooth_step(frac * 0.7, frac, l));
                }
                for &(amp, kx, ky, ph) in &self.texture {
                    v += amp * (kx * xf + ky * yf + ph).sin();
                }
                let i = y * w + x;
                hu[i] += a * (v - hu[i]);
                if l < 1.0 {
                    if let Some(m) = mask.as_deref_mut() {
                        m[i] = 255;
                    }
                }
            }
        }
    }
}

/// Paints `blob` at `value` HU with one pixel of anti-aliasing.
fn paint_soft(hu: &mut [f32], w: usize, h: usize, blob: &Blob, value: f32) {
    let (x0, x1, y0, y1) = blob.bounds(w, h);
    let r = blob.rx.min(blob.ry).max(0.5);
    let b = blob.prepare();
    for y in y0..y1 {
        for x in x0..x1 {
            let a = smooth_step(-0.5, 0.5, (1.0 - b.level(x as f32, y as f32)) * r);
            hu[y * w + x] += a * (value - hu[y * w + x]);
        }
    }
}

fn smooth_step(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0).max(1e-6)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Core HU, optional rim, optional centre for a lesion in `host` whose parenchyma is `base` HU.
fn density(rng: &mut impl Rng, host: Tissue, base: f32) -> (f32, Option<(f32, f32)>, Option<(f32, f32)>) {
    let u: f32 = rng.random();
    let soft = rng.random_range(25.0..70.0);
    let mut rim = None;
    let mut centre = None;
    let core = match host {
        Tissue::Liver | Tissue::Spleen | Tissue::Pancreas => {
            if u < 0.15 {
                rng.random_range(0.0..20.0) // cyst
            } else if u < 0.65 {
                if rng.random_bool(0.3) {
                    rim = Some((base + rng.random_range(5.0..40.0), rng.random_range(0.15..0.35)));
                }
                if rng.random_bool(0.2) {
                    centre = Some((rng.random_range(5.0..25.0), rng.random_range(0.3..0.6)));
                }
                base - rng.random_range(25.0..65.0) // hypodense
            } else if u < 0.82 {
                base + rng.random_range(20.0..70.0) // hyperdense
            } else {
                base - rng.random_range(5.0..15.0) // nearly isodense
            }
        }
        Tissue::Lung => {
            if u < 0.1 {
                rng.random_range(-550.0..-300.0) // ground glass
            } else {
                if u > 0.95 {
                    centre = Some((-900.0, rng.random_range(0.3..0.55))); // cavitation
                }
                rng.random_range(15.0..60.0)
            }
        }
        Tissue::Kidney => {
            if u < 0.4 {
                rng.random_range(0.0..20.0)
            } else {
                if rng.random_bool(0.25) {
                    centre = Some((rng.random_range(10.0..30.0), rng.random_range(0.3..0.6)));
                }
                base - rng.random_range(30.0..90.0)
            }
        }
        Tissue::Marrow => {
            if u < 0.55 {
                soft // lytic
            } else {
                rng.random_range(500.0..950.0) // sclerotic
            }
        }
        _ => {
            // Lymph nodes and soft-tissue masses.
            if rng.random_bool(0.15) {
                centre = Some((rng.random_range(5.0..25.0), rng.random_range(0.3..0.6)));
            }
            if rng.random_bool(0.1) {
                rim = Some((soft + rng.random_range(20.0..50.0), rng.random_range(0.15..0.3)));
            }
            soft
        }
    };
    (core, rim, centre)
}
