//! The fused CSA ops (`csa_pool`, `csa_gate`, src/ops/attention):
//! - on the CPU, the attention module with the fused ops against the same module composed from
//!   generic ops (`set_fused(false)`), on the same random inputs and parameters: the forward to
//!   the bit, gradients of inputs and parameters within f32 summation-order round-off;
//! - on cuda:0, each kernel wrapper against naive f64 loops written here (outputs NaN-poisoned
//!   before each launch), and the whole module forward + backward against the CPU, on odd shapes
//!   (channels not a multiple of the 32-channel tile, 1x1 and 33x33 maps, batch 1), ||gpu - cpu||
//!   / ||cpu|| < 1e-5. Skips without a GPU; fails with REQUIRE_CUDA=1.
//!
//! Gradient checks of the two ops are in tests/gradcheck.rs.

mod common;
mod gpu_common;
use coseg::autograd::ParamStore;
use coseg::device::Device;
use coseg::nn::attention::{AttentionSpec, ChannelAttention, CoAttention, SpatialAttention};
use coseg::ops::attention::cuda as csa;
use coseg::tensor::Tensor;
use common::test_gpu;
use gpu_common::*;

/// What one pass of the module gives: both outputs, then the gradients of fa, fb and of every
/// trainable parameter (by name order), for the loss sum(ya * wa) + sum(yb * wb).
struct Pass {
    outputs: Vec<Vec<f32>>,
    grads: Vec<(String, Vec<f32>)>,
}

fn spec(channel: ChannelAttention, spatial: SpatialAttention) -> AttentionSpec {
    AttentionSpec { channels: 37, width: 0.0625, output_stride: 8, channel, spatial, danet: false }
}

/// Runs the module on `device` (parameters from seed 5), fused or composed, pair and single.
fn pass(device: Device, spec: AttentionSpec, fused: bool, dims: [usize; 4]) -> Pass {
    let mut params = ParamStore::new(device, 5);
    let mut att = CoAttention::new(&mut params, "att", spec).unwrap();
    att.set_fused(fused);
    let mut r = rng(17);
    let n: usize = dims.iter().product();
    let mut input = || Tensor::from_vec(randn(&mut r, n), dims, device).unwrap();
    let (fa, fb, wa, wb, ws) = (input().into_var(), input().into_var(), input(), input(), input());
    let (ya, yb) = att.forward_pair(&fa, &fb, true).unwrap();
    let ys = att.forward_single(&fa, true).unwrap();
    let loss = ya.mul(&wa).unwrap().sum_all().unwrap();
    let loss = loss.add(&yb.mul(&wb).unwrap().sum_all().unwrap()).unwrap();
    let loss = loss.add(&ys.mul(&ws).unwrap().sum_all().unwrap()).unwrap();
    loss.backward().unwrap();
    let mut grads = vec![("fa".to_string(), fa.grad().unwrap().to_vec().unwrap()), ("fb".to_string(), fb.grad().unwrap().to_vec().unwrap())];
    for (name, t) in params.trainable() {
        let g = t.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
        grads.push((name.to_string(), g.to_vec().unwrap()));
    }
    Pass { outputs: [ya, yb, ys].iter().map(|y| y.to_vec().unwrap()).collect(), grads }
}

/// The attention kinds the fused ops serve: SE and ECA with MSA (fused pool and gate), ECA with
/// ASPP (fused gate only), MSA alone (fused pool only).
const KINDS: [(ChannelAttention, SpatialAttention); 4] = [
    (ChannelAttention::Se, SpatialAttention::Msa),
    (ChannelAttention::Eca, SpatialAttention::Msa),
    (ChannelAttention::Eca, SpatialAttention::Aspp),
    (ChannelAttention::None, SpatialAttention::Msa),
];

#[test]
fn fused_csa_module_equals_the_composed_one_on_cpu() {
    for (channel, spatial) in KINDS {
        let what = format!("{channel:?} + {spatial:?}");
        let fused = pass(Device::Cpu, spec(channel, spatial), true, [2, 37, 5, 7]);
        let composed = pass(Device::Cpu, spec(channel, spatial), false, [2, 37, 5, 7]);
        // The CPU kernels round as the composed ops do: the forward is the same to the bit.
        assert_eq!(fused.outputs, composed.outputs, "{what}: forward");
        assert_eq!(fused.grads.len(), composed.grads.len());
        for ((name, g), (cname, c)) in fused.grads.iter().zip(&composed.grads) {
            assert_eq!(name, cname);
            // The composed backward adds f's three gradient paths in another order.
            assert_close(&format!("{what}: gradient of {name}"), g, c, 1e-6);
        }
    }
}

// ---- cuda:0 ----

/// The shapes the kernels are checked on: batch 1, channels off the 32-channel tile, 1x1, 33x33
/// and pixel counts off the 128-pixel tile; rows of whole 4-element groups (the element-wise
/// kernels' vector path: 16x16, 4x8 with an odd channel count) and not.
const SHAPES: [[usize; 4]; 6] = [[1, 37, 1, 1], [2, 45, 33, 33], [1, 70, 7, 5], [3, 32, 16, 16], [2, 1, 9, 15], [2, 45, 4, 8]];

fn upload(dev: &coseg::backend::cuda::CudaDevice, v: &[f32]) -> coseg::backend::cuda::GpuBuffer {
    dev.htod(v).unwrap()
}

test_gpu!(gpu_csa_pool_kernels_match_naive_loops, |dev| {
    let mut r = rng(3);
    for shape in SHAPES {
        let [n, c, h, w] = shape;
        let hw = h * w;
        let f = randn(&mut r, n * c * hw);
        let mut want = vec![0f32; n * (c + hw)];
        for i in 0..n {
            for ch in 0..c {
                let s: f64 = (0..hw).map(|p| f[(i * c + ch) * hw + p] as f64).sum();
                want[i * (c + hw) + ch] = (s / hw as f64) as f32;
            }
            for p in 0..hw {
                let s: f64 = (0..c).map(|ch| f[(i * c + ch) * hw + p] as f64).sum();
                want[i * (c + hw) + c + p] = (s / c as f64) as f32;
            }
        }
        let mut out = poisoned(&dev, want.len());
        csa::csa_pool_fwd(&dev, &upload(&dev, &f), shape, &mut out).unwrap();
        assert_close(&format!("csa_pool fwd {shape:?}"), &dev.dtoh(&out).unwrap(), &want, F32_TOL);

        let g = randn(&mut r, n * (c + hw));
        let mut want = vec![0f32; f.len()];
        for i in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    let row = &g[i * (c + hw)..];
                    want[(i * c + ch) * hw + p] = (row[ch] as f64 / hw as f64 + row[c + p] as f64 / c as f64) as f32;
                }
            }
        }
        let mut df = poisoned(&dev, f.len());
        csa::csa_pool_bwd(&dev, &upload(&dev, &g), shape, &mut df).unwrap();
        assert_close(&format!("csa_pool bwd {shape:?}"), &dev.dtoh(&df).unwrap(), &want, F32_TOL);
    }
});

test_gpu!(gpu_csa_gate_kernels_match_naive_loops, |dev| {
    let mut r = rng(4);
    for shape in SHAPES {
        let [n, c, h, w] = shape;
        let hw = h * w;
        let (f, cg, sg, dy) = (randn(&mut r, n * c * hw), randn(&mut r, n * c), randn(&mut r, n * hw), randn(&mut r, n * c * hw));
        let at = |i: usize, ch: usize, p: usize| (i * c + ch) * hw + p;
        let (mut y, mut df) = (vec![0f32; f.len()], vec![0f32; f.len()]);
        let (mut dc, mut ds) = (vec![0f64; n * c], vec![0f64; n * hw]);
        for i in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    let (x, g, cv, sv) = (f[at(i, ch, p)] as f64, dy[at(i, ch, p)] as f64, cg[i * c + ch] as f64, sg[i * hw + p] as f64);
                    y[at(i, ch, p)] = (x * cv * sv) as f32;
                    df[at(i, ch, p)] = (g * cv * sv) as f32;
                    dc[i * c + ch] += g * x * sv;
                    ds[i * hw + p] += g * x * cv;
                }
            }
        }
        let (fd, cd, sd, dyd) = (upload(&dev, &f), upload(&dev, &cg), upload(&dev, &sg), upload(&dev, &dy));
        let mut yd = poisoned(&dev, f.len());
        csa::csa_gate_fwd(&dev, &fd, &cd, &sd, shape, &mut yd).unwrap();
        assert_close(&format!("csa_gate fwd {shape:?}"), &dev.dtoh(&yd).unwrap(), &y, F32_TOL);
        let (mut dfd, mut dcd, mut dsd) = (poisoned(&dev, f.len()), poisoned(&dev, n * c), poisoned(&dev, n * hw));
        csa::csa_gate_bwd(&dev, &dyd, &fd, &cd, &sd, shape, &mut dfd, &mut dcd, &mut dsd).unwrap();
        let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
        assert_close(&format!("csa_gate df {shape:?}"), &dev.dtoh(&dfd).unwrap(), &df, F32_TOL);
        assert_close(&format!("csa_gate dc {shape:?}"), &dev.dtoh(&dcd).unwrap(), &to32(&dc), F32_TOL);
        assert_close(&format!("csa_gate ds {shape:?}"), &dev.dtoh(&dsd).unwrap(), &to32(&ds), F32_TOL);
    }
});

test_gpu!(gpu_wrappers_refuse_buffers_of_the_wrong_length, |dev| {
    let shape = [2, 3, 4, 5];
    let f = poisoned(&dev, 120);
    let mut short = poisoned(&dev, 2 * (3 + 20) - 1);
    let e = csa::csa_pool_fwd(&dev, &f, shape, &mut short).unwrap_err().to_string();
    assert!(e.contains("csa_pool_fwd_f32") && e.contains("out"), "{e}");
    let (c, s, mut y) = (poisoned(&dev, 6), poisoned(&dev, 39), poisoned(&dev, 120));
    let e = csa::csa_gate_fwd(&dev, &f, &c, &s, shape, &mut y).unwrap_err().to_string();
    assert!(e.contains("csa_gate_fwd_f32") && e.contains("s has 39"), "{e}");
});

// The module's small gate math (SE's FCs on cuBLAS, ECA's conv1d, sigmoid) runs composed, so
// the tolerance is that of the other ops' reductions (tests/gpu_ops_parity.rs); the kernels are
// held to 1e-5 above. ASPP's convolutions and batch norms are tested on their own elsewhere.
const MODULE_TOL: f64 = 1e-4;

test_gpu!(gpu_csa_module_matches_cpu, |_dev| {
    for (channel, spatial) in KINDS.into_iter().filter(|k| k.1 == SpatialAttention::Msa) {
        for dims in [[1, 37, 1, 1], [2, 37, 33, 33], [1, 37, 6, 5]] {
            let what = format!("{channel:?} + {spatial:?} {dims:?}");
            let gpu = pass(Device::Cuda(0), spec(channel, spatial), true, dims);
            let cpu = pass(Device::Cpu, spec(channel, spatial), true, dims);
            for (k, (g, c)) in gpu.outputs.iter().zip(&cpu.outputs).enumerate() {
                assert_close(&format!("{what}: output {k}"), g, c, MODULE_TOL);
            }
            for ((name, g), (_, c)) in gpu.grads.iter().zip(&cpu.grads) {
                assert_close(&format!("{what}: gradient of {name}"), g, c, MODULE_TOL);
            }
        }
    }
});

// SE's pair gate (two launches forward, three backward: kernels/attention.cu se_*) against the
// CPU's composed ops, forward and the gradients of all six inputs, for the loss sum(gate * w):
// odd channel counts and hidden widths, batch 1, the paper's shape (20 images, 2048 channels,
// 128 hidden), and an image paired with itself (the same tensor twice, its gradients summed).
test_gpu!(gpu_se_pair_gate_matches_the_composed_cpu_ops, |_dev| {
    let mut r = rng(23);
    for (n, c, hd, same) in [(1, 37, 2, false), (3, 70, 5, false), (20, 2048, 128, false), (2, 45, 3, true)] {
        // The weights at the scale of their fan-in, as an initialiser sets them: with unit weights
        // over 2048 channels the sigmoids' inputs reach about +-100, their derivatives underflow
        // and the gradients are a few surviving terms (a comparison of round-off, not of sums).
        let fan_in = [1.0, 1.0, c as f32, 1.0, hd as f32, 1.0, 1.0];
        let data: Vec<Vec<f32>> = [n * c, n * c, hd * c, hd, c * hd, c, n * c]
            .iter()
            .zip(fan_in)
            .map(|(&len, fan)| randn(&mut r, len).into_iter().map(|v| v / fan.sqrt()).collect())
            .collect();
        let run = |device: Device| {
            let t = |i: usize, dims: &[usize]| Tensor::from_vec(data[i].clone(), dims.to_vec(), device).unwrap().into_var();
            let (pa, pb) = (t(0, &[n, c, 1, 1]), t(1, &[n, c, 1, 1]));
            let (w1, b1, w2, b2) = (t(2, &[hd, c]), t(3, &[hd]), t(4, &[c, hd]), t(5, &[c]));
            let partner = if same { &pa } else { &pb };
            let out = Tensor::se_pair_gate(&pa, partner, &w1, &b1, &w2, &b2).unwrap();
            let weights = Tensor::from_vec(data[6].clone(), [n, c, 1, 1], device).unwrap();
            out.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let mut v = vec![out.to_vec().unwrap()];
            for x in [&pa, &pb, &w1, &b1, &w2, &b2] {
                v.push(x.grad().map_or_else(Vec::new, |g| g.to_vec().unwrap()));
            }
            v
        };
        let (gpu, cpu) = (run(Device::Cuda(0)), run(Device::Cpu));
        for (i, (g, want)) in gpu.iter().zip(&cpu).enumerate() {
            let what = ["gate", "dpa", "dpb", "dw1", "db1", "dw2", "db2"][i];
            assert_eq!(g.is_empty(), want.is_empty(), "{what}");
            assert_close(&format!("se_pair_gate {what} (n {n}, c {c}, hd {hd}, same {same})"), g, want, 1e-5);
        }
    }
});

// ECA's pair gate (one launch forward, two backward: kernels/attention.cu eca_*) against the
// CPU's composed ops, forward and the gradients of all three inputs, for the loss
// sum(gate * weights): kernels of 1, 3, 5 and 9 taps (9 wider than 7 channels), batch 1, the
// paper's shape (20 images, 2048 channels, ECA's 5 taps), and an image paired with itself.
test_gpu!(gpu_eca_pair_gate_matches_the_composed_cpu_ops, |_dev| {
    let mut r = rng(24);
    for (n, c, k, same) in [(1, 7, 9, false), (3, 70, 3, false), (20, 2048, 5, false), (2, 45, 1, false), (2, 33, 5, true)] {
        let data: Vec<Vec<f32>> = [n * c, n * c, k, n * c].iter().map(|&len| randn(&mut r, len)).collect();
        let run = |device: Device| {
            let t = |i: usize, dims: &[usize]| Tensor::from_vec(data[i].clone(), dims.to_vec(), device).unwrap().into_var();
            let (pa, pb, w) = (t(0, &[n, c, 1, 1]), t(1, &[n, c, 1, 1]), t(2, &[1, 1, k]));
            let partner = if same { &pa } else { &pb };
            let out = Tensor::eca_pair_gate(&pa, partner, &w).unwrap();
            let weights = Tensor::from_vec(data[3].clone(), [n, c, 1, 1], device).unwrap();
            out.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let mut v = vec![out.to_vec().unwrap()];
            for x in [&pa, &pb, &w] {
                v.push(x.grad().map_or_else(Vec::new, |g| g.to_vec().unwrap()));
            }
            v
        };
        let (gpu, cpu) = (run(Device::Cuda(0)), run(Device::Cpu));
        for (i, (g, want)) in gpu.iter().zip(&cpu).enumerate() {
            let what = ["gate", "dpa", "dpb", "dw"][i];
            assert_eq!(g.is_empty(), want.is_empty(), "{what}");
            assert_close(&format!("eca_pair_gate {what} (n {n}, c {c}, k {k}, same {same})"), g, want, 1e-5);
        }
        // Against the composed ops on the GPU (conv1d_channels, sigmoid, mul): the gate and the
        // inputs' gradients are the same bits (the same sums in the same order); dw is summed
        // over both images at once, so its order differs.
        if !same {
            let composed = {
                let t = |i: usize, dims: &[usize]| Tensor::from_vec(data[i].clone(), dims.to_vec(), Device::Cuda(0)).unwrap().into_var();
                let (pa, pb, w) = (t(0, &[n, c, 1, 1]), t(1, &[n, c, 1, 1]), t(2, &[1, 1, k]));
                let gate = |p: &Tensor| p.conv1d_channels(&w).unwrap().sigmoid().unwrap();
                let out = gate(&pa).mul(&gate(&pb)).unwrap();
                out.mul(&Tensor::from_vec(data[3].clone(), [n, c, 1, 1], Device::Cuda(0)).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                [out.to_vec().unwrap(), pa.grad().unwrap().to_vec().unwrap(), pb.grad().unwrap().to_vec().unwrap()]
            };
            for (i, want) in composed.iter().enumerate() {
                assert!(bits(&gpu[i]) == bits(want), "eca_pair_gate {} (n {n}, c {c}, k {k}): not the composed GPU ops' bits", ["gate", "dpa", "dpb"][i]);
            }
        }
    }
});
