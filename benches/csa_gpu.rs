//! The fused CSA kernels (src/ops/attention, kernels/attention.cu) on cuda:0 at the paper's
//! bottleneck: 10 pairs, layer4 features (10, 2048, 16, 16) per side, 20 x 2048 x 16 x 16 in all.
//! - each kernel wrapper alone, with the bytes it must move and the GB/s it reaches, as a
//!   fraction of the H200's ~4.3 TB/s copy rate (the ceiling of these memory-bound kernels);
//! - CoAttention (SE + MSA, and ECA + MSA) fused against composed (`set_fused(false)`), forward and
//!   forward + backward, side by side.
//!
//! And DANet (issue 15) at its bottleneck shape, 20 x 512 x 16 x 16 (q, k (20, 64, 256), v (20, 512,
//! 256)):
//! - position attention, fused (`Tensor::position_attention`: kernels/danet.cu at fp32,
//!   danet_tc.cu's TF32 tensor cores at tf32) against composed from bmm and softmax (cuBLAS, SIMT
//!   at fp32 and TF32 tensor ops at tf32), forward and forward + backward, side by side at each
//!   precision: ms, the ratio, GB/s of the bytes the fused op must move against the copy rate, and
//!   TFLOP/s (PyTorch's composed forward took 0.096 ms on an H100);
//! - channel attention's energy + softmax + weighted sum on (20, 512, 256), cuBLAS at fp32 and
//!   with TF32 tensor ops (the device's precision tf32).
//!
//! Every timed call ends with a stream synchronise, so the time covers the queued GPU work. The
//! modules and DANet's position attention are also timed captured as a CUDA graph and replayed
//! (as the training step runs them): the device's time without the host's cost per launch.
//! Skips without a GPU. Run: `cargo bench --bench csa_gpu`.

use coseg::Device;
use coseg::autograd::{ParamStore, no_grad};
use coseg::backend::cuda::{CudaDevice, graph};
use coseg::device::Precision;
use coseg::nn::attention::{AttentionSpec, ChannelAttention, CoAttention, SpatialAttention};
use coseg::ops::attention::cuda as csa;
use coseg::tensor::Tensor;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/gpu.rs"]
mod gpu;

const GPU: Device = Device::Cuda(0);
/// Both images of 10 pairs at the paper's 128x128 crops, output stride 8.
const SHAPE: [usize; 4] = [20, 2048, 16, 16];
const COPY_RATE_GBS: f64 = 4300.0;

/// Seconds per call of `f` (which queues GPU work) over `iters` calls after a warm-up.
fn seconds(dev: &CudaDevice, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    dev.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

/// Times `f` (which queues GPU work) over `iters` calls after a warm-up, then prints the bytes it
/// must move and the rate that makes.
fn report(dev: &CudaDevice, what: &str, bytes: usize, iters: usize, f: impl FnMut()) {
    print_rate(what, bytes, seconds(dev, iters, f));
}

/// One line: `what` took `s` seconds per call for `bytes` it must move, and the rate that makes.
fn print_rate(what: &str, bytes: usize, s: f64) {
    let gbs = bytes as f64 / s / 1e9;
    eprintln!(
        "{what}: {:.1} us, {:.1} MB moved at least, {gbs:.0} GB/s ({:.0}% of the {COPY_RATE_GBS:.0} GB/s copy rate)",
        s * 1e6,
        bytes as f64 / 1e6,
        100.0 * gbs / COPY_RATE_GBS
    );
}

/// Seconds per replay of what `f` queues, captured once as a CUDA graph after two eager calls (so
/// the allocator's cache holds its temporaries); None, with the reason printed, when the capture
/// fails.
fn graph_seconds(dev: &Arc<CudaDevice>, iters: usize, mut f: impl FnMut()) -> Option<f64> {
    f();
    f();
    dev.synchronize().unwrap();
    match graph::capture(dev, || {
        f();
        Ok(())
    }) {
        Ok((g, ())) => Some(seconds(dev, iters, || g.replay().unwrap())),
        Err(e) => {
            eprintln!("capture failed: {e}");
            None
        }
    }
}

/// [`report`] for [`graph_seconds`].
fn report_graph(dev: &Arc<CudaDevice>, what: &str, bytes: usize, iters: usize, f: impl FnMut()) {
    if let Some(s) = graph_seconds(dev, iters, f) {
        print_rate(&format!("{what}, captured"), bytes, s);
    }
}

fn kernels(c: &mut Criterion, dev: &CudaDevice) {
    let [n, ch, h, w] = SHAPE;
    let (len, hw) = (n * ch * h * w, h * w);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let host = |rng: &mut ChaCha8Rng, k: usize| Tensor::randn([k], 0.0, 1.0, Device::Cpu, rng).unwrap().to_vec().unwrap();
    let f = dev.htod(&host(&mut rng, len)).unwrap();
    let dy = dev.htod(&host(&mut rng, len)).unwrap();
    let gate_c = dev.htod(&host(&mut rng, n * ch)).unwrap();
    let gate_s = dev.htod(&host(&mut rng, n * hw)).unwrap();
    let packed = dev.htod(&host(&mut rng, n * (ch + hw))).unwrap();
    let (mut y, mut df) = (dev.alloc(len).unwrap(), dev.alloc(len).unwrap());
    let (mut pooled, mut dc, mut ds) = (dev.alloc(n * (ch + hw)).unwrap(), dev.alloc(n * ch).unwrap(), dev.alloc(n * hw).unwrap());
    let (big, small) = (4 * len, 4 * n * (ch + hw));

    // What each must move: f's reads and writes, and the small vectors once.
    report(dev, "csa_pool_fwd", big + small, 50, || csa::csa_pool_fwd(dev, &f, SHAPE, &mut pooled).unwrap());
    report(dev, "csa_pool_bwd", big + small, 50, || csa::csa_pool_bwd(dev, &packed, SHAPE, &mut df).unwrap());
    report(dev, "csa_gate_fwd", 2 * big + small, 50, || csa::csa_gate_fwd(dev, &f, &gate_c, &gate_s, SHAPE, &mut y).unwrap());
    report(dev, "csa_gate_bwd", 3 * big + 2 * small, 50, || {
        csa::csa_gate_bwd(dev, &dy, &f, &gate_c, &gate_s, SHAPE, &mut df, &mut dc, &mut ds).unwrap()
    });

    let mut g = c.benchmark_group("csa_kernels_20x2048x16x16");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    g.bench_function("pool_fwd", |b| {
        b.iter(|| {
            csa::csa_pool_fwd(dev, &f, SHAPE, &mut pooled).unwrap();
            dev.synchronize().unwrap()
        })
    });
    g.bench_function("gate_fwd", |b| {
        b.iter(|| {
            csa::csa_gate_fwd(dev, &f, &gate_c, &gate_s, SHAPE, &mut y).unwrap();
            dev.synchronize().unwrap()
        })
    });
    g.bench_function("gate_bwd", |b| {
        b.iter(|| {
            csa::csa_gate_bwd(dev, &dy, &f, &gate_c, &gate_s, SHAPE, &mut df, &mut dc, &mut ds).unwrap();
            dev.synchronize().unwrap()
        })
    });
    g.finish();
}

/// CSA with `channel` attention (SE or ECA) and MSA, fused against composed, 10 pairs.
fn module(c: &mut Criterion, dev: &Arc<CudaDevice>, channel: ChannelAttention) {
    let [n, ch, h, w] = SHAPE;
    let name = if channel == ChannelAttention::Se { "se" } else { "eca" };
    let pair = [n / 2, ch, h, w];
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let fa = Tensor::randn(pair, 0.0, 1.0, GPU, &mut rng).unwrap().into_var();
    let fb = Tensor::randn(pair, 0.0, 1.0, GPU, &mut rng).unwrap().into_var();
    let spec = AttentionSpec { channels: ch, width: 1.0, output_stride: 8, channel, spatial: SpatialAttention::Msa, danet: false };
    let mut params = ParamStore::new(GPU, 3);
    let mut att = CoAttention::new(&mut params, "att", spec).unwrap();
    // The fused path's floor, in units of the features' size |f| (both images): forward = the
    // pool's read + the gate's read and write; backward adds the gate's two reads and a write, the
    // pool's write, and the autograd's sum of f's two gradients (two reads, a write).
    let f_bytes = 4 * n * ch * h * w;
    let mut g = c.benchmark_group(format!("csa_module_{name}_msa_10pairs_2048x16x16"));
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for fused in [true, false] {
        att.set_fused(fused);
        let label = format!("{} + MSA, {}", name.to_uppercase(), if fused { "fused" } else { "composed" });
        let att = &att;
        let forward = || no_grad(|| att.forward_pair(&fa, &fb, false).unwrap());
        report(dev, &format!("CSA forward, {label}"), 3 * f_bytes, 20, || {
            black_box(forward());
        });
        let train = || {
            // Gradients start afresh each step, as in training (no accumulation pass).
            params.zero_grads();
            fa.zero_grad();
            fb.zero_grad();
            let (ya, yb) = att.forward_pair(&fa, &fb, true).unwrap();
            ya.sum_all().unwrap().add(&yb.sum_all().unwrap()).unwrap().backward().unwrap();
        };
        report(dev, &format!("CSA forward + backward, {label} (plus the loss sum and its gradient, not in the byte count)"), 10 * f_bytes, 10, train);
        report_graph(dev, &format!("CSA forward, {label}"), 3 * f_bytes, 50, || {
            black_box(forward());
        });
        report_graph(dev, &format!("CSA forward + backward, {label}"), 10 * f_bytes, 20, train);
        let id = if fused { "fused" } else { "composed" };
        g.bench_function(format!("forward_{id}"), |b| {
            b.iter(|| {
                black_box(forward());
                dev.synchronize().unwrap()
            })
        });
        g.bench_function(format!("forward_backward_{id}"), |b| {
            b.iter(|| {
                train();
                dev.synchronize().unwrap()
            })
        });
    }
    g.finish();
}

/// DANet's bottleneck: 10 pairs, layer4 (2048 channels) reduced to C = 512, q and k to D = 64.
const DANET: (usize, usize, usize, usize) = (20, 64, 512, 256);

/// Position attention composed from bmm and softmax (what DaNet runs with `set_fused(false)`).
fn pam_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let attn = q.transpose(1, 2).unwrap().bmm(k).unwrap().softmax(-1).unwrap();
    v.bmm(&attn.transpose(1, 2).unwrap()).unwrap()
}

fn pam_fused(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    q.position_attention(k, v).unwrap()
}

/// Prints one side-by-side line: both times, the ratio, and the fused time's rates.
fn side_by_side(what: &str, fused: f64, composed: f64, bytes: usize, flops: f64) {
    let gbs = bytes as f64 / fused / 1e9;
    eprintln!(
        "{what}: fused {:.3} ms, composed {:.3} ms, composed / fused {:.2}; fused moves {:.1} MB at least: {gbs:.0} GB/s \
         ({:.1}% of {COPY_RATE_GBS:.0} GB/s), {:.1} TFLOP/s",
        fused * 1e3,
        composed * 1e3,
        composed / fused,
        bytes as f64 / 1e6,
        100.0 * gbs / COPY_RATE_GBS,
        flops / fused / 1e12
    );
}

fn position_attention(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    let (n, d, ch, l) = DANET;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let scale = 1.0 / (d as f32).sqrt();
    let q = Tensor::randn([n, d, l], 0.0, scale, GPU, &mut rng).unwrap().into_var();
    let k = Tensor::randn([n, d, l], 0.0, scale, GPU, &mut rng).unwrap().into_var();
    let v = Tensor::randn([n, ch, l], 0.0, 1.0, GPU, &mut rng).unwrap().into_var();
    let g = Tensor::randn([n, ch, l], 0.0, 1.0, GPU, &mut rng).unwrap();
    // Floors: forward reads q, k, v and writes out and lse; backward reads q, k, v, out, lse, dout
    // and writes dq, dk, dv. Flops: S and P.V forward; forward + backward counts the nominal 3x
    // (the math; the kernels' recomputation of S and dP is not counted).
    let (qk, vo) = (4 * n * d * l, 4 * n * ch * l);
    let (fwd_bytes, bwd_bytes) = (2 * qk + 2 * vo + 4 * n * l, 4 * qk + 4 * vo + 4 * n * l);
    let fwd_flops = 2.0 * (n * l * l * (d + ch)) as f64;
    let train = |f: fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
        for t in [&q, &k, &v] {
            t.zero_grad();
        }
        f(&q, &k, &v).mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    };
    let forward = |f: fn(&Tensor, &Tensor, &Tensor) -> Tensor| no_grad(|| black_box(f(&q, &k, &v)));
    let captured = |iters, f: &dyn Fn()| graph_seconds(dev, iters, f).unwrap_or(f64::NAN);
    let mut grp = c.benchmark_group("danet_position_attention_20x512x16x16_d64");
    grp.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    // fp32: danet.cu against cuBLAS's SIMT products; tf32: danet_tc.cu's tensor cores against
    // cuBLAS's TF32 tensor ops (the composed path at the tf32 and bf16 precisions).
    for p in [Precision::Fp32, Precision::Tf32] {
        dev.set_precision(p);
        let at = p.name();
        let [ff, fc] = [pam_fused, pam_composed].map(|f| seconds(dev, 50, || { forward(f); }));
        side_by_side(&format!("DANet position attention forward 20x512x16x16, D=64, {at}"), ff, fc, fwd_bytes, fwd_flops);
        let [tf, tc] = [pam_fused, pam_composed].map(|f| seconds(dev, 20, || train(f)));
        let what = format!("DANet position attention forward + backward (plus the loss's mul and sum, in both), {at}");
        side_by_side(&what, tf, tc, fwd_bytes + bwd_bytes, 3.0 * fwd_flops);
        let [ff, fc] = [pam_fused, pam_composed].map(|f| captured(50, &|| {
            forward(f);
        }));
        side_by_side(&format!("DANet position attention forward, captured, {at}"), ff, fc, fwd_bytes, fwd_flops);
        let [tf, tc] = [pam_fused, pam_composed].map(|f| captured(20, &|| train(f)));
        side_by_side(&format!("DANet position attention forward + backward, captured, {at}"), tf, tc, fwd_bytes + bwd_bytes, 3.0 * fwd_flops);

        for (label, f) in [("fused", pam_fused as fn(&Tensor, &Tensor, &Tensor) -> Tensor), ("composed", pam_composed)] {
            grp.bench_function(format!("forward_{label}_{at}"), |b| {
                b.iter(|| {
                    forward(f);
                    dev.synchronize().unwrap()
                })
            });
            grp.bench_function(format!("forward_backward_{label}_{at}"), |b| {
                b.iter(|| {
                    train(f);
                    dev.synchronize().unwrap()
                })
            });
        }
    }
    dev.set_precision(Precision::Fp32);
    grp.finish();
}

/// DANet's channel attention on x (20, 512, 256): energy x xᵀ, softmax(-E), weighted sum, on
/// cuBLAS at fp32 and with TF32 tensor ops.
fn channel_attention(c: &mut Criterion, dev: &CudaDevice) {
    let (n, _, ch, l) = DANET;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = Tensor::randn([n, ch, l], 0.0, 0.1, GPU, &mut rng).unwrap();
    let cam = || {
        no_grad(|| {
            let energy = x.bmm(&x.transpose(1, 2).unwrap()).unwrap();
            black_box(energy.neg().unwrap().softmax(-1).unwrap().bmm(&x).unwrap())
        })
    };
    let flops = 4.0 * (n * ch * ch * l) as f64;
    let mut grp = c.benchmark_group("danet_channel_attention_20x512x256");
    grp.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let mut fp32 = 0.0;
    for p in [Precision::Fp32, Precision::Tf32] {
        dev.set_precision(p);
        let s = seconds(dev, 50, || {
            cam();
        });
        fp32 = if p == Precision::Fp32 { s } else { fp32 };
        eprintln!("DANet channel attention (energy + softmax + bmm) at {}: {:.3} ms, {:.1} TFLOP/s in the products, fp32 / this {:.2}", p.name(), s * 1e3, flops / s / 1e12, fp32 / s);
        grp.bench_function(p.name(), |b| {
            b.iter(|| {
                cam();
                dev.synchronize().unwrap()
            })
        });
    }
    dev.set_precision(Precision::Fp32);
    grp.finish();
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu::device_or_skip("csa_gpu") else {
        return;
    };
    eprintln!("csa_gpu on {}", dev.name());
    kernels(c, &dev);
    module(c, &dev, ChannelAttention::Se);
    module(c, &dev, ChannelAttention::Eca);
    position_attention(c, &dev);
    channel_attention(c, &dev);
}

criterion_group!(benches, bench);
criterion_main!(benches);
