//! Tensor-level op throughput on the CPU: what a network layer pays, graph recording and
//! allocation included (the raw conv/GEMM kernels are in `conv_cpu`).
//!
//! conv2d groups count FLOPs (criterion's "elem/s" reads as FLOP/s); memory-bound ops count
//! bytes read + written ("B/s").
//! Run: `cargo bench --bench ops_cpu -- --warm-up-time 1 --measurement-time 3`.

use coseg::autograd::no_grad;
use coseg::ops::BatchNormOptions;
use coseg::{Device, tensor::Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

const CPU: Device = Device::Cpu;

fn conv(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // The reference shape: 3x3, dilation 4, 512 -> 512 at 16x16, one image.
    let x = Tensor::randn([1, 512, 16, 16], 0.0, 1.0, CPU, &mut rng).unwrap();
    let w = Tensor::randn([512, 512, 3, 3], 0.0, 0.02, CPU, &mut rng)
        .unwrap()
        .into_var();
    let flops = 2.0 * 512.0 * 256.0 * 512.0 * 9.0;
    let mut g = c.benchmark_group("tensor_conv2d_c512_16x16_d4");
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("forward_no_grad", |b| {
        b.iter(|| no_grad(|| black_box(x.conv2d(&w, None, 1, 4, 4).unwrap())))
    });
    let xv = x.detach().into_var();
    // forward + input gradient + weight gradient = 3 passes
    g.throughput(Throughput::Elements(3 * flops as u64));
    g.bench_function("forward_backward", |b| {
        b.iter(|| {
            let loss = xv.conv2d(&w, None, 1, 4, 4).unwrap().sum_all().unwrap();
            loss.backward().unwrap();
            w.zero_grad();
            xv.zero_grad();
        })
    });
    g.finish();
}

fn memory_bound(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // A ResNet stage-3 activation for a pair batch: (20, 256, 32, 32) = 5.2 M floats.
    let dims = [20, 256, 32, 32];
    let n: u64 = dims.iter().product::<usize>() as u64;
    let x = Tensor::randn(dims, 0.0, 1.0, CPU, &mut rng)
        .unwrap()
        .into_var();
    let attn = Tensor::randn([20, 256, 1, 1], 0.0, 1.0, CPU, &mut rng).unwrap();
    let gamma = Tensor::ones([256], CPU).unwrap().into_var();
    let beta = Tensor::zeros([256], CPU).unwrap().into_var();
    let (rm, rv) = (
        Tensor::zeros([256], CPU).unwrap(),
        Tensor::ones([256], CPU).unwrap(),
    );
    let mut g = c.benchmark_group("memory_bound_20x256x32x32");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(8 * n));
    g.bench_function("relu", |b| {
        b.iter(|| no_grad(|| black_box(x.relu().unwrap())))
    });
    g.bench_function("mul_channel_broadcast", |b| {
        b.iter(|| no_grad(|| black_box(x.mul(&attn).unwrap())))
    });
    g.bench_function("batch_norm_train_forward", |b| {
        b.iter(|| {
            no_grad(|| {
                black_box(
                    x.batch_norm(&gamma, &beta, &rm, &rv, BatchNormOptions::default())
                        .unwrap(),
                )
            })
        })
    });
    g.bench_function("batch_norm_train_forward_backward", |b| {
        b.iter(|| {
            x.batch_norm(&gamma, &beta, &rm, &rv, BatchNormOptions::default())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            x.zero_grad();
        })
    });
    g.bench_function("max_pool2d_3x3_s2", |b| {
        b.iter(|| no_grad(|| black_box(x.max_pool2d(3, 2, 1).unwrap())))
    });
    g.bench_function("softmax_channels", |b| {
        b.iter(|| no_grad(|| black_box(x.softmax(1).unwrap())))
    });
    // Reads n floats, writes 4n: the decoder's x2 upsampling.
    g.throughput(Throughput::Bytes(20 * n));
    g.bench_function("resize_bilinear_x2", |b| {
        b.iter(|| no_grad(|| black_box(x.resize_bilinear(64, 64).unwrap())))
    });
    g.finish();
}

criterion_group!(benches, conv, memory_bound);
criterion_main!(benches);
