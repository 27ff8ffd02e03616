//! The network on the CPU: the dilated ResNet-101 forward per image (inference), and one SGD
//! training step of the paper's model, DRN-MG-101 CSA + D2, per pair of 128x128 crops.
//!
//! PyTorch on this machine's 2 cores: ~4.3 s per image for the DRN-101 forward (DESIGN.md).
//! The paper's step is 10 pairs (1.50 TFLOP); the CPU bench times 1 pair (2 images) per step,
//! the figure to report per pair (a 10-pair step costs about 10x, batch norm aside).
//! Measured 2026-11-27 on the 2 cores with nothing else running: forward 191 ms per image
//! (187-197 ms); SGD step 1.67 s per pair (1.55-1.81 s), 0.60 pairs/s, about 150 GFLOP per pair,
//! ~90 GFLOP/s. (Earlier, under a load average of 12-20: 1.03 s and 7.6 s.) The PyTorch figure
//! above is DESIGN.md's, not measured side by side.
//! Run: `cargo bench --bench step` (filters: `forward`, `sgd_step`). Slow: minutes.

use coseg::Device;
use coseg::autograd::{ParamStore, no_grad};
use coseg::nn::{CosegNet, ModelConfig, ResNet, ResNetSpec};
use coseg::tensor::Tensor;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

fn crops(n: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::randn([n, 3, 128, 128], 0.0, 1.0, Device::Cpu, &mut rng).unwrap()
}

fn forward(c: &mut Criterion) {
    let mut params = ParamStore::new(Device::Cpu, 1);
    let spec = ResNetSpec { depth: 101, width: 1.0, output_stride: 8, multi_grid: false, in_channels: 3 };
    let net = ResNet::new(spec, &mut params, "").unwrap();
    let x = crops(1, 2);
    let mut g = c.benchmark_group("forward");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    g.bench_function("drn101_os8_128x128_per_image", |b| {
        b.iter(|| no_grad(|| black_box(net.forward(&x, false).unwrap().layer4)))
    });
    g.finish();
}

fn sgd_step(c: &mut Criterion) {
    let cfg = ModelConfig::default();
    let mut params = ParamStore::new(Device::Cpu, 3);
    let net = CosegNet::new(&cfg, &mut params).unwrap();
    let (a, b) = (crops(1, 4), crops(1, 5));
    let target = Tensor::from_vec((0..128 * 128).map(|i| ((i / 128 / 32 + i % 128 / 32) % 2) as f32).collect(), [1, 128, 128], Device::Cpu).unwrap();
    let mut velocity: Vec<Vec<f32>> = params.trainable().map(|(_, p)| vec![0.0; p.numel()]).collect();
    let mut g = c.benchmark_group("sgd_step");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(30));
    g.bench_function("drn_mg101_csa_d2_1pair_128x128", |bench| {
        bench.iter(|| {
            params.zero_grads();
            let (la, lb) = net.forward_pair(&a, &b, true).unwrap();
            let loss = la.cross_entropy_2class(&target, None).unwrap().add(&lb.cross_entropy_2class(&target, None).unwrap()).unwrap();
            loss.backward().unwrap();
            // SGD with momentum 0.99 and weight decay 5e-4, as the paper trains.
            for ((_, p), v) in params.trainable().zip(velocity.iter_mut()) {
                let grad = p.grad().unwrap().to_vec().unwrap();
                p.update("sgd", |w| {
                    for ((w, v), g) in w.iter_mut().zip(v.iter_mut()).zip(&grad) {
                        *v = 0.99 * *v + g + 5e-4 * *w;
                        *w -= 1e-4 * *v;
                    }
                })
                .unwrap();
            }
            black_box(loss)
        })
    });
    g.finish();
}

criterion_group!(benches, forward, sgd_step);
criterion_main!(benches);
