//! Batch-norm statistics from the convolution's epilogue (kernels/conv_tc.cuh `store_tile`,
//! kernels/batchnorm.cu `bn_stats_partials_f32`), against the unfused path on fresh random
//! inputs: the partial statistics a pipelined forward writes (every slot written, NaN-poisoned
//! first; each slot's sum and centred squares against the output it wrote), batch norm from them against
//! batch norm's own pass (output, running statistics), and a conv + batch norm + ReLU unit
//! trained one step fused and unfused (output and every gradient); and batch norm with its ReLU
//! in the same pass against batch norm then ReLU (the same bits), and with a residual added too
//! against batch norm, add, ReLU (the same bits). Skips without a GPU; fails
//! with REQUIRE_CUDA=1. And the unit trained one step on the channels-last kernels against the
//! pipelined ones (the same bits but for the weight gradient's split sums); and batch norm with its
//! ReLU as the prologue of the convolution that reads it (Tensor::bn_relu_conv2d) against the ops
//! apart (the same bits).

mod common;
use common::test_gpu;
mod gpu_common;
use coseg::autograd::ParamStore;
use coseg::backend::cpu::conv::ConvGeometry;
use coseg::backend::cuda::conv::{self, ConvPass};
use coseg::device::{Device, Precision, TcVariant};
use coseg::nn::layers::{ConvBnRelu, ConvSpec};
use coseg::ops::BatchNormOptions;
use coseg::tensor::Tensor;
use gpu_common::*;

const GPU: Device = Device::Cuda(0);

fn shapes() -> Vec<ConvGeometry> {
    let g = |n, c, h, w, k, r, stride, pad, dilation| ConvGeometry { n, c, h, w, k, r, s: r, stride, pad, dilation };
    vec![
        g(2, 13, 9, 11, 7, 3, 1, 1, 1),     // tails everywhere, K < one tile
        g(3, 48, 10, 10, 130, 3, 1, 2, 2),  // K past a 128-row tile
        g(2, 3, 37, 41, 64, 7, 2, 3, 1),    // the stem
        g(2, 64, 16, 16, 200, 1, 1, 0, 1),  // 1x1, several column blocks
    ]
}

test_gpu!(the_pipelined_forward_writes_batch_norm_partial_sums, |dev| {
    let mut r = rng(31);
    for g in shapes() {
        let (x, w, b) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.k));
        let (xg, wg, bg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap());
        for p in [Precision::Tf32, Precision::Bf16] {
            for bias in [None, Some(&bg)] {
                let plan = conv::plan(&g, ConvPass::Forward, p, TcVariant::Pipelined, dev.sm_count() as usize);
                let (slots, width) = conv::bn_slots(&g, &plan).expect("a pipelined forward writes statistics");
                let mut y = poisoned(&dev, g.output_len());
                let mut stats = poisoned(&dev, 2 * g.k * slots);
                conv::launch_plan_with(&dev, &g, ConvPass::Forward, &plan, &wg, &xg, bias, &mut y, Some(&mut stats)).unwrap();
                let (y, stats) = (dev.dtoh(&y).unwrap(), dev.dtoh(&stats).unwrap());
                assert!(stats.iter().all(|v| v.is_finite()), "{p} {g:?}: a partial statistic was not written");
                // Slot j of channel c: output pixels j * width .. (j + 1) * width (image-major),
                // its sum and its squared deviations from its own mean.
                let (plane, pixels) = (g.out_h() * g.out_w(), g.n * g.out_h() * g.out_w());
                for c in 0..g.k {
                    for j in 0..slots {
                        let vals: Vec<f64> = (j * width..((j + 1) * width).min(pixels)).map(|q| y[(q / plane * g.k + c) * plane + q % plane] as f64).collect();
                        let s: f64 = vals.iter().sum();
                        let a: f64 = vals.iter().map(|v| v.abs()).sum();
                        let mean = if vals.is_empty() { 0.0 } else { s / vals.len() as f64 };
                        let q: f64 = vals.iter().map(|v| (v - mean).powi(2)).sum();
                        let sq: f64 = vals.iter().map(|v| v * v).sum();
                        let (got_s, got_q) = (stats[c * slots + j] as f64, stats[(g.k + c) * slots + j] as f64);
                        assert!((got_s - s).abs() <= 1e-5 * a.max(1e-6), "{p} {g:?} channel {c} slot {j}: sum {got_s} vs {s}");
                        assert!((got_q - q).abs() <= 1e-5 * (q + 1e-3 * sq).max(1e-6), "{p} {g:?} channel {c} slot {j}: squares {got_q} vs {q}");
                    }
                }
            }
        }
        // The staged kernels write none, and say so.
        let staged = conv::plan(&g, ConvPass::Forward, Precision::Bf16, TcVariant::Staged, dev.sm_count() as usize);
        assert_eq!(conv::bn_slots(&g, &staged), None);
        let mut y = dev.alloc(g.output_len()).unwrap();
        let mut stats = dev.alloc(2 * g.k).unwrap();
        let e = conv::launch_plan_with(&dev, &g, ConvPass::Forward, &staged, &wg, &xg, None, &mut y, Some(&mut stats)).unwrap_err();
        assert!(e.to_string().contains("pipelined"), "{e}");
    }
});

test_gpu!(batch_norm_from_partials_matches_its_own_pass, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Pipelined);
    let mut r = rng(32);
    for g in shapes() {
        let x = Tensor::from_vec(randn(&mut r, g.input_len()), [g.n, g.c, g.h, g.w], GPU).unwrap();
        let w = Tensor::from_vec(randn(&mut r, g.weight_len()), [g.k, g.c, g.r, g.s], GPU).unwrap();
        // A bias far from 0 (means of about 8 against unit-scale spread): where E[x^2] - mean^2
        // would lose the variance's low digits, the slots' centred squares keep them.
        let bias = Tensor::from_vec((0..g.k).map(|i| 8.0 + 0.1 * i as f32).collect(), [g.k], GPU).unwrap();
        let (y, partials) = x.conv2d_with_bn_partials(&w, Some(&bias), g.stride, g.pad, g.dilation).unwrap();
        let partials = partials.expect("pipelined bf16 forward on a GPU gives partial sums");
        let per_channel = |seed: f32| Tensor::from_vec((0..g.k).map(|i| seed + 0.01 * i as f32).collect(), [g.k], GPU).unwrap();
        let (gamma, beta) = (per_channel(0.8), per_channel(-0.2));
        let run = |with: bool| {
            let (rm, rv) = (per_channel(0.1), per_channel(1.3));
            let opts = BatchNormOptions::default();
            let out = y.batch_norm_with(&gamma, &beta, &rm, &rv, opts, with.then_some(&partials)).unwrap();
            (out.to_vec().unwrap(), rm.to_vec().unwrap(), rv.to_vec().unwrap())
        };
        let (fused, unfused) = (run(true), run(false));
        assert!(rel_err(&fused.0, &unfused.0) < 1e-5, "{g:?}: output {:.2e}", rel_err(&fused.0, &unfused.0));
        assert!(rel_err(&fused.1, &unfused.1) < 1e-5, "{g:?}: running mean");
        assert!(rel_err(&fused.2, &unfused.2) < 1e-5, "{g:?}: running var");
        // Partials of another channel count are refused, naming the op.
        let k1 = g.k + 1;
        let z = Tensor::from_vec(randn(&mut r, 2 * k1 * 4), [2, k1, 2, 2], GPU).unwrap();
        let ones = |v: f32| Tensor::from_vec(vec![v; k1], [k1], GPU).unwrap();
        let e = z.batch_norm_with(&ones(1.0), &ones(0.0), &ones(0.0), &ones(1.0), BatchNormOptions::default(), Some(&partials)).unwrap_err();
        assert!(e.to_string().contains("batch_norm") && e.to_string().contains("partial"), "{e}");
    }
});

/// One training step of a conv + batch norm + ReLU unit (24 -> 40 channels, 3x3, dilation 2;
/// parameters from seed 7) on x (4, 24, 19, 17), loss sum(y^2), with the device as set: y, dx,
/// dw, dgamma, dbeta, the running mean and variance.
fn unit_step(xv: &[f32]) -> Vec<Vec<f32>> {
    let mut store = ParamStore::new(GPU, 7);
    let unit = ConvBnRelu::new(&mut store, "u", ConvSpec::new(24, 40, 3).dilation(2)).unwrap();
    let x = Tensor::from_vec(xv.to_vec(), [4, 24, 19, 17], GPU).unwrap().into_var();
    let y = unit.forward(&x, true).unwrap();
    y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()];
    for name in ["u.conv.weight", "u.bn.weight", "u.bn.bias", "u.bn.running_mean", "u.bn.running_var"] {
        let t = store.get(name).unwrap();
        out.push(t.grad().map_or_else(|| t.to_vec().unwrap(), |g| g.to_vec().unwrap()));
    }
    out
}

test_gpu!(a_fused_conv_bn_relu_trains_as_the_unfused_one, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Pipelined);
    let mut r = rng(33);
    let xv = randn(&mut r, 4 * 24 * 19 * 17);
    let run = |fused: bool| {
        dev.set_fuse_bn_stats(fused);
        unit_step(&xv)
    };
    let (fused, unfused) = (run(true), run(false));
    for (i, (a, b)) in fused.iter().zip(&unfused).enumerate() {
        let e = rel_err(a, b);
        assert!(e < 1e-4, "output {i} (y, dx, dw, dgamma, dbeta, running mean, running var): {e:.2e}");
    }
});

// Batch norm with its ReLU in the same pass (`BatchNormOptions::relu`, what ConvBnRelu and the
// ResNet blocks run) gives batch_norm(..).relu()'s bits on the GPU, forward and every gradient,
// in training and eval, and the CPU's values.
test_gpu!(a_fused_relu_is_batch_norm_then_relu_on_the_gpu, |_dev| {
    let _one_at_a_time = serial();
    let mut r = rng(34);
    let dims = [4usize, 6, 9, 11];
    let n: usize = dims.iter().product();
    let (xv, gv, bv, uv) = (randn(&mut r, n), randn(&mut r, 6), randn(&mut r, 6), randn(&mut r, n));
    for training in [true, false] {
        let run = |device: Device, fused: bool| {
            let x = Tensor::from_vec(xv.clone(), dims, device).unwrap().into_var();
            let g = Tensor::from_vec(gv.iter().map(|v| 1.0 + 0.3 * v).collect(), [6], device).unwrap().into_var();
            let b = Tensor::from_vec(bv.clone(), [6], device).unwrap().into_var();
            let (rm, rv) = (Tensor::full([6], 0.1, device).unwrap(), Tensor::full([6], 1.4, device).unwrap());
            let opts = BatchNormOptions { training, relu: fused, ..BatchNormOptions::default() };
            let y = x.batch_norm(&g, &b, &rm, &rv, opts).unwrap();
            let y = if fused { y } else { y.relu().unwrap() };
            y.mul(&Tensor::from_vec(uv.clone(), dims, device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.to_vec().unwrap()];
            out.extend([&x, &g, &b].map(|t| t.grad().unwrap().to_vec().unwrap()));
            out.extend([rm.to_vec().unwrap(), rv.to_vec().unwrap()]);
            out
        };
        let (fused, composed, cpu) = (run(GPU, true), run(GPU, false), run(Device::Cpu, true));
        assert!(fused[0].iter().any(|&v| v == 0.0) && fused[0].iter().any(|&v| v > 0.0), "training {training}: nothing clipped");
        assert_eq!(fused, composed, "training {training}: fused and composed differ on the GPU");
        for (i, (a, b)) in fused.iter().zip(&cpu).enumerate() {
            assert!(rel_err(a, b) < 1e-4, "training {training}: output {i} (y, dx, dgamma, dbeta, running mean, var) against the CPU: {:.2e}", rel_err(a, b));
        }
    }
});

// Batch norm with a residual added and the ReLU in its own passes (`Tensor::batch_norm_add`, the
// end of every ResNet block) gives batch_norm(..).add(r).relu()'s bits on the GPU, forward and
// every gradient (x, gamma, beta, the residual's), in training and eval, and the CPU's values.
test_gpu!(batch_norm_add_is_batch_norm_then_add_then_relu_on_the_gpu, |_dev| {
    let _one_at_a_time = serial();
    let mut r = rng(36);
    let dims = [4usize, 6, 9, 11];
    let n: usize = dims.iter().product();
    let (xv, gv, bv, uv, rv0) = (randn(&mut r, n), randn(&mut r, 6), randn(&mut r, 6), randn(&mut r, n), randn(&mut r, n));
    for training in [true, false] {
        for relu in [true, false] {
            let run = |device: Device, fused: bool| {
                let x = Tensor::from_vec(xv.clone(), dims, device).unwrap().into_var();
                let g = Tensor::from_vec(gv.iter().map(|v| 1.0 + 0.3 * v).collect(), [6], device).unwrap().into_var();
                let b = Tensor::from_vec(bv.clone(), [6], device).unwrap().into_var();
                let res = Tensor::from_vec(rv0.clone(), dims, device).unwrap().into_var();
                let (rm, rv) = (Tensor::full([6], 0.1, device).unwrap(), Tensor::full([6], 1.4, device).unwrap());
                let opts = BatchNormOptions { training, relu: fused && relu, ..BatchNormOptions::default() };
                let y = if fused {
                    x.batch_norm_add(&res, &g, &b, &rm, &rv, opts, None).unwrap()
                } else {
                    let y = x.batch_norm(&g, &b, &rm, &rv, opts).unwrap().add(&res).unwrap();
                    if relu { y.relu().unwrap() } else { y }
                };
                y.mul(&Tensor::from_vec(uv.clone(), dims, device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![y.to_vec().unwrap()];
                out.extend([&x, &g, &b, &res].map(|t| t.grad().unwrap().to_vec().unwrap()));
                out.extend([rm.to_vec().unwrap(), rv.to_vec().unwrap()]);
                out
            };
            let (fused, composed, cpu) = (run(GPU, true), run(GPU, false), run(Device::Cpu, true));
            let clipped = fused[0].iter().filter(|&&v| v == 0.0).count();
            assert_eq!(clipped > 0, relu, "training {training} relu {relu}: {clipped} zeros");
            assert_eq!(fused, composed, "training {training} relu {relu}: fused and composed differ on the GPU");
            for (i, (a, b)) in fused.iter().zip(&cpu).enumerate() {
                let e = rel_err(a, b);
                assert!(e < 1e-4, "training {training} relu {relu}: output {i} (y, dx, dgamma, dbeta, dresidual, running mean, var) against the CPU: {e:.2e}");
            }
        }
    }
});

// The same unit, fused, one step on the channels-last kernels (COSEG_CONV_TC=nhwc) against the
// pipelined ones, in bf16: C = 24 and K = 40 are multiples of 8, so all three passes run
// kernels/conv2d_nhwc.cu. Its forward and input gradient give the pipelined bits, so the output,
// dx, batch norm's gradients and running statistics are the same bits; the weight gradient is
// split for two blocks per SM instead of one, so its f32 sums differ in order only.
test_gpu!(a_conv_bn_relu_trains_the_same_on_the_channels_last_kernels, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_fuse_bn_stats(true);
    let mut r = rng(35);
    let xv = randn(&mut r, 4 * 24 * 19 * 17);
    let run = |variant: TcVariant| {
        dev.set_tc_variant(variant);
        unit_step(&xv)
    };
    let g = ConvGeometry { n: 4, c: 24, h: 19, w: 17, k: 40, r: 3, s: 3, stride: 1, pad: 2, dilation: 2 };
    for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
        let p = conv::plan(&g, pass, Precision::Bf16, TcVariant::Nhwc, dev.sm_count() as usize);
        assert!(p.channels_last(), "{pass:?}: {}", p.kernel.name);
    }
    let (nhwc, pipe) = (run(TcVariant::Nhwc), run(TcVariant::Pipelined));
    for (i, (a, b)) in nhwc.iter().zip(&pipe).enumerate() {
        let what = ["y", "dx", "dw", "dgamma", "dbeta", "running mean", "running var"][i];
        assert!(a.iter().all(|v| v.is_finite()), "{what}: not finite");
        if what == "dw" {
            assert!(rel_err(a, b) < 1e-5, "dw: {:.2e}", rel_err(a, b));
        } else {
            assert!(bits(a) == bits(b), "{what}: differs ({:.2e})", rel_err(a, b));
        }
    }
});

// A convolution whose input is relu(batch_norm(y)) (`Tensor::bn_relu_conv2d`, every convolution
// of a ResNet block but the first) with batch norm and the ReLU as its prologue (bf16,
// channels-last kernels: the output's node is bn_relu_conv2d) gives the composed ops' bits: the
// output and its partial statistics (read back through the batch norm that follows), the
// gradients of the previous convolution's input and weights (through y), of gamma, beta, the
// weights and the bias, and both batch norms' running statistics; in training with y's
// statistics from the previous convolution's partials and from batch norm's own pass, and in
// eval; a dilated 3x3 and a 1x1. With 12 channels (not a multiple of 8) the op is the composed
// ops (node conv2d), with the same results.
test_gpu!(batch_norm_and_relu_as_the_convolutions_prologue_give_the_composed_bits, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Nhwc);
    dev.set_fuse_bn_stats(true);
    let mut r = rng(37);
    for (c, k, taps, dilation, prologue) in [(24usize, 40usize, 3usize, 2usize, true), (32, 16, 1, 1, true), (12, 24, 3, 1, false)] {
        let (n, h, w, c0) = (3usize, 13usize, 11usize, 16usize);
        let (x0v, w0v) = (randn(&mut r, n * c0 * h * w), randn(&mut r, c * c0));
        let (wv, bv, uv) = (randn(&mut r, k * c * taps * taps), randn(&mut r, k), randn(&mut r, n * k * h * w));
        let (gv, betav) = (randn(&mut r, c), randn(&mut r, c));
        for (training, from_partials) in [(true, true), (true, false), (false, false)] {
            let run = |fused: bool| {
                let t = |v: &[f32], dims: &[usize]| Tensor::from_vec(v.to_vec(), dims.to_vec(), GPU).unwrap().into_var();
                let (x0, w0) = (t(&x0v, &[n, c0, h, w]), t(&w0v, &[c, c0, 1, 1]));
                let (wt, bias) = (t(&wv, &[k, c, taps, taps]), t(&bv, &[k]));
                let gamma = t(&gv.iter().map(|v| 1.0 + 0.3 * v).collect::<Vec<_>>(), &[c]);
                let beta = t(&betav.iter().map(|v| 0.3 * v).collect::<Vec<_>>(), &[c]);
                let (rm, rv) = (Tensor::full([c], 0.1, GPU).unwrap(), Tensor::full([c], 1.4, GPU).unwrap());
                let (rm2, rv2) = (Tensor::full([k], 0.0, GPU).unwrap(), Tensor::full([k], 1.0, GPU).unwrap());
                let (y, yp) = x0.conv2d_with_bn_partials(&w0, None, 1, 0, 1).unwrap();
                let yp = yp.filter(|_| from_partials);
                let opts = BatchNormOptions { training, relu: true, ..BatchNormOptions::default() };
                let pad = dilation * (taps - 1) / 2;
                let (out, op) = if fused {
                    y.bn_relu_conv2d([&gamma, &beta, &rm, &rv], opts, yp.as_ref(), &wt, Some(&bias), [1, pad, dilation], true).unwrap()
                } else {
                    let a = y.batch_norm_with(&gamma, &beta, &rm, &rv, opts, yp.as_ref()).unwrap();
                    a.conv2d_with_bn_partials(&wt, Some(&bias), 1, pad, dilation).unwrap()
                };
                let name = format!("{out:?}");
                // The partial statistics, through the batch norm that would follow.
                let next = BatchNormOptions { training: true, ..BatchNormOptions::default() };
                let z = out.batch_norm_with(&Tensor::full([k], 1.0, GPU).unwrap(), &Tensor::full([k], 0.0, GPU).unwrap(), &rm2, &rv2, next, op.as_ref()).unwrap();
                z.mul(&Tensor::from_vec(uv.clone(), [n, k, h, w], GPU).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let mut got = vec![out.to_vec().unwrap(), z.to_vec().unwrap()];
                got.extend([&x0, &w0, &gamma, &beta, &wt, &bias].map(|t| t.grad().unwrap().to_vec().unwrap()));
                got.extend([&rm, &rv, &rm2, &rv2].map(|t| t.to_vec().unwrap()));
                (got, name)
            };
            let ((fused, name), (composed, _)) = (run(true), run(false));
            let case = format!("c {c} k {k} {taps}x{taps} dilation {dilation}, training {training}, partials {from_partials}");
            assert_eq!(name.contains("op=bn_relu_conv2d"), prologue, "{case}: {name}");
            let what = ["out", "next batch norm", "dx0", "dw0", "dgamma", "dbeta", "dw", "dbias", "running mean", "running var", "next running mean", "next running var"];
            for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|&v| v != 0.0), "{case}: {} not finite or all zero", what[i]);
                assert!(bits(a) == bits(b), "{case}: {} differs ({:.2e})", what[i], rel_err(a, b));
            }
        }
    }
});

// A ResNet-50 at a quarter width (every channel count a multiple of 8 but the image's 3), one
// training step in bf16 on the channels-last kernels, where each block's inner batch norms run as
// the next convolution's prologue and each block ends in batch_norm_add, against the pipelined
// kernels (the composed ops): the features, the input's gradient, every batch norm's gradients
// and running statistics the same bits; the convolutions' weight gradients within 1e-5 (the
// channels-last weight gradient splits its sums for two blocks per SM, so their order differs).
test_gpu!(a_resnet_step_is_the_same_with_batch_norm_as_the_convolutions_prologue, |dev| {
    use coseg::nn::resnet::{ResNet, ResNetSpec};
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_fuse_bn_stats(true);
    let mut r = rng(38);
    let xv = randn(&mut r, 2 * 3 * 64 * 64);
    let run = |variant: TcVariant| {
        dev.set_tc_variant(variant);
        let mut store = ParamStore::new(GPU, 11);
        let spec = ResNetSpec { depth: 50, width: 0.25, output_stride: 8, multi_grid: true, in_channels: 3 };
        let net = ResNet::new(spec, &mut store, "backbone").unwrap();
        let x = Tensor::from_vec(xv.clone(), [2, 3, 64, 64], GPU).unwrap().into_var();
        let f = net.forward(&x, true).unwrap();
        f.layer4.sqr().unwrap().sum_all().unwrap().add(&f.layer1.sum_all().unwrap()).unwrap().backward().unwrap();
        let mut named = vec![("layer1".to_string(), f.layer1.to_vec().unwrap()), ("layer4".to_string(), f.layer4.to_vec().unwrap())];
        named.push(("x grad".to_string(), x.grad().unwrap().to_vec().unwrap()));
        for (name, t) in store.iter() {
            let v = match t.grad() {
                Some(g) => g.to_vec().unwrap(),
                None => t.to_vec().unwrap(), // running statistics
            };
            named.push((name.to_string(), v));
        }
        named
    };
    let (nhwc, pipe) = (run(TcVariant::Nhwc), run(TcVariant::Pipelined));
    assert_eq!(nhwc.len(), pipe.len());
    let mut weight_grads = 0;
    for ((name, a), (other, b)) in nhwc.iter().zip(&pipe) {
        assert_eq!(name, other);
        assert!(a.iter().all(|v| v.is_finite()), "{name}: not finite");
        let conv_weight = name.ends_with(".weight") && (name.contains("conv") || name.contains("downsample.0"));
        if conv_weight {
            weight_grads += 1;
            assert!(rel_err(a, b) < 1e-5, "{name}: {:.2e}", rel_err(a, b));
        } else {
            assert!(bits(a) == bits(b), "{name}: differs ({:.2e})", rel_err(a, b));
        }
    }
    assert!(weight_grads > 50, "{weight_grads} convolution weights compared");
});
