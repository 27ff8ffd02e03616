//! Gradient checks for every differentiable op, on every device present (`test_device!`: each
//! check is `name::cpu`, and `name::cuda` on cuda:0 where there is one).
//!
//! Method: for a random probe `r` of the output's shape, the scalar `L(x) = sum(op(x) * r)` is
//! differentiated by the autograd (`L.backward()`), and by central differences
//! `(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)`, where `op` runs in f32 (the tensors are f32) on
//! the device under test and `L` is accumulated on the host in f64. With eps = 1e-2 (1e-3 near
//! kinks) the f32 round-off in L and the O(eps^2) truncation stay below the tolerance:
//! |analytic - numeric| <= ATOL + RTOL * |numeric|, ATOL = 5e-3, RTOL = 1e-2.
//! Up to `SAMPLES` randomly chosen elements per input are perturbed, which keeps the whole file
//! to a few seconds. Inputs are random normals (never zeros); ops with kinks (relu, abs, max
//! pool) get inputs kept away from the kink by more than eps.

mod common;

use coseg::autograd::no_grad;
use coseg::ops::BatchNormOptions;
use coseg::{Device, Result, tensor::Tensor};
use common::test_device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// The same on the GPU. Its kernels compute in f32 as the CPU does (no fast math; convolutions at
// fp32, which test_device! checks), in other summation orders, and atomics make some backward
// sums (bias, weight and resize gradients) order-dependent: differences of a few f32 ulps of
// each sum, about 1e-6 relative for these sizes, three orders below ATOL; the round-off bound on
// the numeric side (f32 outputs, f64 sum of L) holds whatever the order.
const ATOL: f64 = 5e-3;
const RTOL: f64 = 1e-2;
const SAMPLES: usize = 24;

fn randn(rng: &mut ChaCha8Rng, dims: &[usize], device: Device) -> Tensor {
    Tensor::randn(dims, 0.0, 1.0, device, rng).unwrap()
}

/// Values spread at least `gap` apart in random order, so a small perturbation never changes
/// which element is the max of a window.
fn distinct(rng: &mut ChaCha8Rng, dims: &[usize], gap: f32, device: Device) -> Tensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * gap).collect();
    v.shuffle(rng);
    Tensor::from_vec(v, dims, device).unwrap()
}

/// Random values at least `margin` away from 0 (for relu/abs).
fn away_from_zero(rng: &mut ChaCha8Rng, dims: &[usize], margin: f32) -> Vec<f32> {
    let n: usize = dims.iter().product();
    (0..n)
        .map(|_| {
            let m: f32 = rng.random_range(margin..2.0);
            if rng.random::<bool>() { m } else { -m }
        })
        .collect()
}

/// Checks d sum(f(inputs) * r) / d inputs[i] for every i in `wrt` against central differences,
/// on the device the inputs are on.
fn check(name: &str, inputs: &[Tensor], wrt: &[usize], eps: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let mut rng = ChaCha8Rng::seed_from_u64(name.bytes().map(|b| b as u64).sum());
    let vars: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| if wrt.contains(&i) { t.detach().into_var() } else { t.detach() })
        .collect();
    let y = f(&vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::randn(y.shape().clone(), 0.0, 1.0, y.device(), &mut rng).unwrap();
    let loss = y.mul(&r).unwrap().sum_all().unwrap();
    loss.backward().unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    let rv = r.to_vec().unwrap();

    let scalar = |xs: &[Tensor]| -> f64 {
        let y = no_grad(|| f(xs)).unwrap();
        y.to_vec().unwrap().iter().zip(&rv).map(|(&a, &b)| a as f64 * b as f64).sum()
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
                xs[i] = Tensor::from_vec(v, inputs[i].shape().clone(), inputs[i].device()).unwrap();
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

type Binary = fn(&Tensor, &Tensor) -> Result<Tensor>;
type Unary = fn(&Tensor) -> Result<Tensor>;

test_device!(arithmetic_with_broadcasting, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = randn(&mut rng, &[2, 3, 4, 5], device);
    let chan = randn(&mut rng, &[2, 3, 1, 1], device);
    let spatial = randn(&mut rng, &[2, 1, 4, 5], device);
    let vec_c = randn(&mut rng, &[1, 3, 1, 1], device);
    let broadcasts: [(&str, Binary, &Tensor, &Tensor); 5] = [
        ("add (N,C,1,1)", Tensor::add, &x, &chan),
        ("sub (N,1,H,W)", Tensor::sub, &x, &spatial),
        ("mul (N,C,1,1)", Tensor::mul, &x, &chan),
        ("mul (N,1,H,W)", Tensor::mul, &spatial, &x),
        ("mul (1,C,1,1) x (N,1,H,W)", Tensor::mul, &vec_c, &spatial),
    ];
    for (name, op, a, b) in broadcasts {
        check(name, &[a.clone(), b.clone()], &[0, 1], 1e-2, |t| op(&t[0], &t[1]));
    }
    let denom = x.sqr().unwrap().add_scalar(0.5).unwrap();
    check("div", &[chan.clone(), denom], &[0, 1], 1e-3, |t| t[0].div(&t[1]));
    check("affine", &[x.clone()], &[0], 1e-2, |t| t[0].affine(-1.5, 0.3));
    let pos = x.abs().unwrap().add_scalar(0.5).unwrap();
    check("powf", &[pos], &[0], 1e-3, |t| t[0].powf(1.7));
    check("broadcast_to", &[chan], &[0], 1e-2, |t| t[0].broadcast_to(&[2, 3, 4, 5].into()));
});

test_device!(activations, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = randn(&mut rng, &[3, 4, 5], device);
    let off = Tensor::from_vec(away_from_zero(&mut rng, &[3, 4, 5], 0.05), [3, 4, 5], device).unwrap();
    let pos = x.abs().unwrap().add_scalar(0.5).unwrap();
    // (name, input, eps, op): eps 1e-3 where the function curves fast.
    let maps: [(&str, &Tensor, f32, Unary); 8] = [
        ("relu", &off, 1e-2, Tensor::relu),
        ("abs", &off, 1e-2, Tensor::abs),
        ("sigmoid", &x, 1e-2, Tensor::sigmoid),
        ("tanh", &x, 1e-2, Tensor::tanh),
        ("exp", &x, 1e-3, Tensor::exp),
        ("sqr", &x, 1e-2, Tensor::sqr),
        ("log", &pos, 1e-3, Tensor::log),
        ("sqrt", &pos, 1e-3, Tensor::sqrt),
    ];
    for (name, input, eps, op) in maps {
        check(name, &[input.clone()], &[0], eps, |t| op(&t[0]));
    }
    check("softmax axis 1", &[randn(&mut rng, &[2, 3, 4, 4], device)], &[0], 1e-2, |t| t[0].softmax(1));
    check("softmax last axis", &[randn(&mut rng, &[2, 5, 7], device)], &[0], 1e-2, |t| t[0].softmax(-1));
});

test_device!(reductions_and_layout, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = randn(&mut rng, &[2, 3, 4, 5], device);
    let on_x: [(&str, &dyn Fn(&[Tensor]) -> Result<Tensor>); 9] = [
        ("sum axes 0,2", &|t| t[0].sum(&[0, 2], false)),
        ("mean axes 1,-1 keepdim", &|t| t[0].mean(&[1, -1], true)),
        ("mean_all", &|t| t[0].mean_all()),
        ("global_avg_pool", &|t| t[0].global_avg_pool()),
        ("sum_to (1,3,1,5)", &|t| t[0].sum_to(&[1, 3, 1, 5].into())),
        ("reshape", &|t| t[0].reshape([6, 20])?.sigmoid()),
        ("permute", &|t| t[0].permute(&[3, 1, 0, 2])),
        ("transpose", &|t| t[0].flatten_from(2)?.transpose(1, 2)),
        ("narrow batch", &|t| t[0].narrow(0, 1, 1)),
    ];
    for (name, op) in on_x {
        check(name, std::slice::from_ref(&x), &[0], 1e-2, op);
    }
    let y = randn(&mut rng, &[2, 2, 4, 5], device);
    check("concat channels", &[x.clone(), y], &[0, 1], 1e-2, |t| Tensor::concat(&[&t[0], &t[1]], 1));
    check("split channels", &[x], &[0], 1e-2, |t| {
        let parts = t[0].split(1, &[1, 2])?;
        parts[1].mul_scalar(2.0)?.sum(&[1], true)?.add(&parts[0])
    });
});

test_device!(products, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut rand = |dims: &[usize]| randn(&mut rng, dims, device);
    check("matmul", &[rand(&[5, 7]), rand(&[7, 3])], &[0, 1], 1e-2, |t| t[0].matmul(&t[1]));
    check("bmm", &[rand(&[2, 6, 4]), rand(&[2, 4, 6])], &[0, 1], 1e-2, |t| t[0].bmm(&t[1]));
    let linear = [rand(&[3, 2, 5]), rand(&[4, 5]), rand(&[4])];
    check("linear with bias", &linear, &[0, 1, 2], 1e-2, |t| t[0].linear(&t[1], Some(&t[2])));
});

test_device!(convolutions, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // (stride, pad, dilation, kernel): plain, strided, dilated, 1x1 and strided 1x1.
    for (stride, pad, dil, k) in [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3), (1, 0, 1, 1), (2, 0, 1, 1)] {
        let x = randn(&mut rng, &[2, 3, 7, 6], device);
        let w = Tensor::randn([4, 3, k, k], 0.0, 0.5, device, &mut rng).unwrap();
        let b = randn(&mut rng, &[4], device);
        let name = format!("conv2d stride {stride} pad {pad} dilation {dil} {k}x{k}");
        check(&name, &[x, w, b], &[0, 1, 2], 1e-2, |t| t[0].conv2d(&t[1], Some(&t[2]), stride, pad, dil));
    }
    let x = randn(&mut rng, &[2, 3, 5, 5], device);
    let w = Tensor::randn([2, 3, 3, 3], 0.0, 0.5, device, &mut rng).unwrap();
    check("conv2d no bias", &[x, w], &[0, 1], 1e-2, |t| t[0].conv2d(&t[1], None, 1, 1, 1));
    let eca = [randn(&mut rng, &[2, 9, 1, 1], device), randn(&mut rng, &[1, 1, 5], device)];
    check("conv1d_channels (ECA)", &eca, &[0, 1], 1e-2, |t| t[0].conv1d_channels(&t[1]));
});

// The fused CSA ops (src/ops/attention), on sizes off the GPU kernels' 32-channel, 128-pixel
// tiles: each output of the pool alone, both together (their broadcast sum), the gate in all
// three inputs, and SE's and ECA's pair gates in all of theirs.
test_device!(csa_fused_ops, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    for dims in [[2, 5, 3, 4], [1, 35, 13, 11]] {
        let f = randn(&mut rng, &dims, device);
        check(&format!("csa_pool gap {dims:?}"), std::slice::from_ref(&f), &[0], 1e-2, |t| Ok(t[0].csa_pool()?.0));
        check(&format!("csa_pool mean {dims:?}"), std::slice::from_ref(&f), &[0], 1e-2, |t| Ok(t[0].csa_pool()?.1));
        check(&format!("csa_pool both {dims:?}"), std::slice::from_ref(&f), &[0], 1e-2, |t| {
            let (gap, mean) = t[0].csa_pool()?;
            gap.add(&mean)
        });
        let c = randn(&mut rng, &[dims[0], dims[1], 1, 1], device);
        let s = randn(&mut rng, &[dims[0], 1, dims[2], dims[3]], device);
        check(&format!("csa_gate {dims:?}"), &[f, c, s], &[0, 1, 2], 1e-2, |t| t[0].csa_gate(&t[1], &t[2]));
    }
    // The pair gates (one op for both images' channel gates and their product; fused on a GPU):
    // every input, 37 channels (not a multiple of a warp), ECA's kernel wider than 1.
    let pooled = |rng: &mut ChaCha8Rng| randn(rng, &[2, 37, 1, 1], device);
    let eca = [pooled(&mut rng), pooled(&mut rng), randn(&mut rng, &[1, 1, 5], device)];
    check("eca_pair_gate", &eca, &[0, 1, 2], 1e-2, |t| Tensor::eca_pair_gate(&t[0], &t[1], &t[2]));
    let se = [pooled(&mut rng), pooled(&mut rng), randn(&mut rng, &[3, 37], device), randn(&mut rng, &[3], device), randn(&mut rng, &[37, 3], device), randn(&mut rng, &[37], device)];
    check("se_pair_gate", &se, &[0, 1, 2, 3, 4, 5], 1e-2, |t| Tensor::se_pair_gate(&t[0], &t[1], &t[2], &t[3], &t[4], &t[5]));
});

// DANet's fused position attention: q, k (N, D, L), v (N, C, L); positions off the kernels'
// tiles (7, 33), one position (the softmax is 1: q and k get zero gradients), batch 1 and 2.
test_device!(position_attention, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for (n, d, c, l) in [(2, 3, 4, 7), (1, 4, 5, 1), (1, 2, 3, 33)] {
        let (q, k, v) = (randn(&mut rng, &[n, d, l], device), randn(&mut rng, &[n, d, l], device), randn(&mut rng, &[n, c, l], device));
        check(&format!("position_attention {n}x{d}x{c}x{l}"), &[q, k, v], &[0, 1, 2], 1e-2, |t| t[0].position_attention(&t[1], &t[2]));
    }
});

test_device!(normalisation_and_pooling, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = Tensor::randn([3, 4, 3, 5], 0.5, 2.0, device, &mut rng).unwrap();
    let gamma = Tensor::randn([4], 1.0, 0.3, device, &mut rng).unwrap();
    let beta = randn(&mut rng, &[4], device);
    for training in [true, false] {
        let rm = randn(&mut rng, &[4], device);
        let rv = Tensor::uniform([4], 0.5, 2.0, device, &mut rng).unwrap();
        let opts = BatchNormOptions { training, ..Default::default() };
        let inputs = [x.clone(), gamma.clone(), beta.clone()];
        check(&format!("batch_norm training={training}"), &inputs, &[0, 1, 2], 1e-2, move |t| {
            // Eval must see the same running stats on every call: pass copies.
            let (m, v) = (rm.detach(), rv.detach());
            let (m, v) = if training { (m.affine(1.0, 0.0)?, v.affine(1.0, 0.0)?) } else { (m, v) };
            t[0].batch_norm(&t[1], &t[2], &m, &v, opts)
        });
        // With a residual added in the same pass (a ResNet block's end; with the ReLU it is held
        // to the three ops apart, bit for bit, in the unit tests): the residual's gradient too.
        let (rm, rv) = (randn(&mut rng, &[4], device), Tensor::uniform([4], 0.5, 2.0, device, &mut rng).unwrap());
        let inputs = [x.clone(), gamma.clone(), beta.clone(), randn(&mut rng, &[3, 4, 3, 5], device)];
        check(&format!("batch_norm_add training={training}"), &inputs, &[0, 1, 2, 3], 1e-2, move |t| {
            let (m, v) = (rm.detach(), rv.detach());
            let (m, v) = if training { (m.affine(1.0, 0.0)?, v.affine(1.0, 0.0)?) } else { (m, v) };
            t[0].batch_norm_add(&t[3], &t[1], &t[2], &m, &v, opts, None)
        });
    }
    let windows = distinct(&mut rng, &[2, 3, 7, 8], 0.01, device);
    check("max_pool2d 3x3/2 pad 1", &[windows], &[0], 1e-3, |t| t[0].max_pool2d(3, 2, 1));
    let tiles = distinct(&mut rng, &[1, 2, 6, 6], 0.01, device);
    check("max_pool2d 2x2/2", &[tiles], &[0], 1e-3, |t| t[0].max_pool2d(2, 2, 0));
    let small = randn(&mut rng, &[2, 2, 4, 5], device);
    check("resize_bilinear up", &[small], &[0], 1e-2, |t| t[0].resize_bilinear(9, 13));
    let large = randn(&mut rng, &[1, 2, 9, 8], device);
    check("resize_bilinear down", &[large], &[0], 1e-2, |t| t[0].resize_bilinear(4, 3));
});

test_device!(losses, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let z = Tensor::randn([2, 2, 4, 5], 0.0, 2.0, device, &mut rng).unwrap();
    let target: Vec<f32> = (0..40).map(|_| rng.random_range(0..2) as f32).collect();
    let target = Tensor::from_vec(target, [2, 4, 5], device).unwrap();
    let mask: Vec<f32> = (0..40).map(|_| (rng.random::<f32>() < 0.7) as u8 as f32).collect();
    let mask = Tensor::from_vec(mask, [2, 4, 5], device).unwrap();
    check("cross_entropy_2class masked", &[z.clone(), target.clone(), mask], &[0], 1e-2, |t| {
        t[0].cross_entropy_2class(&t[1], Some(&t[2]))?.mul_scalar(7.0)
    });
    check("cross_entropy_2class", &[z, target], &[0], 1e-2, |t| {
        t[0].cross_entropy_2class(&t[1], None)?.mul_scalar(7.0)
    });
    let logits = Tensor::randn([3, 1, 4, 4], 0.0, 3.0, device, &mut rng).unwrap();
    let soft = Tensor::uniform([3, 1, 4, 4], 0.0, 1.0, device, &mut rng).unwrap();
    check("bce_with_logits", &[logits, soft], &[0], 1e-2, |t| t[0].bce_with_logits(&t[1])?.mul_scalar(10.0));
});

// A small Siamese network: the same weights used on two images, the results joined. Checks that
// gradients from both branches add up in the shared parameters.
test_device!(shared_weights_network, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let a = randn(&mut rng, &[1, 2, 6, 6], device);
    let b = randn(&mut rng, &[1, 2, 6, 6], device);
    let w = Tensor::randn([3, 2, 3, 3], 0.0, 0.5, device, &mut rng).unwrap();
    let head = Tensor::randn([2, 6, 1, 1], 0.0, 0.5, device, &mut rng).unwrap();
    check("siamese conv + concat + 1x1 head + resize", &[a, b, w, head], &[0, 1, 2, 3], 1e-2, |t| {
        let fa = t[0].conv2d(&t[2], None, 1, 1, 1)?.tanh()?;
        let fb = t[1].conv2d(&t[2], None, 1, 1, 1)?.tanh()?;
        let attn = fb.global_avg_pool()?.sigmoid()?;
        let joined = Tensor::concat(&[&fa.mul(&attn)?, &fb], 1)?;
        joined.conv2d(&t[3], None, 1, 0, 1)?.resize_bilinear(8, 8)
    });
});

test_device!(clamp_and_dropout, |device| {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Inputs kept 0.05 away from the clamp bounds +-0.5.
    let shifted: Vec<f32> = away_from_zero(&mut rng, &[4, 6], 0.05)
        .into_iter()
        .map(|v| if v.abs() > 0.45 && v.abs() < 0.55 { v * 2.0 } else { v })
        .collect();
    let shifted = Tensor::from_vec(shifted, [4, 6], device).unwrap();
    check("clamp", &[shifted], &[0], 1e-2, |t| t[0].clamp(-0.5, 0.5));
    check("dropout (fixed mask)", &[randn(&mut rng, &[4, 6], device)], &[0], 1e-2, |t| {
        let mut r = ChaCha8Rng::seed_from_u64(3); // the same mask on every call
        t[0].dropout(0.3, true, &mut r)
    });
});
