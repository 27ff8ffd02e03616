//! Embedding -> k-means -> split -> pairs -> manifest on a small synthetic set, and the HU
//! comparison of synthetic slices with the real DeepLesion sample.

use coseg::data::embed::{embed_dataset, FEATURES};
use coseg::data::hu_stats::{dataset_stats, histogram_overlap};
use coseg::data::npy::write_npy_f32;
use coseg::data::split::{build_manifest, Manifest, PairRule, Split, SplitParams};
use coseg::data::synth::{synth_dataset, SynthParams};
use coseg::data::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn synth_set(name: &str, lesions: usize, size: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coseg-split-{name}-{}", std::process::id()));
    synth_dataset(&dir, &SynthParams { lesions, seed: 31, size, neighbours: false }).unwrap();
    dir
}

#[test]
fn manifest_groups_alike_lesions_and_reports_missing_slices() {
    let dir = synth_set("m", 64, 192);
    let info = read_dl_info(dir.join("DL_info.csv")).unwrap();
    // One key slice goes missing: its lesion is skipped by name, the rest is processed.
    let gone = &info.records[5];
    std::fs::remove_file(gone.slice_path(&dir, 0)).unwrap();
    let params = SplitParams { clusters: 8, seed: 4, pair_rule: PairRule::PerLesion(2), ..Default::default() };
    let m = build_manifest(&dir, &params).unwrap();
    assert_eq!(m.lesions.len(), 63);
    assert_eq!(m.skipped.len(), 1);
    assert!(m.skipped[0].file_name == gone.file_name && m.skipped[0].reason.contains(&gone.file_name[..12]));
    // Clusters follow lesion appearance: most of a cluster shares one coarse type.
    let type_of: HashMap<&str, CoarseType> = info.records.iter().map(|r| (r.file_name.as_str(), r.coarse_type)).collect();
    let mut by_cluster: HashMap<usize, Vec<CoarseType>> = HashMap::new();
    for l in &m.lesions {
        by_cluster.entry(l.cluster).or_default().push(type_of[l.file_name.as_str()]);
    }
    let majority: usize = by_cluster
        .values()
        .map(|ts| ts.iter().map(|t| ts.iter().filter(|u| *u == t).count()).max().unwrap())
        .sum();
    assert!(majority as f64 / 63.0 > 0.6, "type purity {}", majority as f64 / 63.0);
    // Pairs stay inside (cluster, split); round trip through JSON.
    for s in Split::ALL {
        for p in m.pairs_of(s) {
            let (a, b) = (&m.lesions[p[0] as usize], &m.lesions[p[1] as usize]);
            assert!(a.cluster == b.cluster && a.split == s && b.split == s);
        }
    }
    assert!(!m.pairs.train.is_empty());
    let path = dir.join("manifest.json");
    m.save(&path).unwrap();
    assert_eq!(Manifest::load(&path).unwrap(), m);
    let mut bad = m.clone();
    bad.pairs.val.push([0, 999]);
    bad.save(&path).unwrap();
    assert!(Manifest::load(&path).unwrap_err().to_string().contains("999"));
    // Too many clusters: a clear error with both numbers.
    let e = build_manifest(&dir, &SplitParams { clusters: 100, ..params.clone() }).unwrap_err().to_string();
    assert!(e.contains("100 clusters") && e.contains("63"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn npy_embeddings_replace_the_features() {
    let dir = synth_set("n", 30, 128);
    let info = read_dl_info(dir.join("DL_info.csv")).unwrap();
    let e = embed_dataset(&dir, &info.records);
    assert_eq!((e.kept.len(), e.failed.len(), e.data.len()), (30, 0, 30 * FEATURES));
    // Standardised: every non-constant column has mean 0, std 1.
    for j in 0..FEATURES {
        let col: Vec<f32> = (0..30).map(|i| e.data[i * FEATURES + j]).collect();
        let m = col.iter().sum::<f32>() / 30.0;
        let s = (col.iter().map(|v| (v - m).powi(2)).sum::<f32>() / 30.0).sqrt();
        assert!(m.abs() < 1e-4 && (s < 1e-6 || (s - 1.0).abs() < 1e-3), "feature {j}: mean {m} std {s}");
    }
    let npy = dir.join("emb.npy");
    write_npy_f32(&npy, &[30, FEATURES], &e.data).unwrap();
    let base = SplitParams { clusters: 5, seed: 2, pair_rule: PairRule::All, ..Default::default() };
    let a = build_manifest(&dir, &base).unwrap();
    let b = build_manifest(&dir, &SplitParams { embeddings: Some(npy.clone()), ..base.clone() }).unwrap();
    assert_eq!(a.lesions, b.lesions);
    assert!(b.embedding.starts_with("npy:"));
    write_npy_f32(&npy, &[29, FEATURES], &e.data[..29 * FEATURES]).unwrap();
    let err = build_manifest(&dir, &SplitParams { embeddings: Some(npy), ..base }).unwrap_err().to_string();
    assert!(err.contains("[29, 26]") && err.contains("[30, D]"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// The real sample (15 liver-lesion slices) against synthetic liver-lesion slices: the HU
/// distribution must be close. Prints the table the closing note quotes.
#[test]
fn synthetic_hu_statistics_match_the_real_sample() {
    let shared = std::env::var("COSEG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let real = shared.join("data/deeplesion-sample");
    if !real.join("DL_info.csv").exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no sample at {}", real.display());
        eprintln!("skipping: no DeepLesion sample at {}", real.display());
        return;
    }
    let dir = synth_set("hu", 90, 512);
    let liver: HashSet<CoarseType> = [CoarseType::Liver].into();
    let (r, rf) = dataset_stats(&real, 100, None).unwrap();
    let (s, sf) = dataset_stats(&dir, 100, Some(&liver)).unwrap();
    assert!(rf.is_empty() && sf.is_empty());
    assert!(s.slices >= 5, "only {} synthetic liver slices", s.slices);
    println!("{}", coseg::data::hu_stats::compare_report("real", &r, "synthetic", &s));
    assert!(histogram_overlap(&r, &s) > 0.7, "overlap {}", histogram_overlap(&r, &s));
    assert!((r.soft_mean - s.soft_mean).abs() < 20.0);
    assert!((r.fat_mean - s.fat_mean).abs() < 15.0);
    assert!((r.noise_soft - s.noise_soft).abs() < 5.0);
    for b in 0..6 {
        assert!((r.band_fraction[b] - s.band_fraction[b]).abs() < 0.12, "band {b}: {} vs {}", r.band_fraction[b], s.band_fraction[b]);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn patients_stay_in_one_split_duplicates_are_dropped_and_no_pair_is_an_error() {
    let dir = synth_set("p", 60, 128);
    // A second copy of a row (exactly as written) and a second lesion on one slice of another
    // patient: the copy is dropped and named, the second lesion follows its patient.
    let csv = dir.join("DL_info.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut rows: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    rows.push(lines[7].to_string());
    let info = read_dl_info(&csv).unwrap();
    let mut second = info.records[20].clone();
    second.recist = [[second.recist[0][0] + 1.0, second.recist[0][1]], second.recist[1], second.recist[2], second.recist[3]];
    rows.push(coseg::data::dl_info::format_row(&second));
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let n_rows = rows.len() - 1;

    let params = SplitParams { clusters: 4, seed: 2, pair_rule: PairRule::PerLesion(3), ..Default::default() };
    let m = build_manifest(&dir, &params).unwrap();
    assert_eq!(m.lesions.len(), n_rows - 1);
    let dup: Vec<_> = m.skipped.iter().filter(|s| s.reason.contains("exact duplicate of row 8")).collect();
    assert_eq!(dup.len(), 1, "{:?}", m.skipped);
    assert_eq!(dup[0].row, n_rows, "the later copy is the one dropped");
    let patient = |f: &str| f.split('_').next().unwrap().to_string();
    let mut split_of: HashMap<String, Split> = HashMap::new();
    let mut patients_per_split: HashMap<Split, HashSet<String>> = HashMap::new();
    for l in &m.lesions {
        let was = *split_of.entry(patient(&l.file_name)).or_insert(l.split);
        assert_eq!(was, l.split, "patient {} is in {was:?} and {:?}", patient(&l.file_name), l.split);
        patients_per_split.entry(l.split).or_default().insert(patient(&l.file_name));
    }
    // Several patients per split, so the grouping did not just put everything in training.
    assert!(Split::ALL.iter().all(|s| patients_per_split.get(s).is_some_and(|p| !p.is_empty())), "{patients_per_split:?}");
    let counts = m.lesion_counts();
    assert!(counts[0] as f64 >= 0.6 * m.lesions.len() as f64, "{counts:?}");
    for s in Split::ALL {
        for p in m.pairs_of(s) {
            let (a, b) = (&m.lesions[p[0] as usize], &m.lesions[p[1] as usize]);
            assert!(p[0] != p[1] && a.row != b.row, "lesion paired with itself: {a:?}");
        }
    }

    // As many clusters as lesions: no group holds two lesions, so no pair can be made.
    let e = build_manifest(&dir, &SplitParams { clusters: m.lesions.len(), ..params }).unwrap_err().to_string();
    assert!(e.contains("no pair") && e.contains("fewer clusters"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
