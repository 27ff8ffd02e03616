//! Stratified train/validation/test split by cluster, pairs within a cluster and split, and the
//! manifest JSON that records both (`coseg split`).
//!
//! Split: inside every cluster the lesions are shuffled (seeded) and cut by the ratios
//! (default 80/10/10); the fractional part of each cut is rounded up or down at random, so
//! small clusters still contribute to validation and test in expectation.
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
pub fn stratified_split(clusters: &[usize], ratios: [f64; 3], seed: u64) -> Result<Vec<Split>> {
    let sum: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| !(*r >= 0.0)) || !(sum > 0.0) {
        return Err(Error::invalid("split", format!("ratios {ratios:?} must be >= 0 with a positive sum")));
    }
    let k = clusters.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &c) in clusters.iter().enumerate() {
        members[c].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![Split::Train; clusters.len()];
    for group in &mut members {
        group.shuffle(&mut rng);
        let m = group.len() as f64;
        let mut stochastic_round = |x: f64| {
            let f = x.floor();
            (f + if rng.random::<f64>() < x - f { 1.0 } else { 0.0 }) as usize
        };
        let n_val = stochastic_round(m * ratios[1] / sum).min(group.len());
        let n_test = stochastic_round(m * ratios[2] / sum).min(group.len() - n_val);
        for (pos, &i) in group.iter().enumerate() {
            out[i] = if pos < n_val {
                Split::Val
            } else if pos < n_val + n_test {
                Split::Test
            } else {
                Split::Train
            };
        }
    }
    Ok(out)
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
    /// "features" (see `data::embed`) or "npy:<path>".
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
        crate::output::write_atomic(path, text.as_bytes())
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
    use crate::data::{dl_info::read_dl_info, embed, kmeans::kmeans, npy::read_npy_f32};
    let info = read_dl_info(root.join("DL_info.csv"))?;
    let mut skipped: Vec<ManifestSkipped> = info
        .skipped
        .iter()
        .map(|s| ManifestSkipped { row: s.row, file_name: s.file_name.clone(), reason: s.reason.clone() })
        .collect();
    let (data, dim, kept, embedding) = match &p.embeddings {
        None => {
            let e = embed::embed_dataset(root, &info.records);
            for (i, msg) in &e.failed {
                let r = &info.records[*i];
                skipped.push(ManifestSkipped { row: r.row, file_name: r.file_name.clone(), reason: msg.clone() });
            }
            (e.data, embed::FEATURES, e.kept, "features".to_string())
        }
        Some(path) => {
            let a = read_npy_f32(path)?;
            if a.shape.len() != 2 || a.shape[0] != info.records.len() {
                return Err(Error::format(
                    path,
                    None,
                    format!("embeddings of shape {:?}; expected [{}, D], one row per kept DL_info row", a.shape, info.records.len()),
                ));
            }
            (a.data, a.shape[1], (0..info.records.len()).collect(), format!("npy:{}", path.display()))
        }
    };
    if kept.len() < p.clusters {
        return Err(Error::invalid("split", format!("{} clusters for {} usable lesions: ask for at most {}", p.clusters, kept.len(), kept.len())));
    }
    let km = kmeans(&data, dim, p.clusters, p.seed, p.max_iter)?;
    let splits = stratified_split(&km.assignment, p.ratios, p.seed)?;
    let [train, val, test] = make_pairs(&km.assignment, &splits, p.pair_rule, p.seed);
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
