//! DANet's fused position attention (`Tensor::position_attention`, src/ops/danet) and the matrix
//! products on the tensor cores (src/backend/cuda/blas.rs):
//! - on the CPU, the fused op (f64 reference) against the composed bmm/softmax path, forward and
//!   the gradients of q, k and v, on random inputs and odd shapes (channel counts off the tiles,
//!   1x1 and 33x33 maps, batch 1); and DANet's module fused against composed (`set_fused`);
//! - on cuda:0, the kernel wrappers against the CPU op (outputs NaN-poisoned before each launch,
//!   the log-sum-exp against f64 loops), the op through the autograd against the CPU, the module
//!   fused against composed, ||gpu - cpu|| / ||cpu|| < 1e-5; and bmm at tf32 against fp32: within
//!   TF32's tolerance and not bit-identical (so the math mode is seen to apply);
//! - on cuda:0, the TF32 tensor-core kernels (kernels/danet_tc.cu) against the CPU op on
//!   TF32-rounded inputs (what is left is their rounding of P and dS: < 2e-3), deterministic and
//!   not the fp32 kernels' bits; the op at tf32 and bf16 against the CPU at fp32 within TF32's
//!   5e-3, and at D = 130 (past the TF32 kernels) the fp32 kernels' bits.
//!
//! Skips without a GPU; fails with REQUIRE_CUDA=1.
//!
//! The gradient check of the op is in tests/gradcheck.rs.

mod common;
mod gpu_common;
use coseg::autograd::ParamStore;
use coseg::backend::cuda::CudaDevice;
use coseg::device::{Device, Precision};
use coseg::nn::attention::{AttentionSpec, ChannelAttention, CoAttention, SpatialAttention};
use coseg::ops::danet::{Dims, cuda as pam};
use pam::PamKernels;
use coseg::tensor::Tensor;
use common::test_gpu;
use gpu_common::*;

/// (N, D, C, H, W): batch 1, a 1x1 map, a 33x33 map, D and C off the 32/64/128 tiles, more
/// than one tile of positions, channels and D (D = 70 > 64, C = 200 > 128); the last with scores
/// up to about 40 (see `inputs`): a near one-hot softmax whose running max moves between tiles.
const SHAPES: [[usize; 5]; 6] = [[1, 8, 37, 1, 1], [2, 5, 45, 33, 33], [1, 3, 7, 7, 5], [2, 70, 200, 9, 15], [3, 64, 130, 16, 16], [2, 16, 40, 10, 20]];

fn dims([n, d, c, h, w]: [usize; 5]) -> Dims {
    Dims { n, d, c, l: h * w }
}

/// Random q, k (scaled so the scores spread over a few units; for the last shape over tens), v and
/// an upstream gradient g, as host vectors.
fn inputs(seed: u64, s: [usize; 5]) -> [Vec<f32>; 4] {
    let Dims { n, d, c, l } = dims(s);
    let mut r = rng(seed);
    let scale = if s == SHAPES[5] { 12.0 } else { 2.0 } / (d as f32).sqrt();
    let mut qk = || randn(&mut r, n * d * l).into_iter().map(|x| x * scale).collect::<Vec<f32>>();
    let (q, k) = (qk(), qk());
    [q, k, randn(&mut r, n * c * l), randn(&mut r, n * c * l)]
}

/// Output and gradients (dq, dk, dv) of `sum(f(q, k, v) * g)` on `device`.
fn run(device: Device, s: [usize; 5], x: &[Vec<f32>; 4], f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor) -> [Vec<f32>; 4] {
    let Dims { n, d, c, l } = dims(s);
    let t = |v: &Vec<f32>, ch: usize| Tensor::from_vec(v.clone(), [n, ch, l], device).unwrap();
    let (q, k, v, g) = (t(&x[0], d).into_var(), t(&x[1], d).into_var(), t(&x[2], c).into_var(), t(&x[3], c));
    let y = f(&q, &k, &v);
    y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    [y.to_vec().unwrap(), q.grad().unwrap().to_vec().unwrap(), k.grad().unwrap().to_vec().unwrap(), v.grad().unwrap().to_vec().unwrap()]
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    q.position_attention(k, v).unwrap()
}

/// What DaNet computed before the fused op.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let attn = q.transpose(1, 2).unwrap().bmm(k).unwrap().softmax(-1).unwrap();
    v.bmm(&attn.transpose(1, 2).unwrap()).unwrap()
}

const NAMES: [&str; 4] = ["out", "dq", "dk", "dv"];

#[test]
fn cpu_fused_op_matches_the_composed_ops() {
    for (i, s) in SHAPES.into_iter().enumerate() {
        let x = inputs(i as u64, s);
        let (a, b) = (run(Device::Cpu, s, &x, fused), run(Device::Cpu, s, &x, composed));
        for (i, got) in a.iter().enumerate() {
            assert_output_close(s, i, got, &b);
        }
    }
}

// The module: DANet with nonzero γ's (they start at 0, which would hide the position branch).
fn danet_pass(device: Device, fused: bool, dims: [usize; 4]) -> Vec<(String, Vec<f32>)> {
    let spec = AttentionSpec { channels: 100, width: 1.0, output_stride: 8, channel: ChannelAttention::Se, spatial: SpatialAttention::Msa, danet: true };
    let mut params = ParamStore::new(device, 5);
    let mut att = CoAttention::new(&mut params, "att", spec).unwrap();
    att.set_fused(fused);
    for (name, value) in [("att.danet.pam.gamma", 0.7f32), ("att.danet.cam.gamma", -0.4)] {
        params.get(name).unwrap().assign(&Tensor::from_vec(vec![value], [1], device).unwrap()).unwrap();
    }
    let mut r = rng(17);
    let len: usize = dims.iter().product();
    let mut input = || Tensor::from_vec(randn(&mut r, len), dims, device).unwrap();
    let (fa, fb) = (input().into_var(), input().into_var());
    // Batch norm in training needs two values per channel: a single 1x1 map runs in eval.
    let train = dims[0] * dims[2] * dims[3] > 1;
    let (ya, yb) = att.forward_pair(&fa, &fb, train).unwrap();
    let mut weights = || Tensor::from_vec(randn(&mut r, ya.numel()), ya.shape().clone(), device).unwrap();
    let (wa, wb) = (weights(), weights());
    let loss = ya.mul(&wa).unwrap().sum_all().unwrap().add(&yb.mul(&wb).unwrap().sum_all().unwrap()).unwrap();
    loss.backward().unwrap();
    let mut out = vec![("ya".to_string(), ya.to_vec().unwrap()), ("yb".to_string(), yb.to_vec().unwrap())];
    out.push(("fa".to_string(), fa.grad().unwrap().to_vec().unwrap()));
    out.push(("fb".to_string(), fb.grad().unwrap().to_vec().unwrap()));
    for (name, t) in params.trainable() {
        out.push((name.to_string(), t.grad().unwrap_or_else(|| panic!("{name} got no gradient")).to_vec().unwrap()));
    }
    out
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// ||a - b|| <= tol * scale, for values that are round-off or cancel (where ||b|| is no scale):
/// `scale` is the norm of a nonzero quantity of the same products.
fn assert_close_to_scale(what: &str, a: &[f32], b: &[f32], tol: f64, scale: f64) {
    let diff: Vec<f32> = a.iter().zip(b).map(|(p, q)| p - q).collect();
    assert!(scale > 0.0, "{what}: the reference scale is zero");
    assert!(norm(&diff) <= tol * scale, "{what}: |difference| {:.2e} > {:.2e}", norm(&diff), tol * scale);
}

/// Outputs and gradients pairwise within `tol` relative, except where the value is round-off or a
/// sum whose terms cancel, held to `tol` relative to a gradient of the same products that is
/// neither: the query's and key's biases, whose gradients sum dq and dk over the positions (the key
/// bias's is exactly zero: softmax ignores a shift per query, and the bias shifts query i's scores
/// by q_i . b; the query bias's terms cancel in part, so two f32 summation orders part by more
/// than `tol` of it), against their weights' (the same dq and dk against the inputs); and on a
/// map of one position (every softmax is exactly 1, dq and dk vanish), all of the query's and
/// key's, against the value weight's.
fn assert_passes_close(what: &str, a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], tol: f64, positions: usize) {
    assert_passes_within(what, a, b, tol, &|_| 0.0, positions)
}

/// `assert_passes_close`, where the outputs and gradients that are not round-off may also part by
/// up to `spread(name)` when that is wider than `tol`.
fn assert_passes_within(
    what: &str,
    a: &[(String, Vec<f32>)],
    b: &[(String, Vec<f32>)],
    tol: f64,
    spread: &dyn Fn(&str) -> f64,
    positions: usize,
) {
    assert_eq!(a.len(), b.len());
    let scale = |name: &str| a.iter().find(|(n, _)| n.ends_with(name)).map(|(_, g)| norm(g)).unwrap();
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        let round_off = if positions == 1 && (name.contains("pam.query.") || name.contains("pam.key.")) {
            Some(scale("pam.value.weight"))
        } else if name.ends_with("pam.query.bias") || name.ends_with("pam.key.bias") {
            Some(scale(&name.replace("bias", "weight")))
        } else {
            None
        };
        if let Some(s) = round_off {
            assert_close_to_scale(&format!("{what}: {name}"), x, y, tol, s);
        } else {
            assert_close(&format!("{what}: {name}"), x, y, tol.max(spread(name)));
        }
    }
}

#[test]
fn cpu_danet_module_fused_matches_composed() {
    for dims in [[1, 100, 1, 1], [2, 100, 6, 5]] {
        let (f, c) = (danet_pass(Device::Cpu, true, dims), danet_pass(Device::Cpu, false, dims));
        assert_passes_close(&format!("{dims:?}"), &f, &c, F32_TOL, dims[2] * dims[3]);
        // The switch is seen to act: the fused op sums in f64, the composed in f32.
        if dims[2] * dims[3] > 1 {
            assert_ne!(f[0].1, c[0].1, "{dims:?}: set_fused(true) and (false) gave the same bits");
        }
    }
}

// ---- cuda:0 ----

/// Each query's log-sum-exp of its scores, in f64.
fn lse_f64(s: [usize; 5], q: &[f32], k: &[f32]) -> Vec<f32> {
    let Dims { n, d, l, .. } = dims(s);
    let mut out = Vec::with_capacity(n * l);
    for b in 0..n {
        let at = |x: &[f32], dd: usize, i: usize| x[(b * d + dd) * l + i] as f64;
        for i in 0..l {
            let sc: Vec<f64> = (0..l).map(|j| (0..d).map(|dd| at(q, dd, i) * at(k, dd, j)).sum()).collect();
            let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push((m + sc.iter().map(|x| (x - m).exp()).sum::<f64>().ln()) as f32);
        }
    }
    out
}

/// Output `i` (out, dq, dk, dv) of `got` against `want[i]`, ||got - want|| / ||want|| < 1e-5. At
/// one position (L = 1) every softmax is exactly 1 and dq, dk vanish: both sides hold round-off
/// only, held to 1e-5 relative to dv's norm (the same products, g . v, at the same scale).
fn assert_output_close(s: [usize; 5], i: usize, got: &[f32], want: &[Vec<f32>; 4]) {
    let what = format!("{s:?} {}", NAMES[i]);
    if dims(s).l == 1 && (i == 1 || i == 2) {
        assert_close_to_scale(&what, got, &want[i], F32_TOL, norm(&want[3]));
    } else {
        assert_close(&what, got, &want[i], F32_TOL);
    }
}

test_gpu!(gpu_pam_kernels_match_the_cpu, |dev| {
    let _serial = serial();
    for (i, s) in SHAPES.into_iter().enumerate() {
        let x = inputs(100 + i as u64, s);
        let want = run(Device::Cpu, s, &x, fused);
        let Dims { n, d, c, l } = dims(s);
        let [q, k, v, g] = x.clone().map(|h| dev.htod(&h).unwrap());
        let (mut out, mut lse) = (poisoned(&dev, n * c * l), poisoned(&dev, n * l));
        pam::pam_fwd(&dev, PamKernels::Fp32, &q, &k, &v, dims(s), &mut out, &mut lse).unwrap();
        let out_h = dev.dtoh(&out).unwrap();
        assert_close(&format!("{s:?} out"), &out_h, &want[0], F32_TOL);
        assert_close(&format!("{s:?} lse"), &dev.dtoh(&lse).unwrap(), &lse_f64(s, &x[0], &x[1]), F32_TOL);
        // No atomics: a second run gives the same bits.
        let mut again = poisoned(&dev, n * c * l);
        pam::pam_fwd(&dev, PamKernels::Fp32, &q, &k, &v, dims(s), &mut again, &mut lse).unwrap();
        assert!(dev.dtoh(&again).unwrap().iter().zip(&out_h).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?}: forward not deterministic");

        let (mut dq, mut dk, mut dv) = (poisoned(&dev, n * d * l), poisoned(&dev, n * d * l), poisoned(&dev, n * c * l));
        let saved = pam::Saved { q: &q, k: &k, v: &v, out: &out, lse: &lse, dout: &g };
        pam::pam_bwd(&dev, PamKernels::Fp32, &saved, dims(s), &mut dq, &mut dk, &mut dv).unwrap();
        for (i, buf) in [(1, &dq), (2, &dk), (3, &dv)] {
            assert_output_close(s, i, &dev.dtoh(buf).unwrap(), &want);
        }
    }
});

test_gpu!(gpu_pam_wrappers_refuse_buffers_of_the_wrong_length, |dev| {
    let s = Dims { n: 2, d: 3, c: 5, l: 7 };
    let (q, k, v) = (poisoned(&dev, 42), poisoned(&dev, 42), poisoned(&dev, 70));
    let (mut out, mut short) = (poisoned(&dev, 70), poisoned(&dev, 13));
    let e = pam::pam_fwd(&dev, PamKernels::Fp32, &q, &k, &v, s, &mut out, &mut short).unwrap_err().to_string();
    assert!(e.contains("pam_fwd_f32") && e.contains("lse has 13"), "{e}");
    let e = pam::pam_fwd(&dev, PamKernels::Fp32, &q, &v, &v, s, &mut out, &mut poisoned(&dev, 14)).unwrap_err().to_string();
    assert!(e.contains("k has 70"), "{e}");
});

test_gpu!(gpu_op_through_the_autograd_matches_the_cpu, |_dev| {
    let _serial = serial();
    for (i, s) in SHAPES.into_iter().enumerate() {
        let x = inputs(200 + i as u64, s);
        let (gpu, cpu) = (run(Device::Cuda(0), s, &x, fused), run(Device::Cpu, s, &x, fused));
        for (i, got) in gpu.iter().enumerate() {
            assert_output_close(s, i, got, &cpu);
        }
    }
});

// Fused against composed on the GPU, each output and gradient within 1e-5, or within twice the
// spread of f32 summation orders where that is wider: the same composed ops on the CPU and the
// GPU part by up to 1.6e-5 in the batch norms' gradients on the 33x33 maps (sums over 2,178
// positions whose terms cancel; measured on scripts/cuda-emu), so there 1e-5 is below the noise
// of two correct implementations and says nothing about the fused kernels.
test_gpu!(gpu_danet_module_fused_matches_composed, |dev| {
    let _serial = serial();
    assert_eq!(dev.precision(), Precision::Fp32);
    for dims in [[1, 100, 1, 1], [2, 100, 33, 33], [1, 100, 7, 5]] {
        let f = danet_pass(Device::Cuda(0), true, dims);
        let c = danet_pass(Device::Cuda(0), false, dims);
        let cpu = danet_pass(Device::Cpu, false, dims);
        let spread = |name: &str| {
            let (g, h) = (c.iter().find(|(n, _)| n == name).unwrap(), cpu.iter().find(|(n, _)| n == name).unwrap());
            2.0 * rel_err(&g.1, &h.1)
        };
        assert_passes_within(&format!("cuda {dims:?}"), &f, &c, F32_TOL, &spread, dims[2] * dims[3]);
    }
});

test_gpu!(gpu_bmm_runs_on_tf32_tensor_cores_at_tf32_and_bf16, |dev| {
    // Holds the lock: the precision is process-wide, and the other GPU tests here need fp32.
    let _serial = serial();
    let (b, m, k, n) = (4, 256, 512, 192);
    let mut r = rng(9);
    let (ha, hb) = (randn(&mut r, b * m * k), randn(&mut r, b * k * n));
    let product = || {
        let a = Tensor::from_vec(ha.clone(), [b, m, k], Device::Cuda(0)).unwrap();
        a.bmm(&Tensor::from_vec(hb.clone(), [b, k, n], Device::Cuda(0)).unwrap()).unwrap().to_vec().unwrap()
    };
    let cpu = Tensor::from_vec(ha.clone(), [b, m, k], Device::Cpu).unwrap();
    let cpu = cpu.bmm(&Tensor::from_vec(hb.clone(), [b, k, n], Device::Cpu).unwrap()).unwrap().to_vec().unwrap();
    let fp32 = product();
    assert_close("bmm fp32", &fp32, &cpu, F32_TOL);
    for p in [Precision::Tf32, Precision::Bf16] {
        let reduced = {
            let _g = DeviceSettings::saved(&dev);
            dev.set_precision(p);
            product()
        };
        // TF32 rounds operands to 10 mantissa bits: about 3e-4 relative here, well under 1e-2.
        assert_close(&format!("bmm {}", p.name()), &reduced, &cpu, 1e-2);
        let e = rel_err(&reduced, &fp32);
        assert!(e > 1e-6, "bmm at {} equals fp32 ({e:.1e}): the TF32 math mode did not apply", p.name());
    }
    assert_eq!(product(), fp32, "fp32 after tf32: the math mode was not reset");
});

/// TF32's value of x: the 10-bit mantissa of cvt.rna.tf32.f32 (nearest, ties away from zero).
fn tf32(x: f32) -> f32 {
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}

/// danet_tc.cu's tolerance against f64 on the same TF32-rounded inputs: its own rounding of P and
/// dS to TF32 (about 2e-4; 8.5e-4 for the near one-hot softmax of the last shape, CPU emulation).
const TC_TOL: f64 = 2e-3;

/// The TF32 kernels' output and gradients (the wrappers, NaN-poisoned buffers) for inputs `x`.
fn tf32_kernels(dev: &CudaDevice, s: [usize; 5], x: &[Vec<f32>; 4], kernels: PamKernels) -> [Vec<f32>; 4] {
    let Dims { n, d, c, l } = dims(s);
    let [q, k, v, g] = x.clone().map(|h| dev.htod(&h).unwrap());
    let (mut out, mut lse) = (poisoned(dev, n * c * l), poisoned(dev, n * l));
    pam::pam_fwd(dev, kernels, &q, &k, &v, dims(s), &mut out, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) = (poisoned(dev, n * d * l), poisoned(dev, n * d * l), poisoned(dev, n * c * l));
    let saved = pam::Saved { q: &q, k: &k, v: &v, out: &out, lse: &lse, dout: &g };
    pam::pam_bwd(dev, kernels, &saved, dims(s), &mut dq, &mut dk, &mut dv).unwrap();
    [&out, &dq, &dk, &dv].map(|b| dev.dtoh(b).unwrap())
}

test_gpu!(gpu_tf32_pam_kernels_match_f64_on_tf32_rounded_inputs, |dev| {
    let _serial = serial();
    // SHAPES and D = 128, the largest the TF32 kernels take (L = 68: their 16-byte copies).
    for (i, s) in SHAPES.into_iter().chain([[1, 128, 24, 4, 17]]).enumerate() {
        let x = inputs(300 + i as u64, s).map(|v| v.into_iter().map(tf32).collect::<Vec<f32>>());
        let want = run(Device::Cpu, s, &x, fused);
        let got = tf32_kernels(&dev, s, &x, PamKernels::Tf32);
        for (j, g) in got.iter().enumerate() {
            let what = format!("{s:?} tf32 {}", NAMES[j]);
            if dims(s).l == 1 && (j == 1 || j == 2) {
                assert_close_to_scale(&what, g, &want[j], TC_TOL, norm(&want[3]));
            } else {
                assert_close(&what, g, &want[j], TC_TOL);
            }
        }
        assert_eq!(tf32_kernels(&dev, s, &x, PamKernels::Tf32), got, "{s:?}: the TF32 kernels are not deterministic");
        // The tensor cores ran: the fp32 kernels on the same inputs sum P unrounded.
        let fp32 = tf32_kernels(&dev, s, &x, PamKernels::Fp32);
        if dims(s).l > 1 {
            assert!(rel_err(&got[0], &fp32[0]) > 1e-6, "{s:?}: the TF32 forward gave the fp32 kernels' values");
        }
    }
});

test_gpu!(gpu_op_takes_the_tensor_cores_at_tf32_and_bf16, |dev| {
    let _serial = serial();
    // The moderate scores of SHAPES[..5] (the last one's reach +-40, where TF32's rounding of q
    // and k moves the scores by a few hundredths before the exponential).
    for p in [Precision::Tf32, Precision::Bf16] {
        for (i, s) in SHAPES[..5].iter().copied().enumerate() {
            let x = inputs(400 + i as u64, s);
            let cpu = run(Device::Cpu, s, &x, fused);
            let gpu = {
                let _g = DeviceSettings::saved(&dev);
                dev.set_precision(p);
                run(Device::Cuda(0), s, &x, fused)
            };
            for (j, g) in gpu.iter().enumerate() {
                let what = format!("{s:?} {} {}", p.name(), NAMES[j]);
                if dims(s).l == 1 && (j == 1 || j == 2) {
                    assert_close_to_scale(&what, g, &cpu[j], 5e-3, norm(&cpu[3]));
                } else {
                    assert_close(&what, g, &cpu[j], 5e-3);
                }
            }
            if dims(s).l > 1 {
                let fp32 = run(Device::Cuda(0), s, &x, fused);
                assert!(rel_err(&gpu[0], &fp32[0]) > 1e-6, "{s:?} at {}: the fp32 kernels ran", p.name());
            }
        }
        // D = 130 is past the TF32 kernels: the fp32 kernels run, to the bit.
        let s = [2, 130, 20, 5, 7];
        let x = inputs(450, s);
        let reduced = {
            let _g = DeviceSettings::saved(&dev);
            dev.set_precision(p);
            run(Device::Cuda(0), s, &x, fused)
        };
        assert_eq!(reduced, run(Device::Cuda(0), s, &x, fused), "D = 130 at {}: not the fp32 kernels", p.name());
    }
});
