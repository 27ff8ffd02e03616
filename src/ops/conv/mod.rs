//! Convolutions: conv2d over NCHW (on the CPU the convolution kernels of `backend::cpu::conv`,
//! which include the 1x1 fast path; on CUDA the implicit-GEMM and tensor-core kernels), and the
//! 1-D convolution across channels of ECA attention.
//!
//! `cpu.rs` and `cuda.rs` hold the two sides of [`ConvKernels`]; this file checks the inputs and
//! records the nodes.

mod cpu;
pub mod cuda;
mod prologue;
pub mod tune;

use super::{BnPartials, Cpu, Cuda, kernels_for, same_device};
use crate::backend::cpu::conv::ConvGeometry;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

const CONV2D: &str = "conv2d";
const CONV1D: &str = "conv1d_channels";

/// The convolutions on one side (CPU or CUDA). ECA's channel convolution sees x as (n, c).
pub(crate) trait ConvKernels: Sync {
    fn conv2d_fwd(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry) -> Result<Storage>;
    /// The forward, with batch-norm partial sums of its output where the kernel can write them
    /// as it stores (the GPU's pipelined tensor-core kernels); elsewhere none.
    fn conv2d_fwd_partials(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry) -> Result<(Storage, Option<BnPartials>)> {
        Ok((self.conv2d_fwd(x, w, bias, g)?, None))
    }
    fn conv2d_bwd_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeometry) -> Result<Tensor>;
    fn conv2d_bwd_weight(&self, x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor>;
    /// (dx, dw) together: by default the two passes apart; the GPU's channels-last kernels share
    /// one bf16 copy of dy between them.
    fn conv2d_bwd_both(&self, x: &Tensor, w: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Result<(Tensor, Tensor)> {
        Ok((self.conv2d_bwd_input(dy, w, g)?, self.conv2d_bwd_weight(x, dy, g)?))
    }
    /// dy summed over batch and pixels, shaped (K).
    fn conv2d_bwd_bias(&self, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor>;
    fn conv1d_fwd(&self, x: &Tensor, w: &Tensor, n: usize, c: usize) -> Result<Storage>;
    /// (dx, dw), shaped as x and w.
    fn conv1d_bwd(&self, x: &Tensor, w: &Tensor, dy: &Tensor, n: usize, c: usize) -> Result<(Tensor, Tensor)>;
}

fn kernels(device: Device) -> &'static dyn ConvKernels {
    kernels_for(device, &Cpu, &Cuda)
}

/// The length k of a 1-D channel convolution's kernel `w` ((k), (1,k) or (1,1,k), k odd), or an
/// error naming `op` and the shape.
pub(crate) fn odd_kernel_len(op: &'static str, w: &Tensor) -> Result<usize> {
    let k = w.numel();
    if w.dims().iter().rev().skip(1).any(|&d| d != 1) || k.is_multiple_of(2) {
        return Err(Error::shape(op, format!("weight must be an odd-length kernel (k), (1,k) or (1,1,k), got {}", w.shape())));
    }
    Ok(k)
}

impl Tensor {
    /// 2-D convolution (cross-correlation, as PyTorch): input (N,C,H,W), weight (K,C,R,S),
    /// optional bias (K), the same stride, zero padding and dilation on both axes.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        Ok(self.conv2d_node(weight, bias, [stride, padding, dilation], false)?.0)
    }

    /// [`Tensor::conv2d`], also returning batch-norm partial sums of the output where the
    /// kernel writes them as it stores (GPU, pipelined tensor-core kernels; None elsewhere), for
    /// [`Tensor::batch_norm_with`]. The output and its backward are conv2d's.
    pub fn conv2d_with_bn_partials(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<(Tensor, Option<BnPartials>)> {
        self.conv2d_node(weight, bias, [stride, padding, dilation], true)
    }

    /// Checks a conv2d of `self` (ranks, channels, bias, geometry, devices) and gives its geometry
    /// and device; `conv` is [stride, padding, dilation].
    fn conv2d_geometry(&self, weight: &Tensor, bias: Option<&Tensor>, [stride, padding, dilation]: [usize; 3]) -> Result<(ConvGeometry, Device)> {
        self.shape().expect_rank(CONV2D, 4, "(N,C,H,W)")?;
        weight.shape().expect_rank(CONV2D, 4, "(K,C,R,S) weight")?;
        let (x, w) = (self.dims(), weight.dims());
        if x[1] != w[1] {
            return Err(Error::shape(CONV2D, format!("input {} has {} channels, weight {} expects {}", self.shape(), x[1], weight.shape(), w[1])));
        }
        if let Some(b) = bias
            && b.dims() != [w[0]]
        {
            return Err(Error::shape(CONV2D, format!("bias {} does not fit weight {} (needs [{}])", b.shape(), weight.shape(), w[0])));
        }
        let g = ConvGeometry { n: x[0], c: x[1], h: x[2], w: x[3], k: w[0], r: w[2], s: w[3], stride, pad: padding, dilation };
        g.validate()?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok((g, same_device(CONV2D, &inputs)?))
    }

    fn conv2d_node(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        conv: [usize; 3],
        want_partials: bool,
    ) -> Result<(Tensor, Option<BnPartials>)> {
        let (g, device) = self.conv2d_geometry(weight, bias, conv)?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let out_shape = Shape::from([g.n, g.k, g.out_h(), g.out_w()]);
        let (storage, partials) = if want_partials {
            kernels(device).conv2d_fwd_partials(self, weight, bias, &g)?
        } else {
            (kernels(device).conv2d_fwd(self, weight, bias, &g)?, None)
        };
        let (xt, wt, has_bias) = (self.clone(), weight.clone(), bias.is_some());
        let bias_tracks = bias.is_some_and(|b| b.tracks_grad());
        let y = Tensor::from_storage_op(
            CONV2D,
            Arc::new(storage),
            out_shape,
            &inputs,
            move |dy, _| {
                let side = kernels(dy.device());
                let (dx, dw) = match (xt.tracks_grad(), wt.tracks_grad()) {
                    (true, true) => side.conv2d_bwd_both(&xt, &wt, dy, &g).map(|(dx, dw)| (Some(dx), Some(dw)))?,
                    (want_dx, want_dw) => (
                        want_dx.then(|| side.conv2d_bwd_input(dy, &wt, &g)).transpose()?,
                        want_dw.then(|| side.conv2d_bwd_weight(&xt, dy, &g)).transpose()?,
                    ),
                };
                let mut grads = vec![dx, dw];
                if has_bias {
                    grads.push(bias_tracks.then(|| side.conv2d_bwd_bias(dy, &g)).transpose()?);
                }
                Ok(grads)
            },
        );
        Ok((y, partials))
    }

    /// ECA's 1-D convolution across channels: each image's channel vector (from (N,C), (N,1,C)
    /// or (N,C,1,1)) is convolved with an odd-length kernel (k), (1,k) or (1,1,k), zero padded
    /// to keep C; no bias. The output has the input's shape.
    pub fn conv1d_channels(&self, weight: &Tensor) -> Result<Tensor> {
        let (n, c) = match self.dims() {
            &[n, c] | &[n, 1, c] | &[n, c, 1, 1] => (n, c),
            _ => {
                return Err(Error::shape(
                    CONV1D,
                    format!(
                        "input must be (N,C), (N,1,C) or (N,C,1,1), got {}",
                        self.shape()
                    ),
                ));
            }
        };
        odd_kernel_len(CONV1D, weight)?;
        let device = same_device(CONV1D, &[self, weight])?;
        let storage = kernels(device).conv1d_fwd(self, weight, n, c)?;
        let (xt, wt) = (self.clone(), weight.clone());
        Ok(Tensor::from_storage_op(
            CONV1D,
            Arc::new(storage),
            self.shape().clone(),
            &[self, weight],
            move |g, _| {
                let (dx, dw) = kernels(g.device()).conv1d_bwd(&xt, &wt, g, n, c)?;
                Ok(vec![Some(dx), Some(dw)])
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{rng, randn, seeded_randn};

    #[test]
    fn conv2d_matches_naive() {
        let mut rng = rng(5);
        for &(stride, pad, dil, r) in &[
            (1, 1, 1, 3),
            (2, 1, 1, 3),
            (1, 2, 2, 3),
            (1, 0, 1, 1),
            (2, 0, 1, 1),
            (2, 3, 1, 7),
        ] {
            let x = randn([2, 3, 9, 8], 0.0, 1.0, &mut rng);
            let w = randn([4, 3, r, r], 0.0, 1.0, &mut rng);
            let b = randn([4], 0.0, 1.0, &mut rng);
            let y = x.conv2d(&w, Some(&b), stride, pad, dil).unwrap();
            let g = ConvGeometry {
                n: 2,
                c: 3,
                h: 9,
                w: 8,
                k: 4,
                r,
                s: r,
                stride,
                pad,
                dilation: dil,
            };
            let dy = vec![0.0; g.n * g.k * g.out_h() * g.out_w()];
            let (want, _, _) = crate::backend::cpu::conv::reference_conv2d(
                &g,
                &x.to_vec().unwrap(),
                &w.to_vec().unwrap(),
                Some(&b.to_vec().unwrap()),
                &dy,
            );
            assert_eq!(y.dims(), &[2, 4, g.out_h(), g.out_w()]);
            for (a, e) in y.to_vec().unwrap().iter().zip(&want) {
                assert!(
                    (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                    "stride {stride} pad {pad} dil {dil} r {r}: {a} vs {e}"
                );
            }
        }
        let x = randn([1, 3, 4, 4], 0.0, 1.0, &mut rng);
        let w = randn([2, 5, 3, 3], 0.0, 1.0, &mut rng);
        let e = x.conv2d(&w, None, 1, 1, 1).unwrap_err().to_string();
        assert!(
            e.contains("conv2d") && e.contains("[1, 3, 4, 4]") && e.contains("[2, 5, 3, 3]"),
            "{e}"
        );
    }

    #[test]
    fn conv1d_channels_matches_naive() {
        let (mut rng, x) = seeded_randn(6, [2, 6, 1, 1], 0.0, 1.0);
        let w = randn([1, 1, 3], 0.0, 1.0, &mut rng);
        let y = x.conv1d_channels(&w).unwrap().to_vec().unwrap();
        let (xv, wv) = (x.to_vec().unwrap(), w.to_vec().unwrap());
        // channel 0 of image 1: zero pad on the left
        assert!((y[6] - (wv[1] * xv[6] + wv[2] * xv[7])).abs() < 1e-6);
        assert!((y[9] - (wv[0] * xv[8] + wv[1] * xv[9] + wv[2] * xv[10])).abs() < 1e-6);
        assert!(
            x.conv1d_channels(&Tensor::ones([2], Device::Cpu).unwrap())
                .is_err()
        );
    }
}
