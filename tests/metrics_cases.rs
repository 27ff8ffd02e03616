//! Hand-computed cases for every metric, the edge cases, the distance transform against brute
//! force, and the folder evaluation with its skip accounting.

use coseg::metrics::{self, Mask, MeanStd, MetricsSummary};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Mask {
    Mask::from_fn(w, h, |x, y| (x0..=x1).contains(&x) && (y0..=y1).contains(&y))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn overlapping_blocks_give_hand_computed_values() {
    // truth: 2x2 block at x,y in 1..=2 (4 px); pred: x in 1..=3, y in 1..=2 (6 px).
    // TP = 4, FP = 2, FN = 0.
    let truth = rect(5, 4, 1, 1, 2, 2);
    let pred = rect(5, 4, 1, 1, 3, 2);
    let m = metrics::evaluate(&pred, &truth).unwrap();
    assert!(close(m.recall, 1.0), "{m:?}");
    assert!(close(m.precision, 4.0 / 6.0), "{m:?}");
    assert!(close(m.dice, 8.0 / 10.0), "{m:?}");
    // VS = 1 - |0 - 2| / (8 + 2 + 0)
    assert!(close(m.vs, 0.8), "{m:?}");
    // pred -> truth: the two pixels of column 3 are 1 away, the rest 0: mean 2/6. truth -> pred: 0.
    assert!(close(m.avd, 1.0 / 3.0), "{m:?}");
}

#[test]
fn disjoint_pixels_use_euclidean_distance_and_vs_ignores_position() {
    // One pixel each, at (0,0) and (3,4): distance 5 both ways; equal volumes so VS = 1.
    let mut truth = Mask::empty(6, 6);
    truth.data[0] = true;
    let mut pred = Mask::empty(6, 6);
    pred.data[4 * 6 + 3] = true;
    let m = metrics::evaluate(&pred, &truth).unwrap();
    assert_eq!((m.recall, m.precision, m.dice), (0.0, 0.0, 0.0));
    assert!(close(m.avd, 5.0) && close(m.vs, 1.0), "{m:?}");
}

#[test]
fn avd_is_the_larger_directed_mean() {
    // truth: pixel (0,0). pred: (0,0), (0,2), (2,0): directed pred->truth = (0 + 2 + 2)/3,
    // truth->pred = 0; under-segmentation: recall 1, precision 1/3, FN = 0, FP = 2.
    let truth = Mask::from_fn(4, 4, |x, y| (x, y) == (0, 0));
    let pred = Mask::from_fn(4, 4, |x, y| matches!((x, y), (0, 0) | (0, 2) | (2, 0)));
    let m = metrics::evaluate(&pred, &truth).unwrap();
    assert!(close(m.avd, 4.0 / 3.0), "{m:?}");
    assert!(close(metrics::directed_mean_distance(&truth, &pred).unwrap(), 0.0));
    assert!(close(m.precision, 1.0 / 3.0) && close(m.recall, 1.0));
    // Dice = 2/(2+2) ; VS = 1 - |0-2|/(2+2+0) = 0.5
    assert!(close(m.dice, 0.5) && close(m.vs, 0.5), "{m:?}");
    // A missed-volume case: FN = 3, FP = 0 swaps recall and precision but not Dice or VS.
    let n = metrics::evaluate(&truth, &pred).unwrap();
    assert!(close(n.recall, 1.0 / 3.0) && close(n.precision, 1.0) && close(n.dice, 0.5) && close(n.vs, 0.5));
}

#[test]
fn edge_cases_are_defined() {
    let empty = Mask::empty(3, 4);
    let one = Mask::from_fn(3, 4, |x, y| (x, y) == (1, 1));
    let both = metrics::evaluate(&empty, &empty).unwrap();
    assert_eq!(both.values(), [1.0, 1.0, 1.0, 0.0, 1.0]);
    for (pred, truth) in [(&empty, &one), (&one, &empty)] {
        let m = metrics::evaluate(pred, truth).unwrap();
        assert_eq!(m.values(), [0.0, 0.0, 0.0, 5.0, 0.0], "diagonal of 3x4 is 5");
    }
    let err = metrics::evaluate(&Mask::empty(3, 5), &one).unwrap_err().to_string();
    assert!(err.contains("3x5") && err.contains("3x4"), "{err}");
}

#[test]
fn distance_transform_matches_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for trial in 0..20 {
        let (w, h) = (rng.random_range(1..20), rng.random_range(1..20));
        let density = [0.02, 0.1, 0.5][trial % 3];
        let mask = Mask::from_fn(w, h, |_, _| rng.random_bool(density));
        let dt = metrics::squared_distance_transform(&mask);
        for y in 0..h {
            for x in 0..w {
                let best = (0..h)
                    .flat_map(|v| (0..w).map(move |u| (u, v)))
                    .filter(|&(u, v)| mask.get(u, v))
                    .map(|(u, v)| (x as f64 - u as f64).powi(2) + (y as f64 - v as f64).powi(2))
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(dt[y * w + x], best, "{w}x{h} at ({x},{y})");
            }
        }
    }
}

#[test]
fn mean_std_is_population_std() {
    let s = MeanStd::of([1.0, 2.0, 3.0, 6.0]);
    assert!(close(s.mean, 3.0) && close(s.std, (14.0f64 / 4.0).sqrt()), "{s:?}");
    assert!(MeanStd::of([]).mean.is_nan());
}

#[test]
fn summary_counts_edge_cases_and_skips_mismatched_sizes() {
    let truth = rect(5, 4, 1, 1, 2, 2);
    let pred = rect(5, 4, 1, 1, 3, 2);
    let pairs = vec![
        ("a.png".to_string(), pred.clone(), truth.clone()),
        ("b.png".to_string(), truth.clone(), truth.clone()),
        ("c.png".to_string(), Mask::empty(5, 4), truth.clone()),
        ("d.png".to_string(), Mask::empty(4, 4), truth.clone()),
    ];
    let s = MetricsSummary::from_pairs(&pairs);
    assert_eq!(s.count, 3);
    assert_eq!((s.empty_prediction, s.empty_truth, s.both_empty), (1, 0, 0));
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].name, "d.png");
    assert!(s.skipped[0].reason.contains("4x4"), "{}", s.skipped[0].reason);
    assert!(close(s.metrics.dice.mean, (0.8 + 1.0 + 0.0) / 3.0));
    let json: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
    assert_eq!(json["count"], 3);
    assert!(close(json["metrics"]["dice"]["mean"].as_f64().unwrap(), s.metrics.dice.mean));
    assert!(close(json["per_image"]["a.png"]["avd"].as_f64().unwrap(), 1.0 / 3.0));
    assert_eq!(json["skipped"][0]["name"], "d.png");
    let table = s.table("test");
    assert!(table.contains("Dice") && table.contains("0.600 ± ") && table.contains("skipped d.png"), "{table}");
}

#[test]
fn folder_evaluation_names_every_unpaired_or_bad_file() {
    let dir = std::env::temp_dir().join(format!("coseg-metrics-dirs-{}", std::process::id()));
    let (pred_dir, truth_dir) = (dir.join("pred"), dir.join("truth"));
    let truth = rect(5, 4, 1, 1, 2, 2);
    truth.write(truth_dir.join("ok.png")).unwrap();
    rect(5, 4, 1, 1, 3, 2).write(pred_dir.join("ok.png")).unwrap();
    truth.write(truth_dir.join("missing_pred.png")).unwrap();
    truth.write(pred_dir.join("no_truth.png")).unwrap();
    truth.write(truth_dir.join("small.png")).unwrap();
    Mask::empty(2, 2).write(pred_dir.join("small.png")).unwrap();
    truth.write(truth_dir.join("corrupt.png")).unwrap();
    std::fs::write(pred_dir.join("corrupt.png"), b"not a png").unwrap();
    let s = metrics::evaluate_dirs(&pred_dir, &truth_dir).unwrap();
    // A truth without a prediction is a failed lesion: Dice 0, counted in the mean, and named.
    assert_eq!(s.count, 2);
    assert!(close(s.per_image["ok.png"].dice, 0.8));
    assert_eq!(s.per_image["missing_pred.png"].dice, 0.0);
    assert!(close(s.metrics.dice.mean, 0.4));
    assert_eq!(s.missing_prediction, ["missing_pred.png"]);
    assert!(s.table("t").contains("no prediction missing_pred.png"));
    let names: Vec<&str> = s.skipped.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["corrupt.png", "no_truth.png", "small.png"]);
    assert!(s.skipped[0].reason.contains("corrupt.png"), "{:?}", s.skipped[0]);
    assert!(s.skipped[2].reason.contains("2x2"), "{:?}", s.skipped[2]);
    assert!(metrics::evaluate_dirs(&dir.join("nope"), &truth_dir).unwrap_err().to_string().contains("nope"));
    std::fs::remove_dir_all(dir).ok();
}
