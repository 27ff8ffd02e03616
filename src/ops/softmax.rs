//! Softmax over one axis.

use super::{PAR_MIN, for_each_plane};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Softmax over the middle axis of an (outer, d, inner) view; each block of d*inner is one task.
fn softmax_cpu(x: &[f32], d: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let block = d * inner;
    if block == 0 {
        return y;
    }
    let body = |(yb, xb): (&mut [f32], &[f32])| {
        let mut max = vec![f32::NEG_INFINITY; inner];
        for row in xb.chunks(inner) {
            for (m, &v) in max.iter_mut().zip(row) {
                // NaN wins, so a NaN anywhere in a slice makes that slice NaN.
                if v > *m || v.is_nan() {
                    *m = v;
                }
            }
        }
        let mut sum = vec![0f32; inner];
        for (yr, xr) in yb.chunks_mut(inner).zip(xb.chunks(inner)) {
            for (((y, &v), &m), s) in yr.iter_mut().zip(xr).zip(&max).zip(sum.iter_mut()) {
                *y = (v - m).exp();
                *s += *y;
            }
        }
        for yr in yb.chunks_mut(inner) {
            for (y, &s) in yr.iter_mut().zip(&sum) {
                *y /= s;
            }
        }
    };
    for_each_plane(&mut y, block, x, block, body);
    y
}

impl Tensor {
    /// Softmax along `axis` (negative counts from the end): exp(x - max) / sum, stable for any
    /// finite input.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        const OP: &str = "softmax";
        let a = self.shape().axis(OP, axis)?;
        let d = self.dims()[a];
        let inner: usize = self.dims()[a + 1..].iter().product();
        let outer: usize = self.dims()[..a].iter().product();
        let storage = match self.device() {
            Device::Cpu => Storage::Cpu(softmax_cpu(self.storage().as_cpu(OP)?, d, inner)),
            Device::Cuda(_) => super::gpu::softmax_fwd(OP, self, outer, d, inner)?,
        };
        Ok(Tensor::from_storage_op(
            OP,
            Arc::new(storage),
            self.shape().clone(),
            &[self],
            move |g, y| {
                if let Device::Cuda(_) = g.device() {
                    return Ok(vec![Some(super::gpu::softmax_bwd(
                        OP, y, g, outer, d, inner,
                    )?)]);
                }
                // dx = y * (g - sum_axis(g * y))
                let (sg, sy) = (g.storage(), y.storage());
                let (gv, yv) = (sg.as_cpu(OP)?, sy.as_cpu(OP)?);
                let mut dx = vec![0f32; gv.len()];
                let block = d * inner;
                let body = |((db, gb), yb): ((&mut [f32], &[f32]), &[f32])| {
                    let mut dot = vec![0f32; inner];
                    for (gr, yr) in gb.chunks(inner).zip(yb.chunks(inner)) {
                        for ((s, &gv), &yv) in dot.iter_mut().zip(gr).zip(yr) {
                            *s += gv * yv;
                        }
                    }
                    for ((dr, gr), yr) in db
                        .chunks_mut(inner)
                        .zip(gb.chunks(inner))
                        .zip(yb.chunks(inner))
                    {
                        for (((dv, &gv), &yv), &s) in dr.iter_mut().zip(gr).zip(yr).zip(&dot) {
                            *dv = yv * (gv - s);
                        }
                    }
                };
                if block > 0 {
                    if dx.len() >= PAR_MIN {
                        dx.par_chunks_mut(block)
                            .zip(gv.par_chunks(block))
                            .zip(yv.par_chunks(block))
                            .for_each(body);
                    } else {
                        dx.chunks_mut(block)
                            .zip(gv.chunks(block))
                            .zip(yv.chunks(block))
                            .for_each(body);
                    }
                }
                Ok(vec![Some(Tensor::from_vec(
                    dx,
                    y.shape().clone(),
                    y.device(),
                )?)])
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn softmax_matches_naive() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x = Tensor::randn([2, 3, 4], 0.0, 3.0, Device::Cpu, &mut rng).unwrap();
        let xv = x.to_vec().unwrap();
        let y = x.softmax(1).unwrap().to_vec().unwrap();
        for n in 0..2 {
            for i in 0..4 {
                let z: f64 = (0..3).map(|c| (xv[n * 12 + c * 4 + i] as f64).exp()).sum();
                for c in 0..3 {
                    let want = (xv[n * 12 + c * 4 + i] as f64).exp() / z;
                    assert!((y[n * 12 + c * 4 + i] as f64 - want).abs() < 1e-6);
                }
            }
        }
        let big = Tensor::from_vec(vec![1000.0, 0.0], [2], Device::Cpu)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(big, vec![1.0, 0.0]);
        assert!(x.softmax(3).is_err());
    }
}
