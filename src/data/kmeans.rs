//! k-means with k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd iterations;
//! deterministic for a seed. Assignment runs in parallel.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// A fitted clustering.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub k: usize,
    pub dim: usize,
    /// Row-major [k, dim].
    pub centroids: Vec<f32>,
    /// Cluster of each point.
    pub assignment: Vec<usize>,
    /// Sum of squared distances of points to their centroids.
    pub inertia: f64,
    pub iterations: usize,
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn nearest(p: &[f32], centroids: &[f32], dim: usize) -> (usize, f32) {
    centroids
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, m)| (c, dist2(p, m)))
        .fold((0, f32::INFINITY), |best, cur| if cur.1 < best.1 { cur } else { best })
}

/// Clusters `n = data.len() / dim` points into `k` clusters. Errors when k is 0 or larger
/// than the number of points, or the data is not finite.
pub fn kmeans(data: &[f32], dim: usize, k: usize, seed: u64, max_iter: usize) -> Result<KMeans> {
    if dim == 0 || data.len() % dim != 0 {
        return Err(Error::shape("kmeans", format!("{} values are not rows of {dim}", data.len())));
    }
    let n = data.len() / dim;
    if k == 0 || k > n {
        return Err(Error::invalid("kmeans", format!("{k} clusters for {n} points: need 1 <= clusters <= points")));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid("kmeans", format!("point {} feature {} is {}", i / dim, i % dim, data[i])));
    }
    let point = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut centroids = plus_plus_centres(data, dim, k, seed);
    let bar = crate::progress::bar(max_iter as u64, "k-means");
    let mut assignment = vec![usize::MAX; n];
    let mut iterations = 0;
    let mut inertia = 0.0;
    for it in 0..max_iter {
        iterations = it + 1;
        let nearest_all: Vec<(usize, f32)> = (0..n).into_par_iter().map(|i| nearest(point(i), &centroids, dim)).collect();
        let changed = nearest_all.iter().zip(&assignment).filter(|(a, b)| a.0 != **b).count();
        inertia = nearest_all.iter().map(|p| p.1 as f64).sum();
        for (a, p) in assignment.iter_mut().zip(&nearest_all) {
            *a = p.0;
        }
        update_centres(data, dim, k, &nearest_all, &mut assignment, &mut centroids);
        bar.inc(1);
        if changed == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(KMeans { k, dim, centroids, assignment, inertia, iterations })
}

/// k-means++: the first centre uniform, then each next with probability ~ D(x)^2.
fn plus_plus_centres(data: &[f32], dim: usize, k: usize, seed: u64) -> Vec<f32> {
    let n = data.len() / dim;
    let point = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centroids = Vec::with_capacity(k * dim);
    centroids.extend_from_slice(point(rng.random_range(0..n)));
    let mut d2: Vec<f32> = (0..n).into_par_iter().map(|i| dist2(point(i), &centroids[..dim])).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().map(|v| *v as f64).sum();
        let pick = if total > 0.0 {
            let mut t = rng.random_range(0.0..total);
            let mut chosen = n - 1;
            for (i, v) in d2.iter().enumerate() {
                t -= *v as f64;
                if t < 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.random_range(0..n) // all points coincide with centres already
        };
        let c = point(pick).to_vec();
        d2.par_iter_mut().enumerate().for_each(|(i, v)| *v = v.min(dist2(point(i), &c)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// The update step: each centre moves to the mean of its members; an empty cluster takes the
/// point farthest from its centre (from a cluster with more than one member).
fn update_centres(data: &[f32], dim: usize, k: usize, nearest_all: &[(usize, f32)], assignment: &mut [usize], centroids: &mut [f32]) {
    let n = data.len() / dim;
    let point = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for i in 0..n {
        counts[assignment[i]] += 1;
        for (s, v) in sums[assignment[i] * dim..][..dim].iter_mut().zip(point(i)) {
            *s += *v as f64;
        }
    }
    for c in 0..k {
        if counts[c] == 0 {
            let far = (0..n).filter(|&i| counts[assignment[i]] > 1).max_by(|&a, &b| nearest_all[a].1.total_cmp(&nearest_all[b].1));
            if let Some(i) = far {
                counts[assignment[i]] -= 1;
                assignment[i] = c;
                counts[c] = 1;
                centroids[c * dim..(c + 1) * dim].copy_from_slice(point(i));
            }
            continue;
        }
        for j in 0..dim {
            centroids[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn recovers_separated_blobs_deterministically() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (k, dim, per) = (6usize, 4usize, 40usize);
        let centres: Vec<f32> = (0..k * dim).map(|_| rng.random_range(-50.0..50.0)).collect();
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for i in 0..k * per {
            let c = i % k;
            truth.push(c);
            data.extend((0..dim).map(|j| centres[c * dim + j] + noise.sample(&mut rng)));
        }
        let a = kmeans(&data, dim, k, 3, 100).unwrap();
        let b = kmeans(&data, dim, k, 3, 100).unwrap();
        assert_eq!(a.assignment, b.assignment);
        // Same partition as the truth (up to label names): points share a cluster iff they share a blob.
        for i in 0..truth.len() {
            for j in (i + 1)..truth.len() {
                assert_eq!(truth[i] == truth[j], a.assignment[i] == a.assignment[j], "points {i}, {j}");
            }
        }
        assert!(a.inertia / (k * per) as f64 <= dim as f64 * 1.5, "inertia {}", a.inertia);
        let e = kmeans(&data[..3 * dim], dim, 4, 0, 10).unwrap_err().to_string();
        assert!(e.contains("4 clusters for 3 points"), "{e}");
    }
}
