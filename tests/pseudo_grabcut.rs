//! GrabCut on generated lesion-like blobs with known masks: it must recover them (Dice) better
//! than the RECIST ellipse it starts from; and its bad-input errors.

use coseg::metrics::{self, Mask};
use coseg::pseudo::{GrabCutParams, Recist, ellipse_mask, grabcut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// An irregular blob (radius modulated by low harmonics) on a textured background with a
/// look-alike structure nearby, plus Gaussian noise. Returns the image, the true mask and the
/// RECIST marks measured on that mask.
fn blob_crop(rng: &mut ChaCha8Rng, s: usize) -> (Vec<f32>, Mask, Recist) {
    let c = (s as f32 / 2.0 + rng.random_range(-4.0..4.0), s as f32 / 2.0 + rng.random_range(-4.0..4.0));
    let r0 = rng.random_range(0.18..0.28) * s as f32;
    let (a2, a3, p2, p3) = (rng.random_range(0.0..0.25), rng.random_range(0.0..0.12), rng.random_range(0.0..6.3), rng.random_range(0.0..6.3));
    let truth = Mask::from_fn(s, s, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - c.0, y as f32 + 0.5 - c.1);
        let t = dy.atan2(dx);
        (dx * dx + dy * dy).sqrt() <= r0 * (1.0 + a2 * (2.0 * t + p2).cos() + a3 * (3.0 * t + p3).cos())
    });
    let lesion: f32 = rng.random_range(0.55..0.75);
    let background: f32 = rng.random_range(0.2..0.4);
    // A lesion-bright structure in one corner, apart from the lesion.
    let corner = if rng.random_bool(0.5) { (0.1, 0.1) } else { (0.9, 0.1) };
    let noise = Normal::new(0.0f32, 0.05).unwrap();
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
fn recist_of(m: &Mask) -> Recist {
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

#[test]
fn grabcut_recovers_blobs_better_than_the_recist_ellipse() {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let params = GrabCutParams::default();
    let (mut sum_cut, mut sum_ellipse) = (0.0, 0.0);
    let n = 12;
    for i in 0..n {
        let (img, truth, recist) = blob_crop(&mut rng, 96);
        let out = grabcut(&img, 96, 96, &recist, &params).unwrap();
        let cut = metrics::evaluate(&out.mask, &truth).unwrap().dice;
        let ell = metrics::evaluate(&ellipse_mask(&recist, 96, 96).unwrap(), &truth).unwrap().dice;
        eprintln!("blob {i}: grabcut Dice {cut:.3} ({} rounds), ellipse {ell:.3}", out.iterations);
        assert!(cut > 0.75, "blob {i}: Dice {cut}");
        sum_cut += cut;
        sum_ellipse += ell;
    }
    let (cut, ell) = (sum_cut / n as f64, sum_ellipse / n as f64);
    eprintln!("mean Dice: grabcut {cut:.3}, ellipse {ell:.3}");
    assert!(cut >= 0.9 && cut > ell + 0.02, "grabcut {cut} vs ellipse {ell}");
}

#[test]
fn grabcut_rejects_bad_input_with_clear_messages() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (img, _, recist) = blob_crop(&mut rng, 48);
    let p = GrabCutParams::default();
    let err = grabcut(&img[..100], 48, 48, &recist, &p).unwrap_err().to_string();
    assert!(err.contains("48x48"), "{err}");
    let mut nan = img.clone();
    nan[3 * 48 + 5] = f32::NAN;
    let err = grabcut(&nan, 48, 48, &recist, &p).unwrap_err().to_string();
    assert!(err.contains("x=5, y=3"), "{err}");
    let outside = Recist { long: [(-3.0, 10.0), (30.0, 10.0)], ..recist };
    let err = grabcut(&img, 48, 48, &outside, &p).unwrap_err().to_string();
    assert!(err.contains("outside") && err.contains("-3"), "{err}");
    let dot = Recist { long: [(10.2, 10.2), (10.4, 10.3)], short: [(10.3, 10.2), (10.3, 10.3)] };
    let err = grabcut(&img, 48, 48, &dot, &p).unwrap_err().to_string();
    assert!(err.contains("degenerate"), "{err}");
}

#[test]
fn ellipse_passes_through_the_four_end_points() {
    // Axis-aligned cross: the ellipse is the ordinary one with semi-axes 20 and 10.
    let r = Recist { long: [(10.0, 30.0), (50.0, 30.0)], short: [(30.0, 20.0), (30.0, 40.0)] };
    let m = ellipse_mask(&r, 64, 64).unwrap();
    let expect = Mask::from_fn(64, 64, |x, y| {
        let (dx, dy) = ((x as f32 + 0.5 - 30.0) / 20.0, (y as f32 + 0.5 - 30.0) / 10.0);
        dx * dx + dy * dy <= 1.0
    });
    assert_eq!(m, expect);
    // A skewed, off-centre cross: each end point's pixel is on the ellipse's edge.
    let r = Recist { long: [(8.3, 12.1), (51.7, 47.9)], short: [(36.2, 18.4), (22.0, 36.5)] };
    let e = coseg::pseudo::RecistEllipse::new(&r, 64, 64).unwrap();
    for p in [r.long[0], r.long[1], r.short[0], r.short[1]] {
        assert!((e.radius2(p.0, p.1) - 1.0).abs() < 1e-3, "{p:?}: {}", e.radius2(p.0, p.1));
    }
    assert!(e.radius2(30.0, 30.0) < 0.2);
}
