//! Data-stage throughput: one synthetic lesion (3 slices of 512x512, no file writing), a
//! 128x128 crop of a 512x512 slice, and lesion features.

use coseg::data::crop::{CropBox, CropParams};
use coseg::data::embed::lesion_features;
use coseg::data::synth::Synthesizer;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let synth = Synthesizer::new(1, 512).unwrap();
    let mut i = 0;
    c.bench_function("synth lesion 512 (3 slices + mask)", |b| {
        b.iter(|| {
            i += 1;
            black_box(synth.lesion(i).unwrap())
        })
    });
    let s = synth.lesion(3).unwrap();
    let cb = CropBox::around(&s.record, &CropParams::default()).unwrap();
    c.bench_function("crop 128x128 from 512x512", |b| b.iter(|| black_box(cb.crop_hu(&s.slices[1]))));
    c.bench_function("lesion features", |b| b.iter(|| black_box(lesion_features(&s.slices[1], &s.record))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
