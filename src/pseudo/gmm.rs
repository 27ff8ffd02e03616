//! Gaussian mixture models with full covariance over D-dimensional pixel features, initialised by
//! k-means and refitted from hard assignments, as in GrabCut.

/// Added to covariance diagonals (features are normalised to unit variance over the image), so a
/// component on a flat region stays a proper density.
const COVARIANCE_FLOOR: f32 = 1e-3;

/// k-means runs on an even subsample of at most this many samples: the centres it finds are as
/// good, and the class of a 128x128 crop's background has ~10^4 pixels.
const KMEANS_SAMPLES: usize = 2048;

#[derive(Clone, Debug)]
struct Component<const D: usize> {
    weight: f32,
    mean: [f32; D],
    /// Lower-triangular Cholesky factor of the covariance, row-major.
    chol: [[f32; D]; D],
    /// log(weight) - log((2 pi)^(D/2) sqrt(det)), the constant part of the log density.
    log_norm: f32,
}

#[derive(Clone, Debug)]
pub struct Gmm<const D: usize> {
    components: Vec<Component<D>>,
}

impl<const D: usize> Gmm<D> {
    /// Fits `k` components to the samples: k-means (centres started at quantiles of the first
    /// feature, so the result is deterministic) on an even subsample of at most `KMEANS_SAMPLES`,
    /// then every sample joins its nearest centre and the clusters get a maximum-likelihood fit.
    /// Returns None when there are no samples.
    pub fn fit_kmeans(samples: &[[f32; D]], k: usize, kmeans_iters: usize, labels: &mut Vec<u8>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let k = k.clamp(1, samples.len()).min(255);
        let stride = samples.len().div_ceil(KMEANS_SAMPLES);
        let sub: Vec<[f32; D]> = samples.iter().step_by(stride).copied().collect();
        let mut order: Vec<usize> = (0..sub.len()).collect();
        order.sort_by(|&a, &b| sub[a][0].total_cmp(&sub[b][0]));
        let mut centres: Vec<[f32; D]> = (0..k).map(|c| sub[order[((2 * c + 1) * sub.len()) / (2 * k)]]).collect();
        let mut sub_labels = vec![u8::MAX; sub.len()];
        for _ in 0..kmeans_iters {
            let mut changed = false;
            let mut sums = vec![([0.0f64; D], 0usize); k];
            for (s, l) in sub.iter().zip(sub_labels.iter_mut()) {
                let best = nearest(s, &centres);
                changed |= best != *l;
                *l = best;
                let e = &mut sums[best as usize];
                for d in 0..D {
                    e.0[d] += s[d] as f64;
                }
                e.1 += 1;
            }
            if !changed {
                break;
            }
            for (c, (sum, n)) in centres.iter_mut().zip(&sums) {
                if *n > 0 {
                    *c = std::array::from_fn(|d| (sum[d] / *n as f64) as f32);
                }
            }
        }
        labels.clear();
        labels.extend(samples.iter().map(|s| nearest(s, &centres)));
        Some(Self::fit_labelled(samples, labels, k))
    }

    /// Maximum-likelihood weights, means and covariances of the clusters given by `labels`
    /// (component indices < k). Empty clusters are dropped.
    pub fn fit_labelled(samples: &[[f32; D]], labels: &[u8], k: usize) -> Self {
        let mut acc = vec![([0.0f64; D], [[0.0f64; D]; D], 0usize); k];
        for (s, &l) in samples.iter().zip(labels) {
            let (sum, prod, n) = &mut acc[l as usize];
            for i in 0..D {
                sum[i] += s[i] as f64;
                for j in 0..=i {
                    prod[i][j] += s[i] as f64 * s[j] as f64;
                }
            }
            *n += 1;
        }
        let total = samples.len().max(1) as f64;
        let components = acc
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(sum, prod, n)| {
                let n = *n as f64;
                let mean: [f64; D] = std::array::from_fn(|i| sum[i] / n);
                let mut cov = [[0.0f64; D]; D];
                for i in 0..D {
                    for j in 0..=i {
                        cov[i][j] = prod[i][j] / n - mean[i] * mean[j];
                        cov[j][i] = cov[i][j];
                    }
                    cov[i][i] = cov[i][i].max(0.0) + COVARIANCE_FLOOR as f64;
                }
                let chol = cholesky(cov);
                let log_det: f64 = (0..D).map(|i| 2.0 * chol[i][i].ln()).sum();
                let weight = n / total;
                Component {
                    weight: weight as f32,
                    mean: mean.map(|m| m as f32),
                    chol: chol.map(|r| r.map(|v| v as f32)),
                    log_norm: (weight.ln() - 0.5 * (D as f64 * (2.0 * std::f64::consts::PI).ln() + log_det)) as f32,
                }
            })
            .collect();
        Gmm { components }
    }

    /// Mixing weights of the (non-empty) components; they sum to 1.
    pub fn weights(&self) -> impl Iterator<Item = f32> + '_ {
        self.components.iter().map(|c| c.weight)
    }

    pub fn len(&self) -> usize {
        self.components.len()
    }

    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    /// log(weight_k * N(x | k)).
    fn component_log(&self, k: usize, x: &[f32; D]) -> f32 {
        let c = &self.components[k];
        // Solve L y = x - mean; the Mahalanobis distance is |y|².
        let mut y = [0.0f32; D];
        let mut m = 0.0;
        for i in 0..D {
            let mut v = x[i] - c.mean[i];
            for j in 0..i {
                v -= c.chol[i][j] * y[j];
            }
            y[i] = v / c.chol[i][i];
            m += y[i] * y[i];
        }
        c.log_norm - 0.5 * m
    }

    /// The most likely component of x.
    pub fn best_component(&self, x: &[f32; D]) -> u8 {
        (0..self.components.len())
            .map(|k| (k, self.component_log(k, x)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(k, _)| k as u8)
    }

    /// -log p(x), the GrabCut data term.
    pub fn neg_log_density(&self, x: &[f32; D]) -> f32 {
        let mut logs = [0.0f32; 16];
        let n = self.components.len().min(16);
        let mut max = f32::NEG_INFINITY;
        for (k, l) in logs.iter_mut().enumerate().take(n) {
            *l = self.component_log(k, x);
            max = max.max(*l);
        }
        let sum: f32 = logs[..n].iter().map(|l| (l - max).exp()).sum();
        -(max + sum.ln())
    }
}

/// Index of the centre nearest to s.
fn nearest<const D: usize>(s: &[f32; D], centres: &[[f32; D]]) -> u8 {
    let mut best = (0, f32::INFINITY);
    for (k, c) in centres.iter().enumerate() {
        let d: f32 = (0..D).map(|d| (s[d] - c[d]) * (s[d] - c[d])).sum();
        if d < best.1 {
            best = (k, d);
        }
    }
    best.0 as u8
}

/// Cholesky factor of a symmetric positive definite matrix (the floor on the diagonal keeps it so).
fn cholesky<const D: usize>(a: [[f64; D]; D]) -> [[f64; D]; D] {
    let mut l = [[0.0f64; D]; D];
    for i in 0..D {
        for j in 0..=i {
            let s: f64 = a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            l[i][j] = if i == j { s.max(1e-12).sqrt() } else { s / l[j][j] };
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn recovers_two_separated_clusters_and_their_densities() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (a, b) = (Normal::new(-3.0f32, 0.5).unwrap(), Normal::new(4.0f32, 1.0).unwrap());
        let mut samples: Vec<[f32; 2]> = (0..3000).map(|_| [a.sample(&mut rng), a.sample(&mut rng)]).collect();
        samples.extend((0..1000).map(|_| [b.sample(&mut rng), b.sample(&mut rng)]));
        let mut labels = Vec::new();
        let g = Gmm::<2>::fit_kmeans(&samples, 2, 20, &mut labels).unwrap();
        assert_eq!(g.len(), 2);
        let mut comps: Vec<_> = g.components.iter().map(|c| (c.mean[0], c.weight, c.chol[0][0])).collect();
        comps.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!((comps[0].0 + 3.0).abs() < 0.1 && (comps[1].0 - 4.0).abs() < 0.15, "{comps:?}");
        assert!((comps[0].1 - 0.75).abs() < 0.01, "{comps:?}");
        assert!((comps[0].2 - 0.5).abs() < 0.05 && (comps[1].2 - 1.0).abs() < 0.08, "{comps:?}");
        // Density at the first centre: 0.75 * N(0 | 0, 0.25 I) = 0.75 / (2 pi 0.25).
        let expect = -(0.75f32 / (2.0 * std::f32::consts::PI * 0.25)).ln();
        assert!((g.neg_log_density(&[-3.0, -3.0]) - expect).abs() < 0.1);
        assert_ne!(g.best_component(&[-3.0, -3.0]), g.best_component(&[4.0, 4.0]));
    }
}
