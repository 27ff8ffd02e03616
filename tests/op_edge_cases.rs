//! Edge cases an op must treat the same on every device present (`test_device!`): the inputs it
//! refuses, with the same messages, and NaN passing through.

mod common;

use coseg::tensor::Tensor;
use common::test_device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

test_device!(relu_passes_nan_through, |device| {
    let y = Tensor::from_vec(vec![f32::NAN, -1.0, 2.0], [3], device).unwrap().relu().unwrap().to_vec().unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
});

test_device!(cross_entropy_refuses_what_it_cannot_score, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let dims = [2, 2, 9, 8];
    let logits: Vec<f32> = (0..2 * 2 * 9 * 8).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let labels: Vec<f32> = (0..2 * 9 * 8).map(|_| rng.random_bool(0.3) as u8 as f32).collect();
    let z = Tensor::from_vec(logits.clone(), dims, device).unwrap();
    let target = Tensor::from_vec(labels, [2, 9, 8], device).unwrap();
    let mut with_nan = logits;
    with_nan[37] = f32::NAN;
    let z_nan = Tensor::from_vec(with_nan, dims, device).unwrap();
    let masked_out = Tensor::zeros([2, 9, 8], device).unwrap();
    let twos = target.affine(2.0, 0.0).unwrap();
    let refusals = [
        ("every pixel masked out", z.cross_entropy_2class(&target, Some(&masked_out)), "masked out"),
        ("a NaN logit", z_nan.cross_entropy_2class(&target, None), "NaN logit at [0, 0, 4, 5]"),
        ("targets of 2", z.cross_entropy_2class(&twos, None), "not 0 or 1"),
    ];
    for (case, result, says) in refusals {
        let e = result.err().unwrap_or_else(|| panic!("{case}: not refused")).to_string();
        assert!(e.contains(says), "{case}: {e}");
    }
});

test_device!(trusted_cross_entropy_scores_as_the_checked_one_and_passes_nan_on, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let dims = [3, 2, 7, 5];
    let logits: Vec<f32> = (0..3 * 2 * 7 * 5).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let labels: Vec<f32> = (0..3 * 7 * 5).map(|_| rng.random_bool(0.4) as u8 as f32).collect();
    let target = Tensor::from_vec(labels, [3, 7, 5], device).unwrap();
    let mask = Tensor::from_vec((0..3 * 7 * 5).map(|_| rng.random_bool(0.7) as u8 as f32).collect(), [3, 7, 5], device).unwrap();
    for m in [None, Some(&mask)] {
        let (zc, zt) = (Tensor::from_vec(logits.clone(), dims, device).unwrap().into_var(), Tensor::from_vec(logits.clone(), dims, device).unwrap().into_var());
        let checked = zc.cross_entropy_2class(&target, m).unwrap();
        let trusted = zt.cross_entropy_2class_trusted(&target, m).unwrap();
        assert_eq!(checked.to_scalar().unwrap(), trusted.to_scalar().unwrap(), "mask {}", m.is_some());
        checked.mul_scalar(3.0).unwrap().backward().unwrap();
        trusted.mul_scalar(3.0).unwrap().backward().unwrap();
        assert_eq!(zc.grad().unwrap().to_vec().unwrap(), zt.grad().unwrap().to_vec().unwrap(), "mask {}", m.is_some());
    }
    // What the checked one refuses, the trusted one lets through for its caller to see.
    let mut with_nan = logits.clone();
    with_nan[11] = f32::NAN;
    let nan = Tensor::from_vec(with_nan, dims, device).unwrap().cross_entropy_2class_trusted(&target, None).unwrap();
    assert!(nan.to_scalar().unwrap().is_nan());
    let z = Tensor::from_vec(logits, dims, device).unwrap();
    let nothing = z.cross_entropy_2class_trusted(&target, Some(&Tensor::zeros([3, 7, 5], device).unwrap())).unwrap();
    assert_eq!(nothing.to_scalar().unwrap(), 0.0);
});
