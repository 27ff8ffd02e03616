//! A convolution whose input is relu(batch_norm(y)): inside a ResNet block every convolution but
//! the first reads the ReLU of the previous one's batch norm. Composed, batch norm writes that
//! input in f32 (and keeps it for its ReLU's gradient and the convolution's weight gradient),
//! and the channels-last kernels copy it to bf16 twice, for the forward and the weight gradient.
//! Fused (CUDA, bf16, the channels-last kernels taking all three passes), batch norm and the ReLU
//! are applied as the convolution's channels-last input is made from y
//! (kernels/conv2d_nhwc.cu `bn_relu_nchw_to_nhwc_bf16`), that bf16 copy is kept for the weight
//! gradient, and batch norm's backward recomputes the ReLU's mask from y (kernels/batchnorm.cu
//! `ReluMask`). Per element of the input that is 6 bytes moved in the forward instead of 14, and
//! 20 in the backward instead of 34 (the second copy and the f32 output's reads gone); the f32
//! activation is not kept (the bf16 copy, half its size, is).
//!
//! The same bits as the composed ops, forward and every gradient: the copy rounds the value batch
//! norm's forward computes (bn_value.cuh, one sequence of f32 operations for both), the mask is
//! that value's sign, and the convolution kernels and their split are the same. Everywhere else
//! (the CPU, fp32, tf32, the other kernel variants, channel counts the channels-last kernels do
//! not take) the op is the composed ops.

use super::cuda::{self as conv_cuda, ConvPass, ConvPlan};
use super::{CONV2D, ConvKernels};
use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cuda::CudaDevice;
use crate::device::Device;
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device, tensor};
use crate::ops::norm::cuda::{ReluMask, bn_bwd, forward_stats};
use crate::ops::norm::{BnCall, BnPartials};
use crate::ops::BatchNormOptions;
use crate::tensor::{Shape, Storage, Tensor};
use std::sync::Arc;

const OP: &str = "bn_relu_conv2d";

impl Tensor {
    /// `conv2d(relu(batch_norm(self)), weight, bias)`: batch norm with `bn` = (gamma, beta,
    /// running_mean, running_var) and `opts` (its ReLU always on; in training from `partials`
    /// when given), then the convolution with `conv` = [stride, padding, dilation], returning
    /// the batch-norm partial statistics of its output too when `want_partials` and its kernel
    /// writes them (as [`Tensor::conv2d_with_bn_partials`]). On CUDA in bf16 with the
    /// channels-last kernels, batch norm and the ReLU are the convolution's prologue and their
    /// f32 output is never written (see the module's docs); elsewhere the composed ops. The
    /// same values and gradients either way.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_relu_conv2d(
        &self,
        bn: [&Tensor; 4],
        opts: BatchNormOptions,
        partials: Option<&BnPartials>,
        weight: &Tensor,
        bias: Option<&Tensor>,
        conv: [usize; 3],
        want_partials: bool,
    ) -> Result<(Tensor, Option<BnPartials>)> {
        let opts = BatchNormOptions { relu: true, ..opts };
        let (bn_device, call, batch_partials) = self.bn_call(bn, opts, partials, None)?;
        // Both checks include self's device, so batch norm's and the convolution's agree.
        let (g, device) = self.conv2d_geometry(weight, bias, conv)?;
        debug_assert_eq!(device, bn_device);
        if let Device::Cuda(n) = device {
            let dev = CudaDevice::get(n)?;
            if let Some(plans) = fused_plans(&dev, &g)? {
                return fused(&dev, self, bn, call, batch_partials, weight, bias, &g, plans, want_partials);
            }
        }
        let [gamma, beta, running_mean, running_var] = bn;
        let x = self.batch_norm_with(gamma, beta, running_mean, running_var, opts, partials)?;
        x.conv2d_node(weight, bias, conv, want_partials)
    }
}

/// The plans of the three passes when the channels-last kernels take them all (tuned or not: a
/// tuned plan stays in the device's kernel family) at the device's
/// precision and variant (bf16, `COSEG_CONV_TC=nhwc` or `wgmma`, channel counts that are multiples of 8).
fn fused_plans(dev: &CudaDevice, g: &ConvGeometry) -> Result<Option<[ConvPlan; 3]>> {
    let precision = dev.precision();
    let plan = |p| conv_cuda::device_plan(dev, g, p, precision);
    let plans = [plan(ConvPass::Forward)?, plan(ConvPass::InputGrad)?, plan(ConvPass::WeightGrad)?];
    // COSEG_KERNEL_LOG=1 names the kernels here too (device_plan logs the plans it makes).
    Ok(plans.iter().all(ConvPlan::channels_last).then_some(plans))
}

/// The fused forward, and its node: inputs (y, gamma, beta, weight[, bias]).
#[allow(clippy::too_many_arguments)]
fn fused(
    dev: &Arc<CudaDevice>,
    y: &Tensor,
    bn: [&Tensor; 4],
    call: BnCall,
    partials: Option<&BnPartials>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
    [pf, pi, pw]: [ConvPlan; 3],
    want_partials: bool,
) -> Result<(Tensor, Option<BnPartials>)> {
    let [gamma, beta, ..] = bn;
    let (mean, var) = forward_stats(dev, y, bn, call, partials)?;
    let (sy, sg, sb, sw) = (y.storage(), gamma.storage(), beta.storage(), weight.storage());
    let sbias = bias.map(Tensor::storage);
    let bias_buf = sbias.as_ref().map(|s| s.as_cuda(CONV2D)).transpose()?;
    let (yb, wb) = (sy.as_cuda(OP)?, sw.as_cuda(OP)?);
    let mut out = dev.alloc(g.output_len())?;
    conv_cuda::check_operands(pf.kernel.name, g, ConvPass::Forward, [wb, yb, &out])?;
    let x16 = conv_cuda::bn_relu_to_nhwc_bf16(dev, yb, [g.n, g.c, g.h * g.w], [&mean, &var, sg.as_cuda(OP)?, sb.as_cuda(OP)?], call.opts.eps)?;
    let w16 = conv_cuda::nhwc_weights(dev, g, ConvPass::Forward, wb)?;
    let slots = conv_cuda::bn_slots(g, &pf).filter(|_| want_partials);
    let mut sums = slots.map(|(s, _)| dev.alloc(2 * g.k * s)).transpose()?;
    let stats = sums.as_mut().map_or(0, |s| s.ptr_mut());
    conv_cuda::launch_operands(dev, g, ConvPass::Forward, &pf, [w16.ptr(), x16.ptr()], bias_buf, &mut out, stats)?;
    drop((w16, sy, sg, sb, sw, sbias));
    let out_partials = sums.zip(slots).map(|(sums, (slots, width))| BnPartials { sums: Storage::Cuda(sums), slots, width, channels: g.k });

    let mut inputs = vec![y, gamma, beta, weight];
    inputs.extend(bias);
    let (yt, gt, bt, wt, g, has_bias) = (y.clone(), gamma.clone(), beta.clone(), weight.clone(), *g, bias.is_some());
    let saved = Arc::new((x16, mean, var));
    let node = Tensor::from_storage_op(OP, Arc::new(Storage::Cuda(out)), Shape::from([g.n, g.k, g.out_h(), g.out_w()]), &inputs, move |dy, _| {
        let (x16, mean, var) = &*saved;
        let dev = device(OP, dy)?;
        let (sdy, sw) = (dy.storage(), wt.storage());
        let (dyb, wb) = (sdy.as_cuda(OP)?, sw.as_cuda(OP)?);
        // The convolution's gradients, of its input a = relu(bn(y)) and of the weights from the
        // kept channels-last copy of a; dy copied once for both.
        let mut da = dev.alloc(g.input_len())?;
        let mut dw = dev.alloc(g.weight_len())?;
        conv_cuda::check_operands(pi.kernel.name, &g, ConvPass::InputGrad, [wb, dyb, &da])?;
        let dy16 = conv_cuda::nhwc_dy(&dev, &g, dyb)?;
        let w16 = conv_cuda::nhwc_weights(&dev, &g, ConvPass::InputGrad, wb)?;
        conv_cuda::launch_operands(&dev, &g, ConvPass::InputGrad, &pi, [w16.ptr(), dy16.ptr()], None, &mut da, 0)?;
        drop(w16);
        conv_cuda::launch_operands(&dev, &g, ConvPass::WeightGrad, &pw, [dy16.ptr(), x16.ptr()], None, &mut dw, 0)?;
        drop(dy16);
        let dbias = has_bias.then(|| Cuda.conv2d_bwd_bias(dy, &g)).transpose()?;
        // Batch norm's backward through the ReLU, whose mask is recomputed from y.
        let (sy, sg, sb) = (yt.storage(), gt.storage(), bt.storage());
        let (gb, bb) = (sg.as_cuda(OP)?, sb.as_cuda(OP)?);
        let c = g.c;
        let mut d_y = dev.alloc(g.input_len())?;
        let (mut dgamma, mut dbeta) = (dev.alloc(c)?, dev.alloc(c)?);
        let shape = call.shape;
        let opts = call.opts;
        let mask = ReluMask::FromInput { gamma: gb, beta: bb };
        bn_bwd(&dev, sy.as_cuda(OP)?, &da, mask, shape, mean, var, gb, opts.eps, opts.training, &mut d_y, &mut dgamma, &mut dbeta, None)?;
        let mut grads = vec![Some(tensor(d_y, yt.shape().clone())?), Some(tensor(dgamma, [c])?), Some(tensor(dbeta, [c])?), Some(tensor(dw, [g.k, g.c, g.r, g.s])?)];
        if has_bias {
            grads.push(dbias);
        }
        Ok(grads)
    });
    Ok((node, out_partials))
}

#[cfg(test)]
mod tests {
    use crate::device::Device;
    use crate::ops::BatchNormOptions;
    use crate::ops::testing::{randn, seeded_randn};
    use crate::tensor::Tensor;

    // On the CPU the op is the composed ops: batch norm with its ReLU (even when `opts` leaves the
    // ReLU off: the op always applies it), then conv2d; the same bits forward and backward, and
    // the running statistics. Bad batch-norm and convolution operands are refused by the op they
    // belong to, naming the shapes.
    #[test]
    fn on_the_cpu_it_is_batch_norm_relu_then_conv2d() {
        let (mut rng, yv) = seeded_randn(21, [2, 6, 7, 5], 0.2, 1.3);
        let (wv, bv) = (randn([4, 6, 3, 3], 0.0, 0.3, &mut rng), randn([4], 0.0, 0.3, &mut rng));
        let (gv, betav) = (randn([6], 1.0, 0.3, &mut rng), randn([6], 0.0, 0.3, &mut rng));
        let upstream = randn([2, 4, 3, 2], 0.0, 1.0, &mut rng);
        let run = |fused: bool| {
            let (y, w, b, g, beta) = (yv.detach().into_var(), wv.detach().into_var(), bv.detach().into_var(), gv.detach().into_var(), betav.detach().into_var());
            let (rm, rv) = (Tensor::full([6], 0.1, Device::Cpu).unwrap(), Tensor::full([6], 1.2, Device::Cpu).unwrap());
            let out = if fused {
                let opts = BatchNormOptions { relu: false, ..BatchNormOptions::default() };
                y.bn_relu_conv2d([&g, &beta, &rm, &rv], opts, None, &w, Some(&b), [2, 1, 2], true).unwrap().0
            } else {
                let opts = BatchNormOptions { relu: true, ..BatchNormOptions::default() };
                y.batch_norm(&g, &beta, &rm, &rv, opts).unwrap().conv2d(&w, Some(&b), 2, 1, 2).unwrap()
            };
            out.mul(&upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let mut got = vec![out.to_vec().unwrap()];
            got.extend([&y, &w, &b, &g, &beta].map(|t| t.grad().unwrap().to_vec().unwrap()));
            got.extend([rm.to_vec().unwrap(), rv.to_vec().unwrap()]);
            got
        };
        assert_eq!(run(true), run(false));
        let ones = |c: usize| Tensor::full([c], 1.0, Device::Cpu).unwrap();
        let (c6, c5) = (ones(6), ones(5));
        let opts = BatchNormOptions::default();
        let e = yv.bn_relu_conv2d([&c5, &c6, &c6, &c6], opts, None, &wv, None, [1, 1, 1], false).err().expect("refused").to_string();
        assert!(e.contains("batch_norm") && e.contains("gamma") && e.contains("[5]"), "{e}");
        let w5 = randn([4, 5, 3, 3], 0.0, 0.3, &mut rng);
        let e = yv.bn_relu_conv2d([&c6, &c6, &c6, &c6], opts, None, &w5, None, [1, 1, 1], false).err().expect("refused").to_string();
        assert!(e.contains("conv2d") && e.contains("[4, 5, 3, 3]") && e.contains("6 channels"), "{e}");
    }
}
