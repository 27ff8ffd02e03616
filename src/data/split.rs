//! Stratified train/validation/test split by cluster, pairs within a cluster and split, and the
//! manifest JSON that records both (`coseg split`).
//!
//! Split: all lesions of a patient go to one split (DeepLesion's File_name begins with the
//! patient index). Inside every cluster the patients are shuffled (seeded) and cut by the ratios
//! (default 80/10/10) of its lesions; the fractional part of each cut is rounded up or down at
//! random, so small clusters still contribute to validation and test in expectation. A split
//! with no pair is an error.
//!
//! Pairs (unordered, no self pairs), inside every (cluster, split) group of m lesions:
//! - [`PairRule::All`]: all m (m - 1) / 2 pairs;
//! - [`PairRule::PerLesion`]`(K)`: the group is put in a seeded random cyclic order and each
//!   lesion is paired with the K lesions after it (all pairs when m - 1 <= 2K): every lesion
//!   takes part in 2K pairs, K m pairs in all.

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How lesions of one (cluster, split) group are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairRule {
    All,
    PerLesion(usize),
}

/// Splits lesions stratified by cluster. `ratios` = (train, val, test), non-negative, sum > 0.
/// Every lesion is taken as its own patient; see [`patient_split`].
pub fn stratified_split(clusters: &[usize], ratios: [f64; 3], seed: u64) -> Result<Vec<Split>> {
    let patients: Vec<usize> = (0..clusters.len()).collect();
    patient_split(clusters, &patients, ratios, seed)
}

/// Splits lesions so that all lesions of one patient (`patients[i]`, any id) land in the same
/// split, stratified by cluster as far as that allows: each patient goes with the cluster most of
/// its lesions are in (ties: the lowest), the patients of a cluster are shuffled (seeded) and
/// handed to validation, then test, until each holds its share of the cluster's lesions (the
/// share, plus what earlier clusters fell short of, rounded up or down at random; a patient
/// bigger than what is lacking joins with probability lacking / size), the rest to training.
pub fn patient_split(clusters: &[usize], patients: &[usize], ratios: [f64; 3], seed: u64) -> Result<Vec<Split>> {
    let sum: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| !(*r >= 0.0)) || !(sum > 0.0) || !sum.is_finite() {
        return Err(Error::invalid("split", format!("ratios {ratios:?} must be >= 0 with a positive sum")));
    }
    if patients.len() != clusters.len() {
        return Err(Error::shape("split", format!("{} patients for {} lesions", patients.len(), clusters.len())));
    }
    let (lesions_of, mut members) = patients_by_cluster(clusters, patients);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![Split::Train; clusters.len()];
    // What validation and test fell short of (or beyond) their shares in the clusters so far,
    // carried into the next: with patients bigger than a cluster's share, the split as a whole
    // still gets its share (a small set could otherwise end with no validation lesion at all).
    let mut carry = [0.0f64; 2];
    for group in &mut members {
        group.shuffle(&mut rng);
        let m: usize = group.iter().map(|&p| lesions_of[p].len()).sum();
        let share = [m as f64 * ratios[1] / sum + carry[0], m as f64 * ratios[2] / sum + carry[1]];
        let mut stochastic_round = |x: f64| {
            let x = x.max(0.0);
            let f = x.floor();
            (f + if rng.random::<f64>() < x - f { 1.0 } else { 0.0 }) as usize
        };
        let n_val = stochastic_round(share[0]).min(m);
        let n_test = stochastic_round(share[1]).min(m - n_val);
        let taken = take_patients(group, &lesions_of, n_val, n_test, &mut rng);
        let mut got = [0usize; 2];
        for (j, &p) in group.iter().enumerate() {
            match taken[j] {
                Some(Split::Val) => got[0] += lesions_of[p].len(),
                Some(Split::Test) => got[1] += lesions_of[p].len(),
                _ => {}
            }
            for &i in &lesions_of[p] {
                out[i] = taken[j].unwrap_or(Split::Train);
            }
        }
        carry = [share[0] - got[0] as f64, share[1] - got[1] as f64];
    }
    Ok(out)
}

/// Patients in order of first appearance, each with its lesions; and each cluster's patients (a
/// patient belongs to the cluster most of its lesions are in, the lowest on a tie).
fn patients_by_cluster(clusters: &[usize], patients: &[usize]) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let mut patient_of: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut lesions_of: Vec<Vec<usize>> = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        let next = lesions_of.len();
        let k = *patient_of.entry(*p).or_insert(next);
        if k == next {
            lesions_of.push(Vec::new());
        }
        lesions_of[k].push(i);
    }
    let k = clusters.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (p, lesions) in lesions_of.iter().enumerate() {
        let mut count: std::collections::BTreeMap<usize, usize> = Default::default();
        for &i in lesions {
            *count.entry(clusters[i]).or_default() += 1;
        }
        let most = count.values().copied().max().unwrap_or(0);
        let dominant = count.iter().find(|(_, n)| **n == most).map_or(0, |(c, _)| *c);
        members[dominant].push(p);
    }
    (lesions_of, members)
}

/// Which of a cluster's patients (in their shuffled order) go to validation and test.
/// Validation, then test, take the patients that fit in what they still lack; if some is still
/// lacking, the next patient (bigger than it) joins with probability lacking / size, so each split
/// holds its share in expectation even when every patient is bigger than it (small clusters).
/// Single-lesion patients always fit, so they never draw.
fn take_patients(group: &[usize], lesions_of: &[Vec<usize>], n_val: usize, n_test: usize, rng: &mut ChaCha8Rng) -> Vec<Option<Split>> {
    let mut taken: Vec<Option<Split>> = vec![None; group.len()];
    for (want, split) in [(n_val, Split::Val), (n_test, Split::Test)] {
        let mut lacking = want;
        for (j, &p) in group.iter().enumerate() {
            let size = lesions_of[p].len();
            if taken[j].is_none() && size <= lacking {
                taken[j] = Some(split);
                lacking -= size;
            }
        }
        if lacking > 0 {
            if let Some(j) = (0..group.len()).find(|&j| taken[j].is_none()) {
                if rng.random::<f64>() < lacking as f64 / lesions_of[group[j]].len() as f64 {
                    taken[j] = Some(split);
                }
            }
        }
    }
    taken
}

/// The patient a DeepLesion File_name belongs to: the part before its first `_`
/// (`<patient>_<study>_<series>_<slice>.png`); a name without one is its own patient.
pub fn patient_of_file_name(file_name: &str) -> &str {
    file_name.split_once('_').map_or(file_name, |(p, _)| p)
}

/// Pairs (indices into the lesion list, i < j) within the same cluster and split.
pub fn make_pairs(clusters: &[usize], splits: &[Split], rule: PairRule, seed: u64) -> [Vec<[u32; 2]>; 3] {
    let k = clusters.iter().copied().max().map_or(0, |m| m + 1);
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); k * 3];
    for (i, (&c, s)) in clusters.iter().zip(splits).enumerate() {
        groups[c * 3 + s.index()].push(i as u32);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_6972); // "pair"
    let mut out: [Vec<[u32; 2]>; 3] = Default::default();
    for (g, group) in groups.iter_mut().enumerate() {
        let m = group.len();
        let pairs = &mut out[g % 3];
        let all = match rule {
            PairRule::All => true,
            PairRule::PerLesion(kk) => m <= 2 * kk + 1,
        };
        if all {
            for a in 0..m {
                for b in a + 1..m {
                    pairs.push(ordered(group[a], group[b]));
                }
            }
        } else if let PairRule::PerLesion(kk) = rule {
            group.shuffle(&mut rng);
            // Offsets 1..=K in a cycle of m > 2K: no pair is produced twice.
            for a in 0..m {
                for off in 1..=kk {
                    pairs.push(ordered(group[a], group[(a + off) % m]));
                }
            }
        }
    }
    for p in &mut out {
        p.sort_unstable();
    }
    out
}

fn ordered(a: u32, b: u32) -> [u32; 2] {
    if a < b { [a, b] } else { [b, a] }
}

/// One lesion in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestLesion {
    pub file_name: String,
    /// Line of the lesion in DL_info.csv (header = 1): rows can share a File_name.
    pub row: usize,
    pub cluster: usize,
    pub split: Split,
}

/// Pair lists per split; each pair holds two indices into `lesions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestPairs {
    pub train: Vec<[u32; 2]>,
    pub val: Vec<[u32; 2]>,
    pub test: Vec<[u32; 2]>,
}

/// A row of DL_info.csv or a lesion left out of the split, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestSkipped {
    pub row: usize,
    pub file_name: String,
    pub reason: String,
}

/// What `coseg split` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Data root the file names are relative to (DL_info.csv, Images_png/).
    pub data: String,
    pub seed: u64,
    pub clusters: usize,
    /// "features" (see `data::embed`) or `"npy:<path>"`.
    pub embedding: String,
    pub ratios: [f64; 3],
    pub pair_rule: PairRule,
    pub lesions: Vec<ManifestLesion>,
    pub pairs: ManifestPairs,
    pub skipped: Vec<ManifestSkipped>,
}

impl Manifest {
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string(self).map_err(|e| Error::format(path, None, format!("JSON: {e}")))?;
        crate::io::write_atomic(path, text.as_bytes())
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::format(path, None, format!("manifest JSON: {e}")))?;
        let n = m.lesions.len() as u32;
        for (name, list) in [("train", &m.pairs.train), ("val", &m.pairs.val), ("test", &m.pairs.test)] {
            if let Some(p) = list.iter().find(|p| p[0] >= n || p[1] >= n) {
                return Err(Error::format(path, None, format!("{name} pair {p:?} points past the {n} lesions")));
            }
        }
        Ok(m)
    }

    /// Pairs of one split.
    pub fn pairs_of(&self, s: Split) -> &[[u32; 2]] {
        match s {
            Split::Train => &self.pairs.train,
            Split::Val => &self.pairs.val,
            Split::Test => &self.pairs.test,
        }
    }

    /// Lesion counts per split.
    pub fn lesion_counts(&self) -> [usize; 3] {
        let mut c = [0; 3];
        for l in &self.lesions {
            c[l.split.index()] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_pairs_stay_in_groups() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let clusters: Vec<usize> = (0..3000).map(|_| rng.random_range(0..12)).collect();
        let splits = stratified_split(&clusters, [0.8, 0.1, 0.1], 9).unwrap();
        assert_eq!(splits, stratified_split(&clusters, [0.8, 0.1, 0.1], 9).unwrap());
        for c in 0..12 {
            let members: Vec<Split> = clusters.iter().zip(&splits).filter(|(k, _)| **k == c).map(|(_, s)| *s).collect();
            let frac = |s: Split| members.iter().filter(|m| **m == s).count() as f64 / members.len() as f64;
            assert!((frac(Split::Train) - 0.8).abs() < 0.02, "cluster {c}: {}", frac(Split::Train));
            assert!((frac(Split::Val) - 0.1).abs() < 0.02);
        }
        let all = make_pairs(&clusters, &splits, PairRule::All, 1);
        let capped = make_pairs(&clusters, &splits, PairRule::PerLesion(3), 1);
        for (s, (pa, pc)) in all.iter().zip(&capped).enumerate() {
            for p in pa.iter().chain(pc) {
                let (a, b) = (p[0] as usize, p[1] as usize);
                assert!(a < b && clusters[a] == clusters[b] && splits[a] == splits[b] && splits[a].index() == s);
            }
            let mut dedup = pc.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), pc.len(), "duplicate pairs");
        }
        // All pairs: sum over groups of m(m-1)/2; capped: K per lesion in big groups.
        let mut groups = std::collections::HashMap::new();
        for (c, s) in clusters.iter().zip(&splits) {
            *groups.entry((*c, *s)).or_insert(0usize) += 1;
        }
        let want_all: usize = groups.values().map(|m| m * (m - 1) / 2).sum();
        assert_eq!(all.iter().map(Vec::len).sum::<usize>(), want_all);
        let want_capped: usize = groups.values().map(|&m| if m <= 7 { m * (m - 1) / 2 } else { 3 * m }).sum();
        assert_eq!(capped.iter().map(Vec::len).sum::<usize>(), want_capped);
        let mut per_lesion = vec![0usize; clusters.len()];
        for p in &capped[0] {
            per_lesion[p[0] as usize] += 1;
            per_lesion[p[1] as usize] += 1;
        }
        assert!(per_lesion.iter().all(|c| *c <= 6));
        assert!(stratified_split(&clusters, [0.0, 0.0, 0.0], 1).is_err());
    }
    #[test]
    fn a_patients_lesions_share_a_split_and_clusters_stay_stratified() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        // 600 patients with 1..12 lesions each, lesions spread over 6 clusters.
        let (mut clusters, mut patients) = (Vec::new(), Vec::new());
        for p in 0..600usize {
            let home = rng.random_range(0..6);
            for _ in 0..rng.random_range(1..12) {
                clusters.push(if rng.random::<f64>() < 0.7 { home } else { rng.random_range(0..6) });
                patients.push(p * 7 + 3);
            }
        }
        let splits = patient_split(&clusters, &patients, [0.8, 0.1, 0.1], 5).unwrap();
        assert_eq!(splits, patient_split(&clusters, &patients, [0.8, 0.1, 0.1], 5).unwrap());
        let mut seen = std::collections::HashMap::new();
        for (p, s) in patients.iter().zip(&splits) {
            assert_eq!(*seen.entry(*p).or_insert(*s), *s, "patient {p} in two splits");
        }
        let n = splits.len() as f64;
        let frac = |s: Split| splits.iter().filter(|x| **x == s).count() as f64 / n;
        assert!((frac(Split::Train) - 0.8).abs() < 0.03 && (frac(Split::Val) - 0.1).abs() < 0.03, "{} {}", frac(Split::Train), frac(Split::Val));
        for c in 0..6 {
            let of_c: Vec<Split> = clusters.iter().zip(&splits).filter(|(k, _)| **k == c).map(|(_, s)| *s).collect();
            let f = of_c.iter().filter(|s| **s == Split::Train).count() as f64 / of_c.len() as f64;
            assert!((f - 0.8).abs() < 0.08, "cluster {c}: train fraction {f}");
        }
        // Small clusters of patients bigger than a cluster's share (4 patients of 3 lesions
        // each, val and test wanting about 1 lesion): the shares are still met in expectation.
        let clusters: Vec<usize> = (0..2400).map(|i| i / 12).collect();
        let patients: Vec<usize> = (0..2400).map(|i| i / 3).collect();
        let splits = patient_split(&clusters, &patients, [0.8, 0.1, 0.1], 6).unwrap();
        for (s, want) in [(Split::Train, 0.8), (Split::Val, 0.1), (Split::Test, 0.1)] {
            let f = splits.iter().filter(|x| **x == s).count() as f64 / 2400.0;
            assert!((f - want).abs() < 0.04, "{s:?}: {f} of the lesions");
        }
        assert!(patient_split(&clusters, &patients[1..], [0.8, 0.1, 0.1], 5).is_err());
        assert_eq!(patient_of_file_name("000123_01_02_045.png"), "000123");
    }
}

/// Settings of [`build_manifest`].
#[derive(Clone, Debug)]
pub struct SplitParams {
    pub clusters: usize,
    pub seed: u64,
    pub ratios: [f64; 3],
    pub pair_rule: PairRule,
    /// A float32 [N, D] .npy whose rows are the kept DL_info records in file order (e.g. network
    /// features); None computes [`crate::data::embed`] features.
    pub embeddings: Option<std::path::PathBuf>,
    pub max_iter: usize,
}

impl Default for SplitParams {
    fn default() -> Self {
        SplitParams { clusters: 200, seed: 0, ratios: [0.8, 0.1, 0.1], pair_rule: PairRule::PerLesion(5), embeddings: None, max_iter: 100 }
    }
}

/// Reads `root`/DL_info.csv, embeds every usable lesion, clusters, splits and pairs. Rows the
/// reader rejects and lesions whose slice cannot be read end up in `Manifest::skipped`. More
/// clusters than lesions is an error naming both numbers.
pub fn build_manifest(root: &Path, p: &SplitParams) -> Result<Manifest> {
    use crate::data::{dl_info::read_dl_info, kmeans::kmeans};
    let info = read_dl_info(root.join("DL_info.csv"))?;
    let mut skipped: Vec<ManifestSkipped> = info
        .skipped
        .iter()
        .map(|s| ManifestSkipped { row: s.row, file_name: s.file_name.clone(), reason: s.reason.clone() })
        .collect();
    let Embedded { data, dim, kept, embedding } = embeddings_for(root, &info, p.embeddings.as_deref(), &mut skipped)?;
    if kept.len() < p.clusters {
        return Err(Error::invalid("split", format!("{} clusters for {} usable lesions: ask for at most {}", p.clusters, kept.len(), kept.len())));
    }
    let km = kmeans(&data, dim, p.clusters, p.seed, p.max_iter)?;
    let (patients, n_patients) = patient_ids(&info.records, &kept);
    let splits = patient_split(&km.assignment, &patients, p.ratios, p.seed)?;
    let [train, val, test] = make_pairs(&km.assignment, &splits, p.pair_rule, p.seed);
    let counts = Split::ALL.map(|s| splits.iter().filter(|x| **x == s).count());
    let no_pairs = |what: &str| {
        Error::invalid(
            "split",
            format!(
                "{what}: no (cluster, split) group holds two lesions ({} usable lesions of {} patients in {} clusters; train/val/test lesions {counts:?}, {} rows skipped); use fewer clusters or more lesions",
                kept.len(),
                n_patients,
                p.clusters,
                skipped.len()
            ),
        )
    };
    if train.is_empty() && val.is_empty() && test.is_empty() {
        return Err(no_pairs("the split makes no pair at all"));
    }
    if train.is_empty() && p.ratios[0] > 0.0 {
        return Err(no_pairs("the training split has no pair"));
    }
    let lesions = kept
        .iter()
        .enumerate()
        .map(|(row_i, &rec_i)| {
            let r = &info.records[rec_i];
            ManifestLesion { file_name: r.file_name.clone(), row: r.row, cluster: km.assignment[row_i], split: splits[row_i] }
        })
        .collect();
    Ok(Manifest {
        data: root.display().to_string(),
        seed: p.seed,
        clusters: p.clusters,
        embedding,
        ratios: p.ratios,
        pair_rule: p.pair_rule,
        lesions,
        pairs: ManifestPairs { train, val, test },
        skipped,
    })
}

/// The rows k-means clusters: `data` ([kept, dim]), which DL_info records they are, and what
/// made them (for the manifest).
struct Embedded {
    data: Vec<f32>,
    dim: usize,
    kept: Vec<usize>,
    embedding: String,
}

/// Computed features of every readable lesion (a lesion whose slice cannot be read is added to
/// `skipped`), or the rows of a user's [N, D] .npy, one per kept DL_info record.
fn embeddings_for(
    root: &Path,
    info: &crate::data::dl_info::DlInfo,
    npy: Option<&Path>,
    skipped: &mut Vec<ManifestSkipped>,
) -> Result<Embedded> {
    use crate::data::{embed, npy::read_npy_f32};
    let Some(path) = npy else {
        let e = embed::embed_dataset(root, &info.records);
        for (i, msg) in &e.failed {
            let r = &info.records[*i];
            skipped.push(ManifestSkipped { row: r.row, file_name: r.file_name.clone(), reason: msg.clone() });
        }
        return Ok(Embedded { data: e.data, dim: embed::FEATURES, kept: e.kept, embedding: "features".into() });
    };
    let a = read_npy_f32(path)?;
    if a.shape.len() != 2 || a.shape[0] != info.records.len() {
        return Err(Error::format(
            path,
            None,
            format!("embeddings of shape {:?}; expected [{}, D], one row per kept DL_info row", a.shape, info.records.len()),
        ));
    }
    let kept = (0..info.records.len()).collect();
    Ok(Embedded { data: a.data, dim: a.shape[1], kept, embedding: format!("npy:{}", path.display()) })
}

/// Each kept lesion's patient as a small integer, and the number of patients. One patient's
/// lesions share anatomy and scanner: in two splits they would leak test information into
/// training, so the split keeps patients whole.
fn patient_ids(records: &[crate::data::dl_info::LesionRecord], kept: &[usize]) -> (Vec<usize>, usize) {
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let patients = kept
        .iter()
        .map(|&i| {
            let n = ids.len();
            *ids.entry(patient_of_file_name(&records[i].file_name)).or_insert(n)
        })
        .collect();
    (patients, ids.len())
}
