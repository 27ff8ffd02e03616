//! The dense CRF on the GPU against the CPU implementation (and through it, pydensecrf): the same
//! lattice vertices, the same filter, the same marginals, on random images of awkward sizes.
//! Skips without a GPU; fails under REQUIRE_CUDA=1.

mod common;
mod gpu_common;

use coseg::crf::cuda::{self as gcrf, GpuLattice, TableSize};
use coseg::crf::{self, CrfParams, Lattice};
use coseg::device::Device;
use coseg::io::{self, Image};
use gpu_common::{gpu, poisoned, rel_err, rng};
use coseg::crf::cuda::refine_bytes_needed;
use rand::Rng;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// A CT-like image: a few smooth blobs on a ramp, pixel noise, a darker disc; and a lesion
/// probability that is high on the disc, with noise, so the CRF has something to change.
fn case(w: usize, h: usize, channels: usize, seed: u64) -> (Image<u8>, Image<f32>) {
    let mut r = rng(seed);
    let (sw, sh) = (w as f32, h as f32);
    let blobs: Vec<[f32; 5]> = (0..6)
        .map(|_| {
            [
                r.random_range(0.0..sw),
                r.random_range(0.0..sh),
                r.random_range(1.0..(sw.max(sh) / 3.0).max(1.5)),
                r.random_range(-80.0..80.0),
                r.random_range(-40.0..40.0),
            ]
        })
        .collect();
    let (cx, cy, rad) = (sw * r.random_range(0.3..0.7), sh * r.random_range(0.3..0.7), sw.min(sh) * 0.2 + 0.5);
    let mut img = Vec::with_capacity(w * h * channels);
    let mut prob = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let d = ((xf - cx).powi(2) + (yf - cy).powi(2)).sqrt() / rad;
            for c in 0..channels {
                let mut v = 100.0 + 40.0 * xf / sw + 10.0 * c as f32;
                for b in &blobs {
                    let g = (-((xf - b[0]).powi(2) + (yf - b[1]).powi(2)) / (2.0 * b[2] * b[2])).exp();
                    v += g * if c == 1 { b[4] } else { b[3] };
                }
                if d < 1.0 {
                    v -= 45.0;
                }
                img.push((v + r.random_range(-15.0..15.0)).clamp(0.0, 255.0) as u8);
            }
            let p = 1.0 / (1.0 + (6.0 * (d - 1.1)).exp()) + r.random_range(-0.25..0.25);
            prob.push(p.clamp(0.0, 1.0));
        }
    }
    (Image::new(w, h, channels, img), Image::new(w, h, 1, prob))
}

fn grid_features(w: usize, h: usize, sxy: f32) -> Vec<f32> {
    crf::kernel::gaussian_features(w, h, sxy).unwrap()
}

/// CPU and GPU marginals of a batch: max |difference| under 1e-4, labels equal on 99.9% of pixels.
fn compare_refine(dev: &coseg::backend::cuda::CudaDevice, what: &str, images: &[Image<u8>], probs: &[Image<f32>], params: &CrfParams) {
    let gpu_q = gcrf::refine_batch(dev, images, probs, params).unwrap();
    assert_eq!(gpu_q.len(), images.len());
    let (mut max_diff, mut flips, mut pixels, mut changed) = (0f32, 0usize, 0usize, 0usize);
    for ((img, p), g) in images.iter().zip(probs).zip(&gpu_q) {
        let c = crf::refine(img, p, params).unwrap();
        assert_eq!((g.width, g.height, g.channels), (c.width, c.height, 1));
        for ((a, b), p0) in g.data.iter().zip(&c.data).zip(&p.data) {
            assert!(a.is_finite(), "{what}: non-finite GPU marginal {a}");
            max_diff = max_diff.max((a - b).abs());
            flips += ((*a > 0.5) != (*b > 0.5)) as usize;
            changed += ((*b > 0.5) != (*p0 > 0.5)) as usize;
        }
        pixels += c.data.len();
    }
    eprintln!("{what}: max |q_gpu - q_cpu| = {max_diff:.2e}, labels differ on {flips} of {pixels}, CRF changed {changed}");
    assert!(max_diff < 1e-4, "{what}: max |q_gpu - q_cpu| = {max_diff}");
    assert!(flips as f64 <= 1e-3 * pixels as f64, "{what}: labels differ on {flips} of {pixels}");
}

#[test]
fn gpu_lattice_has_the_cpu_vertices_and_filters_alike() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_lattice_has_the_cpu_vertices_and_filters_alike") else { return };
    // Smoothness features of an odd-size grid, and appearance features of three random images
    // (each its own lattice in one batch).
    let (w, h) = (37, 29);
    let n = w * h;
    // (dim, features, points per image, whether a table sized for images fills up)
    let mut cases: Vec<(usize, Vec<f32>, usize, bool)> = vec![(2, grid_features(w, h, 3.0), n, false)];
    let mut bilateral = Vec::new();
    for s in 0..3 {
        let (img, _) = case(w, h, 3, 40 + s);
        bilateral.extend(crf::kernel::bilateral_features(&img, 80.0, 13.0).unwrap());
    }
    cases.push((5, bilateral, n, false));
    // Random features spread over many lattice cells, one image: about six vertices a point,
    // more than an `Expected` table holds.
    let mut r = rng(7);
    cases.push((5, (0..500 * 5).map(|_| r.random_range(-4.0f32..4.0)).collect(), 500, true));
    for (dim, f, per_image, fills) in cases {
        let points = f.len() / dim;
        let images = points / per_image;
        let feats = dev.htod(&f).unwrap();
        let expected = GpuLattice::build(&dev, &feats, dim, points, per_image, TableSize::Expected).unwrap();
        assert_eq!(expected.table_full(&dev).unwrap(), fills, "d={dim}: table sized for images full?");
        let lat = if fills { GpuLattice::build(&dev, &feats, dim, points, per_image, TableSize::WorstCase).unwrap() } else { expected };
        assert!(!lat.table_full(&dev).unwrap());
        let got: Vec<(u32, Vec<i32>)> = lat.vertex_keys(&dev).unwrap();
        let mut want = Vec::new();
        let mut cpu_lattices = Vec::new();
        for i in 0..images {
            let cpu = Lattice::new(&f[i * per_image * dim..(i + 1) * per_image * dim], dim).unwrap();
            want.extend(cpu.vertex_coords().into_iter().map(|c| (i as u32, c)));
            cpu_lattices.push(cpu);
        }
        let (g, c): (BTreeSet<_>, BTreeSet<_>) = (got.iter().cloned().collect(), want.iter().cloned().collect());
        assert_eq!(got.len(), g.len(), "d={dim}: duplicate vertices on the GPU");
        assert_eq!(g, c, "d={dim}: vertex sets differ ({} on the GPU, {} on the CPU)", g.len(), c.len());
        assert_eq!(lat.vertices(&dev).unwrap(), want.len());
        // The filter, two channels of random values.
        let ch = 2;
        let input: Vec<f32> = (0..points * ch).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let x = dev.htod(&input).unwrap();
        let mut y = poisoned(&dev, points * ch);
        lat.filter(&dev, &x, ch, &mut y).unwrap();
        let got = dev.dtoh(&y).unwrap();
        let mut want = vec![0f32; points * ch];
        for (i, cpu) in cpu_lattices.iter().enumerate() {
            let span = i * per_image * ch..(i + 1) * per_image * ch;
            cpu.filter(&input[span.clone()], ch, &mut want[span]).unwrap();
        }
        let e = rel_err(&got, &want);
        eprintln!("d={dim}, {images} image(s): {} vertices, filter relative error {e:.2e}", g.len());
        assert!(e < 1e-5, "d={dim}: filter relative error {e:.3e}");
    }
}

#[test]
fn gpu_crf_matches_the_cpu_on_random_images() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_crf_matches_the_cpu_on_random_images") else { return };
    let params = CrfParams::default();
    // Grey and RGB, sizes no block divides, a single pixel, and the paper's crop size in a batch.
    for (w, h, channels, count) in [(1, 1, 1, 2), (13, 7, 3, 3), (37, 29, 1, 4), (128, 128, 1, 5), (100, 61, 3, 2)] {
        let (images, probs): (Vec<_>, Vec<_>) = (0..count).map(|s| case(w, h, channels, 100 * w as u64 + s as u64)).unzip();
        compare_refine(&dev, &format!("{count} x {w}x{h}x{channels}"), &images, &probs, &params);
    }
    // Colour noise with a narrow colour kernel: far more simplices than pixels, so the tables
    // sized for images fill up and the batch is refined again with worst-case tables.
    let noise: Vec<(Image<u8>, Image<f32>)> = (0..3)
        .map(|s| {
            let mut r = rng(500 + s);
            let img = Image::new(32, 32, 3, (0..32 * 32 * 3).map(|_| r.random_range(0..=255u8)).collect());
            (img, Image::new(32, 32, 1, (0..32 * 32).map(|_| r.random_range(0.0f32..=1.0)).collect()))
        })
        .collect();
    let (images, probs): (Vec<_>, Vec<_>) = noise.into_iter().unzip();
    let narrow = CrfParams { bilateral_srgb: 2.0, ..params };
    let f: Vec<f32> = images.iter().flat_map(|i| crf::kernel::bilateral_features(i, narrow.bilateral_sxy, 2.0).unwrap()).collect();
    let lat = GpuLattice::build(&dev, &dev.htod(&f).unwrap(), 5, f.len() / 5, 32 * 32, TableSize::Expected).unwrap();
    assert!(lat.table_full(&dev).unwrap(), "colour noise should overflow a table sized for images");
    compare_refine(&dev, "3 x 32x32x3 colour noise, srgb 2 (worst-case tables)", &images, &probs, &narrow);
    // Other parameters, and no iteration at all (the unary softmax).
    let (images, probs): (Vec<_>, Vec<_>) = (0..3).map(|s| case(40, 40, 3, 900 + s)).unzip();
    let other = CrfParams { gauss_sxy: 1.5, gauss_compat: 5.0, bilateral_sxy: 20.0, bilateral_srgb: 5.0, bilateral_compat: 4.0, iters: 8 };
    compare_refine(&dev, "3 x 40x40x3, other parameters", &images, &probs, &other);
    compare_refine(&dev, "3 x 40x40x3, 0 iterations", &images, &probs, &CrfParams { iters: 0, ..params });
}

#[test]
fn gpu_crf_matches_the_cpu_on_a_512_image() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_crf_matches_the_cpu_on_a_512_image") else { return };
    let (image, prob) = case(512, 512, 1, 5);
    compare_refine(&dev, "1 x 512x512x1", &[image], &[prob], &CrfParams::default());
}

/// The CPU test's pydensecrf goldens (tests/data/crf), found from the repository root when the
/// build's path is not there (the GPU machine runs the binary from a copy of the tree).
fn golden_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/crf");
    if built.is_dir() { built } else { PathBuf::from("tests/data/crf") }
}

#[test]
fn gpu_crf_matches_pydensecrf() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_crf_matches_pydensecrf") else { return };
    let dir = golden_dir();
    for name in ["rgb", "grey", "ct"] {
        let image = io::read_u8(dir.join(format!("{name}_image.png"))).unwrap();
        let p8 = io::read_u8(dir.join(format!("{name}_prob.png"))).unwrap();
        let prob = Image::new(p8.width, p8.height, 1, p8.data.iter().map(|&v| v as f32 / 255.0).collect());
        let golden: Vec<f32> = std::fs::read(dir.join(format!("{name}_q1.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let q = gcrf::refine_batch(&dev, &[image], &[prob], &CrfParams::default()).unwrap().remove(0);
        let max_diff = q.data.iter().zip(&golden).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: max |q_gpu - pydensecrf| = {max_diff:.2e}");
        assert!(max_diff < 1e-4, "{name}: max |q_gpu - pydensecrf| = {max_diff}");
    }
}

#[test]
fn gpu_crf_through_the_device_dispatch_keeps_input_order() {
    let _serial = gpu_common::serial();
    let Some(_dev) = gpu("gpu_crf_through_the_device_dispatch_keeps_input_order") else { return };
    // Mixed sizes and channel counts: one device batch per kind, results in input order.
    let items = [(20, 20, 1, 1u64), (31, 17, 3, 2), (20, 20, 1, 3), (31, 17, 3, 4), (9, 40, 1, 5)];
    let (images, probs): (Vec<_>, Vec<_>) = items.iter().map(|&(w, h, c, s)| case(w, h, c, s)).unzip();
    let params = CrfParams::default();
    let got = crf::refine_batch_on(Device::Cuda(0), &images, &probs, &params).unwrap();
    let want = crf::refine_batch_on(Device::Cpu, &images, &probs, &params).unwrap();
    for (i, (g, c)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.width, g.height), (c.width, c.height), "item {i}");
        let d = g.data.iter().zip(&c.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "item {i}: max difference {d}");
    }
}

#[test]
fn gpu_crf_names_bad_input() {
    let _serial = gpu_common::serial();
    let Some(dev) = gpu("gpu_crf_names_bad_input") else { return };
    let (image, prob) = case(16, 12, 1, 3);
    let mut bad = prob.clone();
    bad.data[5 * 16 + 7] = f32::NAN;
    let images = vec![image.clone(), image.clone(), image.clone()];
    let e = crf::refine_batch_on(Device::Cuda(0), &images, &[prob.clone(), prob.clone(), bad.clone()], &CrfParams::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("item 2") && e.contains("(x 7, y 5)") && e.contains("NaN"), "{e}");
    bad.data[5 * 16 + 7] = 1.5;
    let e = gcrf::refine_batch(&dev, &[image.clone()], &[bad], &CrfParams::default()).unwrap_err().to_string();
    assert!(e.contains("item 0") && e.contains("1.5"), "{e}");
    // A kernel width far too small overflows the lattice keys, as on the CPU.
    let tiny = CrfParams { bilateral_srgb: 1e-3, ..CrfParams::default() };
    let e = gcrf::refine_batch(&dev, &[image.clone()], &[prob.clone()], &tiny).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    assert!(crf::refine(&image, &prob, &tiny).unwrap_err().to_string().contains("overflows"));
    // A batch beyond the card's free memory is refused with its size, before anything is
    // allocated: take all but half of what 64 images of 512x512 need, then ask for them.
    let needed = refine_bytes_needed(64, 512 * 512, TableSize::Expected);
    assert!(gcrf::batch_fits(&dev, 64, 512, 512).is_ok());
    dev.release_cached();
    let mut hog = Vec::new();
    for chunk in [1usize << 28, 1 << 24] {
        while dev.mem_info().unwrap().0 > needed / 2 + chunk * 4 {
            hog.push(dev.alloc(chunk).unwrap());
        }
    }
    let e = gcrf::batch_fits(&dev, 64, 512, 512).unwrap_err().to_string();
    drop(hog);
    dev.release_cached();
    assert!(e.contains("64 images of 512x512") && e.contains("MiB"), "{e}");
    // Beyond the kernels' 32-bit indices, also refused with the size.
    let e = gcrf::batch_fits(&dev, 10_000, 512, 512).unwrap_err().to_string();
    assert!(e.contains("10000 images of 512x512"), "{e}");
    // Mismatched sizes are named.
    let (small, sp) = case(8, 8, 1, 1);
    let e = gcrf::refine_batch(&dev, &[image, small], &[prob, sp], &CrfParams::default()).unwrap_err().to_string();
    assert!(e.contains("item 1") && e.contains("8x8"), "{e}");
}
