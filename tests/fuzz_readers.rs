//! Property tests: the readers of user input (DL_info.csv, PNG slices and masks, RECIST marks and
//! windows, the TOML config) fed thousands of mutated inputs return a value or an error, never a
//! panic and never an abort (an abort would kill this test binary). Each input starts from a valid
//! one so the mutations reach deep into the parsers, not only their first check.

use coseg::data::dl_info::{format_row, parse_dl_info, DL_INFO_COLUMNS};
use coseg::data::recist::{check_recist, parse_recist, parse_window};
use coseg::io::{read_gray16, read_u8, write_gray16, write_u8, Image};
use coseg::train::TrainConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::{Path, PathBuf};

/// Cases per reader: thousands in all, a few seconds each on 2 cores.
const CASES: u32 = 1500;

/// Tokens that reach the parsers' edge cases when spliced in.
const TOKENS: &[&str] = &[
    ",", "\"", "\n", "\r\n", "NaN", "nan", "inf", "-inf", "-1", "0", "1e39", "-1e39", "4294967296", "99999999999999999999", "", " ", "[", "]",
    "=", "[data]", "[train]", "[[x]]", "#", "\u{feff}", "é", "\u{1F600}", "'", "\\", "true", "1.5", "-0.0", "{", "}",
];

/// One edit of a byte string: replace, insert or delete a byte, truncate, or splice a token.
#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Token(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Replace(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Edit::Token(p, t)),
    ]
}

fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *e {
            Edit::Replace(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] = b;
            }
            Edit::Insert(p, b) => v.insert(at(p, v.len()), b),
            Edit::Delete(p) if !v.is_empty() => {
                let i = p % v.len();
                v.remove(i);
            }
            Edit::Truncate(p) => v.truncate(at(p, v.len())),
            Edit::Token(p, t) => {
                let i = at(p, v.len());
                v.splice(i..i, TOKENS[t].bytes());
            }
            _ => {}
        }
    }
    v
}

fn runner() -> TestRunner {
    // No regression files: a failure is printed with its minimal input instead.
    TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() })
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coseg-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A valid DL_info.csv of a few synthetic rows.
fn dl_info_text() -> String {
    let mut text = DL_INFO_COLUMNS.join(",");
    for i in 0..4 {
        let rec = coseg::data::synth::synth_lesion(17, i, 96).unwrap().record;
        text.push('\n');
        text.push_str(&format_row(&rec));
    }
    text.push('\n');
    text
}

#[test]
fn dl_info_reader_survives_mutated_csv() {
    let base = dl_info_text();
    assert_eq!(parse_dl_info(&base, Path::new("f.csv")).unwrap().records.len(), 4);
    runner()
        .run(&prop::collection::vec(edit(), 1..12), |edits| {
            let text = String::from_utf8_lossy(&apply(base.as_bytes(), &edits)).into_owned();
            if let Ok(info) = parse_dl_info(&text, Path::new("f.csv")) {
                // Every kept row passed the shared checks; every dropped one says where.
                for r in &info.records {
                    prop_assert!(r.validate().is_ok());
                }
                for s in &info.skipped {
                    prop_assert!(s.row >= 2 && !s.reason.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// CRC-32 (ISO-HDLC), to rewrite a PNG chunk after changing it so the decoder reads past it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Sets IHDR's width and height (and its CRC): a header that promises a huge image.
fn with_size(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut v = png.to_vec();
    // 8-byte signature, then IHDR: length (4), type (4), width (4), height (4), 5 more, CRC.
    v[16..20].copy_from_slice(&w.to_be_bytes());
    v[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&v[12..29]);
    v[29..33].copy_from_slice(&crc.to_be_bytes());
    v
}

#[test]
fn png_readers_survive_mutated_files() {
    let dir = tmp("png");
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let (w, h) = (24usize, 20usize);
    let slice = Image::new(w, h, 1, (0..w * h).map(|_| next() as u16).collect::<Vec<_>>());
    let mask = Image::new(w, h, 3, (0..w * h * 3).map(|_| next() as u8).collect::<Vec<_>>());
    let (p16, p8) = (dir.join("slice.png"), dir.join("mask.png"));
    write_gray16(&p16, &slice).unwrap();
    write_u8(&p8, &mask).unwrap();
    let bases = [std::fs::read(&p16).unwrap(), std::fs::read(&p8).unwrap()];
    assert_eq!(read_gray16(&p16).unwrap().data, slice.data);
    // Headers promising up to exabytes are refused before anything is allocated (one of these
    // aborted the process before the size check in io::decode).
    let huge = dir.join("huge.png");
    for (w, h) in [(3_000_000_000u32, 2_000_000_000u32), (1 << 31, 1 << 31), (1 << 20, 1 << 20), (100_000, 100_000), (u32::MAX, 1)] {
        std::fs::write(&huge, with_size(&bases[0], w, h)).unwrap();
        let e = read_gray16(&huge).unwrap_err().to_string();
        assert!(e.contains("huge.png"), "{w}x{h}: {e}");
    }
    let case = dir.join("case.png");
    let strategy = (0..2usize, prop::option::of((any::<u32>(), any::<u32>())), prop::collection::vec(edit(), 0..6));
    runner()
        .run(&strategy, |(which, size, edits)| {
            let mut bytes = bases[which].clone();
            if let Some((w, h)) = size {
                bytes = with_size(&bytes, w, h);
            }
            std::fs::write(&case, apply(&bytes, &edits)).unwrap();
            for r in [read_gray16(&case).map(|i| (i.width, i.height, i.data.len())), read_u8(&case).map(|i| (i.width, i.height, i.data.len() / i.channels))] {
                if let Ok((w, h, n)) = r {
                    prop_assert_eq!(w * h, n, "decoded size disagrees with the header");
                }
            }
            Ok(())
        })
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn recist_and_window_parsers_survive_mutated_marks() {
    let base = "263.656, 204.963, 284.07, 204.113, 273.012, 213.469, 272.162, 195.607";
    assert!(parse_recist("--recist", base).is_ok());
    let strategy = (prop::collection::vec(edit(), 0..10), 1usize..4096, 1usize..4096, prop::collection::vec(edit(), 0..6));
    runner()
        .run(&strategy, |(edits, w, h, wedits)| {
            let text = String::from_utf8_lossy(&apply(base.as_bytes(), &edits)).into_owned();
            if let Ok(p) = parse_recist("--recist", &text) {
                if check_recist(&p, w, h).is_ok() {
                    prop_assert!(p.iter().all(|q| q[0] >= 0.0 && q[1] >= 0.0 && q[0] < w as f32 && q[1] < h as f32));
                }
            }
            let window = String::from_utf8_lossy(&apply(b"-160, 240", &wedits)).into_owned();
            if let Ok(win) = parse_window("--window", &window) {
                prop_assert!(win[0] < win[1] && win[0].is_finite() && win[1].is_finite());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_loader_survives_mutated_toml() {
    let base = r#"[experiment]
name = "fuzz"

[data]
root = "d"
manifest = "m.json"
pseudo_masks = "p"
crop_size = 64
window = [-160.0, 240.0]

[model]
depth = 18
width = 0.25

[train]
optimizer = "adam"
lr = 1e-3
iterations = 100
batch_pairs = 4

[train.augment]
flips = true

[eval]
crf = false
threshold = 0.5
"#;
    assert!(TrainConfig::parse(base, "fuzz.toml").is_ok());
    runner()
        .run(&prop::collection::vec(edit(), 1..10), |edits| {
            let text = String::from_utf8_lossy(&apply(base.as_bytes(), &edits)).into_owned();
            match TrainConfig::parse(&text, "fuzz.toml") {
                // What loads is within the limits checked before allocating.
                Ok(cfg) => prop_assert!(coseg::train::limits::check_sizes(&cfg).is_ok()),
                Err(e) => prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e),
            }
            Ok(())
        })
        .unwrap();
}
