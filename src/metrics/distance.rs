//! Exact Euclidean distance transform (Felzenszwalb & Huttenlocher, linear time) and the average
//! Hausdorff distance built on it.

use super::Mask;
use super::overlap::check_same_shape;
use crate::error::{Error, Result};

/// Squared Euclidean distance from every pixel to the nearest foreground pixel of `mask`
/// (0 on foreground; `f64::INFINITY` everywhere if the mask is empty).
pub fn squared_distance_transform(mask: &Mask) -> Vec<f64> {
    let (w, h) = (mask.width, mask.height);
    let mut grid: Vec<f64> = mask.data.iter().map(|&b| if b { 0.0 } else { f64::INFINITY }).collect();
    let n = w.max(h);
    let mut scratch = Scratch { f: vec![0.0; n], d: vec![0.0; n], v: vec![0; n], z: vec![0.0; n + 1] };
    for x in 0..w {
        for y in 0..h {
            scratch.f[y] = grid[y * w + x];
        }
        scratch.transform(h);
        for y in 0..h {
            grid[y * w + x] = scratch.d[y];
        }
    }
    for y in 0..h {
        scratch.f[..w].copy_from_slice(&grid[y * w..(y + 1) * w]);
        scratch.transform(w);
        grid[y * w..(y + 1) * w].copy_from_slice(&scratch.d[..w]);
    }
    grid
}

struct Scratch {
    f: Vec<f64>,
    d: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Scratch {
    /// 1-D transform d\[q\] = min_p (q - p)² + f\[p\] over the first `n` samples: the lower envelope
    /// of parabolas rooted at the finite samples (infinite ones are no sites at all).
    fn transform(&mut self, n: usize) {
        let Scratch { f, d, v, z } = self;
        let Some(first) = (0..n).find(|&q| f[q].is_finite()) else {
            d[..n].fill(f64::INFINITY);
            return;
        };
        let intersect = |q: usize, p: usize| {
            let (qf, pf) = (q as f64, p as f64);
            ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * qf - 2.0 * pf)
        };
        let mut k = 0;
        v[0] = first;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in first + 1..n {
            if !f[q].is_finite() {
                continue;
            }
            let mut s = intersect(q, v[k]);
            // z[0] = -inf, so this stops at k = 0 at the latest.
            while s <= z[k] {
                k -= 1;
                s = intersect(q, v[k]);
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
        }
        k = 0;
        for q in 0..n {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let dq = q as f64 - v[k] as f64;
            d[q] = dq * dq + f[v[k]];
        }
    }
}

/// Mean, over every foreground pixel of `from`, of its Euclidean distance to the nearest
/// foreground pixel of `to`. Both masks must be non-empty and the same size.
pub fn directed_mean_distance(from: &Mask, to: &Mask) -> Result<f64> {
    check_same_shape("metrics::directed_mean_distance", from, to)?;
    if from.is_empty() || to.is_empty() {
        return Err(Error::invalid("metrics::directed_mean_distance", "undefined for an empty mask"));
    }
    let dt = squared_distance_transform(to);
    let (sum, count) = from
        .data
        .iter()
        .zip(&dt)
        .filter(|(b, _)| **b)
        .fold((0.0, 0usize), |(s, c), (_, d2)| (s + d2.sqrt(), c + 1));
    Ok(sum / count as f64)
}

/// The average Hausdorff distance (AVD): the larger of the two directed mean distances, in pixels.
pub fn average_hausdorff(a: &Mask, b: &Mask) -> Result<f64> {
    Ok(directed_mean_distance(a, b)?.max(directed_mean_distance(b, a)?))
}
