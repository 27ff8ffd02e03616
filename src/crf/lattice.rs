//! The permutohedral lattice (Adams, Baek, Davis 2010) as Krähenbühl's densecrf builds it, the
//! approximate Gaussian filter behind the dense CRF's message passing.
//!
//! `Lattice::new` embeds each d-dimensional feature vector (already divided by the kernel widths)
//! into the d-dimensional hyperplane of Z^(d+1), finds the enclosing simplex (its remainder-0
//! vertex and the rank of each coordinate), and records the simplex's d+1 vertex ids and
//! barycentric weights; then it finds, for every vertex and each of the d+1 lattice directions,
//! its two neighbours. Filtering is then three hash-free passes over flat arrays:
//! `splat` (pixels -> vertices), `blur` ([1/2, 1, 1/2] along each direction in turn, which is
//! densecrf's [1/4, 1/2, 1/4] up to a constant) and `slice` (vertices -> pixels, times densecrf's
//! `alpha`). The CUDA version (`crf::cuda::lattice`, kernels/crf.cu) mirrors these steps, building
//! the same vertices with a GPU hash table.
//!
//! The result approximates out_i = sum_j exp(-|f_i - f_j|^2 / 2) in_j up to a global constant,
//! which the CRF's normalisation cancels; see `exact` for the O(N^2) reference.

use super::hash::{self, HashTable, MAX_KEY_LEN};
use crate::error::{Error, Result};

/// Largest feature dimension the lattice accepts (position + RGB needs 5).
pub const MAX_DIM: usize = MAX_KEY_LEN;

/// A lattice built for one set of features; reused for every filtering of values over them.
#[derive(Clone, Debug)]
pub struct Lattice {
    dim: usize,
    points: usize,
    vertices: usize,
    /// points x (d+1): vertex id + 1 of each simplex corner (0 is an always-zero sentinel row).
    offsets: Vec<u32>,
    /// points x (d+1): barycentric weight of each corner.
    barycentric: Vec<f32>,
    /// (d+1) x vertices: [id+1 of the neighbour at -1, id+1 at +1] along each lattice direction;
    /// 0 where the neighbour has no point nearby (it holds zero).
    neighbors: Vec<[u32; 2]>,
    /// The key of each vertex, in id order (for `vertex_coords`).
    keys: Vec<hash::Key>,
}

const D1_MAX: usize = MAX_DIM + 1;

/// Calls `$call` with the constants `D1` (simplex size) and `C` (channels) bound to the
/// values of `$d1` and `$ch` for the cases the CRF meets (smoothness d = 2, appearance d = 5;
/// 1 to 3 channels), and to 0 ("read it at run time") otherwise.
macro_rules! specialise {
    ($d1:expr, $ch:expr, |$D1:ident, $C:ident| $call:expr) => {
        specialise!(@arms ($d1, $ch), $D1, $C, $call,
            (3, 1) => (3, 1), (3, 2) => (3, 2), (6, 1) => (6, 1), (6, 2) => (6, 2),
            (_, 1) => (0, 1), (_, 2) => (0, 2), (_, 3) => (0, 3), _ => (0, 0))
    };
    (@arms $on:expr, $D1:ident, $C:ident, $call:expr, $($case:pat => ($d:expr, $c:expr)),+) => {
        match $on {
            $($case => {
                const $D1: usize = $d;
                const $C: usize = $c;
                $call
            })+
        }
    };
}

/// Points embedded together: the per-point arithmetic runs lane-wise over this many points, in
/// loops the compiler turns into SIMD (as densecrf's SSE path does four at a time).
const LANES: usize = 8;

/// Scratch of the embedding for dimension D (a constant, so the small loops over coordinates
/// unroll), for a block of LANES points stored coordinate-major (\[coordinate\]\[lane\]).
struct Embedder<const D: usize> {
    scale: [f32; MAX_DIM],
    /// Key step from one simplex corner to the next when coordinate i has the rank that
    /// moves down: +1 everywhere, -(d+1) at i (coordinate d is implied, not in the key).
    corner_step: [hash::Key; D1_MAX],
    elevated: [[f32; LANES]; D1_MAX],
    rem0: [[f32; LANES]; D1_MAX],
    rank: [[i32; LANES]; D1_MAX],
    bary: [[f32; LANES]; D1_MAX + 1],
}

impl<const D: usize> Embedder<D> {
    fn new() -> Self {
        let (dim, d1) = (D, D + 1);
        // Expected standard deviation of the lattice filter (Adams et al. 2010, p. 6), and the
        // diagonal of the elevation matrix E, computed in f64 then rounded as densecrf does.
        let inv_std_dev = ((2.0f64 / 3.0).sqrt() * d1 as f64) as f32;
        let mut scale = [0f32; MAX_DIM];
        for (i, s) in scale[..dim].iter_mut().enumerate() {
            *s = (1.0 / (((i + 2) * (i + 1)) as f64).sqrt() * inv_std_dev as f64) as f32;
        }
        let mut corner_step = [hash::ones(dim); D1_MAX];
        for (i, step) in corner_step[..dim].iter_mut().enumerate() {
            *step -= hash::lane(i, d1 as u32);
        }
        Embedder {
            scale,
            corner_step,
            elevated: [[0.0; LANES]; D1_MAX],
            rem0: [[0.0; LANES]; D1_MAX],
            rank: [[0; LANES]; D1_MAX],
            bary: [[0.0; LANES]; D1_MAX + 1],
        }
    }

    /// Elevates a block of feature vectors (`f[coordinate][lane]`), finds each one's simplex
    /// and barycentric weights; on return `rem0`, `rank` and `bary[..=d]` describe them.
    // Indexed lane loops on purpose: they are what the compiler vectorises.
    #[allow(clippy::needless_range_loop)]
    fn embed(&mut self, f: &[[f32; LANES]; MAX_DIM]) {
        let d = D;
        let down = 1.0f32 / (d + 1) as f32;
        let up = (d + 1) as f32;
        // Elevate: y = E f (p. 5), accumulating from the last coordinate.
        let mut sm = [0.0f32; LANES];
        for j in (1..=d).rev() {
            for l in 0..LANES {
                let cf = f[j - 1][l] * self.scale[j - 1];
                self.elevated[j][l] = sm[l] - j as f32 * cf;
                sm[l] += cf;
            }
        }
        self.elevated[0] = sm;
        // Nearest remainder-0 point by rounding each coordinate to a multiple of d+1
        // (ties to even, as densecrf's SSE path does).
        let mut sum = [0.0f32; LANES]; // small integers: exact in f32
        for i in 0..=d {
            for l in 0..LANES {
                let v = round_ties_even(down * self.elevated[i][l]);
                self.rem0[i][l] = v * up;
                sum[l] += v;
            }
        }
        // Rank of each coordinate's remainder in decreasing order (branch-free: the
        // comparisons are data-dependent coin flips).
        self.rank = [[0; LANES]; D1_MAX];
        for i in 0..d {
            for j in i + 1..=d {
                for l in 0..LANES {
                    let below = (self.elevated[i][l] - self.rem0[i][l]
                        < self.elevated[j][l] - self.rem0[j][l])
                        as i32;
                    self.rank[i][l] += below;
                    self.rank[j][l] += 1 - below;
                }
            }
        }
        // If the rounded point is off the hyperplane (sum != 0), walk it back.
        for i in 0..=d {
            for l in 0..LANES {
                let r = self.rank[i][l] + sum[l] as i32;
                let wrap = (r < 0) as i32 - (r > d as i32) as i32;
                self.rank[i][l] = r + wrap * (d as i32 + 1);
                self.rem0[i][l] += wrap as f32 * up;
            }
        }
        // Barycentric coordinates (p. 10): coordinate i adds its remainder at position d - rank
        // and takes it from the next (a per-lane scatter).
        self.bary = [[0.0; LANES]; D1_MAX + 1];
        for i in 0..=d {
            for l in 0..LANES {
                let v = (self.elevated[i][l] - self.rem0[i][l]) * down;
                let p = d - self.rank[i][l] as usize;
                self.bary[p][l] += v;
                self.bary[p + 1][l] -= v;
            }
        }
        for l in 0..LANES {
            self.bary[0][l] += 1.0 + self.bary[d + 1][l];
        }
    }

    /// Keys of the d+1 corners of the simplex of block point `l`. Corner r has coordinates
    /// rem0 + r, less d+1 where rank > d-r (densecrf's canonical simplex); so corner 0 is the
    /// remainder-0 point and each next corner adds 1 everywhere and takes d+1 from the
    /// coordinate of rank d-r. Err gives the elevated coordinate that does not fit the keys
    /// (features far too large: a kernel width far too small).
    fn corner_keys(
        &self,
        l: usize,
        keys: &mut [hash::Key; D1_MAX],
    ) -> std::result::Result<(), f32> {
        let d = D;
        let mut coords = [0i32; MAX_DIM];
        for (i, coord) in coords[..d].iter_mut().enumerate() {
            let c = self.rem0[i][l] as i32;
            if !hash::in_range(c) {
                return Err(self.elevated[i][l]);
            }
            *coord = c;
        }
        let mut of_rank = [0usize; D1_MAX];
        for i in 0..=d {
            of_rank[self.rank[i][l] as usize] = i;
        }
        keys[0] = hash::pack(&coords[..d]);
        for r in 0..d {
            keys[r + 1] = keys[r] + self.corner_step[of_rank[d - r]];
        }
        Ok(())
    }
}

/// Round to nearest, ties to even, for |x| < 2^22 (lattice coordinates are far smaller): adding
/// and removing 1.5 * 2^23 leaves no fraction bits. `f32::round_ties_even` is a libm call
/// on baseline x86-64, and this runs (d+1) times per point.
#[inline]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Checks that `features` are whole `dim`-dimensional points (dim >= 1), all finite: the input of
/// [`Lattice::new`] and of the exact filter it approximates.
pub(crate) fn check_features(op: &'static str, features: &[f32], dim: usize) -> Result<()> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return Err(Error::shape(
            op,
            format!(
                "{} feature values are not a whole number of {dim}-dimensional points",
                features.len()
            ),
        ));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            op,
            format!(
                "feature {} of point {} is {}",
                i % dim,
                i / dim,
                features[i]
            ),
        ));
    }
    Ok(())
}

impl Lattice {
    /// Builds the lattice over `points` feature vectors of `dim` values each, stored point after
    /// point (`features.len() == points * dim`), already scaled by 1/width.
    pub fn new(features: &[f32], dim: usize) -> Result<Lattice> {
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::invalid(
                "lattice",
                format!("feature dimension {dim}; expected 1..={MAX_DIM}"),
            ));
        }
        check_features("lattice", features, dim)?;
        match dim {
            1 => Self::build::<1>(features),
            2 => Self::build::<2>(features),
            3 => Self::build::<3>(features),
            4 => Self::build::<4>(features),
            5 => Self::build::<5>(features),
            6 => Self::build::<6>(features),
            7 => Self::build::<7>(features),
            _ => Self::build::<8>(features),
        }
    }

    /// Embeds every point (finite, checked by `new`) and links the vertices.
    fn build<const D: usize>(features: &[f32]) -> Result<Lattice> {
        let (dim, d1) = (D, D + 1);
        let points = features.len() / dim;
        // Vertices are far fewer than points on images (each simplex is shared by many pixels).
        let mut table = HashTable::with_capacity(points / 4);
        let mut offsets = vec![0u32; points * d1];
        let mut barycentric = vec![0f32; points * d1];
        let mut emb = Embedder::<D>::new();
        let mut block = [[0f32; LANES]; MAX_DIM];
        let mut keys = [0 as hash::Key; D1_MAX];
        for (b, chunk) in features.chunks(dim * LANES).enumerate() {
            let n = chunk.len() / dim;
            // A short last block repeats its last point in the spare lanes.
            for (l, column) in (0..LANES)
                .map(|l| &chunk[l.min(n - 1) * dim..][..dim])
                .enumerate()
            {
                for j in 0..dim {
                    block[j][l] = column[j];
                }
            }
            emb.embed(&block);
            for l in 0..n {
                let k = b * LANES + l;
                emb.corner_keys(l, &mut keys).map_err(|elevated| {
                    Error::invalid(
                        "lattice",
                        format!(
                            "point {k}: lattice coordinate {elevated} overflows the 16-bit keys \
                             (features {:?} too large: is a kernel width far too small?)",
                            &features[k * dim..(k + 1) * dim]
                        ),
                    )
                })?;
                // No "same simplex as the previous pixel" shortcut: on noisy images that test is
                // a coin flip the branch predictor loses, and the sparse table's first probe
                // usually hits anyway.
                for r in 0..d1 {
                    offsets[k * d1 + r] = table.find_or_insert(keys[r]) + 1;
                    barycentric[k * d1 + r] = emb.bary[r][l];
                }
            }
        }
        let neighbors = Self::find_neighbors(&table, dim);
        let keys = table.into_keys();
        Ok(Lattice {
            dim,
            points,
            vertices: keys.len(),
            offsets,
            barycentric,
            neighbors,
            keys,
        })
    }

    /// For each direction j and vertex, the vertices at -/+ (1,...,1,-d,1,...,1) (the -d at j;
    /// direction d moves only the implied last coordinate).
    fn find_neighbors(table: &HashTable, dim: usize) -> Vec<[u32; 2]> {
        let m = table.len();
        let mut neighbors = vec![[0u32; 2]; (dim + 1) * m];
        let ones = hash::ones(dim);
        let id1 = |k: hash::Key| table.find(k).map_or(0, |id| id + 1);
        for j in 0..=dim {
            let step = if j < dim {
                hash::lane(j, dim as u32 + 1)
            } else {
                0
            };
            for (&key, n) in table.keys().iter().zip(&mut neighbors[j * m..(j + 1) * m]) {
                *n = [id1(key - ones + step), id1(key + ones - step)];
            }
        }
        neighbors
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn points(&self) -> usize {
        self.points
    }
    /// Number of lattice vertices (without the zero sentinel).
    pub fn vertices(&self) -> usize {
        self.vertices
    }
    /// Corner vertex ids + 1, points x (d+1).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// Barycentric weights, points x (d+1).
    pub fn barycentric(&self) -> &[f32] {
        &self.barycentric
    }
    /// Neighbour ids + 1, (d+1) x vertices.
    pub fn neighbors(&self) -> &[[u32; 2]] {
        &self.neighbors
    }

    /// The lattice point of each vertex (its first d coordinates; the last is minus their sum),
    /// in id order. The device lattice of the same features has the same set.
    pub fn vertex_coords(&self) -> Vec<Vec<i32>> {
        let mut c = vec![0i32; self.dim];
        self.keys
            .iter()
            .map(|&k| {
                hash::unpack(k, self.dim, &mut c);
                c.clone()
            })
            .collect()
    }

    /// densecrf's slice scale, 1 / (1 + 2^-d).
    pub fn alpha(&self) -> f32 {
        1.0 / (1.0 + 2f32.powi(-(self.dim as i32)))
    }

    /// Length of a vertex value buffer for `channels` values per vertex (row 0 is the sentinel).
    pub fn value_len(&self, channels: usize) -> usize {
        (self.vertices + 1) * channels
    }

    /// Accumulates `input` (points x channels) into `values` ((vertices+1) x channels, cleared
    /// here), each point into its simplex's corners with its barycentric weights.
    pub(crate) fn splat(&self, input: &[f32], channels: usize, values: &mut [f32]) {
        debug_assert_eq!(input.len(), self.points * channels);
        debug_assert_eq!(values.len(), self.value_len(channels));
        values.fill(0.0);
        specialise!(self.dim + 1, channels, |D1, C| {
            let (d1, ch) = self.sizes(D1, C, channels);
            for ((offsets, weights), x) in self.simplices(d1).zip(input.chunks_exact(ch)) {
                for r in 0..d1 {
                    let (o, w) = (offsets[r] as usize, weights[r]);
                    let v = &mut values[o * ch..o * ch + ch];
                    for k in 0..ch {
                        v[k] += w * x[k];
                    }
                }
            }
        });
    }

    // splat and slice get the simplex size and channel count from `specialise!` as constants
    // where the dispatch knows them (0: use the run-time value), so the CRF's cases (d = 2 and 5,
    // one or two channels) get fully unrolled inner loops from one body.
    #[inline(always)]
    fn sizes(&self, d1: usize, c: usize, channels: usize) -> (usize, usize) {
        (
            if d1 == 0 { self.dim + 1 } else { d1 },
            if c == 0 { channels } else { c },
        )
    }

    /// Each point's simplex: the value rows of its d+1 corners and their barycentric weights.
    #[inline(always)]
    fn simplices(&self, d1: usize) -> impl Iterator<Item = (&[u32], &[f32])> {
        self.offsets
            .chunks_exact(d1)
            .zip(self.barycentric.chunks_exact(d1))
    }

    /// Blurs `values` along each of the d+1 lattice directions in turn with [1/2, 1, 1/2];
    /// `scratch` is a second buffer of the same length. The result is left in `values`.
    pub(crate) fn blur(&self, values: &mut Vec<f32>, scratch: &mut Vec<f32>, channels: usize) {
        debug_assert_eq!(values.len(), self.value_len(channels));
        scratch.resize(values.len(), 0.0);
        scratch[..channels].fill(0.0);
        for j in 0..=self.dim {
            specialise!(0, channels, |_D1, C| self
                .blur_direction::<C>(j, values, scratch, channels));
            std::mem::swap(values, scratch);
        }
    }

    #[inline(always)]
    fn blur_direction<const C: usize>(&self, j: usize, old: &[f32], new: &mut [f32], ch: usize) {
        let ch = if C == 0 { ch } else { C };
        let m = self.vertices;
        let neighbors = &self.neighbors[j * m..(j + 1) * m];
        for (i, (out, &[a, b])) in new[ch..].chunks_exact_mut(ch).zip(neighbors).enumerate() {
            let (a, b, c) = (a as usize * ch, b as usize * ch, (i + 1) * ch);
            let (lo, hi, centre) = (&old[a..a + ch], &old[b..b + ch], &old[c..c + ch]);
            for k in 0..ch {
                out[k] = centre[k] + 0.5 * (lo[k] + hi[k]);
            }
        }
    }

    /// Interpolates `values` back to the points (points x channels): out = alpha * sum over
    /// the corners of barycentric weight * value.
    pub(crate) fn slice(&self, values: &[f32], channels: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.points * channels);
        let alpha = self.alpha();
        specialise!(self.dim + 1, channels, |D1, C| {
            let (d1, ch) = self.sizes(D1, C, channels);
            for ((offsets, weights), y) in self.simplices(d1).zip(out.chunks_exact_mut(ch)) {
                y.fill(0.0);
                for r in 0..d1 {
                    let (o, w) = (offsets[r] as usize, weights[r]);
                    let v = &values[o * ch..o * ch + ch];
                    for k in 0..ch {
                        y[k] += w * v[k];
                    }
                }
                for v in y.iter_mut() {
                    *v *= alpha;
                }
            }
        });
    }

    /// The lattice filter (densecrf's `Permutohedral::compute`): splat, blur, slice.
    /// `input` and `out` are points x channels.
    pub fn filter(&self, input: &[f32], channels: usize, out: &mut [f32]) -> Result<()> {
        if input.len() != self.points * channels || out.len() != input.len() {
            return Err(Error::shape(
                "lattice filter",
                format!(
                    "{} points x {channels} channels need {} values; got input {} and output {}",
                    self.points,
                    self.points * channels,
                    input.len(),
                    out.len()
                ),
            ));
        }
        self.filter_with(input, channels, out, &mut FilterWorkspace::default());
        Ok(())
    }

    /// `filter` for callers that sized the buffers, reusing `ws` between calls.
    pub(crate) fn filter_with(
        &self,
        input: &[f32],
        channels: usize,
        out: &mut [f32],
        ws: &mut FilterWorkspace,
    ) {
        ws.values.resize(self.value_len(channels), 0.0);
        self.splat(input, channels, &mut ws.values);
        self.blur(&mut ws.values, &mut ws.scratch, channels);
        self.slice(&ws.values, channels, out);
    }
}

/// The two vertex buffers a filtering needs; kept across mean-field iterations.
#[derive(Default, Debug)]
pub struct FilterWorkspace {
    values: Vec<f32>,
    scratch: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_features(n: usize, dim: usize, spread: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| rng.random_range(0.0..spread))
            .collect()
    }

    /// The elevated point and its corner keys, for a dimension chosen at run time.
    fn embed_dyn(dim: usize, f: &[f32]) -> ([f32; D1_MAX], [hash::Key; D1_MAX]) {
        fn go<const D: usize>(f: &[f32]) -> ([f32; D1_MAX], [hash::Key; D1_MAX]) {
            let mut emb = Embedder::<D>::new();
            let mut block = [[0f32; LANES]; MAX_DIM];
            for (j, &v) in f.iter().enumerate() {
                block[j] = [v; LANES];
            }
            emb.embed(&block);
            let mut keys = [0; D1_MAX];
            emb.corner_keys(0, &mut keys).unwrap();
            (emb.elevated.map(|c| c[0]), keys)
        }
        match dim {
            1 => go::<1>(f),
            2 => go::<2>(f),
            3 => go::<3>(f),
            4 => go::<4>(f),
            5 => go::<5>(f),
            6 => go::<6>(f),
            7 => go::<7>(f),
            _ => go::<8>(f),
        }
    }

    #[test]
    fn barycentric_weights_are_a_partition_of_unity_and_reconstruct_the_point() {
        // Each point must be the weighted mean of its simplex's corners in elevated space:
        // weights in [0,1] summing to 1 and sum_r w_r * corner_r == E f.
        for dim in 1..=MAX_DIM {
            let f = random_features(200, dim, 6.0, dim as u64);
            let lat = Lattice::new(&f, dim).unwrap();
            let d1 = dim + 1;
            for k in 0..200 {
                let w = &lat.barycentric()[k * d1..(k + 1) * d1];
                assert!(
                    w.iter().all(|&w| (-1e-5..=1.0 + 1e-5).contains(&w)),
                    "dim {dim} point {k}: {w:?}"
                );
                assert!(
                    (w.iter().sum::<f32>() - 1.0).abs() < 1e-4,
                    "dim {dim} point {k}: {w:?}"
                );
                let (elevated, keys) = embed_dyn(dim, &f[k * dim..(k + 1) * dim]);
                let mut rebuilt = vec![0f64; d1];
                let mut coords = vec![0i32; dim];
                for r in 0..=dim {
                    hash::unpack(keys[r], dim, &mut coords);
                    let mut corner: Vec<f64> = coords.iter().map(|&c| c as f64).collect();
                    corner.push(-corner.iter().sum::<f64>()); // points of the lattice sum to 0
                    for (x, c) in rebuilt.iter_mut().zip(&corner) {
                        *x += w[r] as f64 * c;
                    }
                }
                for (a, b) in rebuilt.iter().zip(&elevated[..d1]) {
                    assert!(
                        (a - *b as f64).abs() < 1e-3 * (1.0 + b.abs() as f64),
                        "dim {dim}: {rebuilt:?} vs {elevated:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn neighbors_are_symmetric() {
        // If b is a's +1 neighbour along j, a must be b's -1 neighbour along j.
        let f = random_features(500, 3, 4.0, 11);
        let lat = Lattice::new(&f, 3).unwrap();
        let m = lat.vertices();
        let mut linked = 0;
        for j in 0..=3 {
            for i in 0..m {
                let [_, up] = lat.neighbors()[j * m + i];
                if up != 0 {
                    linked += 1;
                    assert_eq!(lat.neighbors()[j * m + up as usize - 1][0], i as u32 + 1);
                }
            }
        }
        assert!(linked > m, "only {linked} links among {m} vertices");
    }

    #[test]
    fn rejects_bad_features() {
        assert!(Lattice::new(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(Lattice::new(&[1.0, 2.0], 0).is_err());
        assert!(Lattice::new(&[0.0; 9], 9).is_err());
        let e = Lattice::new(&[1.0, f32::NAN], 2).unwrap_err().to_string();
        assert!(e.contains("point 0") && e.contains("NaN"), "{e}");
        let e = Lattice::new(&[1e6, 0.0], 2).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
    }
}
