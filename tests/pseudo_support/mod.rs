//! Generated lesion-like crops with known masks, shared by the pseudo-mask tests and benchmark.

use coseg::data::recist::recist_from_mask;
use coseg::metrics::Mask;
use coseg::pseudo::Recist;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// An irregular blob (radius modulated by low harmonics) on a textured background with a
/// look-alike structure nearby, plus Gaussian noise. Returns the image, the true mask and the
/// RECIST marks measured on that mask (pixel centres at integers).
pub fn blob_crop(rng: &mut ChaCha8Rng, s: usize) -> (Vec<f32>, Mask, Recist) {
    let c = (s as f32 / 2.0 + rng.random_range(-4.0..4.0), s as f32 / 2.0 + rng.random_range(-4.0..4.0));
    let r0 = rng.random_range(0.18..0.28) * s as f32;
    let (a2, a3, p2, p3) = (rng.random_range(0.1..0.35), rng.random_range(0.05..0.2), rng.random_range(0.0..6.3), rng.random_range(0.0..6.3));
    let truth = Mask::from_fn(s, s, |x, y| {
        let (dx, dy) = (x as f32 - c.0, y as f32 - c.1);
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
    let bytes: Vec<u8> = truth.data.iter().map(|&b| b as u8).collect();
    let recist = Recist::from_points(recist_from_mask(&bytes, s, s).expect("blob has an extent"));
    (img, truth, recist)
}
