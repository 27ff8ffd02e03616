//! The paper's training step on cuda:0 through the tensor ops' GPU paths: DRN-MG-101 CSA + D2
//! forward on a batch of 10 pairs of 128x128 crops, both cross-entropies, backward, and the
//! one-launch SGD step (momentum 0.99, weight decay 5e-4); plus the DRN-101 forward per image.
//! Each iteration ends by reading the loss back, so the time covers the queued GPU work. Both run
//! at each convolution precision (fp32, tf32, bf16), from the same weights and data.
//!
//! `gpu_train_step` times the training loop's own step (`coseg::train::step::StepRunner`): the
//! batch through the feed (page-locked copies on a second stream), the loss watched on the device,
//! SGD reading its learning rate from device memory, the losses read back once per
//! [`LOG_EVERY`] steps as `[train] log_every` does; eager and replayed as a CUDA graph, side by
//! side. It prints the host's waits per step (0: the host never stalled the GPU's queue between
//! reads) and whether the capture succeeded; with COSEG_WAIT_TRACE=1, where each wait of the
//! first three steady-state steps comes from (the coseg frames of its backtrace).
//! The step's peak device memory (coseg's live tensors) is printed per precision. The `_tuned`
//! rows choose each convolution's plan by timing its candidates in the first step
//! (`ops::conv::tune`) and print the tuner's table: the model's plan against the chosen one, per
//! pass.
//! `gpu_attention_step` times that step (bf16, captured) with each attention of the paper's
//! Table 3, composed (before the attention kernels) and fused (after), and prints one table.
//! `gpu_inference` times the evaluation forward of 10 and 40 pairs, eager and replayed from a
//! CUDA graph, and prints pairs per second.
//! With COSEG_PROFILE=1, after the measurement, [`PROFILED_STEPS`] more steps per precision run
//! with per-op GPU timing and their table is printed: where the step's GPU time goes, and the
//! host overhead (wall time minus the kernels' time).
//! Skips without a GPU. Run: `cargo bench --bench step_gpu`.

use coseg::Device;
use coseg::device::{Precision, TcVariant};
use coseg::autograd::{ParamStore, no_grad};
use coseg::backend::cuda::StepProfiler;
use coseg::backend::cuda::CudaDevice;
use coseg::nn::{ChannelAttention, CosegNet, ModelConfig, ResNet, ResNetSpec, SpatialAttention};
use coseg::tensor::Tensor;
use coseg::train::dataset::HostBatch;
use coseg::train::monitor::LossWatch;
use coseg::train::step::StepRunner;
use coseg::train::{Optimizer, OptimizerParams};
use rand::Rng;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Steps between loss reads in `gpu_train_step` (the default `[train] log_every`).
const LOG_EVERY: usize = 20;
/// Steps that set the runner up (gradient buffers, the optimiser's table, the graph's warm-up and
/// capture: coseg::train::step::GRAPH_WARMUP + 1), whose host waits are reported apart.
const SETUP_STEPS: u64 = coseg::train::step::GRAPH_WARMUP as u64 + 1;

#[path = "support/gpu.rs"]
mod gpu;

const GPU: Device = Device::Cuda(0);
/// Steps timed per op per precision under COSEG_PROFILE=1 (after the measurement's warm steps).
const PROFILED_STEPS: usize = 5;

fn crops(n: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::randn([n, 3, 128, 128], 0.0, 1.0, GPU, &mut rng).unwrap()
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu::device_or_skip("step_gpu") else {
        return;
    };
    eprintln!("step_gpu on {}", dev.name());
    // The configs below set the fusion; put back what the device opened with.
    let fuse0 = dev.fuse_bn_stats();

    let mut params = ParamStore::new(GPU, 1);
    let spec = ResNetSpec { depth: 101, width: 1.0, output_stride: 8, multi_grid: false, in_channels: 3 };
    let net = ResNet::new(spec, &mut params, "").unwrap();
    let x = crops(1, 2);
    let mut g = c.benchmark_group("gpu_forward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for p in Precision::ALL {
        dev.set_precision(p);
        g.bench_function(format!("drn101_os8_128x128_per_image_{p}"), |b| {
            b.iter(|| no_grad(|| black_box(net.forward(&x, false).unwrap().layer4.sum_all().unwrap().to_scalar().unwrap())))
        });
    }
    g.finish();

    let pairs = 10;
    let mut params = ParamStore::new(GPU, 3);
    let net = CosegNet::new(&ModelConfig::default(), &mut params).unwrap();
    let (a, b) = (crops(pairs, 4), crops(pairs, 5));
    let checker: Vec<f32> = (0..pairs * 128 * 128).map(|i| ((i / 128 / 32 + i % 128 / 32) % 2) as f32).collect();
    let target = Tensor::from_vec(checker, [pairs, 128, 128], GPU).unwrap();
    let mut opt = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
    let mut g = c.benchmark_group("gpu_sgd_step");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for config in gpu::step_configs() {
        let label = &config.label;
        config.apply(&dev);
        dev.reset_peak_memory();
        let mut step = || {
            params.zero_grads();
            let (la, lb) = net.forward_pair(&a, &b, true).unwrap();
            let loss = la.cross_entropy_2class(&target, None).unwrap().add(&lb.cross_entropy_2class(&target, None).unwrap()).unwrap();
            loss.backward().unwrap();
            opt.step(&params, 1e-4).unwrap();
            loss.to_scalar().unwrap()
        };
        g.bench_function(format!("drn_mg101_csa_d2_10pairs_128x128_{label}"), |bench| bench.iter(|| black_box(step())));
        let peak = dev.memory_stats().peak_in_use_bytes as f64 / (1 << 20) as f64;
        eprintln!("step {label}: peak device memory in live tensors {peak:.0} MiB");
        if coseg::train::profile::requested_by_env() {
            // Warm even when a filter skipped the measurement: modules, cuBLAS, allocator cache.
            for _ in 0..2 {
                black_box(step());
            }
            let mut prof = StepProfiler::new(dev.clone()).unwrap();
            for _ in 0..PROFILED_STEPS {
                prof.begin().unwrap();
                black_box(step());
                prof.end().unwrap();
            }
            eprint!("step {label}, 10 pairs: {}", prof.finish().unwrap().table());
        }
        config.report_tuning(&dev);
    }
    dev.set_tc_variant(TcVariant::default());
    dev.set_fuse_bn_stats(fuse0);
    g.finish();

    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let (image, plane) = (pairs * 3 * 128 * 128, pairs * 128 * 128);
    let targets: Vec<f32> = (0..plane).map(|i| ((i / 128 / 32 + i % 128 / 32) % 2) as f32).collect();
    let batch = HostBatch::from_parts(pairs, 128, [draw(image), draw(image), targets.clone(), targets]).unwrap();
    let trace_waits = std::env::var("COSEG_WAIT_TRACE").is_ok_and(|v| v == "1");
    let mut g = c.benchmark_group("gpu_train_step");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for config in gpu::step_configs() {
        let label = &config.label;
        config.apply(&dev);
        // Other kernels: the captured step only (eager against graph is asked of the default).
        let modes: &[bool] = if config.variant == TcVariant::default() && config.fuse_bn_stats && !config.tuned { &[false, true] } else { &[true] };
        for &graph in modes {
            let mut runner = loop_runner(&ModelConfig::default(), None, pairs, graph);
            let (mut steps, mut waits, mut setup_waits) = (0u64, 0u64, 0u64);
            let name = format!("drn_mg101_csa_d2_10pairs_128x128_{label}_{}", if graph { "graph" } else { "eager" });
            g.bench_function(name, |bench| {
                bench.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        if runner.watch.full() {
                            black_box(runner.watch.drain().unwrap());
                        }
                        let before = dev.host_waits();
                        // COSEG_WAIT_TRACE=1: where the first steady-state steps wait, if they do.
                        dev.trace_host_waits(trace_waits && (SETUP_STEPS..SETUP_STEPS + 3).contains(&steps));
                        runner.step(batch.clone()).unwrap();
                        dev.trace_host_waits(false);
                        // The first steps make the gradient buffers, the optimiser's table and
                        // the capture (their uploads wait): counted apart from the steady state.
                        let n = dev.host_waits() - before;
                        if steps < SETUP_STEPS {
                            setup_waits += n;
                        } else {
                            waits += n;
                        }
                        steps += 1;
                    }
                    black_box(runner.watch.drain().unwrap());
                    t.elapsed()
                })
            });
            let how = match (graph, runner.captured(), &runner.graph_failure) {
                (false, ..) => "eager".to_string(),
                (true, true, _) => "replayed as a CUDA graph".to_string(),
                (true, false, why) => format!("graph asked for, not captured: {}", why.as_deref().unwrap_or("(no failure recorded)")),
            };
            if steps > SETUP_STEPS {
                // (none when criterion's filter skipped this one)
                let steady = steps - SETUP_STEPS;
                eprintln!(
                    "train step {label} {how}: {:.2} host waits per step over {steady} steps after the first {SETUP_STEPS} ({setup_waits} waits in those; reads every {LOG_EVERY} steps not counted)",
                    waits as f64 / steady as f64
                );
            }
        }
        config.report_tuning(&dev);
    }
    dev.set_tc_variant(TcVariant::default());
    dev.set_fuse_bn_stats(fuse0);
    coseg::backend::cuda::conv_tune::set_mode(&dev, coseg::backend::cuda::conv_tune::TuneMode::Off).unwrap();
    g.finish();
    attention_steps(c, &dev, &batch, pairs);
    inference(c, &dev);
}

/// The training loop's step runner for `cfg` (the attention's fused kernels or composed ops when
/// `fused` says, else its default), paper SGD, a constant learning rate of 1e-4, `pairs` pairs of
/// 128x128 crops, captured as a CUDA graph when `graph`.
fn loop_runner(cfg: &ModelConfig, fused: Option<bool>, pairs: usize, graph: bool) -> StepRunner {
    let mut store = ParamStore::new(GPU, 3);
    let mut model = CosegNet::new(cfg, &mut store).unwrap();
    if let Some(fused) = fused {
        model.set_attention_fused(fused);
    }
    let opt = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
    let watch = LossWatch::new(GPU, vec![1e-4; 1 << 20], 0, 0, LOG_EVERY, (0.9, 0.999)).unwrap();
    StepRunner::new(model, store, opt, watch, pairs, 128, graph).unwrap()
}

/// The attentions of the paper's Table 3 (DRN-MG-101 + D2 with each), as `experiments/t3_*.toml`.
const TABLE3: [(&str, ChannelAttention, SpatialAttention, bool); 5] = [
    ("se_msa", ChannelAttention::Se, SpatialAttention::Msa, false),
    ("se_aspp", ChannelAttention::Se, SpatialAttention::Aspp, false),
    ("eca_msa", ChannelAttention::Eca, SpatialAttention::Msa, false),
    ("eca_aspp", ChannelAttention::Eca, SpatialAttention::Aspp, false),
    ("danet", ChannelAttention::Se, SpatialAttention::Msa, true),
];

/// Issue 15's "the paper's training step with each Table 3 configuration, before and after": the
/// loop's step (`StepRunner`, replayed as a CUDA graph, bf16 on the default kernels) with each
/// attention of Table 3, composed from the generic ops (`set_attention_fused(false)`: before the
/// attention kernels) and fused (after), then one table of the two and their ratio from the
/// measured samples. A model is built only when criterion's filter selects its id.
fn attention_steps(c: &mut Criterion, dev: &Arc<CudaDevice>, batch: &HostBatch, pairs: usize) {
    let p0 = dev.precision();
    dev.set_precision(Precision::Bf16);
    let mut g = c.benchmark_group("gpu_attention_step");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let mut rows = Vec::new();
    for (name, channel_attention, spatial_attention, danet) in TABLE3 {
        let cfg = ModelConfig { channel_attention, spatial_attention, danet, ..ModelConfig::default() };
        let mut ms = [f64::NAN; 2];
        for (slot, fused) in [false, true].into_iter().enumerate() {
            let mut runner: Option<StepRunner> = None;
            let mut per_step = Vec::new();
            let id = format!("{name}_10pairs_128x128_bf16_{}", if fused { "fused" } else { "composed" });
            g.bench_function(id, |bench| {
                bench.iter_custom(|iters| {
                    let r = runner.get_or_insert_with(|| {
                        let mut r = loop_runner(&cfg, Some(fused), pairs, true);
                        for _ in 0..SETUP_STEPS {
                            r.step(batch.clone()).unwrap(); // buffers, the optimiser's table, the capture
                        }
                        r
                    });
                    let t = Instant::now();
                    for _ in 0..iters {
                        if r.watch.full() {
                            black_box(r.watch.drain().unwrap());
                        }
                        r.step(batch.clone()).unwrap();
                    }
                    dev.synchronize().unwrap();
                    let elapsed = t.elapsed();
                    per_step.push(elapsed.as_secs_f64() / iters as f64);
                    elapsed
                })
            });
            if let Some(r) = runner.as_ref().filter(|r| !r.captured()) {
                eprintln!("attention step {name} fused={fused}: not captured ({})", r.graph_failure.as_deref().unwrap_or("?"));
            }
            per_step.sort_by(f64::total_cmp);
            if !per_step.is_empty() {
                ms[slot] = per_step[per_step.len() / 2] * 1e3;
            }
        }
        rows.push((name, ms));
    }
    g.finish();
    dev.set_precision(p0);
    if rows.iter().any(|(_, ms)| ms.iter().any(|m| m.is_finite())) {
        eprintln!("\nTraining step with each Table 3 attention (DRN-MG-101 + D2, 10 pairs 128x128, bf16, CUDA graph; median of criterion's samples):");
        eprintln!("| attention | composed (before) ms | fused (after) ms | composed / fused |");
        eprintln!("| --- | --- | --- | --- |");
        for (name, [composed, fused]) in rows {
            eprintln!("| {name} | {composed:.2} | {fused:.2} | {:.2} |", composed / fused);
        }
    }
}

/// Inference (issue 13's pairs per second): the evaluation forward of a batch of 128x128 pairs, in
/// bf16 on the default kernels, eager and replayed from a CUDA graph (`ForwardGraph`, what
/// validation, `coseg eval` and `segment` run; each replay copies the batch in), at 10 and 40
/// pairs per batch. Prints pairs per second from the median of 20 timed batches (PyTorch on the
/// same card, issue 13: 3,160 pairs/s at 10, 4,430 at 40, captured, bf16 channels-last).
fn inference(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    let p0 = dev.precision();
    dev.set_precision(Precision::Bf16);
    let mut params = ParamStore::new(GPU, 3);
    let net = CosegNet::new(&ModelConfig::default(), &mut params).unwrap();
    let mut g = c.benchmark_group("gpu_inference");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for pairs in [10usize, 40] {
        let (a, b) = (crops(pairs, 7), crops(pairs, 8));
        let eager = || {
            no_grad(|| black_box(net.forward_pair(&a, &b, false).unwrap()));
            dev.synchronize().unwrap();
        };
        eager(); // warms the allocator's cache for the capture
        let graph = coseg::train::infer::ForwardGraph::capture(&net, &a, &b).unwrap();
        let replay = || {
            black_box(graph.run(&a, &b).unwrap());
            dev.synchronize().unwrap();
        };
        for (mode, f) in [("eager", &eager as &dyn Fn()), ("graph", &replay)] {
            let mut t: Vec<f64> = (0..23)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64()
                })
                .skip(3)
                .collect();
            t.sort_by(f64::total_cmp);
            let median = (t[9] + t[10]) / 2.0;
            eprintln!("inference bf16, {pairs} pairs per batch, {mode}: {:.3} ms per batch, {:.0} pairs/s", median * 1e3, pairs as f64 / median);
            g.bench_function(format!("drn_mg101_csa_d2_{pairs}pairs_128x128_bf16_{mode}"), |bench| bench.iter(f));
        }
    }
    g.finish();
    dev.set_precision(p0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
