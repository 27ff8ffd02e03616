//! CPU convolution and SGEMM throughput.
//!
//! Every benchmark declares `Throughput::Elements(flops)`, so criterion's "Gelem/s" column reads
//! directly as GFLOP/s (2 flops per multiply-add; each conv pass counts `ConvGeometry::flops`).
//! Run: `cargo bench --bench conv_cpu` (add a filter such as `forward` to select groups).

use std::hint::black_box;
use std::time::Duration;

use coseg::backend::cpu::conv::{
    ConvGeometry, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
};
use coseg::backend::cpu::gemm::sgemm;
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The shapes named in the issue: (label, geometry).
fn shapes() -> Vec<(&'static str, ConvGeometry)> {
    let g = |c, h, k, r, pad, dilation| ConvGeometry {
        n: 1,
        c,
        h,
        w: h,
        k,
        r,
        s: r,
        stride: 1,
        pad,
        dilation,
    };
    vec![
        ("c512_16x16_d4", g(512, 16, 512, 3, 4, 4)),
        ("c64_32x32_d1", g(64, 32, 64, 3, 1, 1)),
        ("c256_16x16_d2", g(256, 16, 256, 3, 2, 2)),
        ("1x1_1024to256_16x16", g(1024, 16, 256, 1, 0, 1)),
    ]
}

/// Tensors for one geometry: x, w, bias, dy and output buffers y, dx, dw.
struct Buffers {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

impl Buffers {
    fn new(g: &ConvGeometry) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let y_len = g.n * g.k * g.out_h() * g.out_w();
        Buffers {
            x: random(&mut rng, g.n * g.c * g.h * g.w),
            w: random(&mut rng, g.k * g.c * g.r * g.s),
            b: random(&mut rng, g.k),
            dy: random(&mut rng, y_len),
            y: vec![0.0; y_len],
            dx: vec![0.0; g.n * g.c * g.h * g.w],
            dw: vec![0.0; g.k * g.c * g.r * g.s],
        }
    }
    fn forward(&mut self, g: &ConvGeometry) {
        conv2d_forward(g, black_box(&self.x), &self.w, Some(&self.b), &mut self.y);
    }
    fn backward_input(&mut self, g: &ConvGeometry) {
        conv2d_backward_input(g, black_box(&self.dy), &self.w, &mut self.dx);
    }
    fn backward_weight(&mut self, g: &ConvGeometry) {
        conv2d_backward_weight(g, black_box(&self.x), &self.dy, &mut self.dw);
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

type Pass = fn(&mut Buffers, &ConvGeometry);

fn conv_passes(c: &mut Criterion) {
    let passes: [(&str, Pass, f64); 4] = [
        ("conv_forward", |b, g| b.forward(g), 1.0),
        ("conv_backward_input", |b, g| b.backward_input(g), 1.0),
        ("conv_backward_weight", |b, g| b.backward_weight(g), 1.0),
        (
            "conv_fwd_bwd",
            |b, g| {
                b.forward(g);
                b.backward_input(g);
                b.backward_weight(g);
            },
            3.0,
        ),
    ];
    for (name, pass, flop_factor) in passes {
        let mut group = c.benchmark_group(name);
        configure(&mut group);
        for (label, g) in shapes() {
            let mut bufs = Buffers::new(&g);
            group.throughput(Throughput::Elements((g.flops() * flop_factor) as u64));
            group.bench_function(label, |bench| bench.iter(|| pass(&mut bufs, &g)));
        }
        group.finish();
    }
}

/// The shape and SGEMM on one thread (a one-thread rayon pool), to show per-core speed.
fn single_thread(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    let mut group = c.benchmark_group("single_thread");
    configure(&mut group);
    let (label, g) = shapes()[0];
    let mut bufs = Buffers::new(&g);
    group.throughput(Throughput::Elements(g.flops() as u64));
    group.bench_function(format!("conv_forward_{label}"), |bench| {
        bench.iter(|| pool.install(|| bufs.forward(&g)))
    });
    let n = 512;
    let (a, b, mut out) = sgemm_buffers(n);
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("sgemm_512", |bench| {
        bench.iter(|| {
            pool.install(|| sgemm(false, false, n, n, n, 1.0, black_box(&a), &b, 0.0, &mut out))
        })
    });
    group.finish();
}

fn sgemm_buffers(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (
        random(&mut rng, n * n),
        random(&mut rng, n * n),
        vec![0.0; n * n],
    )
}

fn sgemm_square(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm");
    configure(&mut group);
    let n = 1024;
    let (a, b, mut out) = sgemm_buffers(n);
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("1024", |bench| {
        bench.iter(|| sgemm(false, false, n, n, n, 1.0, black_box(&a), &b, 0.0, &mut out))
    });
    group.finish();
}

criterion_group!(benches, sgemm_square, conv_passes, single_thread);
criterion_main!(benches);
