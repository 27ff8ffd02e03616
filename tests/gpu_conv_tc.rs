//! The tensor-core convolutions (kernels/conv2d_tc.cu, staged, kernels/conv2d_tcp.cu,
//! pipelined, and kernels/conv2d_nhwc.cu, channels-last bf16) against the CPU's f32 convolution on fresh random inputs: every pass, both
//! precisions, every tile of both variants, on shapes that leave tails everywhere
//! (odd sizes, channel counts that are not multiples of 8 or 16), dilation 16, stride 2, 1x1 and
//! the 7x7 stride-2 stem. ||gpu - cpu|| / ||cpu|| at most 5e-3 in TF32 and 1.5e-2 in BF16, and at
//! least 1e-6 (a tensor-core result that matched f32 exactly would mean the f32 path ran).
//! Outputs are NaN-poisoned before each launch. Skips without a GPU; fails with REQUIRE_CUDA=1.

mod common;
use common::test_gpu;
mod gpu_common;
use coseg::backend::cpu::conv::{self as cpu, ConvGeometry};
use coseg::backend::cuda::conv::{self, ConvPass};
use coseg::backend::cuda::{CudaDevice, GpuBuffer};
use coseg::device::{Device, Precision, TcVariant};
use coseg::tensor::Tensor;
use rand_chacha::ChaCha8Rng;
use gpu_common::*;

fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::Tf32 => 5e-3,
        Precision::Bf16 => 1.5e-2,
        Precision::Fp32 => F32_TOL,
    }
}

fn shapes() -> Vec<ConvGeometry> {
    let g = |n, c, h, w, k, r, stride, pad, dilation| ConvGeometry { n, c, h, w, k, r, s: r, stride, pad, dilation };
    vec![
        g(2, 5, 9, 11, 7, 3, 1, 1, 1),
        g(2, 16, 12, 12, 70, 3, 1, 2, 2),
        g(1, 33, 20, 19, 8, 3, 1, 16, 16),   // dilation 16
        g(3, 4, 15, 13, 6, 3, 2, 1, 1),      // stride 2, odd sizes
        g(2, 67, 6, 7, 65, 1, 1, 0, 1),      // 1x1, just past the tiles
        g(2, 3, 37, 41, 64, 7, 2, 3, 1),     // the stem: 7x7, stride 2, 3 channels
        g(2, 136, 16, 16, 130, 3, 1, 4, 4),  // several tiles along M, 1224-long reduction
        g(4, 64, 32, 32, 64, 3, 1, 1, 1),    // the weight gradient splits its reduction
        g(1, 24, 8, 8, 200, 1, 2, 0, 1),     // 1x1 stride 2
        g(2, 48, 10, 10, 96, 3, 1, 2, 2),    // channels a multiple of 16 (the pipelined fast path), OH*OW % 4 == 0
        g(3, 32, 7, 9, 40, 3, 1, 1, 1),      // channels a multiple of 16, OH*OW odd (4-byte dy loads)
    ]
}

/// The paper network's own layer shapes at a reduced batch (no CPU reference is needed where the
/// channels-last kernels are compared with the pipelined ones bit for bit): the dilated 3x3 of
/// layer3 and layer4 at 16x16, a 1x1 reduction, and layer1's 3x3 at 32x32.
fn network_shapes() -> Vec<ConvGeometry> {
    let g = |n, c, hw, k, r, pad, dilation| ConvGeometry { n, c, h: hw, w: hw, k, r, s: r, stride: 1, pad, dilation };
    vec![g(4, 256, 16, 256, 3, 2, 2), g(2, 512, 16, 512, 3, 4, 4), g(4, 1024, 16, 256, 1, 0, 1), g(4, 64, 32, 64, 3, 1, 1)]
}

/// The CPU's f32 forward, input gradient and weight gradient.
fn reference(g: &ConvGeometry, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let mut y = vec![0.0; g.output_len()];
    cpu::conv2d_forward(g, x, w, Some(b), &mut y);
    let mut dx = vec![0.0; x.len()];
    cpu::conv2d_backward_input(g, dy, w, &mut dx);
    let mut dw = vec![0.0; w.len()];
    cpu::conv2d_backward_weight(g, x, dy, &mut dw);
    [y, dx, dw]
}

/// A plan's output and, for a forward whose kernel writes them, its batch-norm partial
/// statistics, both NaN-poisoned before the launch.
#[allow(clippy::too_many_arguments)]
fn run_with_stats(
    dev: &CudaDevice,
    g: &ConvGeometry,
    pass: ConvPass,
    plan: &conv::ConvPlan,
    [a, b]: [&GpuBuffer; 2],
    bias: Option<&GpuBuffer>,
    out_len: usize,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut out = poisoned(dev, out_len);
    let mut stats = conv::bn_slots(g, plan).filter(|_| pass == ConvPass::Forward).map(|(slots, _)| poisoned(dev, 2 * g.k * slots));
    conv::launch_plan_with(dev, g, pass, plan, a, b, bias, &mut out, stats.as_mut()).unwrap();
    (dev.dtoh(&out).unwrap(), stats.map(|s| dev.dtoh(&s).unwrap()))
}

/// Every bf16 pass of shapes() and network_shapes() that `takes` accepts, on fresh random
/// operands (one draw per shape, as the tests drew them): f(geometry, pass, the kernel's two
/// operands, the bias (forward only), the output's length).
fn each_bf16_pass(
    dev: &CudaDevice,
    r: &mut ChaCha8Rng,
    takes: fn(&ConvGeometry, ConvPass, Precision) -> bool,
    mut f: impl FnMut(&ConvGeometry, ConvPass, [&GpuBuffer; 2], Option<&GpuBuffer>, usize),
) {
    for g in shapes().into_iter().chain(network_shapes()) {
        let (x, w, b, dy) = (randn(r, g.input_len()), randn(r, g.weight_len()), randn(r, g.k), randn(r, g.output_len()));
        let (xg, wg, bg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap(), dev.htod(&dy).unwrap());
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            if !takes(&g, pass, Precision::Bf16) {
                continue;
            }
            match pass {
                ConvPass::Forward => f(&g, pass, [&wg, &xg], Some(&bg), g.output_len()),
                ConvPass::InputGrad => f(&g, pass, [&wg, &dyg], None, g.input_len()),
                ConvPass::WeightGrad => f(&g, pass, [&dyg, &xg], None, g.weight_len()),
            }
        }
    }
}

test_gpu!(every_tensor_core_kernel_matches_the_f32_convolution, |dev| {
    let mut r = rng(12);
    let mut ran = 0;
    for g in shapes() {
        let (x, w, b) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.k));
        let dy = randn(&mut r, g.output_len());
        let want = reference(&g, &x, &w, &b, &dy);
        let (xg, wg, bg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap(), dev.htod(&dy).unwrap());
        for precision in [Precision::Tf32, Precision::Bf16] {
            for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
                let (a, bb, bias, out_len, want) = match pass {
                    ConvPass::Forward => (&wg, &xg, Some(&bg), g.output_len(), &want[0]),
                    ConvPass::InputGrad => (&wg, &dyg, None, g.input_len(), &want[1]),
                    ConvPass::WeightGrad => (&dyg, &xg, None, g.weight_len(), &want[2]),
                };
                let sms = dev.sm_count() as usize;
                // Wgmma's other plans are Nhwc's (run under it); its own run on an sm_90 GPU.
                let plans = TcVariant::ALL.into_iter().flat_map(|v| conv::tc_plans(&g, pass, precision, v, sms).into_iter().map(move |p| (v, p)));
                for (_, plan) in plans.filter(|(v, p)| *v != TcVariant::Wgmma || (p.is_wgmma() && dev.has_wgmma())) {
                    let mut out = poisoned(&dev, out_len);
                    conv::launch_plan(&dev, &g, pass, &plan, a, bb, bias, &mut out).unwrap();
                    let got = dev.dtoh(&out).unwrap();
                    let e = rel_err(&got, want);
                    let what = format!("{} {pass:?} {g:?} (splits {})", plan.kernel.name, plan.splits);
                    assert!(e <= tolerance(precision), "{what}: relative error {e:.3e} > {:.0e}", tolerance(precision));
                    assert!(e > 1e-6, "{what}: relative error {e:.3e}: the f32 path ran, not the tensor cores");
                    ran += 1;
                }
            }
        }
    }
    // Every family's three tiles, the channels-last 64 x 64 wherever those kernels take the
    // pass (16 bf16 passes of the 11 shapes, as below), and the wgmma kernel on the same 16
    // (on an sm_90 GPU).
    let passes = [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad];
    let count = |takes: fn(&ConvGeometry, ConvPass, Precision) -> bool| {
        shapes().iter().flat_map(|g| passes.map(|p| takes(g, p, Precision::Bf16))).filter(|&t| t).count()
    };
    let (nhwc_passes, wgmma_passes) = (count(conv::nhwc_takes), count(conv::wgmma_takes));
    assert_eq!((nhwc_passes, wgmma_passes), (16, 16));
    let families = TcVariant::ALL.len() - 1; // Wgmma's own plans counted apart
    assert_eq!(
        ran,
        shapes().len() * 2 * 3 * families * conv::TC_TILES.len()
            + nhwc_passes * (conv::NHWC_TILES.len() - conv::TC_TILES.len())
            + if dev.has_wgmma() { wgmma_passes } else { 0 }
    );
});

// Split-K for the forward and the input gradient (plans only tuning offers): every split
// candidate of every kernel family against the CPU convolution at the precision's tolerance, the
// bias added once (it is large here: added per split it would be out by far more than the
// tolerance), and within round-off of the same tile unsplit. A split forward writes no
// batch-norm statistics (each split holds part of a sum): asking is refused by name.
test_gpu!(split_forward_and_input_gradient_plans_match_the_f32_convolution, |dev| {
    let mut r = rng(14);
    let g = |n, c, hw, k, r, pad, dilation| ConvGeometry { n, c, h: hw, w: hw, k, r, s: r, stride: 1, pad, dilation };
    let mut ran = 0;
    for g in [g(2, 48, 10, 96, 3, 2, 2), g(1, 136, 9, 40, 3, 4, 4), g(2, 264, 5, 24, 1, 0, 1)] {
        let (x, w, dy) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.output_len()));
        let b: Vec<f32> = randn(&mut r, g.k).iter().map(|v| 40.0 * v).collect();
        let want = reference(&g, &x, &w, &b, &dy);
        let (xg, wg, bg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap(), dev.htod(&dy).unwrap());
        for (variant, precision) in [(TcVariant::Nhwc, Precision::Bf16), (TcVariant::Pipelined, Precision::Bf16), (TcVariant::Pipelined, Precision::Tf32), (TcVariant::Staged, Precision::Tf32)] {
            for pass in [ConvPass::Forward, ConvPass::InputGrad] {
                let (a, bb, bias, want) = match pass {
                    ConvPass::Forward => (&wg, &xg, Some(&bg), &want[0]),
                    _ => (&wg, &dyg, None, &want[1]),
                };
                let cands = conv::candidate_plans(&g, pass, precision, variant, dev.sm_count() as usize);
                for plan in cands.iter().filter(|p| p.splits > 1) {
                    let what = format!("{:?} {} {pass:?} {} split {}", g, precision, plan.kernel.name, plan.splits);
                    let mut out = poisoned(&dev, want.len());
                    conv::launch_plan(&dev, &g, pass, plan, a, bb, bias, &mut out).unwrap();
                    let got = dev.dtoh(&out).unwrap();
                    let e = rel_err(&got, want);
                    assert!(e <= tolerance(precision), "{what}: relative error {e:.2e}");
                    let whole = cands.iter().find(|p| p.kernel == plan.kernel && p.splits == 1).expect("the same tile unsplit");
                    let mut unsplit = poisoned(&dev, want.len());
                    conv::launch_plan(&dev, &g, pass, whole, a, bb, bias, &mut unsplit).unwrap();
                    let d = rel_err(&got, &dev.dtoh(&unsplit).unwrap());
                    assert!(d <= 1e-5, "{what}: {d:.2e} from the unsplit plan");
                    if pass == ConvPass::Forward && plan.takes_stats() {
                        let mut stats = dev.alloc(2 * g.k * 4 * plan.grid(&g, pass).0).unwrap();
                        let e = conv::launch_plan_with(&dev, &g, pass, plan, a, bb, bias, &mut out, Some(&mut stats)).unwrap_err().to_string();
                        assert!(e.contains("unsplit") && e.contains(plan.kernel.name), "{e}");
                    }
                    ran += 1;
                }
            }
        }
    }
    assert!(ran >= 24, "only {ran} split plans ran");
});

test_gpu!(the_public_wrappers_dispatch_by_precision_and_variant, |dev| {
    let _one_at_a_time = serial();
    let mut r = rng(13);
    let g = ConvGeometry { n: 3, c: 40, h: 14, w: 14, k: 72, r: 3, s: 3, stride: 1, pad: 2, dilation: 2 };
    let (x, w, b, dy) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.k), randn(&mut r, g.output_len()));
    let want = reference(&g, &x, &w, &b, &dy);
    let (xg, wg, bg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&b).unwrap(), dev.htod(&dy).unwrap());
    let mut bf16_outputs = Vec::new();
    for variant in TcVariant::ALL {
        dev.set_tc_variant(variant);
        let mut errors = Vec::new();
        for p in Precision::ALL {
            let mut y = poisoned(&dev, g.output_len());
            conv::conv2d_fwd(&dev, &g, p, &xg, &wg, Some(&bg), &mut y).unwrap();
            let mut dx = poisoned(&dev, g.input_len());
            conv::conv2d_bwd_input(&dev, &g, p, &dyg, &wg, &mut dx).unwrap();
            let mut dw = poisoned(&dev, g.weight_len());
            conv::conv2d_bwd_weight(&dev, &g, p, &xg, &dyg, &mut dw).unwrap();
            let y = dev.dtoh(&y).unwrap();
            let e = [rel_err(&y, &want[0]), rel_err(&dev.dtoh(&dx).unwrap(), &want[1]), rel_err(&dev.dtoh(&dw).unwrap(), &want[2])];
            for v in e {
                assert!(v <= tolerance(p), "{variant} {p}: relative errors {e:?}");
            }
            errors.push(e[0]);
            if p == Precision::Bf16 {
                bf16_outputs.push(y);
            }
        }
        // fp32 is exact to rounding; bf16 (8-bit mantissa) is coarser than tf32 (10-bit).
        assert!(errors[0] < 1e-5 && errors[1] > errors[0] && errors[2] > errors[1], "{variant}: {errors:?}");
    }
    dev.set_tc_variant(TcVariant::default());
    // The variants sum the reduction in different orders (c, r, s vs r, s, c): some bits differ,
    // which shows the switch reached the wrappers.
    assert_ne!(bf16_outputs[0], bf16_outputs[1], "both variants gave the same bits: the switch did nothing");
    // The channels-last forward (C = 40, a multiple of 8, so it ran: the plan names it) gives the
    // pipelined kernel's bits: the same roundings and mma order from bf16 copies.
    assert_eq!(conv::plan(&g, ConvPass::Forward, Precision::Bf16, TcVariant::Nhwc, dev.sm_count() as usize).kernel.module, "conv2d_nhwc");
    assert!(bf16_outputs[2] == bf16_outputs[1], "nhwc and pipelined bf16 forwards differ");
    // The wgmma forward (on an sm_90 GPU; else the variant is Nhwc): the same bf16 products in
    // f32, summed in the tensor cores' own order.
    if dev.has_wgmma() {
        assert_eq!(conv::plan(&g, ConvPass::Forward, Precision::Bf16, TcVariant::Wgmma, dev.sm_count() as usize).kernel.module, "conv2d_wgmma");
        let d = rel_err(&bf16_outputs[3], &bf16_outputs[2]);
        assert!(d <= 1e-5, "wgmma and nhwc bf16 forwards {d:.2e} apart");
    }
    // Lengths are checked before anything runs.
    let mut short = dev.alloc(g.output_len() - 1).unwrap();
    let e = conv::conv2d_fwd(&dev, &g, Precision::Bf16, &xg, &wg, None, &mut short).unwrap_err().to_string();
    // The message names the forward kernel that would have run (either variant's), the operand and the shape.
    assert!(e.contains("_fwd_") && e.contains("y has") && e.contains("[3, 72, 14, 14]"), "{e}");
});

// A conv layer through the tensor ops and autograd follows the device's precision setting.
test_gpu!(tensor_ops_follow_the_device_precision_and_variant, |dev| {
    let _one_at_a_time = serial();
    let mut r = rng(14);
    let (xv, wv) = (randn(&mut r, 2 * 9 * 11 * 11), randn(&mut r, 20 * 9 * 9));
    let run = |device: Device| -> [Vec<f32>; 3] {
        let x = Tensor::from_vec(xv.clone(), [2, 9, 11, 11], device).unwrap().into_var();
        let w = Tensor::from_vec(wv.clone(), [20, 9, 3, 3], device).unwrap().into_var();
        let y = x.conv2d(&w, None, 1, 2, 2).unwrap();
        y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        [y.to_vec().unwrap(), w.grad().unwrap().to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()]
    };
    let cpu = run(Device::Cpu);
    for variant in TcVariant::ALL {
        dev.set_tc_variant(variant);
        for p in Precision::ALL {
            dev.set_precision(p);
            let gpu = run(Device::Cuda(0));
            let [ey, ew, ex] = [0, 1, 2].map(|i| rel_err(&gpu[i], &cpu[i]));
            assert!(ey <= tolerance(p) && ew <= 2.0 * tolerance(p) && ex <= 2.0 * tolerance(p), "{variant} {p}: y {ey:.3e} dw {ew:.3e} dx {ex:.3e}");
            if p != Precision::Fp32 {
                assert!(ey > 1e-6, "{variant} {p}: the f32 kernels ran");
            }
        }
    }
    dev.set_precision(Precision::Fp32);
    dev.set_tc_variant(TcVariant::default());
});

// The channels-last kernels (bf16 channels-last copies, ldmatrix) against the pipelined kernel of
// the same tile (and, for the weight gradient, the same split) on the same f32 tensors, on every
// pass of shapes() and network_shapes() they take (copied channels a multiple of 8): the same bits, outputs and the
// forward's batch-norm statistics (the same bf16 roundings, fragments and order of mma:
// kernels/conv2d_nhwc.cu's header). Both NaN-poisoned.
test_gpu!(channels_last_kernels_give_the_pipelined_bits, |dev| {
    let mut r = rng(15);
    let sms = dev.sm_count() as usize;
    let mut ran = 0;
    each_bf16_pass(&dev, &mut r, conv::nhwc_takes, |g, pass, [a, bb], bias, out_len| {
        let g = *g;
        let nhwc = conv::tc_plans(&g, pass, Precision::Bf16, TcVariant::Nhwc, sms);
        let pipe = conv::tc_plans(&g, pass, Precision::Bf16, TcVariant::Pipelined, sms);
        for (pn, pp) in nhwc.iter().zip(&pipe) {
            assert!(pn.channels_last() && !pp.channels_last() && pn.tile == pp.tile, "{pn:?} {pp:?}");
            // The pipelined plan's split (its own is chosen for two blocks per SM): the same sums.
            let pn = &conv::ConvPlan { splits: pp.splits, chunk: pp.chunk, ..*pn };
            let run = |plan: &conv::ConvPlan| run_with_stats(&dev, &g, pass, plan, [a, bb], bias, out_len);
            let (got, want) = (run(pn), run(pp));
            let what = format!("{} vs {} {g:?}", pn.kernel.name, pp.kernel.name);
            assert!(got.0.iter().all(|v| v.is_finite()), "{what}: an output left unwritten");
            assert!(bits(&got.0) == bits(&want.0), "{what}: outputs differ (relative error {:.2e})", rel_err(&got.0, &want.0));
            assert_eq!(got.1.as_deref().map(bits), want.1.as_deref().map(bits), "{what}: statistics differ");
            ran += 1;
        }
    });
    // 16 passes of the 11 shapes have their copied channels multiples of 8 (12 forwards and input
    // gradients, 4 weight gradients), and all 3 of each network shape; the 3 tiles both families
    // have (the channels-last 64 x 64 has no pipelined twin: the first test holds it to the CPU).
    assert_eq!(ran, (16 + 3 * network_shapes().len()) * conv::TC_TILES.len());
});

// The wgmma kernels (sm_90a) against the channels-last kernel of the same 128 x 128 tile and
// split, on every pass of shapes() and network_shapes() they take: the
// same bf16 products summed in f32 (the emulator sums each k-step of 16 as mma.sync does and gives
// the same bits; the GPU's order may differ, hence 1e-5), every output written, and the
// forward's batch-norm statistics likewise. Skipped, saying so, on a GPU that is not sm_90.
test_gpu!(wgmma_kernels_match_the_channels_last_kernels, |dev| {
    if !dev.has_wgmma() {
        eprintln!("skipped: cuda:0 is sm_{}{}, wgmma needs sm_90", dev.compute_capability().0, dev.compute_capability().1);
        return;
    }
    let mut r = rng(18);
    let sms = dev.sm_count() as usize;
    let mut ran = 0;
    each_bf16_pass(&dev, &mut r, conv::wgmma_takes, |g, pass, [a, bb], bias, out_len| {
        let g = *g;
        let wgmma = conv::plan(&g, pass, Precision::Bf16, TcVariant::Wgmma, sms);
        let nhwc = conv::tc_plans(&g, pass, Precision::Bf16, TcVariant::Nhwc, sms)[0];
        assert!(wgmma.is_wgmma() && nhwc.tile == wgmma.tile, "{wgmma:?} {nhwc:?}");
        // (the weight gradient in the wgmma plan's split: the same partial sums)
        let nhwc = conv::ConvPlan { splits: wgmma.splits, chunk: wgmma.chunk, ..nhwc };
        let run = |plan: &conv::ConvPlan| run_with_stats(&dev, &g, pass, plan, [a, bb], bias, out_len);
        let (got, want) = (run(&wgmma), run(&nhwc));
        let what = format!("{} {g:?}", wgmma.kernel.name);
        assert!(got.0.iter().all(|v| v.is_finite()), "{what}: an output left unwritten");
        let e = rel_err(&got.0, &want.0);
        assert!(e <= 1e-5, "{what}: {e:.2e} from {}", nhwc.kernel.name);
        if let (Some(gs), Some(ws)) = (&got.1, &want.1) {
            assert!(gs.iter().all(|v| v.is_finite()), "{what}: a statistic left unwritten");
            let e = rel_err(gs, ws);
            assert!(e <= 1e-5, "{what}: statistics {e:.2e} from {}'s", nhwc.kernel.name);
        }
        ran += 1;
    });
    // 16 passes of the 11 shapes (12 forwards and input gradients, 4 weight gradients), and all
    // three of each network shape.
    assert_eq!(ran, 16 + 3 * network_shapes().len());
});

// The copies the channels-last kernels read: (n, c, hw) f32 to (n, hw, c) bf16, rounded to
// nearest even as the host's `half` rounds, on sizes off the kernel's 32 x 64 tiles; an odd
// channel count is refused, naming the kernel.
test_gpu!(nchw_to_nhwc_bf16_transposes_and_rounds, |dev| {
    let mut r = rng(16);
    for (n, c, hw) in [(2, 6, 37), (1, 130, 33), (3, 64, 1), (1, 2, 100)] {
        let mut x = randn(&mut r, n * c * hw);
        // Ties of bf16's rounding, both ways, and values far from 1.
        x[0] = 1.0 + f32::powi(2.0, -8);
        x[1] = 1.0 + 3.0 * f32::powi(2.0, -8);
        x[2] *= 1e30;
        let xg = dev.htod(&x).unwrap();
        let got = conv::to_nhwc_bf16(&dev, &xg, n, c, hw).unwrap().to_host(&dev).unwrap();
        assert_eq!(got.len(), n * c * hw / 2);
        let bf = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
        for i in 0..n {
            for p in 0..hw {
                for j in 0..c / 2 {
                    let at = |ch: usize| x[(i * c + ch) * hw + p];
                    let want = bf(at(2 * j + 1)) << 16 | bf(at(2 * j));
                    assert_eq!(got[(i * hw + p) * (c / 2) + j], want, "({n}, {c}, {hw}): image {i} pixel {p} pair {j}");
                }
            }
        }
    }
    let xg = dev.htod(&randn(&mut r, 3 * 5)).unwrap();
    let e = conv::to_nhwc_bf16(&dev, &xg, 1, 3, 5).unwrap_err().to_string();
    assert!(e.contains("nchw_to_nhwc_bf16") && e.contains("even"), "{e}");
});

// The backward that shares one bf16 copy of dy between the channels-last input and weight
// gradients (conv::conv2d_bwd, what autograd runs when both are wanted) gives the bits of the two
// passes run apart, on every shape (those the channels-last kernels take, and the rest, which go
// to the two wrappers).
test_gpu!(the_shared_dy_backward_equals_the_two_passes, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_tc_variant(TcVariant::Nhwc);
    let mut r = rng(17);
    let mut shared_copies = 0;
    for g in shapes() {
        let (x, w, dy) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.output_len()));
        let (xg, wg, dyg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&dy).unwrap());
        let (mut dx, mut dw) = (poisoned(&dev, g.input_len()), poisoned(&dev, g.weight_len()));
        conv::conv2d_bwd(&dev, &g, Precision::Bf16, &xg, &wg, &dyg, &mut dx, &mut dw).unwrap();
        let (mut dx1, mut dw1) = (poisoned(&dev, g.input_len()), poisoned(&dev, g.weight_len()));
        conv::conv2d_bwd_input(&dev, &g, Precision::Bf16, &dyg, &wg, &mut dx1).unwrap();
        conv::conv2d_bwd_weight(&dev, &g, Precision::Bf16, &xg, &dyg, &mut dw1).unwrap();
        let bits = |b: &coseg::backend::cuda::GpuBuffer| dev.dtoh(b).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(&dx) == bits(&dx1), "{g:?}: dx differs");
        assert!(bits(&dw) == bits(&dw1), "{g:?}: dw differs");
        assert!(dev.dtoh(&dx).unwrap().iter().chain(&dev.dtoh(&dw).unwrap()).all(|v| v.is_finite()), "{g:?}: unwritten");
        shared_copies += usize::from(conv::nhwc_takes(&g, ConvPass::InputGrad, Precision::Bf16) && conv::nhwc_takes(&g, ConvPass::WeightGrad, Precision::Bf16));
    }
    assert_eq!(shared_copies, 4, "the shapes where both gradients run channels-last");
    // Lengths are checked before anything runs, naming the operand.
    let g = &shapes()[7];
    let (xg, wg, dyg) = (dev.alloc(g.input_len()).unwrap(), dev.alloc(g.weight_len()).unwrap(), dev.alloc(g.output_len() - 1).unwrap());
    let (mut dx, mut dw) = (dev.alloc(g.input_len()).unwrap(), dev.alloc(g.weight_len()).unwrap());
    let e = conv::conv2d_bwd(&dev, g, Precision::Bf16, &xg, &wg, &dyg, &mut dx, &mut dw).unwrap_err().to_string();
    assert!(e.contains("dy has"), "{e}");
});
