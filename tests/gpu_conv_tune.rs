//! Convolution tuning (`ops::conv::tune`, `COSEG_CONV_TUNE`) on the GPU: every candidate is timed
//! once per convolution, pass and precision, the fastest runs from then on (its result the CPU
//! convolution's, within the precision's tolerance, and the bits of that plan launched directly),
//! a second call neither times nor waits, choices go to a file and come back from it, a file
//! from another device is not used, a bad one is refused by name, and a pass first met during a
//! graph capture runs the model's plan without breaking the capture; the tests' mode that avoids
//! the model's plan chooses the last candidate; and every candidate of a small CosegNet's
//! convolutions computes what the model's plan does, within f32 round-off. Skips without a GPU; fails
//! with REQUIRE_CUDA=1. Each test leaves tuning as it found it (gpu_common::DeviceSettings).

mod common;
use common::test_gpu;
mod gpu_common;
use coseg::backend::cpu::conv::{self as cpu, ConvGeometry};
use coseg::backend::cuda::conv::{self, ConvPass};
use coseg::backend::cuda::conv_tune::{self as tune, TuneMode};
use coseg::backend::cuda::{CudaDevice, GpuBuffer, graph};
use coseg::device::{Precision, TcVariant};
use gpu_common::*;

/// Runs `pass` through the public wrapper (which consults the tuner) into a NaN-poisoned output,
/// left on the device.
fn launch(dev: &CudaDevice, g: &ConvGeometry, pass: ConvPass, p: Precision, [x, w, dy]: [&GpuBuffer; 3]) -> GpuBuffer {
    let len = [g.output_len(), g.input_len(), g.weight_len()][pass as usize];
    let mut out = poisoned(dev, len);
    match pass {
        ConvPass::Forward => conv::conv2d_fwd(dev, g, p, x, w, None, &mut out).unwrap(),
        ConvPass::InputGrad => conv::conv2d_bwd_input(dev, g, p, dy, w, &mut out).unwrap(),
        ConvPass::WeightGrad => conv::conv2d_bwd_weight(dev, g, p, x, dy, &mut out).unwrap(),
    }
    out
}

/// [`launch`], read back.
fn run(dev: &CudaDevice, g: &ConvGeometry, pass: ConvPass, p: Precision, ops: [&GpuBuffer; 3]) -> Vec<f32> {
    dev.dtoh(&launch(dev, g, pass, p, ops)).unwrap()
}

test_gpu!(tuning_times_each_candidate_once_and_runs_the_fastest, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    tune::set_mode(&dev, TuneMode::On).unwrap();
    let g = ConvGeometry { n: 2, c: 48, h: 10, w: 10, k: 40, r: 3, s: 3, stride: 1, pad: 2, dilation: 2 };
    let mut r = rng(31);
    let (x, w, dy) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.output_len()));
    let mut want = [vec![0.0; g.output_len()], vec![0.0; g.input_len()], vec![0.0; g.weight_len()]];
    cpu::conv2d_forward(&g, &x, &w, None, &mut want[0]);
    cpu::conv2d_backward_input(&g, &dy, &w, &mut want[1]);
    cpu::conv2d_backward_weight(&g, &x, &dy, &mut want[2]);
    let bufs = [dev.htod(&x).unwrap(), dev.htod(&w).unwrap(), dev.htod(&dy).unwrap()];
    let ops = [&bufs[0], &bufs[1], &bufs[2]];
    let mut seen = 0;
    for (variant, precision, tol) in [(TcVariant::Nhwc, Precision::Bf16, 1.5e-2), (TcVariant::Pipelined, Precision::Tf32, 5e-3)] {
        dev.set_tc_variant(variant);
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            let got = run(&dev, &g, pass, precision, ops);
            let e = rel_err(&got, &want[pass as usize]);
            assert!(e <= tol, "{variant} {precision} {pass:?}: relative error {e:.2e}");
            let records = tune::records(&dev).unwrap();
            assert_eq!(records.len(), seen + 1, "one record per pass met");
            seen += 1;
            let rec = records.last().unwrap();
            assert_eq!((rec.conv, rec.pass, rec.precision, rec.variant.as_str()), (g, pass, precision, variant.name()));
            // Every candidate, in the candidates' order, was timed; the chosen one is the least.
            let cands = conv::candidate_plans(&g, pass, precision, variant, dev.sm_count() as usize);
            assert_eq!(rec.candidates.len(), cands.len());
            for (t, c) in rec.candidates.iter().zip(&cands) {
                assert_eq!((t.kernel.as_str(), t.tile, t.splits, t.chunk), (c.kernel.name, [c.tile.0, c.tile.1], c.splits, c.chunk));
                assert!(t.ms.is_finite() && t.ms > 0.0, "{t:?}");
            }
            assert_eq!(rec.chosen, tune::fastest(&rec.candidates.iter().map(|t| t.ms).collect::<Vec<_>>()));
            // The wrapper ran the chosen plan: its bits, launched directly.
            let chosen = cands[rec.chosen];
            let [a, b] = match pass {
                ConvPass::Forward => [&bufs[1], &bufs[0]],
                ConvPass::InputGrad => [&bufs[1], &bufs[2]],
                ConvPass::WeightGrad => [&bufs[2], &bufs[0]],
            };
            let mut direct = poisoned(&dev, got.len());
            conv::launch_plan(&dev, &g, pass, &chosen, a, b, None, &mut direct).unwrap();
            assert_eq!(bits(&dev.dtoh(&direct).unwrap()), bits(&got), "{variant} {pass:?}: not the chosen plan's bits");
            // Met again: no timing (no record, no wait for the device before the read-back).
            let waits = dev.host_waits();
            let out = launch(&dev, &g, pass, precision, ops);
            assert_eq!(dev.host_waits(), waits, "{pass:?}: the second call waited for the device");
            assert_eq!(tune::records(&dev).unwrap().len(), seen);
            assert_eq!(bits(&dev.dtoh(&out).unwrap()), bits(&got));
        }
    }
    // The weight gradient had splits to choose among, not only tiles.
    let records = tune::records(&dev).unwrap();
    let wgrad = records.iter().find(|r| r.pass == ConvPass::WeightGrad).unwrap();
    assert!(wgrad.candidates.iter().any(|t| t.splits != wgrad.candidates[0].splits), "{wgrad:?}");
    assert!(tune::table(&records).lines().filter(|l| l.starts_with("| 2x48x10x10")).count() == 6);
});

// The tests' mode: every candidate timed, the last one (not the model's) chosen and run.
test_gpu!(avoiding_the_model_chooses_the_last_candidate, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_tc_variant(TcVariant::Nhwc);
    tune::set_mode(&dev, TuneMode::AvoidModel).unwrap();
    let g = ConvGeometry { n: 2, c: 32, h: 8, w: 8, k: 24, r: 3, s: 3, stride: 1, pad: 1, dilation: 1 };
    let mut r = rng(34);
    let (x, dy) = (randn(&mut r, g.input_len()), randn(&mut r, g.output_len()));
    let mut want = vec![0.0; g.weight_len()];
    cpu::conv2d_backward_weight(&g, &x, &dy, &mut want);
    let bufs = [dev.htod(&x).unwrap(), dev.htod(&randn(&mut r, g.weight_len())).unwrap(), dev.htod(&dy).unwrap()];
    let got = run(&dev, &g, ConvPass::WeightGrad, Precision::Bf16, [&bufs[0], &bufs[1], &bufs[2]]);
    let e = rel_err(&got, &want);
    assert!(e <= 1.5e-2, "relative error {e:.2e}");
    let records = tune::records(&dev).unwrap();
    let rec = records.last().expect("a record");
    assert!(rec.candidates.len() >= 2 && rec.candidates.iter().all(|t| t.ms.is_finite() && t.ms > 0.0), "{rec:?}");
    assert_eq!(rec.chosen, rec.candidates.len() - 1, "{rec:?}");
    // The wrapper ran that plan: its bits, launched directly.
    let cands = conv::candidate_plans(&g, ConvPass::WeightGrad, Precision::Bf16, TcVariant::Nhwc, dev.sm_count() as usize);
    let mut direct = poisoned(&dev, g.weight_len());
    conv::launch_plan(&dev, &g, ConvPass::WeightGrad, &cands[rec.chosen], &bufs[2], &bufs[0], None, &mut direct).unwrap();
    assert_eq!(bits(&dev.dtoh(&direct).unwrap()), bits(&got));
});

test_gpu!(choices_go_to_a_file_and_come_back_from_it, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_tc_variant(TcVariant::Nhwc);
    let dir = std::env::temp_dir().join(format!("coseg-tune-{}", std::process::id()));
    let path = dir.join("sub").join("conv-tune.json");
    let g = ConvGeometry { n: 2, c: 32, h: 8, w: 8, k: 24, r: 3, s: 3, stride: 1, pad: 1, dilation: 1 };
    let mut r = rng(32);
    let bufs = [randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()), randn(&mut r, g.output_len())].map(|v| dev.htod(&v).unwrap());
    let ops = [&bufs[0], &bufs[1], &bufs[2]];
    tune::set_mode(&dev, TuneMode::File(path.clone())).unwrap();
    let first = run(&dev, &g, ConvPass::WeightGrad, Precision::Bf16, ops);
    let made = tune::records(&dev).unwrap();
    assert_eq!(made.len(), 1);
    let text = std::fs::read_to_string(&path).expect("the tuning file was written");
    assert!(text.contains(dev.name()) && text.contains("weight_grad") && text.contains("\"chosen\""), "{text}");
    // Read back: the same choice, made without timing.
    tune::set_mode(&dev, TuneMode::File(path.clone())).unwrap();
    assert_eq!(tune::records(&dev).unwrap(), made);
    let waits = dev.host_waits();
    let out = launch(&dev, &g, ConvPass::WeightGrad, Precision::Bf16, ops);
    assert_eq!(dev.host_waits(), waits, "a choice read from the file was timed again");
    assert_eq!(bits(&dev.dtoh(&out).unwrap()), bits(&first));
    // Another device's file is not used (and this device's choices replace it when made).
    std::fs::write(&path, text.replace(&format!("\"device\": \"{}\"", dev.name()), "\"device\": \"Another GPU\"")).unwrap();
    tune::set_mode(&dev, TuneMode::File(path.clone())).unwrap();
    assert!(tune::records(&dev).unwrap().is_empty());
    // A file that is not one is refused, naming it.
    std::fs::write(&path, "{\"device\": 3}").unwrap();
    let e = tune::set_mode(&dev, TuneMode::File(path.clone())).err().expect("refused").to_string();
    assert!(e.contains("conv-tune.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
});

test_gpu!(a_pass_first_met_in_a_graph_capture_runs_the_model_plan, |dev| {
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_tc_variant(TcVariant::Nhwc);
    let g = ConvGeometry { n: 1, c: 16, h: 9, w: 7, k: 16, r: 3, s: 3, stride: 1, pad: 1, dilation: 1 };
    let mut r = rng(33);
    let (x, w) = (randn(&mut r, g.input_len()), randn(&mut r, g.weight_len()));
    let (xg, wg) = (dev.htod(&x).unwrap(), dev.htod(&w).unwrap());
    let mut y = poisoned(&dev, g.output_len());
    // One eager run untuned, so the allocator's cache holds the temporaries (a capture may not
    // ask the driver for memory), as a training run's warm-up steps do.
    tune::set_mode(&dev, TuneMode::Off).unwrap();
    conv::conv2d_fwd(&dev, &g, Precision::Bf16, &xg, &wg, None, &mut y).unwrap();
    tune::set_mode(&dev, TuneMode::On).unwrap();
    let (replay, ()) = graph::capture(&dev, || conv::conv2d_fwd(&dev, &g, Precision::Bf16, &xg, &wg, None, &mut y)).expect("the capture holds");
    assert!(tune::records(&dev).unwrap().is_empty(), "timed during a capture");
    replay.replay().unwrap();
    let model = conv::plan(&g, ConvPass::Forward, Precision::Bf16, TcVariant::Nhwc, dev.sm_count() as usize);
    let mut direct = poisoned(&dev, g.output_len());
    conv::launch_plan(&dev, &g, ConvPass::Forward, &model, &wg, &xg, None, &mut direct).unwrap();
    assert_eq!(bits(&dev.dtoh(&y).unwrap()), bits(&dev.dtoh(&direct).unwrap()));
});

// Every candidate the tuner may choose, for every convolution pass of a small Siamese CosegNet
// (the 7x7 stride-2 stem, 3x3 at dilations 1 to 4, 1x1, strided, the decoder's), computes the
// model's plan's result on random operands within f32 round-off: the plans differ only in tiles
// and in how a sum is split (each split's partial sums in f32, added in order). bf16 operands, so
// each product is exact in f32; the reordered sums measured 1.1e-7 apart at most (norm-relative;
// the emulator at 12 and 132 SMs). A split lost or counted twice is off by its own size. The
// passes come from the tuner's records of one forward and backward.
test_gpu!(every_candidate_of_a_models_convolutions_computes_the_model_plans_result, |dev| {
    use coseg::autograd::ParamStore;
    use coseg::nn::{CosegNet, ModelConfig};
    use coseg::tensor::Tensor;
    let _one_at_a_time = serial();
    let _settings = DeviceSettings::saved(&dev);
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Nhwc);
    tune::set_mode(&dev, TuneMode::On).unwrap();
    let gpu = coseg::Device::Cuda(dev.ordinal());
    let cfg = ModelConfig { depth: 18, width: 0.125, ..ModelConfig::default() };
    let mut store = ParamStore::new(gpu, 7);
    let model = CosegNet::new(&cfg, &mut store).unwrap();
    let mut r = rng(35);
    let mut image = || Tensor::from_vec(randn(&mut r, 3 * 32 * 32), [1, 3, 32, 32], gpu).unwrap();
    let (a, b) = (image(), image());
    let (la, lb) = model.forward_pair(&a, &b, true).unwrap();
    la.sqr().unwrap().add(&lb).unwrap().sum_all().unwrap().backward().unwrap();
    let records = tune::records(&dev).unwrap();
    tune::set_mode(&dev, TuneMode::Off).unwrap();
    let passes = [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad];
    assert!(passes.iter().all(|p| records.iter().any(|rec| rec.pass == *p)), "{} records", records.len());
    assert!(records.iter().any(|rec| rec.conv.r == 7) && records.iter().any(|rec| rec.conv.dilation > 1), "not the model's convolutions");
    let (mut compared, mut worst) = (0, 0.0f64);
    for rec in &records {
        let g = rec.conv;
        let cands = conv::candidate_plans(&g, rec.pass, Precision::Bf16, TcVariant::Nhwc, dev.sm_count() as usize);
        let [a, b, out] = rec.pass.operands(&g).map(|(_, dims)| dims.iter().product::<usize>());
        let (a, b) = (dev.htod(&randn(&mut r, a)).unwrap(), dev.htod(&randn(&mut r, b)).unwrap());
        let run = |p: &conv::ConvPlan| {
            let mut o = poisoned(&dev, out);
            conv::launch_plan(&dev, &g, rec.pass, p, &a, &b, None, &mut o).unwrap();
            dev.dtoh(&o).unwrap()
        };
        let model_plan = run(&cands[0]);
        for p in &cands[1..] {
            let e = rel_err(&run(p), &model_plan);
            assert!(e <= 1e-5, "{g:?} {:?}: {} splits {} chunk {}: {e:.2e} from the model's plan", rec.pass, p.kernel.name, p.splits, p.chunk);
            worst = worst.max(e);
            compared += 1;
        }
    }
    assert!(compared >= records.len(), "{compared} candidates compared over {} passes", records.len());
    eprintln!("{compared} candidates of {} passes: at most {worst:.2e} from the model's plans", records.len());
});
