//! Generated lesion-like crops with known masks, shared by the pseudo-mask tests and benchmark.

use coseg::metrics::Mask;
use coseg::pseudo::Recist;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// An irregular blob (radius modulated by low harmonics) on a textured background with a
/// look-alike structure nearby, plus Gaussian noise. Returns the image, the true mask and the
/// RECIST marks measured on that mask.
pub fn blob_crop(rng: &mut ChaCha8Rng, s: usize) -> (Vec<f32>, Mask, Recist) {
    let c = (s as f32 / 2.0 + rng.random_range(-4.0..4.0), s as f32 / 2.0 + rng.random_range(-4.0..4.0));
    let r0 = rng.random_range(0.18..0.28) * s as f32;
    let (a2, a3, p2, p3) = (rng.random_range(0.1..0.35), rng.random_range(0.05..0.2), rng.random_range(0.0..6.3), rng.random_range(0.0..6.3));
    let truth = Mask::from_fn(s, s, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - c.0, y as f32 + 0.5 - c.1);
        let t = dy.atan2(dx);
        (dx * dx + dy * dy).sqrt() <= r0 * (1.0 + a2 * (2.0 * t + p2).cos() + a3 * (3.0 * t + p3).cos())
    });
    let lesion: f32 = rng.random_range(0.5..0.6);
    let background: f32 = rng.random_range(0.25..0.35);
    // A lesion-bright structure in one corner, apart from the lesion.
    let corner = if rng.random_bool(0.5) { (0.1, 0.1) } else { (0.9, 0.1) };
    let noise = Normal::new(0.0f32, 0.07).unwrap();
    let img = (0..s * s)
        .map(|i| {
            let (x, y) = ((i % s) as f32, (i / s) as f32);
            let texture = 0.05 * ((x * 0.21).sin() + (y * 0.17).cos());
            let d_corner = ((x / s as f32 - corner.0).powi(2) + (y / s as f32 - corner.1).powi(2)).sqrt();
            let base = if truth.data[i] {
                lesion
            } else if d_corner < 0.12 {
                lesion + 0.05
            } else {
                background + texture
            };
            base + noise.sample(rng)
        })
        .collect();
    let recist = recist_of(&truth);
    (img, truth, recist)
}

/// RECIST marks of a mask: the longest chord between foreground pixel centres, then the longest
/// chord perpendicular to it.
pub fn recist_of(m: &Mask) -> Recist {
    let pts: Vec<(f32, f32)> = (0..m.height)
        .flat_map(|y| (0..m.width).map(move |x| (x, y)))
        .filter(|&(x, y)| m.get(x, y))
        .map(|(x, y)| (x as f32 + 0.5, y as f32 + 0.5))
        .collect();
    let border: Vec<(f32, f32)> = pts
        .iter()
        .copied()
        .filter(|&(x, y)| {
            let (xi, yi) = (x as usize, y as usize);
            xi == 0 || yi == 0 || xi + 1 == m.width || yi + 1 == m.height
                || !m.get(xi - 1, yi) || !m.get(xi + 1, yi) || !m.get(xi, yi - 1) || !m.get(xi, yi + 1)
        })
        .collect();
    let d2 = |a: (f32, f32), b: (f32, f32)| (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2);
    let mut long = [border[0], border[0]];
    for &a in &border {
        for &b in &border {
            if d2(a, b) > d2(long[0], long[1]) {
                long = [a, b];
            }
        }
    }
    let len = d2(long[0], long[1]).sqrt();
    let (ux, uy) = ((long[1].0 - long[0].0) / len, (long[1].1 - long[0].1) / len);
    let inside = |x: f32, y: f32| x >= 0.0 && y >= 0.0 && (x as usize) < m.width && (y as usize) < m.height && m.get(x as usize, y as usize);
    let mut short = [long[0], long[0]];
    let mut t = 0.0;
    while t <= len {
        let c = (long[0].0 + t * ux, long[0].1 + t * uy);
        let walk = |sign: f32| {
            let mut k = 0.0;
            while inside(c.0 - sign * (k + 0.5) * uy, c.1 + sign * (k + 0.5) * ux) {
                k += 0.5;
            }
            (c.0 - sign * k * uy, c.1 + sign * k * ux)
        };
        let (a, b) = (walk(1.0), walk(-1.0));
        if d2(a, b) > d2(short[0], short[1]) {
            short = [a, b];
        }
        t += 0.5;
    }
    Recist { long, short }
}

