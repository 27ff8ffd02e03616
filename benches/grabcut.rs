//! GrabCut on one 128x128 lesion crop (target: <= 20 ms on one core), and the max-flow alone on
//! the same crop's first-round graph size.

use coseg::pseudo::{GrabCutParams, grabcut};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "../tests/pseudo_support/mod.rs"]
mod support;

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let crops: Vec<_> = (0..8).map(|_| support::blob_crop(&mut rng, 128)).collect();
    let params = GrabCutParams::default();
    let mut i = 0;
    c.bench_function("grabcut 128x128 crop", |b| {
        b.iter(|| {
            let (img, _, recist) = &crops[i % crops.len()];
            i += 1;
            grabcut(img, 128, 128, recist, &params).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
