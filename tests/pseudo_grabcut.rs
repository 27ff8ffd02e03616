//! GrabCut on generated lesion-like blobs with known masks: it must recover them (Dice) better
//! than the RECIST ellipse it starts from; and its bad-input errors.

use coseg::metrics::{self, Mask};
use coseg::pseudo::{GrabCutParams, Recist, ellipse_mask, grabcut};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "pseudo_support/mod.rs"]
mod support;
use support::blob_crop;

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
    let outside = Recist { long: [(3.0, 10.0), (47.6, 10.0)], ..recist };
    let err = grabcut(&img, 48, 48, &outside, &p).unwrap_err().to_string();
    assert!(err.contains("outside") && err.contains("47.6"), "{err}");
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
        let (dx, dy) = ((x as f32 - 30.0) / 20.0, (y as f32 - 30.0) / 10.0);
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
