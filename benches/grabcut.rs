//! GrabCut on one 128x128 lesion crop (target: <= 20 ms on one core), and the whole
//! `pseudo_masks` run (read slice, crop, GrabCut, paste back, write PNG) over a small synthetic
//! set, to extrapolate to DeepLesion's 32,735 lesions (target: < 6 min on 2 cores).

use coseg::data::synth::{SynthParams, synth_dataset};
use coseg::pseudo::{GrabCutParams, PseudoMaskParams, Recist, RecistFitParams, grabcut, pseudo_masks, recist_fit};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "../tests/pseudo_support/mod.rs"]
mod support;

fn one_crop(c: &mut Criterion) {
    let params = GrabCutParams::default();
    on_crops(c, "grabcut 128x128 crop", |img, recist| grabcut(img, 128, 128, recist, &params).unwrap());
}

/// RECIST-fit on the same crops (two GrabCuts, the ellipse, diameters of each); the crops are in
/// [0, 1], so the window is [0, 1].
fn one_crop_recist_fit(c: &mut Criterion) {
    let params = RecistFitParams::default();
    on_crops(c, "recist-fit 128x128 crop", |img, recist| {
        recist_fit(img, 128, 128, [0.0, 1.0], recist, &params).unwrap()
    });
}

/// Benchmarks `run` on 8 synthetic 128x128 lesion crops (image, RECIST marks) in turn.
fn on_crops<R>(c: &mut Criterion, name: &str, mut run: impl FnMut(&[f32], &Recist) -> R) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let crops: Vec<_> = (0..8).map(|_| support::blob_crop(&mut rng, 128)).collect();
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            let (img, _, recist) = &crops[i % crops.len()];
            i += 1;
            run(img, recist)
        })
    });
}

/// LESIONS synthetic 512x512 slices without true masks (as DeepLesion), all threads rayon has
/// (set RAYON_NUM_THREADS=2 for the 2-core figure); per lesion = reported time / LESIONS.
fn whole_run(c: &mut Criterion) {
    const LESIONS: usize = 16;
    let dir = std::env::temp_dir().join(format!("coseg-bench-pseudo-{}", std::process::id()));
    let data = dir.join("data");
    synth_dataset(&data, &SynthParams { lesions: LESIONS, seed: 11, size: 512, neighbours: false }).unwrap();
    std::fs::remove_dir_all(data.join("masks")).unwrap();
    let params = PseudoMaskParams::default();
    let mut group = c.benchmark_group("pseudo-masks");
    group.sample_size(10);
    group.bench_function(format!("{LESIONS} lesions, 512x512 slices"), |b| {
        b.iter(|| pseudo_masks(&data, &dir.join("out"), &params).unwrap())
    });
    group.finish();
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, one_crop, one_crop_recist_fit, whole_run);
criterion_main!(benches);
