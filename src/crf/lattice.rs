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
//! `alpha`). The CUDA version mirrors these steps one kernel each.
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
}

/// Per-point scratch of the embedding, sized for `dim`.
struct Embedder {
    dim: usize,
    scale: Vec<f32>,
    canonical: Vec<i32>,
    elevated: Vec<f32>,
    rem0: Vec<f32>,
    rank: Vec<i32>,
    bary: Vec<f32>,
    key: Vec<i32>,
}

impl Embedder {
    fn new(dim: usize) -> Self {
        let d1 = dim + 1;
        // Expected standard deviation of the lattice filter (Adams et al. 2010, p. 6), and the
        // diagonal of the elevation matrix E, computed in f64 then rounded as densecrf does.
        let inv_std_dev = ((2.0f64 / 3.0).sqrt() * d1 as f64) as f32;
        let scale = (0..dim)
            .map(|i| (1.0 / (((i + 2) * (i + 1)) as f64).sqrt() * inv_std_dev as f64) as f32)
            .collect();
        // The canonical simplex: vertex r has coordinate r where rank <= d-r, else r-(d+1).
        let mut canonical = vec![0i32; d1 * d1];
        for r in 0..=dim {
            for j in 0..=dim {
                canonical[r * d1 + j] = if j <= dim - r { r as i32 } else { r as i32 - d1 as i32 };
            }
        }
        Embedder {
            dim,
            scale,
            canonical,
            elevated: vec![0.0; d1],
            rem0: vec![0.0; d1],
            rank: vec![0; d1],
            bary: vec![0.0; d1 + 1],
            key: vec![0; dim],
        }
    }

    /// Elevates one feature vector, finds its simplex and barycentric weights; on return
    /// `rem0`, `rank` and `bary[..=d]` describe it.
    fn embed(&mut self, f: &[f32]) {
        let d = self.dim;
        let down = 1.0f32 / (d + 1) as f32;
        let up = (d + 1) as f32;
        // Elevate: y = E f (p. 5), accumulating from the last coordinate.
        let mut sm = 0.0f32;
        for j in (1..=d).rev() {
            let cf = f[j - 1] * self.scale[j - 1];
            self.elevated[j] = sm - j as f32 * cf;
            sm += cf;
        }
        self.elevated[0] = sm;
        // Nearest remainder-0 point by rounding each coordinate to a multiple of d+1
        // (ties to even, as densecrf's SSE path does).
        let mut sum = 0i32;
        for i in 0..=d {
            let v = (down * self.elevated[i]).round_ties_even();
            self.rem0[i] = v * up;
            sum += v as i32;
        }
        // Rank of each coordinate's remainder in decreasing order.
        self.rank.fill(0);
        for i in 0..d {
            let di = self.elevated[i] - self.rem0[i];
            for j in i + 1..=d {
                if di < self.elevated[j] - self.rem0[j] {
                    self.rank[i] += 1;
                } else {
                    self.rank[j] += 1;
                }
            }
        }
        // If the rounded point is off the hyperplane (sum != 0), walk it back.
        for i in 0..=d {
            self.rank[i] += sum;
            if self.rank[i] < 0 {
                self.rank[i] += d as i32 + 1;
                self.rem0[i] += up;
            } else if self.rank[i] > d as i32 {
                self.rank[i] -= d as i32 + 1;
                self.rem0[i] -= up;
            }
        }
        // Barycentric coordinates (p. 10).
        self.bary.fill(0.0);
        for i in 0..=d {
            let v = (self.elevated[i] - self.rem0[i]) * down;
            let p = d - self.rank[i] as usize;
            self.bary[p] += v;
            self.bary[p + 1] -= v;
        }
        self.bary[0] += 1.0 + self.bary[d + 1];
    }

    /// Key of simplex corner `r` of the last embedded point; Err names the coordinate that does
    /// not fit the i16 keys (features far too large: a kernel width far too small).
    fn corner_key(&mut self, r: usize) -> std::result::Result<hash::Key, f32> {
        let d1 = self.dim + 1;
        for i in 0..self.dim {
            let c = self.rem0[i] as i32 + self.canonical[r * d1 + self.rank[i] as usize];
            if c < i16::MIN as i32 || c > i16::MAX as i32 {
                return Err(self.elevated[i]);
            }
            self.key[i] = c;
        }
        Ok(hash::pack(&self.key))
    }
}

impl Lattice {
    /// Builds the lattice over `points` feature vectors of `dim` values each, stored point after
    /// point (`features.len() == points * dim`), already scaled by 1/width.
    pub fn new(features: &[f32], dim: usize) -> Result<Lattice> {
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::invalid("lattice", format!("feature dimension {dim}; expected 1..={MAX_DIM}")));
        }
        if features.len() % dim != 0 {
            return Err(Error::shape(
                "lattice",
                format!("{} feature values are not a whole number of {dim}-dimensional points", features.len()),
            ));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "lattice",
                format!("feature {} of point {} is {}", i % dim, i / dim, features[i]),
            ));
        }
        let points = features.len() / dim;
        let d1 = dim + 1;
        let mut table = HashTable::with_capacity(points);
        let mut offsets = vec![0u32; points * d1];
        let mut barycentric = vec![0f32; points * d1];
        let mut emb = Embedder::new(dim);
        for (k, f) in features.chunks_exact(dim).enumerate() {
            emb.embed(f);
            for r in 0..=dim {
                let key = emb.corner_key(r).map_err(|elevated| {
                    Error::invalid(
                        "lattice",
                        format!(
                            "point {k}: lattice coordinate {elevated} overflows the 16-bit keys \
                             (features {f:?} too large: is a kernel width far too small?)"
                        ),
                    )
                })?;
                offsets[k * d1 + r] = table.find_or_insert(key) + 1;
                barycentric[k * d1 + r] = emb.bary[r];
            }
        }
        let neighbors = Self::find_neighbors(&table, dim);
        Ok(Lattice { dim, points, vertices: table.len(), offsets, barycentric, neighbors })
    }

    /// For each direction j and vertex, the vertices at -/+ (1,...,1,-d,1,...,1) (the -d at j).
    fn find_neighbors(table: &HashTable, dim: usize) -> Vec<[u32; 2]> {
        let m = table.len();
        let mut neighbors = vec![[0u32; 2]; (dim + 1) * m];
        let (mut key, mut n1, mut n2) = (vec![0i32; dim], vec![0i32; dim], vec![0i32; dim]);
        let id1 = |k: &[i32]| table.find(hash::pack(k)).map_or(0, |id| id + 1);
        for (i, &packed) in table.keys().iter().enumerate() {
            hash::unpack(packed, dim, &mut key);
            for j in 0..=dim {
                for k in 0..dim {
                    n1[k] = key[k] - 1;
                    n2[k] = key[k] + 1;
                }
                // Direction d moves only the implied last coordinate.
                if j < dim {
                    n1[j] = key[j] + dim as i32;
                    n2[j] = key[j] - dim as i32;
                }
                neighbors[j * m + i] = [id1(&n1), id1(&n2)];
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

    /// densecrf's slice scale, 1 / (1 + 2^-d).
    pub fn alpha(&self) -> f32 {
        1.0 / (1.0 + 2f32.powi(-(self.dim as i32)))
    }

    /// Length of a vertex value buffer for `channels` values per vertex (row 0 is the sentinel).
    pub fn value_len(&self, channels: usize) -> usize {
        (self.vertices + 1) * channels
    }

    /// Accumulates `input` (points x channels) into `values` ((vertices+1) x channels, cleared
    /// here) with the per-corner `weights` (points x (d+1): the barycentric weights, possibly
    /// pre-multiplied by a per-point factor).
    pub fn splat(&self, weights: &[f32], input: &[f32], channels: usize, values: &mut [f32]) {
        let d1 = self.dim + 1;
        debug_assert_eq!(input.len(), self.points * channels);
        debug_assert_eq!(values.len(), self.value_len(channels));
        values.fill(0.0);
        for (k, x) in input.chunks_exact(channels).enumerate() {
            let corners = &self.offsets[k * d1..k * d1 + d1];
            let w = &weights[k * d1..k * d1 + d1];
            for (&o, &w) in corners.iter().zip(w) {
                let v = &mut values[o as usize * channels..o as usize * channels + channels];
                for (v, &x) in v.iter_mut().zip(x) {
                    *v += w * x;
                }
            }
        }
    }

    /// Blurs `values` along each of the d+1 lattice directions in turn with [1/2, 1, 1/2];
    /// `scratch` is a second buffer of the same length. The result is left in `values`.
    pub fn blur(&self, values: &mut Vec<f32>, scratch: &mut Vec<f32>, channels: usize) {
        let m = self.vertices;
        debug_assert_eq!(values.len(), self.value_len(channels));
        scratch.resize(values.len(), 0.0);
        scratch[..channels].fill(0.0);
        for j in 0..=self.dim {
            let old = values.as_slice();
            let nb = &self.neighbors[j * m..(j + 1) * m];
            for (i, new) in scratch[channels..].chunks_exact_mut(channels).enumerate() {
                let [a, b] = nb[i];
                let (a, b, c) = (a as usize * channels, b as usize * channels, (i + 1) * channels);
                for k in 0..channels {
                    new[k] = old[c + k] + 0.5 * (old[a + k] + old[b + k]);
                }
            }
            std::mem::swap(values, scratch);
        }
    }

    /// Interpolates `values` back to the points and ADDS the result to `out` (points x channels):
    /// out += sum over corners of weights * value, so messages of several kernels accumulate in
    /// place. `weights` as in `splat`; barycentric * alpha gives the plain filter.
    pub fn slice_add(&self, weights: &[f32], values: &[f32], channels: usize, out: &mut [f32]) {
        let d1 = self.dim + 1;
        debug_assert_eq!(out.len(), self.points * channels);
        for (k, y) in out.chunks_exact_mut(channels).enumerate() {
            let corners = &self.offsets[k * d1..k * d1 + d1];
            let w = &weights[k * d1..k * d1 + d1];
            for (&o, &w) in corners.iter().zip(w) {
                let v = &values[o as usize * channels..o as usize * channels + channels];
                for (y, &v) in y.iter_mut().zip(v) {
                    *y += w * v;
                }
            }
        }
    }

    /// The plain lattice filter (densecrf's `Permutohedral::compute`): splat, blur, slice.
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
        let mut ws = FilterWorkspace::default();
        let alpha = self.alpha();
        let slice_w: Vec<f32> = self.barycentric.iter().map(|w| w * alpha).collect();
        out.fill(0.0);
        self.filter_add(&self.barycentric, &slice_w, input, channels, out, &mut ws);
        Ok(())
    }

    /// splat with `splat_w`, blur, slice with `slice_w` added to `out`, reusing `ws` between calls.
    pub fn filter_add(
        &self,
        splat_w: &[f32],
        slice_w: &[f32],
        input: &[f32],
        channels: usize,
        out: &mut [f32],
        ws: &mut FilterWorkspace,
    ) {
        ws.values.resize(self.value_len(channels), 0.0);
        self.splat(splat_w, input, channels, &mut ws.values);
        self.blur(&mut ws.values, &mut ws.scratch, channels);
        self.slice_add(slice_w, &ws.values, channels, out);
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
        (0..n * dim).map(|_| rng.random_range(0.0..spread)).collect()
    }

    #[test]
    fn barycentric_weights_are_a_partition_of_unity_and_reconstruct_the_point() {
        // Each point must be the weighted mean of its simplex's corners in elevated space:
        // weights in [0,1] summing to 1 and sum_r w_r * corner_r == E f.
        for dim in 1..=MAX_DIM {
            let f = random_features(200, dim, 6.0, dim as u64);
            let lat = Lattice::new(&f, dim).unwrap();
            let d1 = dim + 1;
            let mut emb = Embedder::new(dim);
            for k in 0..200 {
                let w = &lat.barycentric()[k * d1..(k + 1) * d1];
                assert!(w.iter().all(|&w| (-1e-5..=1.0 + 1e-5).contains(&w)), "dim {dim} point {k}: {w:?}");
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-4, "dim {dim} point {k}: {w:?}");
                emb.embed(&f[k * dim..(k + 1) * dim]);
                let elevated = emb.elevated.clone();
                let mut rebuilt = vec![0f64; d1];
                for r in 0..=dim {
                    emb.corner_key(r).unwrap();
                    let mut corner: Vec<f64> = emb.key.iter().map(|&c| c as f64).collect();
                    corner.push(-corner.iter().sum::<f64>()); // points of the lattice sum to 0
                    for (x, c) in rebuilt.iter_mut().zip(&corner) {
                        *x += w[r] as f64 * c;
                    }
                }
                for (a, b) in rebuilt.iter().zip(&elevated) {
                    assert!((a - *b as f64).abs() < 1e-3 * (1.0 + b.abs() as f64), "dim {dim}: {rebuilt:?} vs {elevated:?}");
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
