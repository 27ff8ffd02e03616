//! Dense CRF speed on one core: the whole refinement (both lattices built + 5 mean-field
//! iterations, 2 labels, pydensecrf's default parameters) at 128x128 and 512x512, its parts at
//! 128x128, and a batch of 128x128 images over all cores.
//! Reference point: pydensecrf on the same inputs (benches/pydensecrf_time.py); with
//! COSEG_CRF_BENCH_INPUTS=DIR the refine cases are written to DIR for benches/pydensecrf_time.py.

use coseg::crf::{self, CrfParams, FilterMethod};
use coseg::io::{self, Image};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::path::Path;

#[path = "support/gpu.rs"]
mod gpu;

/// A CT-like synthetic slice: smooth blobs on a ramp with pixel noise, a darker disc (the
/// lesion) and a prior slightly wider than it.
fn synthetic(w: usize, seed: u64) -> (Image<u8>, Image<f32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let s = w as f32;
    let blobs: Vec<[f32; 4]> = (0..8)
        .map(|_| {
            [
                rng.random_range(0.0..s),
                rng.random_range(0.0..s),
                rng.random_range(s / 20.0..s / 4.0),
                rng.random_range(-90.0..90.0),
            ]
        })
        .collect();
    let (cx, cy, r) = (s * 0.45, s * 0.55, s * 0.1);
    let mut img = Vec::with_capacity(w * w);
    let mut prob = Vec::with_capacity(w * w);
    for y in 0..w {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let mut v = 110.0 + 30.0 * xf / s;
            for &[bx, by, bs, a] in &blobs {
                v += a * (-((xf - bx).powi(2) + (yf - by).powi(2)) / (2.0 * bs * bs)).exp();
            }
            let d = ((xf - cx).powi(2) + (yf - cy).powi(2)).sqrt() / r;
            if d < 1.0 {
                v -= 40.0;
            }
            img.push((v + rng.random_range(-12.0..12.0)).clamp(0.0, 255.0) as u8);
            prob.push(1.0 / (1.0 + (8.0 * (d - 1.2)).exp()));
        }
    }
    (Image::new(w, w, 1, img), Image::new(w, w, 1, prob))
}

/// The 128x128 DeepLesion crop and prior of tests/data/crf.
fn ct_fixture() -> (Image<u8>, Image<f32>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crf");
    let image = io::read_u8(dir.join("ct_image.png")).unwrap();
    let p = io::read_u8(dir.join("ct_prob.png")).unwrap();
    let prob = Image::new(
        p.width,
        p.height,
        1,
        p.data.iter().map(|&v| v as f32 / 255.0).collect(),
    );
    (image, prob)
}

/// Writes each case as NAME_image.png and NAME_prob.f32 (little-endian, row-major) for
/// benches/pydensecrf_time.py, so pydensecrf is timed on exactly these inputs.
fn dump_inputs(dir: &Path, cases: &[(&str, usize, (Image<u8>, Image<f32>))]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, w, (image, prob)) in cases {
        let stem = format!("{name}_{w}x{w}");
        io::write_u8(dir.join(format!("{stem}_image.png")), image).unwrap();
        let bytes: Vec<u8> = prob.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("{stem}_prob.f32")), bytes).unwrap();
    }
    eprintln!("bench inputs written to {}", dir.display());
}

fn refine(c: &mut Criterion) {
    let params = CrfParams::default();
    let mut g = c.benchmark_group("crf_refine");
    let cases = [
        ("ct_crop", 128, ct_fixture()),
        ("synthetic", 128, synthetic(128, 1)),
        ("synthetic", 512, synthetic(512, 2)),
    ];
    if let Some(dir) = std::env::var_os("COSEG_CRF_BENCH_INPUTS") {
        dump_inputs(Path::new(&dir), &cases);
    }
    for (name, w, (image, prob)) in &cases {
        g.throughput(Throughput::Elements((w * w) as u64));
        g.bench_with_input(
            BenchmarkId::new(*name, format!("{w}x{w}")),
            &(image, prob),
            |b, (i, p)| b.iter(|| crf::refine(black_box(i), black_box(p), &params).unwrap()),
        );
        // Without the smoothness-kernel cache: a first call at this size (what pydensecrf
        // always pays).
        g.bench_with_input(
            BenchmarkId::new(format!("{name}_cold"), format!("{w}x{w}")),
            &(image, prob),
            |b, (i, p)| {
                b.iter(|| {
                    crf::clear_smoothness_cache();
                    crf::refine(black_box(i), black_box(p), &params).unwrap()
                })
            },
        );
    }
    g.finish();
}

fn parts(c: &mut Criterion) {
    let params = CrfParams::default();
    let (image, prob) = ct_fixture();
    let mut g = c.benchmark_group("crf_parts_128");
    let build = || crf::binary_crf(black_box(&image), black_box(&prob), &params, FilterMethod::Lattice).unwrap();
    g.bench_function("build_crf_both_lattices", |b| {
        b.iter(|| {
            crf::clear_smoothness_cache();
            build()
        })
    });
    let built = build();
    for k in built.kernels() {
        let l = k.lattice().expect("lattice kernels");
        eprintln!(
            "lattice d={}: {} points, {} vertices",
            l.dim(),
            l.points(),
            l.vertices()
        );
    }
    g.bench_function("build_crf_smoothness_cached", |b| b.iter(build));
    g.bench_function("inference_5_iters", |b| {
        b.iter(|| built.inference(black_box(5)).unwrap())
    });
    g.finish();
}

fn batch(c: &mut Criterion) {
    let params = CrfParams::default();
    let (images, probs): (Vec<_>, Vec<_>) = (0..16).map(|s| synthetic(128, 100 + s)).unzip();
    let mut g = c.benchmark_group("crf_batch");
    g.throughput(Throughput::Elements(16));
    g.bench_function(
        format!("16x128x128_{}_threads", rayon::current_num_threads()),
        |b| b.iter(|| crf::refine_batch(black_box(&images), black_box(&probs), &params).unwrap()),
    );
    g.finish();
}

/// The GPU against the CPU on the same inputs, in one run: 20 images of 128x128 (the paper's
/// evaluation batch; the CPU refines them in parallel over every core) and one 512x512 image.
/// Host to host: uploads, both lattices built, 5 iterations, the marginals copied back.
/// Skips without a GPU.
fn gpu(c: &mut Criterion) {
    let Some(dev) = gpu::device_or_skip("crf_gpu") else {
        return;
    };
    let params = CrfParams::default();
    let (images, probs): (Vec<_>, Vec<_>) = (0..20).map(|s| synthetic(128, 200 + s)).unzip();
    let (big_image, big_prob) = synthetic(512, 2);
    for (what, imgs, ps) in [
        ("20x128x128", images.clone(), probs.clone()),
        ("1x512x512", vec![big_image.clone()], vec![big_prob.clone()]),
    ] {
        // What the batch builds, for the bandwidth figures (bytes per kernel over ncu's times).
        let mut verts = [0usize; 2];
        for (i, p) in imgs.iter().zip(&ps) {
            let built = crf::binary_crf(i, p, &params, FilterMethod::Lattice).unwrap();
            for (v, k) in verts.iter_mut().zip(built.kernels()) {
                *v += k.lattice().map_or(0, |l| l.vertices());
            }
        }
        // The device shares one smoothness lattice across the batch (one channel per image).
        verts[0] /= imgs.len();
        eprintln!("crf_gpu {what}: lattice vertices: smoothness {} (shared), appearance {} (all images)", verts[0], verts[1]);
        let mut g = c.benchmark_group(format!("crf_gpu/{what}"));
        g.sample_size(30);
        g.throughput(Throughput::Elements(imgs.len() as u64));
        g.bench_function("gpu", |b| {
            b.iter(|| crf::cuda::refine_batch(&dev, black_box(&imgs), black_box(&ps), &params).unwrap())
        });
        // Its parts: the inputs already on the device (lattices, normalisation, iterations);
        // the upload alone; the download alone.
        let items: Vec<usize> = (0..imgs.len()).collect();
        let (ir, pr): (Vec<&Image<u8>>, Vec<&Image<f32>>) = (imgs.iter().collect(), ps.iter().collect());
        let batch = crf::cuda::DeviceBatch::upload(&dev, &ir, &pr, &items).unwrap();
        g.bench_function("gpu_device_resident", |b| {
            b.iter(|| {
                let r = batch.refine(&dev, &params).unwrap();
                dev.synchronize().unwrap();
                r
            })
        });
        g.bench_function("gpu_upload", |b| {
            b.iter(|| {
                let up = crf::cuda::DeviceBatch::upload(&dev, black_box(&ir), black_box(&pr), &items).unwrap();
                dev.synchronize().unwrap();
                up
            })
        });
        let refined = batch.refine(&dev, &params).unwrap();
        g.bench_function("gpu_download", |b| b.iter(|| refined.download(&dev).unwrap()));
        g.bench_function(format!("cpu_{}_threads", rayon::current_num_threads()), |b| {
            b.iter(|| crf::refine_batch(black_box(&imgs), black_box(&ps), &params).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, refine, parts, batch);
criterion_group!(gpu_benches, gpu);
criterion_main!(benches, gpu_benches);
