//! The synthetic patient: a painter's list of tissue blobs for one body region (chest, upper
//! abdomen, pelvis), with HU values drawn per patient (contrast phase, fat, noise level). Each
//! item also drifts and scales slowly with z so slices key-1 and key+1 show the same anatomy
//! slightly moved, as neighbouring CT slices do.

use super::shape::{random_harmonics, Blob, PreparedBlob};
use rand::Rng;

/// Body region of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Chest,
    Abdomen,
    Pelvis,
}

/// Tissue classes painted in the phantom (a lesion's host is one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tissue {
    Air,
    Table,
    Skin,
    SubcutFat,
    Muscle,
    VisceralFat,
    Lung,
    LungVessel,
    Heart,
    Vessel,
    Cortical,
    Marrow,
    Liver,
    Spleen,
    Kidney,
    Pancreas,
    BowelWall,
    Gas,
    Fluid,
}

/// One painted structure: blob at z = 0, its tissue and HU, and how it changes with z.
#[derive(Clone, Debug)]
pub struct Item {
    pub blob: Blob,
    pub tissue: Tissue,
    pub hu: f32,
    /// Relative scale change per mm of z.
    pub scale_per_mm: f32,
    /// Centre drift in pixels per mm of z.
    pub drift_per_mm: [f32; 2],
    /// Only rows y0 <= y <= y1 (gas above an air-fluid level, the table's visible arc).
    pub rows: Option<(f32, f32)>,
}

impl Item {
    pub fn at_z(&self, dz_mm: f32) -> Blob {
        let mut b = self.blob.scaled((1.0 + self.scale_per_mm * dz_mm).max(0.0));
        b.cx += self.drift_per_mm[0] * dz_mm;
        b.cy += self.drift_per_mm[1] * dz_mm;
        b
    }
}

/// A synthetic patient slab around the key slice.
#[derive(Clone, Debug)]
pub struct Phantom {
    pub region: Region,
    pub width: usize,
    pub height: usize,
    /// In-plane pixel spacing, mm.
    pub spacing: f32,
    pub items: Vec<Item>,
    /// Body outline at z = 0 (lesion placement samples inside it).
    pub body: Blob,
    /// Thoracic/abdominal cavity at z = 0.
    pub cavity: Blob,
    /// Correlated-noise standard deviation in HU.
    pub noise_hu: f32,
    /// Partial-volume blur: weight of each neighbour in the 3-tap kernel [w, 1-2w, w].
    pub blur_w: f32,
    /// HU stored outside the circular field of view, when the scanner pads it.
    pub fov_pad: Option<i16>,
}

/// Per-patient HU values of enhancing tissues: plain value, fully enhanced value.
fn enhanced(contrast: f32, plain: f32, enhanced: f32) -> f32 {
    plain + contrast * (enhanced - plain)
}

struct Builder {
    items: Vec<Item>,
    spacing: f32,
    w: usize,
    h: usize,
}

impl Builder {
    fn px(&self, x_mm: f32, y_mm: f32) -> (f32, f32) {
        (self.w as f32 / 2.0 + x_mm / self.spacing, self.h as f32 / 2.0 + y_mm / self.spacing)
    }
    fn mm(&self, v: f32) -> f32 {
        v / self.spacing
    }
    /// Adds `blob` with a random slow z drift (a few mm over 10 mm of z at most).
    fn add(&mut self, blob: Blob, tissue: Tissue, hu: f32, rng: &mut impl Rng) {
        let s = self.spacing;
        let item = Item {
            blob,
            tissue,
            hu,
            scale_per_mm: rng.random_range(-0.012..0.012),
            drift_per_mm: [rng.random_range(-0.15..0.15) / s, rng.random_range(-0.15..0.15) / s],
            rows: None,
        };
        self.items.push(item);
    }
    /// A bone: cortical shell of `shell_mm` around marrow.
    fn bone(&mut self, blob: Blob, shell_mm: f32, marrow_hu: f32, cortical_hu: f32, rng: &mut impl Rng) {
        let inner = blob.grown(-self.mm(shell_mm));
        self.add(blob, Tissue::Cortical, cortical_hu, rng);
        if inner.rx > 0.5 && inner.ry > 0.5 {
            self.add(inner, Tissue::Marrow, marrow_hu, rng);
        }
    }
}

impl Phantom {
    /// Draws a patient for `region` at in-plane `spacing` mm/pixel on a `width` x `height` slice.
    pub fn new(rng: &mut impl Rng, region: Region, spacing: f32, width: usize, height: usize) -> Phantom {
        let pal = Palette::draw(rng);
        let mut b = Builder { items: Vec::new(), spacing, w: width, h: height };
        let trunk = trunk(rng, &mut b, region, &pal);
        let (sx, sy, vb_r) = spine(rng, &mut b, &pal, trunk.bcx, trunk.body_bottom);
        let f = Frame { cavity: trunk.cavity.clone(), sx, sy, vb_r, wall_px: b_mm(spacing, trunk.wall_mm) };
        cavity_vessels(rng, &mut b, &f, &pal);
        match region {
            Region::Chest => chest(rng, &mut b, &f, &pal),
            Region::Abdomen => abdomen(rng, &mut b, &f, &pal),
            Region::Pelvis => pelvis(rng, &mut b, &f, &pal),
        }
        let noise_hu = rng.random_range(8.0..22.0);
        let blur_w = rng.random_range(0.12..0.24);
        let fov_pad = match rng.random_range(0..100) {
            0..=54 => Some(-1024),
            55..=59 => Some(-2048),
            _ => None,
        };
        Phantom { region, width, height, spacing, items: b.items, body: trunk.body, cavity: trunk.cavity, noise_hu, blur_w, fov_pad }
    }

    /// The tissue at pixel (x, y) of the slice `dz_mm` from the key slice (last painter wins).
    pub fn tissue_at(&self, x: f32, y: f32, dz_mm: f32) -> Tissue {
        for it in self.items.iter().rev() {
            if it.rows.is_some_and(|(y0, y1)| y < y0 || y > y1) {
                continue;
            }
            // Cheap rejection by the blob's reach before the exact test.
            let scale = (1.0 + it.scale_per_mm * dz_mm).max(0.0);
            let dx = x - (it.blob.cx + it.drift_per_mm[0] * dz_mm);
            let dy = y - (it.blob.cy + it.drift_per_mm[1] * dz_mm);
            let reach = it.blob.reach() * scale;
            if dx * dx + dy * dy > reach * reach {
                continue;
            }
            if it.at_z(dz_mm).level(x, y) < 1.0 {
                return it.tissue;
            }
        }
        Tissue::Air
    }

    /// Paints the anatomy of the slice `dz_mm` from the key slice into `hu` (w*h, row-major),
    /// starting from air. Edges are anti-aliased over about one pixel.
    pub fn render(&self, dz_mm: f32, hu: &mut [f32]) {
        hu.fill(-1000.0);
        for it in &self.items {
            let blob = it.at_z(dz_mm);
            let (x0, x1, mut y0, mut y1) = blob.bounds(self.width, self.height);
            if let Some((r0, r1)) = it.rows {
                y0 = y0.max(r0.max(0.0).ceil() as usize);
                y1 = y1.min((r1.max(-1.0).floor() + 1.0) as usize).max(y0);
            }
            let px_per_level = blob.rx.min(blob.ry).max(0.5);
            paint_tiled(hu, self.width, &blob.prepare(), (x0, x1, y0, y1), px_per_level, it.hu);
        }
    }
}

/// Paints `value` over the pixels the blob covers (anti-aliased over ~1 pixel at the edge).
/// Quadtree over 16x16 tiles: one evaluation at a tile's centre plus the blob's slope bound
/// decides whether the tile is wholly inside (filled), wholly outside (skipped) or straddles
/// the edge (split in four, down to single pixels), so an organ costs about its perimeter.
/// The HU values a phantom draws once and its organs share.
struct Palette {
    contrast: f32,
    fat_hu: f32,
    muscle_hu: f32,
    cortical_hu: f32,
    marrow_hu: f32,
    vessel_hu: f32,
}

impl Palette {
    fn draw(rng: &mut impl Rng) -> Palette {
        let contrast = if rng.random_bool(0.15) { 0.0 } else { rng.random_range(0.6..1.1) };
        let fat_hu = rng.random_range(-115.0..-85.0);
        let muscle_hu = rng.random_range(40.0..62.0);
        let cortical_hu = rng.random_range(700.0..1200.0);
        let marrow_hu = rng.random_range(150.0..320.0);
        let vessel_hu = enhanced(contrast, 42.0, rng.random_range(150.0..260.0));
        Palette { contrast, fat_hu, muscle_hu, cortical_hu, marrow_hu, vessel_hu }
    }
}

/// The body wall and what the organs are placed against.
struct Trunk {
    body: Blob,
    /// The body's centre column and its lowest row (the patient lies on the table there).
    bcx: f32,
    body_bottom: f32,
    cavity: Blob,
    wall_mm: f32,
}

/// The cavity and the spine, in pixels: the frame the organs of a region are laid out in.
struct Frame {
    cavity: Blob,
    /// The vertebral body's centre and radius.
    sx: f32,
    sy: f32,
    vb_r: f32,
    /// The muscle wall's thickness (ribs sit in it).
    wall_px: f32,
}

impl Frame {
    /// The point at (fx, fy) of the cavity's half-axes from its centre.
    fn at(&self, fx: f32, fy: f32) -> (f32, f32) {
        (self.cavity.cx + fx * self.cavity.rx, self.cavity.cy + fy * self.cavity.ry)
    }
}

fn trunk(rng: &mut impl Rng, b: &mut Builder, region: Region, pal: &Palette) -> Trunk {
    let (fat_hu, muscle_hu) = (pal.fat_hu, pal.muscle_hu);
    let width = b.w;
    // Body outline, table, skin, subcutaneous fat, muscle wall, cavity.
    let (body_rx, body_ry) = match region {
        Region::Chest => (rng.random_range(125.0..175.0), rng.random_range(90.0..125.0)),
        Region::Abdomen => (rng.random_range(120.0..175.0), rng.random_range(90.0..135.0)),
        Region::Pelvis => (rng.random_range(135.0..185.0), rng.random_range(90.0..125.0)),
    };
    let (bcx, bcy) = b.px(rng.random_range(-8.0..8.0), rng.random_range(-25.0..-5.0));
    let mut body = Blob::ellipse(bcx, bcy, b.mm(body_rx), b.mm(body_ry), rng.random_range(-0.03..0.03));
    body.harmonics = random_harmonics(rng, 2..=4, 0.05);
    // The patient lies on the table: find the lowest body point below the centre.
    let prepared = body.prepare();
    let mut body_bottom = bcy;
    while prepared.level(bcx, body_bottom) < 1.0 && body_bottom < bcy + 2.0 * body.reach() {
        body_bottom += 0.5;
    }
    let table_y = body_bottom + b.mm(rng.random_range(1.0..4.0));
    // The table: the lower arc of a large circle centred above the patient (a shallow
    // trough), a thin shell over air; the body is painted over it.
    let table_r = b.mm(rng.random_range(500.0..900.0));
    let table = Blob::circle(bcx, table_y - table_r, table_r + b.mm(3.0));
    // Rows the arc can reach inside the image: it rises by R - sqrt(R^2 - x^2) at the sides.
    let half_w = width as f32 / 2.0 + bcx.abs().max(width as f32 / 2.0);
    let rise = table_r - (table_r * table_r - half_w.min(table_r).powi(2)).sqrt();
    let rows = Some((table_y - rise - 2.0, table_y + b.mm(3.0) + 2.0));
    let fixed = |blob: Blob, hu: f32| Item { blob, tissue: Tissue::Table, hu, scale_per_mm: 0.0, drift_per_mm: [0.0; 2], rows };
    b.items.push(fixed(table.clone(), 150.0));
    b.items.push(fixed(table.grown(-b.mm(3.0)), -1000.0));
    b.add(body.clone(), Tissue::Skin, rng.random_range(20.0..50.0), rng);
    b.add(body.grown(-b.mm(2.0)), Tissue::SubcutFat, fat_hu, rng);
    let fat_mm = rng.random_range(5.0..if region == Region::Chest { 25.0 } else { 32.0 });
    let wall_mm = rng.random_range(9.0..16.0);
    let muscle = body.grown(-b.mm(2.0 + fat_mm));
    b.add(muscle.clone(), Tissue::Muscle, muscle_hu, rng);
    let cavity = muscle.grown(-b.mm(wall_mm));
    b.add(cavity.clone(), Tissue::VisceralFat, fat_hu + 8.0, rng);
    Trunk { body, bcx, body_bottom, cavity, wall_mm }
}

/// Spine: vertebral body, canal, posterior arch, paraspinal muscles. Returns the vertebral
/// body's centre and radius.
fn spine(rng: &mut impl Rng, b: &mut Builder, pal: &Palette, bcx: f32, body_bottom: f32) -> (f32, f32, f32) {
    let (muscle_hu, marrow_hu, cortical_hu) = (pal.muscle_hu, pal.marrow_hu, pal.cortical_hu);
    let vb_r = b.mm(rng.random_range(15.0..21.0));
    // Its spinous process ends a few mm under the skin of the back.
    let (sx, sy) = (bcx + b.mm(rng.random_range(-3.0..3.0)), body_bottom - vb_r - b.mm(rng.random_range(56.0..64.0)));
    for side in [-1.0f32, 1.0] {
        let m = Blob::ellipse(sx + side * b.mm(30.0), sy + vb_r + b.mm(22.0), b.mm(22.0), b.mm(20.0), side * 0.3);
        b.add(m, Tissue::Muscle, muscle_hu + 3.0, rng);
    }
    let canal_y = sy + vb_r + b.mm(9.0);
    b.bone(Blob::ellipse(sx, canal_y + b.mm(6.0), b.mm(16.0), b.mm(14.0), 0.0), 3.0, marrow_hu, cortical_hu, rng);
    b.bone(Blob::ellipse(sx, canal_y + b.mm(26.0), b.mm(5.0), b.mm(14.0), 0.0), 2.0, marrow_hu, cortical_hu, rng);
    b.add(Blob::circle(sx, canal_y, b.mm(8.0)), Tissue::Fluid, 10.0, rng);
    b.bone(Blob::ellipse(sx, sy, vb_r * 1.05, vb_r, 0.0), 1.5, marrow_hu, cortical_hu, rng);
    (sx, sy, vb_r)
}

/// Small vessels and septa in the fat of the cavity (mesentery, mediastinum).
fn cavity_vessels(rng: &mut impl Rng, b: &mut Builder, f: &Frame, pal: &Palette) {
    let (crx, cry, ccx, ccy) = (f.cavity.rx, f.cavity.ry, f.cavity.cx, f.cavity.cy);
    let vessel_hu = pal.vessel_hu;
    for _ in 0..rng.random_range(15..40) {
        let t: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let rr: f32 = rng.random_range(0.0..0.95);
        let (x, y) = (ccx + rr * crx * t.cos(), ccy + rr * cry * t.sin());
        let r = b.mm(rng.random_range(0.8..2.5));
        let hu = rng.random_range(-40.0..vessel_hu.max(0.0));
        b.add(Blob::ellipse(x, y, r, r * rng.random_range(0.4..1.0), t), Tissue::VisceralFat, hu, rng);
    }
}

/// Lungs and their vessels, the mediastinum, sternum and ribs.
fn chest(rng: &mut impl Rng, b: &mut Builder, f: &Frame, pal: &Palette) {
    let (crx, cry, sx, sy, vb_r) = (f.cavity.rx, f.cavity.ry, f.sx, f.sy, f.vb_r);
    let (muscle_hu, vessel_hu, marrow_hu, cortical_hu) = (pal.muscle_hu, pal.vessel_hu, pal.marrow_hu, pal.cortical_hu);
    let at = |fx: f32, fy: f32| f.at(fx, fy);
    let lung_hu = rng.random_range(-880.0..-820.0);
    for side in [-1.0f32, 1.0] {
        let mut lung = Blob::ellipse(at(side * 0.5, -0.02).0, at(0.0, -0.02).1, crx * jitter(rng, 0.43, 0.08), cry * jitter(rng, 0.86, 0.06), side * 0.1);
        lung.harmonics = random_harmonics(rng, 2..=3, 0.08);
        b.add(lung, Tissue::Lung, lung_hu, rng);
    }
    // Pulmonary vessels: dots, larger towards the hilum.
    let n = rng.random_range(25..60);
    for _ in 0..n {
        let side = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        let fx: f32 = rng.random_range(0.12..0.85);
        let fy: f32 = rng.random_range(-0.75..0.7);
        let r = b.mm(rng.random_range(0.7..1.5) + 3.0 * (1.0 - fx).powi(3));
        let (x, y) = at(side * fx, fy);
        b.add(Blob::circle(x, y, r), Tissue::LungVessel, vessel_hu * 0.7, rng);
    }
    // Mediastinum: heart (wall and blood pool), aortas, oesophagus, sternum, ribs.
    let (hx, hy) = at(rng.random_range(0.05..0.2), rng.random_range(-0.35..-0.1));
    let mut heart = Blob::ellipse(hx, hy, crx * jitter(rng, 0.3, 0.15), cry * jitter(rng, 0.4, 0.15), -0.5);
    heart.harmonics = random_harmonics(rng, 2..=3, 0.06);
    b.add(heart.clone(), Tissue::Heart, muscle_hu + 40.0, rng);
    b.add(heart.grown(-b.mm(9.0)), Tissue::Vessel, vessel_hu, rng);
    let ao_r = b.mm(rng.random_range(10.0..14.0));
    b.add(Blob::circle(sx + b.mm(20.0), sy - vb_r - ao_r, ao_r), Tissue::Vessel, vessel_hu, rng);
    let (ex, ey) = (sx + b.mm(6.0), sy - vb_r - b.mm(8.0));
    b.add(Blob::circle(ex, ey, b.mm(7.0)), Tissue::BowelWall, muscle_hu, rng);
    b.add(Blob::circle(ex, ey, b.mm(2.5)), Tissue::Gas, -950.0, rng);
    let (stx, sty) = at(0.0, -1.0);
    b.bone(Blob::ellipse(stx, sty - b.mm(4.0), b.mm(14.0), b.mm(6.0), 0.0), 1.5, marrow_hu, cortical_hu, rng);
    ribs(rng, b, &f.cavity, f.wall_px, 10, marrow_hu, cortical_hu);
}

/// Liver, spleen, kidneys, great vessels, pancreas, stomach, bowel and lower ribs (and, half the
/// time, the lung bases).
fn abdomen(rng: &mut impl Rng, b: &mut Builder, f: &Frame, pal: &Palette) {
    let (crx, cry, sx, sy, vb_r) = (f.cavity.rx, f.cavity.ry, f.sx, f.sy, f.vb_r);
    let (contrast, fat_hu, muscle_hu, vessel_hu) = (pal.contrast, pal.fat_hu, pal.muscle_hu, pal.vessel_hu);
    let (marrow_hu, cortical_hu) = (pal.marrow_hu, pal.cortical_hu);
    let at = |fx: f32, fy: f32| f.at(fx, fy);
    // Near the diaphragm the posterior lung bases are still in the slice.
    if rng.random_bool(0.5) {
        let lung_hu = rng.random_range(-880.0..-820.0);
        for side in [-1.0f32, 1.0] {
            let (lx, ly) = at(side * 0.55, 0.55);
            let mut base = Blob::ellipse(lx, ly, crx * jitter(rng, 0.3, 0.2), cry * jitter(rng, 0.3, 0.2), side * 0.7);
            base.harmonics = random_harmonics(rng, 2..=3, 0.08);
            b.add(base, Tissue::Lung, lung_hu, rng);
        }
    }
    let liver_hu = enhanced(contrast, 58.0, rng.random_range(95.0..125.0));
    let mut liver = Blob::ellipse(at(-0.42, -0.05).0, at(0.0, -0.05).1, crx * jitter(rng, 0.55, 0.1), cry * jitter(rng, 0.8, 0.1), 0.35);
    liver.harmonics = random_harmonics(rng, 2..=4, 0.1);
    b.add(liver.clone(), Tissue::Liver, liver_hu, rng);
    let mut left_lobe = Blob::ellipse(at(-0.05, -0.55).0, at(0.0, -0.55).1, crx * jitter(rng, 0.33, 0.2), cry * jitter(rng, 0.25, 0.2), 0.15);
    left_lobe.harmonics = random_harmonics(rng, 2..=3, 0.08);
    b.add(left_lobe, Tissue::Liver, liver_hu, rng);
    for _ in 0..rng.random_range(10..25) {
        let t: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let rr: f32 = rng.random_range(0.0..0.7);
        let (x, y) = (liver.cx + rr * liver.rx * t.cos(), liver.cy + rr * liver.ry * t.sin());
        let r = b.mm(rng.random_range(2.0..6.0));
        b.add(Blob::ellipse(x, y, r, r * rng.random_range(0.6..1.0), t), Tissue::Vessel, liver_hu + contrast * rng.random_range(40.0..90.0), rng);
    }
    let spleen_hu = enhanced(contrast, 48.0, rng.random_range(105.0..130.0));
    let mut spleen = Blob::ellipse(at(0.62, 0.2).0, at(0.0, 0.2).1, crx * jitter(rng, 0.2, 0.2), cry * jitter(rng, 0.35, 0.2), -0.6);
    spleen.harmonics = random_harmonics(rng, 2..=3, 0.08);
    b.add(spleen, Tissue::Spleen, spleen_hu, rng);
    let cortex_hu = enhanced(contrast, 35.0, rng.random_range(150.0..200.0));
    for side in [-1.0f32, 1.0] {
        let (kx, ky) = at(side * 0.36, 0.45);
        let kid = Blob::ellipse(kx, ky - b.mm(5.0), crx * jitter(rng, 0.15, 0.15), cry * jitter(rng, 0.22, 0.15), side * 0.5);
        b.add(kid.clone(), Tissue::Kidney, cortex_hu, rng);
        b.add(kid.scaled(0.6), Tissue::Kidney, cortex_hu * 0.75, rng);
        let sinus = Blob::ellipse(kx - side * kid.rx * 0.45, ky - b.mm(5.0), kid.rx * 0.35, kid.ry * 0.3, 0.0);
        b.add(sinus, Tissue::VisceralFat, fat_hu + 20.0, rng);
    }
    let ao_r = b.mm(rng.random_range(9.0..12.0));
    b.add(Blob::circle(sx + b.mm(12.0), sy - vb_r - ao_r - b.mm(2.0), ao_r), Tissue::Vessel, vessel_hu, rng);
    let ivc = Blob::ellipse(sx - b.mm(25.0), sy - vb_r - b.mm(14.0), b.mm(13.0), b.mm(9.0), 0.2);
    b.add(ivc, Tissue::Vessel, enhanced(contrast, 40.0, 120.0), rng);
    for side in [-1.0f32, 1.0] {
        let psoas = Blob::ellipse(sx + side * (vb_r + b.mm(14.0)), sy - b.mm(2.0), b.mm(14.0), b.mm(18.0), 0.0);
        b.add(psoas, Tissue::Muscle, muscle_hu, rng);
    }
    let mut pancreas = Blob::ellipse(sx + b.mm(18.0), sy - vb_r - b.mm(45.0), b.mm(rng.random_range(45.0..70.0)), b.mm(11.0), -0.25);
    pancreas.harmonics = random_harmonics(rng, 2..=5, 0.1);
    b.add(pancreas, Tissue::Pancreas, enhanced(contrast, 45.0, rng.random_range(85.0..110.0)), rng);
    // Stomach: wall, fluid and an air-fluid level.
    let stomach = Blob::ellipse(at(0.38, -0.45).0, at(0.0, -0.45).1, b.mm(rng.random_range(35.0..60.0)), b.mm(rng.random_range(25.0..40.0)), 0.4);
    b.add(stomach.clone(), Tissue::BowelWall, muscle_hu + 10.0, rng);
    let content = stomach.grown(-b.mm(4.0));
    b.add(content.clone(), Tissue::Fluid, rng.random_range(5.0..30.0), rng);
    let level = content.cy - content.ry * rng.random_range(-0.2..0.7);
    b.items.push(Item { blob: content, tissue: Tissue::Gas, hu: -960.0, scale_per_mm: 0.0, drift_per_mm: [0.0; 2], rows: Some((0.0, level)) });
    let n = rng.random_range(4..10);
    bowel(rng, b, &f.cavity, n, muscle_hu, 0.0..0.9, -0.9..0.1);
    ribs(rng, b, &f.cavity, f.wall_px, 6, marrow_hu, cortical_hu);
}

/// Gluteal and psoas muscles, iliac bones, iliac vessels, bladder, rectum and bowel.
fn pelvis(rng: &mut impl Rng, b: &mut Builder, f: &Frame, pal: &Palette) {
    let (crx, cry) = (f.cavity.rx, f.cavity.ry);
    let (contrast, muscle_hu, vessel_hu) = (pal.contrast, pal.muscle_hu, pal.vessel_hu);
    let (marrow_hu, cortical_hu) = (pal.marrow_hu, pal.cortical_hu);
    let at = |fx: f32, fy: f32| f.at(fx, fy);
    for side in [-1.0f32, 1.0] {
        let (ix, iy) = at(side * 0.6, 0.15);
        let glut = Blob::ellipse(ix + side * b.mm(25.0), iy + b.mm(25.0), b.mm(50.0), b.mm(40.0), side * 0.6);
        b.add(glut, Tissue::Muscle, muscle_hu, rng);
        let iliac = Blob::ellipse(ix, iy, crx * 0.1, cry * jitter(rng, 0.45, 0.1), side * -0.45);
        b.bone(iliac, 2.5, marrow_hu, cortical_hu, rng);
        let psoas = Blob::ellipse(ix - side * b.mm(22.0), iy - b.mm(35.0), b.mm(16.0), b.mm(20.0), 0.0);
        b.add(psoas, Tissue::Muscle, muscle_hu, rng);
        for k in 0..2 {
            let r = b.mm(rng.random_range(4.0..7.0));
            let hu = if k == 0 { vessel_hu } else { enhanced(contrast, 40.0, 130.0) };
            b.add(Blob::circle(ix - side * b.mm(38.0 + 12.0 * k as f32), iy - b.mm(45.0), r), Tissue::Vessel, hu, rng);
        }
    }
    let (bx, by) = at(0.0, -0.4);
    if rng.random_bool(0.8) {
        let bladder = Blob::ellipse(bx, by, b.mm(rng.random_range(35.0..70.0)), b.mm(rng.random_range(25.0..50.0)), 0.0);
        b.add(bladder.clone(), Tissue::BowelWall, muscle_hu, rng);
        b.add(bladder.grown(-b.mm(3.0)), Tissue::Fluid, rng.random_range(0.0..20.0), rng);
    }
    let (rx_, ry_) = at(0.0, 0.35);
    b.add(Blob::circle(rx_, ry_, b.mm(17.0)), Tissue::BowelWall, muscle_hu + 5.0, rng);
    b.add(Blob::circle(rx_, ry_, b.mm(11.0)), Tissue::Gas, -900.0, rng);
    let n = rng.random_range(3..8);
    bowel(rng, b, &f.cavity, n, muscle_hu, -0.7..0.7, -0.8..0.2);
}

fn paint_tiled(hu: &mut [f32], w: usize, blob: &PreparedBlob, bounds: (usize, usize, usize, usize), px_per_level: f32, value: f32) {
    const T: usize = 16;
    let (x0, x1, y0, y1) = bounds;
    let mut ty = y0;
    while ty < y1 {
        let mut tx = x0;
        while tx < x1 {
            paint_tile(hu, w, blob, (tx, (tx + T).min(x1), ty, (ty + T).min(y1)), px_per_level, value);
            tx += T;
        }
        ty += T;
    }
}

fn paint_tile(hu: &mut [f32], w: usize, blob: &PreparedBlob, t: (usize, usize, usize, usize), ppl: f32, value: f32) {
    let (x0, x1, y0, y1) = t;
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let aa = 0.5 / ppl; // level band of the anti-aliased edge
    let (cx, cy) = ((x0 + x1 - 1) as f32 / 2.0, (y0 + y1 - 1) as f32 / 2.0);
    let l = blob.level(cx, cy);
    let a = ((1.0 - l) * ppl + 0.5).clamp(0.0, 1.0);
    if x1 - x0 == 1 && y1 - y0 == 1 {
        let p = &mut hu[y0 * w + x0];
        *p += a * (value - *p);
        return;
    }
    let half_diag = 0.5 * (((x1 - x0 - 1).pow(2) + (y1 - y0 - 1).pow(2)) as f32).sqrt();
    let spread = half_diag * blob.slope;
    if l - spread > 1.0 + aa {
        return; // wholly outside
    }
    if l + spread < 1.0 - aa {
        for y in y0..y1 {
            hu[y * w + x0..y * w + x1].fill(value);
        }
        return;
    }
    let (mx, my) = ((x0 + x1).div_ceil(2), (y0 + y1).div_ceil(2));
    for q in [(x0, mx, y0, my), (mx, x1, y0, my), (x0, mx, my, y1), (mx, x1, my, y1)] {
        paint_tile(hu, w, blob, q, ppl, value);
    }
}

/// `v` changed by a random fraction of at most `rel`.
fn jitter(rng: &mut impl Rng, v: f32, rel: f32) -> f32 {
    v * (1.0 + rng.random_range(-rel..rel))
}

fn b_mm(spacing: f32, v: f32) -> f32 {
    v / spacing
}

/// Ribs: small bones just inside the muscle wall around the front and sides of the cavity.
fn ribs(rng: &mut impl Rng, b: &mut Builder, cavity: &Blob, wall_px: f32, n: usize, marrow_hu: f32, cortical_hu: f32) {
    for i in 0..n {
        let t = std::f32::consts::PI * (1.08 + 0.84 * (i as f32 + rng.random_range(0.0..0.6)) / n as f32);
        let (c, s) = (t.cos(), t.sin());
        let x = cavity.cx + (cavity.rx + wall_px * 0.35) * c;
        let y = cavity.cy + (cavity.ry + wall_px * 0.35) * s;
        let rib = Blob::ellipse(x, y, b.mm(rng.random_range(5.0..9.0)), b.mm(rng.random_range(3.0..5.0)), t + std::f32::consts::FRAC_PI_2);
        b.bone(rib, 1.2, marrow_hu, cortical_hu, rng);
    }
}

/// Bowel loops: wall plus gas, fluid, faeces or oral contrast, in the given part of the cavity.
fn bowel(rng: &mut impl Rng, b: &mut Builder, cavity: &Blob, n: usize, wall_hu: f32, fx: std::ops::Range<f32>, fy: std::ops::Range<f32>) {
    for _ in 0..n {
        let x = cavity.cx + rng.random_range(fx.clone()) * cavity.rx;
        let y = cavity.cy + rng.random_range(fy.clone()) * cavity.ry;
        let r = b.mm(rng.random_range(7.0..16.0));
        let mut loop_ = Blob::ellipse(x, y, r, r * rng.random_range(0.6..1.0), rng.random_range(0.0..3.1));
        loop_.harmonics = random_harmonics(rng, 2..=3, 0.08);
        b.add(loop_.clone(), Tissue::BowelWall, wall_hu + 5.0, rng);
        let content_hu = match rng.random_range(0..10) {
            0..=3 => -960.0,
            4..=6 => rng.random_range(5.0..30.0),
            7..=8 => rng.random_range(-350.0..-80.0),
            _ => rng.random_range(200.0..400.0),
        };
        let tissue = if content_hu < -500.0 { Tissue::Gas } else { Tissue::Fluid };
        b.add(loop_.grown(-b.mm(2.5)), tissue, content_hu, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tiled_painting_matches_per_pixel_painting() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (w, h) = (160usize, 120usize);
        for _ in 0..30 {
            let mut blob = Blob::ellipse(
                rng.random_range(20.0..140.0),
                rng.random_range(20.0..100.0),
                rng.random_range(2.0..70.0),
                rng.random_range(2.0..50.0),
                rng.random_range(0.0..3.0),
            );
            let (kmax, amp) = (rng.random_range(2..9), rng.random_range(0.0..0.2));
            blob.harmonics = random_harmonics(&mut rng, 2..=kmax, amp);
            let base: Vec<f32> = (0..w * h).map(|_| rng.random_range(-1000.0..1000.0)).collect();
            let (mut tiled, mut naive) = (base.clone(), base);
            let ppl = blob.rx.min(blob.ry).max(0.5);
            let p = blob.prepare();
            let bounds = blob.bounds(w, h);
            paint_tiled(&mut tiled, w, &p, bounds, ppl, 77.0);
            for y in bounds.2..bounds.3 {
                for x in bounds.0..bounds.1 {
                    let a = ((1.0 - p.level(x as f32, y as f32)) * ppl + 0.5).clamp(0.0, 1.0);
                    naive[y * w + x] += a * (77.0 - naive[y * w + x]);
                }
            }
            let worst = tiled.iter().zip(&naive).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-3, "max difference {worst}");
        }
    }
}
