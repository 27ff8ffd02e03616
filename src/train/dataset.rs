//! The network's data: lesion crops of one split with their pseudo-masks (and true masks when
//! the data set has them) in crop space, pairs, augmented batches, and the input normalisation.
//!
//! Input: the data stage's 3-channel crop (key-1, key, key+1 windowed to [0, 1], S x S), then
//! per channel `(x - mean) / std` with ImageNet's statistics (`crate::nn::input::normalise`, the
//! one normalisation every network input goes through).
//!
//! Targets: the slice's pseudo-mask PNG cut with the same crop box (`CropBox::crop_mask`), 1 =
//! lesion. True masks the same way (validation against them is reported separately).
//!
//! Augmentation (training only, drawn per image): one of the 8 symmetries of the square (flips
//! and transposition) applied identically to the crop and its pseudo-mask, and an intensity
//! jitter `a * x + b` on the windowed crop before normalisation (the mask is unchanged).

use crate::data::split::{Manifest, Split};
use crate::data::{CropBox, CropParams, LesionRecord, lesion_crop, read_dl_info};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::input::normalise;
use crate::tensor::Tensor;
use crate::train::config::Augment;
use rand::Rng;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// One lesion ready for the network.
#[derive(Clone, Debug)]
pub struct Sample {
    /// DL_info File_name (also the mask file name).
    pub name: String,
    /// DL_info.csv line (header = 1).
    pub row: usize,
    pub cluster: usize,
    /// Windowed channels in [0, 1], channel-major 3 x S x S (not yet normalised).
    pub image: Vec<f32>,
    /// Pseudo-mask in crop space, 0/1.
    pub pseudo: Vec<u8>,
    /// True mask in crop space, 0/1, when the data set has one.
    pub truth: Option<Vec<u8>>,
    pub crop_box: CropBox,
    /// RECIST end points in crop coordinates (long axis p1, p2, short axis p3, p4): they say
    /// which lesion of the crop is meant.
    pub recist: [[f32; 2]; 4],
    /// Width and height of the key slice.
    pub slice_size: (usize, usize),
    /// Neighbour slices replaced by the key slice, with why (see `data::slice::LesionSlices`).
    pub neighbour_fallbacks: Vec<String>,
}

/// A lesion left out, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedLesion {
    pub name: String,
    pub row: usize,
    pub reason: String,
}

/// The lesions of one split and its pairs (indices into `samples`).
#[derive(Clone, Debug)]
pub struct SplitSet {
    pub split: Split,
    pub size: usize,
    pub samples: Vec<Sample>,
    pub pairs: Vec<[usize; 2]>,
    pub skipped: Vec<SkippedLesion>,
}

/// Where the data lives.
#[derive(Clone, Debug)]
pub struct DataSource<'a> {
    pub root: &'a Path,
    pub manifest: &'a Manifest,
    /// Folder of pseudo-mask PNGs by File_name (None: no targets, e.g. `coseg segment`).
    pub pseudo_masks: Option<&'a Path>,
    pub true_masks: Option<&'a Path>,
    pub crop: CropParams,
}

/// Reads DL_info.csv and maps its rows (line numbers) to records.
pub fn records_by_row(root: &Path) -> Result<HashMap<usize, LesionRecord>> {
    let info = read_dl_info(root.join("DL_info.csv"))?;
    Ok(info.records.into_iter().map(|r| (r.row, r)).collect())
}

/// Loads the lesions of `split` (at most `limit` of them in manifest order when `limit` > 0)
/// and the split's pairs among them. A lesion whose row, slice or pseudo-mask cannot be read is
/// skipped and named in `skipped`, and its pairs dropped; a missing true mask just leaves
/// `truth` empty.
pub fn load_split(src: &DataSource, records: &HashMap<usize, LesionRecord>, split: Split, limit: usize) -> Result<SplitSet> {
    let mut chosen: Vec<usize> = (0..src.manifest.lesions.len()).filter(|&i| src.manifest.lesions[i].split == split).collect();
    if limit > 0 {
        chosen.truncate(limit);
    }
    let bar = crate::progress::bar(chosen.len() as u64, "load crops");
    let loaded: Vec<std::result::Result<Sample, SkippedLesion>> = chosen
        .par_iter()
        .map(|&i| {
            let l = &src.manifest.lesions[i];
            let r = load_sample(src, records, i).map_err(|e| SkippedLesion { name: l.file_name.clone(), row: l.row, reason: e.to_string() });
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let mut index_of = HashMap::new();
    let (mut samples, mut skipped) = (Vec::new(), Vec::new());
    for (&i, r) in chosen.iter().zip(loaded) {
        match r {
            Ok(s) => {
                index_of.insert(i, samples.len());
                samples.push(s);
            }
            Err(s) => skipped.push(s),
        }
    }
    let pairs = src
        .manifest
        .pairs_of(split)
        .iter()
        .filter_map(|p| Some([*index_of.get(&(p[0] as usize))?, *index_of.get(&(p[1] as usize))?]))
        .collect();
    Ok(SplitSet { split, size: src.crop.size, samples, pairs, skipped })
}

/// The crop, pseudo-mask and true mask of manifest lesion `i`.
pub fn load_sample(src: &DataSource, records: &HashMap<usize, LesionRecord>, i: usize) -> Result<Sample> {
    let l = &src.manifest.lesions[i];
    let rec = records.get(&l.row).ok_or_else(|| {
        Error::format(src.root.join("DL_info.csv"), Some(l.row), format!("the manifest's lesion {} is not a valid row here", l.file_name))
    })?;
    let crop = lesion_crop(src.root, rec, &src.crop)?;
    let image: Vec<f32> = crop.channels.concat();
    let cut = |dir: &Path| -> Result<Vec<u8>> {
        let m = crate::io::read_gray8(dir.join(&l.file_name))?;
        Ok(crop.crop_box.crop_mask(&m).into_iter().map(|v| (v > 0) as u8).collect())
    };
    let pseudo = match src.pseudo_masks {
        Some(dir) => cut(dir)?,
        None => Vec::new(),
    };
    let truth = src.true_masks.map(|d| d.join(&l.file_name)).filter(|p| p.exists()).and_then(|_| src.true_masks.map(cut)).transpose()?;
    let [w, h] = rec.image_size.map(|v| v as usize);
    Ok(Sample { name: l.file_name.clone(), row: l.row, cluster: l.cluster, image, pseudo, truth, crop_box: crop.crop_box, recist: crop.recist, slice_size: (w, h), neighbour_fallbacks: crop.fallbacks })
}

/// Index of pixel (x, y) after symmetry `k` (bit 0: flip x, bit 1: flip y, bit 2: transpose)
/// of an S x S grid: output pixel (x, y) reads input pixel `source(k, x, y)`.
fn source(k: u8, x: usize, y: usize, s: usize) -> usize {
    let (mut sx, mut sy) = if k & 4 != 0 { (y, x) } else { (x, y) };
    if k & 1 != 0 {
        sx = s - 1 - sx;
    }
    if k & 2 != 0 {
        sy = s - 1 - sy;
    }
    sy * s + sx
}

fn transform_plane<T: Copy>(src: &[T], k: u8, s: usize, out: &mut Vec<T>) {
    for y in 0..s {
        for x in 0..s {
            out.push(src[source(k, x, y, s)]);
        }
    }
}

/// The inverse of symmetry `k` on an S x S plane: maps a prediction made on the transformed
/// image back onto the original one (test-time augmentation).
pub fn undo_symmetry(plane: &[f32], k: u8, s: usize) -> Vec<f32> {
    let mut out = vec![0.0; s * s];
    for y in 0..s {
        for x in 0..s {
            out[source(k, x, y, s)] = plane[y * s + x];
        }
    }
    out
}

/// The normalised network input of `sample` under symmetry `k` (0..8) of the square, without
/// intensity jitter: what test-time augmentation feeds.
pub fn symmetric_input(sample: &Sample, s: usize, k: u8) -> Vec<f32> {
    transformed(sample, s, k, 1.0, 0.0).0
}

/// A sample as the network sees it: normalised image (3 x S x S) and target (S x S), with the
/// augmentation drawn from `rng` when `aug` is given.
pub fn prepare(sample: &Sample, s: usize, aug: Option<&Augment>, rng: &mut impl Rng) -> (Vec<f32>, Vec<u8>) {
    let (k, a, b) = match aug {
        Some(g) => (
            if g.flips { rng.random_range(0..8u8) } else { 0 },
            1.0 + if g.contrast > 0.0 { rng.random_range(-g.contrast..g.contrast) } else { 0.0 },
            if g.brightness > 0.0 { rng.random_range(-g.brightness..g.brightness) } else { 0.0 },
        ),
        None => (0, 1.0, 0.0),
    };
    transformed(sample, s, k, a, b)
}

/// Symmetry `k`, then `a * x + b`, then normalisation; the target under the same symmetry.
fn transformed(sample: &Sample, s: usize, k: u8, a: f32, b: f32) -> (Vec<f32>, Vec<u8>) {
    let mut image = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        transform_plane(&sample.image[c * s * s..(c + 1) * s * s], k, s, &mut image);
    }
    for v in &mut image {
        *v = a * *v + b;
    }
    normalise(&mut image);
    // Inference samples carry no pseudo-mask: their target stays empty.
    let mut target = Vec::with_capacity(sample.pseudo.len());
    if !sample.pseudo.is_empty() {
        transform_plane(&sample.pseudo, k, s, &mut target);
    }
    (image, target)
}

/// Two (N,3,S,S) inputs and two (N,S,S) targets for the pairs given.
pub struct Batch {
    pub a: Tensor,
    pub b: Tensor,
    pub target_a: Tensor,
    pub target_b: Tensor,
}

/// A batch assembled on the host, not yet on a device: what a worker thread builds ahead of the
/// step that trains on it.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pairs: usize,
    size: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    target_a: Vec<f32>,
    target_b: Vec<f32>,
}

impl HostBatch {
    /// The pairs' crops, augmented with draws from `rng` when `aug` is given.
    pub fn build(set: &SplitSet, pairs: &[[usize; 2]], aug: Option<&Augment>, rng: &mut impl Rng) -> Result<HostBatch> {
        let (s, n) = (set.size, pairs.len());
        let (mut xa, mut xb) = (Vec::with_capacity(n * 3 * s * s), Vec::with_capacity(n * 3 * s * s));
        let (mut ta, mut tb) = (Vec::with_capacity(n * s * s), Vec::with_capacity(n * s * s));
        for p in pairs {
            for (k, (x, t)) in [(&mut xa, &mut ta), (&mut xb, &mut tb)].into_iter().enumerate() {
                let sample = set.samples.get(p[k]).ok_or_else(|| Error::invalid("batch", format!("pair {p:?} points past {} lesions", set.samples.len())))?;
                if sample.pseudo.len() != s * s {
                    return Err(Error::invalid("batch", format!("lesion {} has no pseudo-mask to train on", sample.name)));
                }
                let (img, tgt) = prepare(sample, s, aug, rng);
                // The labels are checked here, where they are made, so the step's loss need not
                // read them back from the device (`Tensor::cross_entropy_2class_trusted`).
                if let Some(v) = tgt.iter().find(|&&v| v > 1) {
                    return Err(Error::invalid("batch", format!("lesion {}: its pseudo-mask holds the label {v}, not 0 or 1", sample.name)));
                }
                x.extend(img);
                t.extend(tgt.into_iter().map(f32::from));
            }
        }
        Ok(HostBatch { pairs: n, size: s, a: xa, b: xb, target_a: ta, target_b: tb })
    }

    /// A batch from its parts: inputs a and b (N,3,S,S) and targets (N,S,S) of 0s and 1s, row-major
    /// (benches and tests; training builds batches with [`HostBatch::build`]).
    pub fn from_parts(pairs: usize, size: usize, [a, b, target_a, target_b]: [Vec<f32>; 4]) -> Result<HostBatch> {
        let (image, plane) = (pairs * 3 * size * size, pairs * size * size);
        if a.len() != image || b.len() != image || target_a.len() != plane || target_b.len() != plane {
            return Err(Error::shape(
                "batch",
                format!(
                    "{pairs} pairs of {size}px crops need inputs of {image} and targets of {plane} values, got {}, {}, {}, {}",
                    a.len(),
                    b.len(),
                    target_a.len(),
                    target_b.len()
                ),
            ));
        }
        if let Some(v) = target_a.iter().chain(&target_b).find(|&&v| v != 0.0 && v != 1.0) {
            return Err(Error::invalid("batch", format!("a target holds {v}, not 0 or 1")));
        }
        Ok(HostBatch { pairs, size, a, b, target_a, target_b })
    }

    /// Pairs in the batch.
    pub fn pairs(&self) -> usize {
        self.pairs
    }
    /// The crops' side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }
    /// The inputs a and b (N,3,S,S) and the targets a and b (N,S,S), row-major.
    pub fn parts(&self) -> [&[f32]; 4] {
        [&self.a, &self.b, &self.target_a, &self.target_b]
    }

    /// The batch as tensors on `device`.
    pub fn upload(self, device: Device) -> Result<Batch> {
        let (n, s) = (self.pairs, self.size);
        Ok(Batch {
            a: Tensor::from_vec(self.a, [n, 3, s, s], device)?,
            b: Tensor::from_vec(self.b, [n, 3, s, s], device)?,
            target_a: Tensor::from_vec(self.target_a, [n, s, s], device)?,
            target_b: Tensor::from_vec(self.target_b, [n, s, s], device)?,
        })
    }
}

/// How each lesion of a split is paired at inference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Partners {
    /// partner\[i\]: the lesion `i` is segmented with.
    pub partner: Vec<usize>,
    /// Lesions without a pair in the split, segmented paired with themselves.
    pub self_paired: Vec<String>,
}

/// Each lesion's first partner in the split's pair list; a lesion without one is paired with
/// itself (and named in `self_paired`).
pub fn partners(set: &SplitSet) -> Partners {
    let mut partner: Vec<Option<usize>> = vec![None; set.samples.len()];
    for p in &set.pairs {
        partner[p[0]].get_or_insert(p[1]);
        partner[p[1]].get_or_insert(p[0]);
    }
    let self_paired = partner.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| set.samples[i].name.clone()).collect();
    Partners { partner: partner.iter().enumerate().map(|(i, p)| p.unwrap_or(i)).collect(), self_paired }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::input::{INPUT_MEAN, INPUT_STD};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn symmetries_move_image_and_mask_together() {
        let s = 5;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let image: Vec<f32> = (0..3 * s * s).map(|_| rng.random_range(0.0..1.0)).collect();
        // The mask marks the pixels whose key channel exceeds 0.5.
        let pseudo: Vec<u8> = image[s * s..2 * s * s].iter().map(|&v| (v > 0.5) as u8).collect();
        let sample = Sample {
            name: "a.png".into(),
            row: 2,
            cluster: 0,
            image,
            pseudo,
            truth: None,
            crop_box: CropBox { x0: 0.0, y0: 0.0, side: 5.0, size: s },
            recist: [[1.0, 2.0], [3.0, 2.0], [2.0, 1.0], [2.0, 3.0]],
            slice_size: (5, 5),
            neighbour_fallbacks: Vec::new(),
        };
        let aug = Augment { flips: true, contrast: 0.0, brightness: 0.0 };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let (img, tgt) = prepare(&sample, s, Some(&aug), &mut rng);
            let key: Vec<f32> = img[s * s..2 * s * s].iter().map(|v| v * INPUT_STD[1] + INPUT_MEAN[1]).collect();
            for (v, t) in key.iter().zip(&tgt) {
                assert_eq!((*v > 0.5) as u8, *t);
            }
            seen.insert(tgt);
        }
        assert_eq!(seen.len(), 8, "all 8 symmetries of a random mask are distinct and drawn");
        // Without augmentation: the identity, normalised.
        let (img, tgt) = prepare(&sample, s, None, &mut rng);
        assert_eq!(tgt, sample.pseudo);
        assert!((img[7] - (sample.image[7] - INPUT_MEAN[0]) / INPUT_STD[0]).abs() < 1e-6);
    }

    #[test]
    fn symmetry_indices_are_permutations() {
        for k in 0..8u8 {
            let mut idx: Vec<usize> = (0..4).flat_map(|y| (0..4).map(move |x| source(k, x, y, 4))).collect();
            idx.sort();
            assert_eq!(idx, (0..16).collect::<Vec<_>>(), "symmetry {k}");
        }
        assert_eq!(source(1, 0, 0, 4), 3);
        assert_eq!(source(4, 1, 0, 4), 4);
    }

    #[test]
    fn undoing_a_symmetry_restores_the_plane() {
        let s = 6;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let plane: Vec<f32> = (0..s * s).map(|_| rng.random_range(0.0..1.0)).collect();
        for k in 0..8u8 {
            let mut moved = Vec::new();
            transform_plane(&plane, k, s, &mut moved);
            if k != 0 {
                assert_ne!(moved, plane, "symmetry {k} moves a random plane");
            }
            assert_eq!(undo_symmetry(&moved, k, s), plane, "symmetry {k}");
        }
    }
}
