//! Gradient checks for every differentiable op.
//!
//! Method: for a random probe `r` of the output's shape, the scalar `L(x) = sum(op(x) * r)` is
//! differentiated by the autograd (`L.backward()`), and by central differences
//! `(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`, where `op` runs in f32 (the tensors are f32) and
//! `L` is accumulated on the host in f64. With eps = 1e-2 (1e-3 near kinks) the f32 round-off in
//! L and the O(eps^2) truncation stay below the tolerance:
//! |analytic - numeric| <= ATOL + RTOL * |numeric|, ATOL = 5e-3, RTOL = 1e-2.
//! Up to `SAMPLES` randomly chosen elements per input are perturbed, which keeps the whole file
//! to a few seconds. Inputs are random normals (never zeros); ops with kinks (relu, abs, max
//! pool) get inputs kept away from the kink by more than eps.

#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in the check table

use coseg::autograd::no_grad;
use coseg::ops::BatchNormOptions;
use coseg::{Device, Result, tensor::Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ATOL: f64 = 5e-3;
const RTOL: f64 = 1e-2;
const SAMPLES: usize = 24;
const CPU: Device = Device::Cpu;

fn randn(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    Tensor::randn(dims, 0.0, 1.0, CPU, rng).unwrap()
}

/// Values spread at least `gap` apart in random order, so a small perturbation never changes
/// which element is the max of a window.
fn distinct(rng: &mut ChaCha8Rng, dims: &[usize], gap: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * gap).collect();
    v.shuffle(rng);
    Tensor::from_vec(v, dims, CPU).unwrap()
}

/// Random values at least `margin` away from 0 (for relu/abs).
fn away_from_zero(rng: &mut ChaCha8Rng, dims: &[usize], margin: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v = (0..n)
        .map(|_| {
            let m: f32 = rng.random_range(margin..2.0);
            if rng.random::<bool>() { m } else { -m }
        })
        .collect();
    Tensor::from_vec(v, dims, CPU).unwrap()
}

/// Checks d sum(f(inputs) * r) / d inputs[i] for every i in `wrt` against central differences.
fn check(
    name: &str,
    inputs: &[Tensor],
    wrt: &[usize],
    eps: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(name.bytes().map(|b| b as u64).sum());
    let vars: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if wrt.contains(&i) {
                t.detach().into_var()
            } else {
                t.detach()
            }
        })
        .collect();
    let y = f(&vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::randn(y.shape().clone(), 0.0, 1.0, CPU, &mut rng).unwrap();
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    loss.backward()
        .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    let rv = r.to_vec().unwrap();

    let scalar = |xs: &[Tensor]| -> f64 {
        let y = no_grad(|| f(xs)).unwrap();
        y.to_vec()
            .unwrap()
            .iter()
            .zip(&rv)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    };
    for &i in wrt {
        let grad = vars[i]
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {i} got no gradient"))
            .to_vec()
            .unwrap();
        let base = inputs[i].to_vec().unwrap();
        let mut idx: Vec<usize> = (0..base.len()).collect();
        idx.shuffle(&mut rng);
        idx.truncate(SAMPLES);
        for &k in &idx {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[k] += delta;
                let mut xs = vars.iter().map(|t| t.detach()).collect::<Vec<_>>();
                xs[i] = Tensor::from_vec(v, inputs[i].shape().clone(), CPU).unwrap();
                scalar(&xs)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let analytic = grad[k] as f64;
            assert!(
                (analytic - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "{name}: d/d input {i}[{k}]: analytic {analytic} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn arithmetic_with_broadcasting() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = randn(&mut rng, &[2, 3, 4, 5]);
    let chan = randn(&mut rng, &[2, 3, 1, 1]);
    let spatial = randn(&mut rng, &[2, 1, 4, 5]);
    let vec_c = randn(&mut rng, &[1, 3, 1, 1]);
    check(
        "add (N,C,1,1)",
        &[x.clone(), chan.clone()],
        &[0, 1],
        1e-2,
        |t| t[0].add(&t[1]),
    );
    check(
        "sub (N,1,H,W)",
        &[x.clone(), spatial.clone()],
        &[0, 1],
        1e-2,
        |t| t[0].sub(&t[1]),
    );
    check(
        "mul (N,C,1,1)",
        &[x.clone(), chan.clone()],
        &[0, 1],
        1e-2,
        |t| t[0].mul(&t[1]),
    );
    check(
        "mul (N,1,H,W)",
        &[spatial.clone(), x.clone()],
        &[0, 1],
        1e-2,
        |t| t[0].mul(&t[1]),
    );
    check(
        "mul (1,C,1,1) x (N,1,H,W)",
        &[vec_c.clone(), spatial.clone()],
        &[0, 1],
        1e-2,
        |t| t[0].mul(&t[1]),
    );
    let denom = x.sqr().unwrap().add_scalar(0.5).unwrap();
    check("div", &[chan.clone(), denom], &[0, 1], 1e-3, |t| {
        t[0].div(&t[1])
    });
    check("affine", &[x.clone()], &[0], 1e-2, |t| {
        t[0].affine(-1.5, 0.3)
    });
    let pos = x.abs().unwrap().add_scalar(0.5).unwrap();
    check("powf", &[pos.clone()], &[0], 1e-3, |t| t[0].powf(1.7));
    check("broadcast_to", &[chan.clone()], &[0], 1e-2, |t| {
        t[0].broadcast_to(&[2, 3, 4, 5].into())
    });
}

#[test]
fn activations() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = randn(&mut rng, &[3, 4, 5]);
    let off = away_from_zero(&mut rng, &[3, 4, 5], 0.05);
    let pos = x.abs().unwrap().add_scalar(0.5).unwrap();
    check("relu", &[off.clone()], &[0], 1e-2, |t| t[0].relu());
    check("abs", &[off], &[0], 1e-2, |t| t[0].abs());
    check("sigmoid", &[x.clone()], &[0], 1e-2, |t| t[0].sigmoid());
    check("tanh", &[x.clone()], &[0], 1e-2, |t| t[0].tanh());
    check("exp", &[x.clone()], &[0], 1e-3, |t| t[0].exp());
    check("sqr", &[x.clone()], &[0], 1e-2, |t| t[0].sqr());
    check("log", &[pos.clone()], &[0], 1e-3, |t| t[0].log());
    check("sqrt", &[pos], &[0], 1e-3, |t| t[0].sqrt());
    check(
        "softmax axis 1",
        &[randn(&mut rng, &[2, 3, 4, 4])],
        &[0],
        1e-2,
        |t| t[0].softmax(1),
    );
    check(
        "softmax last axis",
        &[randn(&mut rng, &[2, 5, 7])],
        &[0],
        1e-2,
        |t| t[0].softmax(-1),
    );
}

#[test]
fn reductions_and_layout() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = randn(&mut rng, &[2, 3, 4, 5]);
    check("sum axes 0,2", &[x.clone()], &[0], 1e-2, |t| {
        t[0].sum(&[0, 2], false)
    });
    check("mean axes 1,-1 keepdim", &[x.clone()], &[0], 1e-2, |t| {
        t[0].mean(&[1, -1], true)
    });
    check("mean_all", &[x.clone()], &[0], 1e-2, |t| t[0].mean_all());
    check("global_avg_pool", &[x.clone()], &[0], 1e-2, |t| {
        t[0].global_avg_pool()
    });
    check("sum_to (1,3,1,5)", &[x.clone()], &[0], 1e-2, |t| {
        t[0].sum_to(&[1, 3, 1, 5].into())
    });
    check("reshape", &[x.clone()], &[0], 1e-2, |t| {
        t[0].reshape([6, 20])?.sigmoid()
    });
    check("permute", &[x.clone()], &[0], 1e-2, |t| {
        t[0].permute(&[3, 1, 0, 2])
    });
    check("transpose", &[x.clone()], &[0], 1e-2, |t| {
        t[0].flatten_from(2)?.transpose(1, 2)
    });
    let y = randn(&mut rng, &[2, 2, 4, 5]);
    check("concat channels", &[x.clone(), y], &[0, 1], 1e-2, |t| {
        Tensor::concat(&[&t[0], &t[1]], 1)
    });
    check("narrow batch", &[x.clone()], &[0], 1e-2, |t| {
        t[0].narrow(0, 1, 1)
    });
    check("split channels", &[x.clone()], &[0], 1e-2, |t| {
        let parts = t[0].split(1, &[1, 2])?;
        parts[1].mul_scalar(2.0)?.sum(&[1], true)?.add(&parts[0])
    });
}

#[test]
fn products() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    check(
        "matmul",
        &[randn(&mut rng, &[5, 7]), randn(&mut rng, &[7, 3])],
        &[0, 1],
        1e-2,
        |t| t[0].matmul(&t[1]),
    );
    check(
        "bmm",
        &[randn(&mut rng, &[2, 6, 4]), randn(&mut rng, &[2, 4, 6])],
        &[0, 1],
        1e-2,
        |t| t[0].bmm(&t[1]),
    );
    check(
        "linear with bias",
        &[
            randn(&mut rng, &[3, 2, 5]),
            randn(&mut rng, &[4, 5]),
            randn(&mut rng, &[4]),
        ],
        &[0, 1, 2],
        1e-2,
        |t| t[0].linear(&t[1], Some(&t[2])),
    );
}

#[test]
fn convolutions() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // (stride, pad, dilation, kernel)
    for &(stride, pad, dil, k) in &[
        (1, 1, 1, 3),
        (2, 1, 1, 3),
        (1, 2, 2, 3),
        (1, 0, 1, 1),
        (2, 0, 1, 1),
    ] {
        let x = randn(&mut rng, &[2, 3, 7, 6]);
        let w = Tensor::randn([4, 3, k, k], 0.0, 0.5, CPU, &mut rng).unwrap();
        let b = randn(&mut rng, &[4]);
        let name = format!("conv2d stride {stride} pad {pad} dilation {dil} {k}x{k}");
        check(&name, &[x, w, b], &[0, 1, 2], 1e-2, move |t| {
            t[0].conv2d(&t[1], Some(&t[2]), stride, pad, dil)
        });
    }
    let x = randn(&mut rng, &[2, 3, 5, 5]);
    let w = Tensor::randn([2, 3, 3, 3], 0.0, 0.5, CPU, &mut rng).unwrap();
    check("conv2d no bias", &[x, w], &[0, 1], 1e-2, |t| {
        t[0].conv2d(&t[1], None, 1, 1, 1)
    });
    check(
        "conv1d_channels (ECA)",
        &[randn(&mut rng, &[2, 9, 1, 1]), randn(&mut rng, &[1, 1, 5])],
        &[0, 1],
        1e-2,
        |t| t[0].conv1d_channels(&t[1]),
    );
}

#[test]
fn normalisation_and_pooling() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = Tensor::randn([3, 4, 3, 5], 0.5, 2.0, CPU, &mut rng).unwrap();
    let gamma = Tensor::randn([4], 1.0, 0.3, CPU, &mut rng).unwrap();
    let beta = randn(&mut rng, &[4]);
    for training in [true, false] {
        let rm = randn(&mut rng, &[4]);
        let rv = Tensor::uniform([4], 0.5, 2.0, CPU, &mut rng).unwrap();
        let opts = BatchNormOptions {
            training,
            ..Default::default()
        };
        check(
            &format!("batch_norm training={training}"),
            &[x.clone(), gamma.clone(), beta.clone()],
            &[0, 1, 2],
            1e-2,
            move |t| {
                // Eval must see the same running stats on every call: pass copies.
                let (m, v) = (rm.detach(), rv.detach());
                let (m, v) = if training {
                    (m.affine(1.0, 0.0)?, v.affine(1.0, 0.0)?)
                } else {
                    (m, v)
                };
                t[0].batch_norm(&t[1], &t[2], &m, &v, opts)
            },
        );
    }
    check(
        "max_pool2d 3x3/2 pad 1",
        &[distinct(&mut rng, &[2, 3, 7, 8], 0.01)],
        &[0],
        1e-3,
        |t| t[0].max_pool2d(3, 2, 1),
    );
    check(
        "max_pool2d 2x2/2",
        &[distinct(&mut rng, &[1, 2, 6, 6], 0.01)],
        &[0],
        1e-3,
        |t| t[0].max_pool2d(2, 2, 0),
    );
    check(
        "resize_bilinear up",
        &[randn(&mut rng, &[2, 2, 4, 5])],
        &[0],
        1e-2,
        |t| t[0].resize_bilinear(9, 13),
    );
    check(
        "resize_bilinear down",
        &[randn(&mut rng, &[1, 2, 9, 8])],
        &[0],
        1e-2,
        |t| t[0].resize_bilinear(4, 3),
    );
}

#[test]
fn losses() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let z = Tensor::randn([2, 2, 4, 5], 0.0, 2.0, CPU, &mut rng).unwrap();
    let target = Tensor::from_vec(
        (0..40).map(|_| rng.random_range(0..2) as f32).collect(),
        [2, 4, 5],
        CPU,
    )
    .unwrap();
    let mask = Tensor::from_vec(
        (0..40)
            .map(|_| (rng.random::<f32>() < 0.7) as u8 as f32)
            .collect(),
        [2, 4, 5],
        CPU,
    )
    .unwrap();
    check(
        "cross_entropy_2class masked",
        &[z.clone(), target.clone(), mask],
        &[0],
        1e-2,
        |t| {
            t[0].cross_entropy_2class(&t[1], Some(&t[2]))?
                .mul_scalar(7.0)
        },
    );
    check("cross_entropy_2class", &[z, target], &[0], 1e-2, |t| {
        t[0].cross_entropy_2class(&t[1], None)?.mul_scalar(7.0)
    });
    let logits = Tensor::randn([3, 1, 4, 4], 0.0, 3.0, CPU, &mut rng).unwrap();
    let soft = Tensor::uniform([3, 1, 4, 4], 0.0, 1.0, CPU, &mut rng).unwrap();
    check("bce_with_logits", &[logits, soft], &[0], 1e-2, |t| {
        t[0].bce_with_logits(&t[1])?.mul_scalar(10.0)
    });
}

/// A small Siamese network: the same weights used on two images, the results joined. Checks
/// that gradients from both branches add up in the shared parameters.
#[test]
fn shared_weights_network() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let a = randn(&mut rng, &[1, 2, 6, 6]);
    let b = randn(&mut rng, &[1, 2, 6, 6]);
    let w = Tensor::randn([3, 2, 3, 3], 0.0, 0.5, CPU, &mut rng).unwrap();
    let head = Tensor::randn([2, 6, 1, 1], 0.0, 0.5, CPU, &mut rng).unwrap();
    check(
        "siamese conv + concat + 1x1 head + resize",
        &[a, b, w, head],
        &[0, 1, 2, 3],
        1e-2,
        |t| {
            let fa = t[0].conv2d(&t[2], None, 1, 1, 1)?.tanh()?;
            let fb = t[1].conv2d(&t[2], None, 1, 1, 1)?.tanh()?;
            let attn = fb.global_avg_pool()?.sigmoid()?;
            let joined = Tensor::concat(&[&fa.mul(&attn)?, &fb], 1)?;
            joined.conv2d(&t[3], None, 1, 0, 1)?.resize_bilinear(8, 8)
        },
    );
}

#[test]
fn clamp_and_dropout() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Inputs kept 0.05 away from the clamp bounds +-0.5.
    let x = away_from_zero(&mut rng, &[4, 6], 0.05)
        .affine(1.0, 0.0)
        .unwrap();
    let shifted = Tensor::from_vec(
        x.to_vec()
            .unwrap()
            .iter()
            .map(|&v| {
                if v.abs() > 0.45 && v.abs() < 0.55 {
                    v * 2.0
                } else {
                    v
                }
            })
            .collect(),
        [4, 6],
        CPU,
    )
    .unwrap();
    check("clamp", &[shifted], &[0], 1e-2, |t| t[0].clamp(-0.5, 0.5));
    check(
        "dropout (fixed mask)",
        &[randn(&mut rng, &[4, 6])],
        &[0],
        1e-2,
        |t| {
            let mut r = ChaCha8Rng::seed_from_u64(3); // the same mask on every call
            t[0].dropout(0.3, true, &mut r)
        },
    );
}
