//! Max pooling over (N,C,H,W) planes (ResNet's stem uses kernel 3, stride 2, padding 1).

use super::{PAR_MIN, gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

impl Tensor {
    /// Max pool with a square `kernel`, `stride` and implicit -inf `padding` (at most kernel/2,
    /// as PyTorch requires); output size `(H + 2 pad - kernel) / stride + 1`, rounded down.
    /// NaN inputs propagate: a window holding NaN gives NaN.
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        self.shape().expect_rank(OP, 4, "(N,C,H,W)")?;
        let &[n, c, h, w] = self.dims() else {
            unreachable!("rank checked")
        };
        if kernel == 0 || stride == 0 || padding > kernel / 2 {
            return Err(Error::invalid(
                OP,
                format!(
                    "kernel {kernel}, stride {stride}, padding {padding}: need kernel, stride > 0 and padding <= kernel/2"
                ),
            ));
        }
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            return Err(Error::shape(
                OP,
                format!("kernel {kernel} larger than padded input {}", self.shape()),
            ));
        }
        let (oh, ow) = (
            (h + 2 * padding - kernel) / stride + 1,
            (w + 2 * padding - kernel) / stride + 1,
        );
        let device = self.device();
        if let Device::Cuda(_) = device {
            let (storage, winners) = gpu::max_pool_fwd(OP, self, kernel, stride, padding)?;
            let in_shape = self.shape().clone();
            return Ok(Tensor::from_storage_op(
                OP,
                Arc::new(storage),
                Shape::from([n, c, oh, ow]),
                &[self],
                move |g, _| {
                    Ok(vec![Some(gpu::max_pool_bwd(
                        OP, g, &winners, &in_shape, kernel, stride, padding,
                    )?)])
                },
            ));
        }
        let sx = self.storage();
        let x = sx.as_cpu(OP)?;
        let (ip, op) = (h * w, oh * ow);
        let mut y = vec![0f32; n * c * op];
        // Position of each output's maximum within its input plane, for the backward scatter.
        let mut arg = vec![0u32; n * c * op];
        let plane = |((xp, yp), ap): ((&[f32], &mut [f32]), &mut [u32])| {
            for i in 0..oh {
                let h0 = (i * stride) as isize - padding as isize;
                let (hs, he) = (h0.max(0) as usize, ((h0 + kernel as isize) as usize).min(h));
                for j in 0..ow {
                    let w0 = (j * stride) as isize - padding as isize;
                    let (ws, we) = (w0.max(0) as usize, ((w0 + kernel as isize) as usize).min(w));
                    let (mut best, mut at) = (f32::NEG_INFINITY, hs * w + ws);
                    'win: for hh in hs..he {
                        for ww in ws..we {
                            let v = xp[hh * w + ww];
                            if v > best || v.is_nan() {
                                best = v;
                                at = hh * w + ww;
                                if v.is_nan() {
                                    break 'win;
                                }
                            }
                        }
                    }
                    yp[i * ow + j] = best;
                    ap[i * ow + j] = at as u32;
                }
            }
        };
        if op > 0 {
            if x.len() >= PAR_MIN {
                x.par_chunks(ip)
                    .zip(y.par_chunks_mut(op))
                    .zip(arg.par_chunks_mut(op))
                    .for_each(plane);
            } else {
                x.chunks(ip)
                    .zip(y.chunks_mut(op))
                    .zip(arg.chunks_mut(op))
                    .for_each(plane);
            }
        }
        let in_shape = self.shape().clone();
        Tensor::from_op(
            OP,
            y,
            Shape::from([n, c, oh, ow]),
            device,
            &[self],
            move |g, _| {
                let sg = g.storage();
                let gv = sg.as_cpu(OP)?;
                let mut dx = vec![0f32; in_shape.numel()];
                let scatter = |((dp, gp), ap): ((&mut [f32], &[f32]), &[u32])| {
                    for (&gval, &a) in gp.iter().zip(ap) {
                        dp[a as usize] += gval;
                    }
                };
                if op > 0 {
                    if dx.len() >= PAR_MIN {
                        dx.par_chunks_mut(ip)
                            .zip(gv.par_chunks(op))
                            .zip(arg.par_chunks(op))
                            .for_each(scatter);
                    } else {
                        dx.chunks_mut(ip)
                            .zip(gv.chunks(op))
                            .zip(arg.chunks(op))
                            .for_each(scatter);
                    }
                }
                Ok(vec![Some(Tensor::from_vec(
                    dx,
                    in_shape.clone(),
                    g.device(),
                )?)])
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn max_pool_matches_naive() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = Tensor::randn([2, 3, 7, 6], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let y = x.max_pool2d(3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4, 3]);
        let (xv, yv) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        for p in 0..6 {
            for i in 0..4 {
                for j in 0..3 {
                    let mut m = f32::NEG_INFINITY;
                    for r in 0..3 {
                        for s in 0..3 {
                            let (hi, wi) = ((2 * i + r) as isize - 1, (2 * j + s) as isize - 1);
                            if (0..7).contains(&hi) && (0..6).contains(&wi) {
                                m = m.max(xv[p * 42 + hi as usize * 6 + wi as usize]);
                            }
                        }
                    }
                    assert_eq!(yv[p * 12 + i * 3 + j], m);
                }
            }
        }
        assert!(x.max_pool2d(3, 2, 2).is_err());
    }
}
