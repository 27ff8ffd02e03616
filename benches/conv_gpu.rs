//! Our convolutions against cuDNN at the same precision (fp32, tf32, bf16), side by side in one
//! run, with both tensor-core variants at tf32 and bf16 (staged, kernels/conv2d_tc.cu, ids
//! `ours_<p>_<pass>`; pipelined, kernels/conv2d_tcp.cu, ids `ours_<p>_pipelined_<pass>`): the network's four 3x3 atrous shapes, the 1x1 convolutions of layer3 and layer4 at 16x16,
//! and the 7x7 stride-2 stem, all with N = 20 (10 pairs). Forward, and forward + input gradient +
//! weight gradient. Ours keep NCHW f32 tensors at every precision; cuDNN gets f32 NCHW for fp32
//! (FMA math) and tf32 (tensor-op math), and bf16 NHWC tensors for bf16, its fastest layout.
//!
//! Criterion times each with CUDA events around `iters` back-to-back launches (throughput in
//! elements = FLOPs, so "Gelem/s" reads as GFLOP/s). The run ends with one table: the median of
//! 20 event-timed runs of each, cuDNN's time over ours (>= 1.0: ours is at least as fast) and our
//! TFLOP/s. Skips without a GPU; the cuDNN half skips without libcudnn on the loader path.
//!
//! `CONV_GPU_CASES=3x3_c512,stem` (names containing any of the words) and
//! `CONV_GPU_PRECISIONS=bf16,tf32` narrow the run, the table medians included (criterion's own
//! filter narrows only criterion's samples): a shorter device call, or one kernel to profile,
//!   ncu -k regex:conv2d_pipe_fwd --launch-count 1 .gpu/bin/bench-conv_gpu --bench
//! with CONV_GPU_CASES=3x3_c512_16x16_d4 CONV_GPU_PRECISIONS=bf16.
//!
//! With COSEG_CONV_TUNE=1 our columns run the plans tuned by timing (`ops::conv::tune`) rather
//! than the model's, and a second table shows, per pass, the model's plan against the chosen one.
//!
//! Then the fusions around the convolutions against their unfused sequences: `conv_bn` (batch
//! norm's statistics from the forward's epilogue), `bn_relu_conv` (batch norm and ReLU as the
//! channels-last convolution's prologue) and `block_end` (a ResNet block's last batch norm,
//! shortcut add and ReLU in one pass; runs unless CONV_GPU_CASES leaves out `block_end`), and
//! `weight_reorder`: the pipelined kernels' weight reorders on the tiled transpose against the
//! element-wise strided copy they ran on before (unless CONV_GPU_CASES leaves out `weight_reorder`).

use coseg::backend::cuda::{CudaDevice, GpuBuffer, conv};
use coseg::device::{Precision, TcVariant};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cudarc::cudnn::{self, ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn, CudnnDataType};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[path = "support/gpu.rs"]
mod gpu;

struct Case {
    name: &'static str,
    sh: conv::Conv2dShape,
}

fn cases() -> Vec<Case> {
    let n = 20;
    let c3 = |name, c, hw, dil| Case { name, sh: conv::Conv2dShape { n, c, h: hw, w: hw, k: c, r: 3, s: 3, stride: 1, pad: dil, dilation: dil } };
    let c1 = |name, c, k| Case { name, sh: conv::Conv2dShape { n, c, h: 16, w: 16, k, r: 1, s: 1, stride: 1, pad: 0, dilation: 1 } };
    vec![
        c3("3x3_c64_32x32_d1", 64, 32, 1),
        c3("3x3_c256_16x16_d2", 256, 16, 2),
        c3("3x3_c512_16x16_d4", 512, 16, 4),
        c3("3x3_c512_16x16_d8", 512, 16, 8),
        c1("1x1_1024to256_16x16", 1024, 256),
        c1("1x1_256to1024_16x16", 256, 1024),
        c1("1x1_2048to512_16x16", 2048, 512),
        c1("1x1_512to2048_16x16", 512, 2048),
        Case { name: "stem_7x7s2_3to64_128x128", sh: conv::Conv2dShape { n, c: 3, h: 128, w: 128, k: 64, r: 7, s: 7, stride: 2, pad: 3, dilation: 1 } },
    ]
}

/// The cases `CONV_GPU_CASES` selects (all when unset), with their index in [`cases`].
fn selected_cases() -> Vec<(usize, Case)> {
    let words: Option<Vec<String>> = std::env::var("CONV_GPU_CASES").ok().map(|v| v.split(',').map(str::trim).filter(|w| !w.is_empty()).map(String::from).collect());
    let picked: Vec<(usize, Case)> = cases().into_iter().enumerate().filter(|(_, c)| words.as_ref().is_none_or(|ws| ws.iter().any(|w| c.name.contains(w.as_str())))).collect();
    if picked.is_empty() {
        eprintln!("conv_gpu: CONV_GPU_CASES={:?} matches none of {:?}", words.unwrap_or_default(), cases().iter().map(|c| c.name).collect::<Vec<_>>());
    }
    picked
}

/// The precisions `CONV_GPU_PRECISIONS` selects (all when unset); an unknown name is reported.
fn selected_precisions() -> Vec<Precision> {
    match std::env::var("CONV_GPU_PRECISIONS") {
        Err(_) => Precision::ALL.to_vec(),
        Ok(v) => v
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .filter_map(|w| match w.parse::<Precision>() {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("conv_gpu: CONV_GPU_PRECISIONS: {e}");
                    None
                }
            })
            .collect(),
    }
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Milliseconds per call of `f`, from CUDA events around `iters` calls on `stream`.
fn event_ms(stream: &Arc<CudaStream>, iters: u64, f: &mut dyn FnMut()) -> f64 {
    let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(timed).unwrap();
    for _ in 0..iters {
        f();
    }
    let end = stream.record_event(timed).unwrap();
    end.synchronize().unwrap();
    start.elapsed_ms(&end).unwrap() as f64 / iters as f64
}

/// The median of 20 single-call event timings, after 3 warm-up calls.
fn median_ms(stream: &Arc<CudaStream>, f: &mut dyn FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..20).map(|_| event_ms(stream, 1, f)).collect();
    t.sort_by(f64::total_cmp);
    (t[9] + t[10]) / 2.0
}

/// Criterion's time for `f` (device time, events) and the table's median.
fn measure(c: &mut Criterion, stream: &Arc<CudaStream>, group: &str, id: &str, flops: f64, f: &mut dyn FnMut()) -> f64 {
    let mut g = c.benchmark_group(group);
    g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(600));
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function(id, |b| b.iter_custom(|iters| Duration::from_secs_f64(event_ms(stream, iters, f) * iters as f64 / 1e3)));
    g.finish();
    median_ms(stream, f)
}

/// (case, pass "fwd" | "fwd_bwd", precision) -> (ours ms, cuDNN ms)
type Table = BTreeMap<(usize, &'static str, Precision), Row>;

/// Medians in ms of one case, pass and precision.
#[derive(Default)]
struct Row {
    staged: Option<f64>,
    pipelined: Option<f64>,
    nhwc: Option<f64>,
    wgmma: Option<f64>,
    cudnn: Option<f64>,
}

impl Row {
    fn ours(&mut self, v: TcVariant) -> &mut Option<f64> {
        match v {
            TcVariant::Staged => &mut self.staged,
            TcVariant::Pipelined => &mut self.pipelined,
            TcVariant::Nhwc => &mut self.nhwc,
            TcVariant::Wgmma => &mut self.wgmma,
        }
    }
}

fn ours(c: &mut Criterion, dev: &Arc<CudaDevice>, table: &mut Table) {
    for (ci, case) in selected_cases() {
        let sh = case.sh;
        let x = dev.htod(&random(sh.input_len(), 1)).unwrap();
        let w = dev.htod(&random(sh.weight_len(), 2)).unwrap();
        let dy = dev.htod(&random(sh.output_len(), 3)).unwrap();
        let (mut y, mut dx, mut dw) = (dev.alloc(sh.output_len()).unwrap(), dev.alloc(sh.input_len()).unwrap(), dev.alloc(sh.weight_len()).unwrap());
        let group = format!("conv_gpu/{}", case.name);
        for p in selected_precisions() {
            // fp32 runs the SIMT kernels whichever variant is set; nhwc has bf16 kernels only
            // (at tf32 it would time the pipelined ones again).
            let variants: &[TcVariant] = match p {
                Precision::Fp32 => &[TcVariant::Staged],
                Precision::Tf32 => &[TcVariant::Staged, TcVariant::Pipelined],
                Precision::Bf16 => &TcVariant::ALL,
            };
            // wgmma only where the GPU has it (sm_90; elsewhere the variant is nhwc again)
            for &v in variants.iter().filter(|v| **v != TcVariant::Wgmma || dev.has_wgmma()) {
                dev.set_tc_variant(v);
                let tag = if v == TcVariant::Staged { p.to_string() } else { format!("{p}_{v}") };
                let fwd = |y: &mut GpuBuffer| conv::conv2d_fwd(dev, &sh, p, &x, &w, None, y).unwrap();
                let t = measure(c, dev.stream(), &group, &format!("ours_{tag}_fwd"), sh.flops(), &mut || fwd(&mut y));
                *table.entry((ci, "fwd", p)).or_default().ours(v) = Some(t);
                let mut all = || {
                    fwd(&mut y);
                    conv::conv2d_bwd_input(dev, &sh, p, &dy, &w, &mut dx).unwrap();
                    conv::conv2d_bwd_weight(dev, &sh, p, &x, &dy, &mut dw).unwrap();
                };
                let t = measure(c, dev.stream(), &group, &format!("ours_{tag}_fwd_bwd"), 3.0 * sh.flops(), &mut all);
                *table.entry((ci, "fwd_bwd", p)).or_default().ours(v) = Some(t);
            }
            dev.set_tc_variant(TcVariant::default());
        }
    }
}

/// cuDNN on one case at one precision: `T` the tensors' type, `math` the math type, `format` the
/// layout; returns (fwd, fwd_bwd) medians.
fn cudnn_case<T: CudnnDataType<Scalar = f32> + DeviceRepr + ValidAsZeroBits + Copy>(
    c: &mut Criterion,
    handle: &Arc<Cudnn>,
    stream: &Arc<CudaStream>,
    case: &Case,
    p: Precision,
    convert: fn(f32) -> T,
    one: T,
    zero: T,
) -> (f64, f64) {
    let sh = case.sh;
    let (format, math) = match p {
        Precision::Fp32 => (cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, cudnn::sys::cudnnMathType_t::CUDNN_FMA_MATH),
        Precision::Tf32 => (cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, cudnn::sys::cudnnMathType_t::CUDNN_DEFAULT_MATH),
        Precision::Bf16 => (cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC, cudnn::sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH),
    };
    let d = |v: usize| v as i32;
    let xd = handle.create_4d_tensor::<T>(format, [d(sh.n), d(sh.c), d(sh.h), d(sh.w)]).unwrap();
    let yd = handle.create_4d_tensor::<T>(format, [d(sh.n), d(sh.k), d(sh.out_h()), d(sh.out_w())]).unwrap();
    let wd = handle.create_4d_filter::<T>(format, [d(sh.k), d(sh.c), d(sh.r), d(sh.s)]).unwrap();
    let mut cd = handle
        .create_conv2d::<f32>([d(sh.pad); 2], [d(sh.stride); 2], [d(sh.dilation); 2], cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
        .unwrap();
    cd.set_math_type(math).unwrap();
    let up = |v: Vec<f32>| -> CudaSlice<T> { stream.clone_htod(&v.into_iter().map(convert).collect::<Vec<T>>()).unwrap() };
    let (x, w, dy) = (up(random(sh.input_len(), 1)), up(random(sh.weight_len(), 2)), up(random(sh.output_len(), 3)));
    let mut y: CudaSlice<T> = stream.alloc_zeros(sh.output_len()).unwrap();
    let mut dx: CudaSlice<T> = stream.alloc_zeros(sh.input_len()).unwrap();
    let mut dw: CudaSlice<T> = stream.alloc_zeros(sh.weight_len()).unwrap();
    let fwd = ConvForward { conv: &cd, x: &xd, w: &wd, y: &yd };
    let bwd_data = ConvBackwardData { conv: &cd, dx: &xd, w: &wd, dy: &yd };
    let bwd_filter = ConvBackwardFilter { conv: &cd, x: &xd, dw: &wd, dy: &yd };
    let (fa, da, wa) = (fwd.pick_algorithm().unwrap(), bwd_data.pick_algorithm().unwrap(), bwd_filter.pick_algorithm().unwrap());
    let ws_len = fwd.get_workspace_size(fa).unwrap().max(bwd_data.get_workspace_size(da).unwrap()).max(bwd_filter.get_workspace_size(wa).unwrap()).max(1);
    let mut ws: CudaSlice<u8> = stream.alloc_zeros(ws_len).unwrap();
    let group = format!("conv_gpu/{}", case.name);
    // SAFETY (both closures): the buffers match the descriptors, all sized from the same shape.
    let t_fwd = measure(c, stream, &group, &format!("cudnn_{p}_fwd"), sh.flops(), &mut || unsafe {
        fwd.launch(fa, Some(&mut ws), (one, zero), &x, &w, &mut y).unwrap();
    });
    let t_all = measure(c, stream, &group, &format!("cudnn_{p}_fwd_bwd"), 3.0 * sh.flops(), &mut || unsafe {
        fwd.launch(fa, Some(&mut ws), (one, zero), &x, &w, &mut y).unwrap();
        bwd_data.launch(da, Some(&mut ws), (one, zero), &mut dx, &w, &dy).unwrap();
        bwd_filter.launch(wa, Some(&mut ws), (one, zero), &x, &mut dw, &dy).unwrap();
    });
    (t_fwd, t_all)
}

fn cudnn_reference(c: &mut Criterion, dev: &Arc<CudaDevice>, table: &mut Table) {
    // SAFETY: only tries to dlopen libcudnn.
    if !unsafe { cudnn::sys::is_culib_present() } {
        eprintln!("conv_gpu: libcudnn not found on the loader path: cuDNN reference skipped");
        return;
    }
    let stream = dev.stream().clone();
    let handle = Cudnn::new(stream.clone()).expect("cudnn handle");
    let bf = half::bf16::from_f32;
    for (ci, case) in selected_cases() {
        for p in selected_precisions() {
            let (f, a) = match p {
                Precision::Bf16 => cudnn_case::<half::bf16>(c, &handle, &stream, &case, p, bf, bf(1.0), bf(0.0)),
                _ => cudnn_case::<f32>(c, &handle, &stream, &case, p, |v| v, 1.0, 0.0),
            };
            table.entry((ci, "fwd", p)).or_default().cudnn = Some(f);
            table.entry((ci, "fwd_bwd", p)).or_default().cudnn = Some(a);
        }
    }
}

fn print_table(table: &Table) {
    let cases = cases();
    println!(
        "\nconv_gpu summary: median ms of 20 event-timed runs; ratio = cuDNN / ours (>= 1.0: ours at least as fast); \
         staged = conv2d_tc.cu, pipelined = conv2d_tcp.cu, nhwc = conv2d_nhwc.cu with its bf16 copies (bf16 only; \
         the stem's forward runs the pipelined kernel there), wgmma = conv2d_wgmma.cu (bf16, sm_90; the stem's forward \
         runs the pipelined kernel there) (fp32: the SIMT kernels, in the staged column)"
    );
    println!("| shape | pass | precision | staged ms | pipelined ms | nhwc ms | wgmma ms | cuDNN ms | ratio staged | ratio pipelined | ratio nhwc | ratio wgmma | best TFLOP/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((ci, pass, p), row) in table {
        let flops = cases[*ci].sh.flops() * if *pass == "fwd" { 1.0 } else { 3.0 };
        let fmt = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or("-".to_string(), |v| format!("{v:.3}"));
        let ratio = |ours: Option<f64>| match (ours, row.cudnn) {
            (Some(o), Some(t)) if t.is_finite() => format!("{:.2}", t / o),
            _ => "-".to_string(),
        };
        let best = [row.staged, row.pipelined, row.nhwc, row.wgmma].into_iter().flatten().reduce(f64::min);
        let tflops = best.map_or("-".to_string(), |o| format!("{:.1}", flops / (o * 1e-3) / 1e12));
        let (staged, pipelined, nhwc, wgmma, cudnn) = (fmt(row.staged), fmt(row.pipelined), fmt(row.nhwc), fmt(row.wgmma), fmt(row.cudnn));
        let (r_staged, r_pipelined, r_nhwc, r_wgmma) = (ratio(row.staged), ratio(row.pipelined), ratio(row.nhwc), ratio(row.wgmma));
        println!(
            "| {} | {pass} | {p} | {staged} | {pipelined} | {nhwc} | {wgmma} | {cudnn} | {r_staged} | {r_pipelined} | {r_nhwc} | {r_wgmma} | {tflops} |",
            cases[*ci].name
        );
    }
}

/// The first fusion of issue 12, against the unfused sequence: a bf16 pipelined forward followed by
/// batch norm's training statistics and normalisation, with the statistics from batch norm's own
/// pass over the output (bn_stats_f32) or from the convolution's epilogue (bn_stats_partials_f32).
/// Ids `conv_bn_<shape>/{unfused,fused}`; prints one table.
fn conv_bn(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    use coseg::backend::cuda::batchnorm::{bn_fwd, bn_stats, bn_stats_partials};
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Pipelined);
    let mut rows = Vec::new();
    if !selected_precisions().contains(&Precision::Bf16) {
        return;
    }
    for (_, case) in selected_cases().into_iter().filter(|(_, c)| c.sh.stride == 1) {
        let sh = case.sh;
        let x = dev.htod(&random(sh.input_len(), 1)).unwrap();
        let w = dev.htod(&random(sh.weight_len(), 2)).unwrap();
        let per_channel = |v: f32| dev.htod(&vec![v; sh.k]).unwrap();
        let (gamma, beta) = (per_channel(1.0), per_channel(0.0));
        let (mut rm, mut rv, mut mean, mut var) = (per_channel(0.0), per_channel(1.0), per_channel(0.0), per_channel(0.0));
        let (mut y, mut out) = (dev.alloc(sh.output_len()).unwrap(), dev.alloc(sh.output_len()).unwrap());
        let shape = [sh.n, sh.k, sh.out_h(), sh.out_w()];
        let count = sh.n * sh.out_h() * sh.out_w();
        let group = format!("conv_bn_{}", case.name);
        let unfused = measure(c, dev.stream(), &group, "unfused", sh.flops(), &mut || {
            conv::conv2d_fwd(dev, &sh, Precision::Bf16, &x, &w, None, &mut y).unwrap();
            bn_stats(dev, &y, shape, &mut mean, &mut var, Some((&mut rm, &mut rv)), 0.1).unwrap();
            bn_fwd(dev, &y, shape, &mean, &var, &gamma, &beta, None, &mut out, 1e-5, false).unwrap();
        });
        let fused = measure(c, dev.stream(), &group, "fused", sh.flops(), &mut || {
            let (sums, slots, width) = conv::conv2d_fwd_partials(dev, &sh, &x, &w, None, &mut y).unwrap().expect("pipelined bf16 writes statistics");
            bn_stats_partials(dev, &sums, [slots, width], sh.k, count, &mut mean, &mut var, Some((&mut rm, &mut rv)), 0.1).unwrap();
            bn_fwd(dev, &y, shape, &mean, &var, &gamma, &beta, None, &mut out, 1e-5, false).unwrap();
        });
        rows.push((case.name, unfused, fused));
    }
    dev.set_tc_variant(TcVariant::default());
    println!("\nconv_bn summary: bf16 pipelined forward + batch-norm statistics + normalisation, median ms of 20 event-timed runs");
    println!("| shape | unfused ms | fused ms | unfused / fused |");
    println!("| --- | --- | --- | --- |");
    for (name, u, f) in rows {
        println!("| {name} | {u:.3} | {f:.3} | {:.2} |", u / f);
    }
}

/// The end of a ResNet block, relu(bn(y) + shortcut), in training: `Tensor::batch_norm_add`
/// (batch norm's passes only) against batch norm, add and ReLU apart, at the block outputs of
/// layer1, layer3 and layer4 (N = 20), forward and forward + backward (from the sum of the
/// output, the same extra reduction on both sides). Ids `block_end_<shape>/{composed,fused}_<pass>`;
/// prints one table with the bytes the fused forward must move (read y and the shortcut, write
/// the output: 12 bytes an element) at the achieved rate.
fn block_end(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    use coseg::device::Device;
    use coseg::ops::BatchNormOptions;
    use coseg::tensor::Tensor;
    if std::env::var("CONV_GPU_CASES").is_ok_and(|v| !v.contains("block_end")) {
        return;
    }
    let device = Device::Cuda(dev.ordinal());
    let shapes = [("layer1_256x32x32", [20usize, 256, 32, 32]), ("layer3_1024x16x16", [20, 1024, 16, 16]), ("layer4_2048x16x16", [20, 2048, 16, 16])];
    let mut rows = Vec::new();
    for (name, dims) in shapes {
        let len: usize = dims.iter().product();
        let ch = dims[1];
        let t = |seed: u64| Tensor::from_vec(random(len, seed), dims, device).unwrap();
        let (y, shortcut) = (t(3), t(4));
        let per_channel = |v: f32| Tensor::full([ch], v, device).unwrap();
        let (gamma, beta, rm, rv) = (per_channel(1.0).into_var(), per_channel(0.0).into_var(), per_channel(0.0), per_channel(1.0));
        let opts = BatchNormOptions { relu: true, ..BatchNormOptions::default() };
        let run = |fused: bool, backward: bool| {
            let (y, r) = if backward { (y.detach().into_var(), shortcut.detach().into_var()) } else { (y.clone(), shortcut.clone()) };
            let out = if fused {
                y.batch_norm_add(&r, &gamma, &beta, &rm, &rv, opts, None).unwrap()
            } else {
                let plain = BatchNormOptions { relu: false, ..opts };
                y.batch_norm(&gamma, &beta, &rm, &rv, plain).unwrap().add(&r).unwrap().relu().unwrap()
            };
            if backward {
                out.sum_all().unwrap().backward().unwrap();
            }
        };
        let group = format!("block_end_{name}");
        let mut times = [0.0; 4];
        for (i, (fused, backward)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate() {
            let id = format!("{}_{}", if fused { "fused" } else { "composed" }, if backward { "fwd_bwd" } else { "fwd" });
            times[i] = measure(c, dev.stream(), &group, &id, len as f64, &mut || run(fused, backward));
        }
        rows.push((name, len, times));
    }
    println!("\nblock_end summary: relu(batch_norm(y) + shortcut) in training, median ms of 20 event-timed runs");
    println!("| shape | composed fwd | fused fwd | ratio | fused fwd GB/s (12 B/elem) | composed fwd+bwd | fused fwd+bwd | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, len, [cf, ff, cb, fb]) in rows {
        let gbs = 12.0 * len as f64 / (ff * 1e-3) / 1e9;
        println!("| {name} | {cf:.3} | {ff:.3} | {:.2} | {gbs:.0} | {cb:.3} | {fb:.3} | {:.2} |", cf / ff, cb / fb);
    }
}

/// The weight reorders of the pipelined kernels, (K, C, R*S) to (K, R*S, C) (forward) and to
/// (C, R*S, K) (input gradient): `nd::copy` (the tiled transpose_f32) against
/// `nd::copy_elementwise` (copy_nd, one thread per element, what they ran on before), on the
/// network's 3x3 weights and a 1x1's transpose. Prints one table with GB/s (8 bytes a weight)
/// against the copy rate. Ids `weight_reorder_<shape>/{tiled,elementwise}_<order>`.
fn weight_reorder(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    use coseg::backend::cuda::nd;
    if std::env::var("CONV_GPU_CASES").is_ok_and(|v| !v.contains("weight_reorder")) {
        return;
    }
    let shapes = [("3x3_c64", 64usize, 64usize, 9usize), ("3x3_c256", 256, 256, 9), ("3x3_c512", 512, 512, 9), ("1x1_2048_512", 512, 2048, 1)];
    let mut rows = Vec::new();
    for (name, k, ch, rs) in shapes {
        let len = k * ch * rs;
        let w = dev.htod(&random(len, 11)).unwrap();
        let mut out = dev.alloc(len).unwrap();
        // (walk dims, stored strides in walk order, the order's strides): K-RS-C and C-RS-K.
        let orders = [("krsc", [k, rs, ch], [ch * rs, 1, rs], [rs * ch, ch, 1]), ("crsk", [ch, rs, k], [rs, 1, ch * rs], [rs * k, k, 1])];
        for (order, dims, from, to) in orders {
            if rs == 1 && order == "krsc" {
                continue; // a 1x1's (K, R, S, C) is its stored layout: no copy
            }
            let walk = nd::geometry("weight_reorder", &dims, &from, &to, 0, 0).unwrap();
            let group = format!("weight_reorder_{name}");
            let tiled = measure(c, dev.stream(), &group, &format!("tiled_{order}"), len as f64, &mut || nd::copy(dev, &w, &mut out, &walk).unwrap());
            let plain = measure(c, dev.stream(), &group, &format!("elementwise_{order}"), len as f64, &mut || nd::copy_elementwise(dev, &w, &mut out, &walk).unwrap());
            rows.push((name, order, len, nd::as_transpose(&walk).is_some(), tiled, plain));
        }
    }
    println!("\nweight_reorder summary: median ms of 20 event-timed copies; GB/s counts a read and a write of each f32 weight");
    println!("| weights | order | tiled kernel? | tiled ms | element-wise ms | element-wise / tiled | tiled GB/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, order, len, taken, tiled, plain) in rows {
        println!("| {name} | {order} | {taken} | {tiled:.4} | {plain:.4} | {:.2} | {:.0} |", plain / tiled, 8.0 * len as f64 / (tiled * 1e-3) / 1e9);
    }
}

/// Batch norm and its ReLU as the prologue of the convolution that reads them
/// (`Tensor::bn_relu_conv2d` on the channels-last bf16 kernels: batch norm's f32 output never
/// written, the bf16 copy made from y and kept for the weight gradient) against batch norm with
/// its ReLU, then conv2d, on the channels-last kernels too; the shapes whose channels they take.
/// Forward, and forward + backward (from the sum of the output). Ids
/// `bn_relu_conv_<shape>/{composed,fused}_<pass>`; prints one table.
fn bn_relu_conv(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    use coseg::device::Device;
    use coseg::ops::BatchNormOptions;
    use coseg::tensor::Tensor;
    if !selected_precisions().contains(&Precision::Bf16) {
        return;
    }
    dev.set_precision(Precision::Bf16);
    dev.set_tc_variant(TcVariant::Nhwc);
    let device = Device::Cuda(dev.ordinal());
    let mut rows = Vec::new();
    for (_, case) in selected_cases().into_iter().filter(|(_, c)| c.sh.stride == 1 && c.sh.c % 8 == 0 && c.sh.k % 8 == 0) {
        let sh = case.sh;
        let y = Tensor::from_vec(random(sh.input_len(), 5), [sh.n, sh.c, sh.h, sh.w], device).unwrap();
        let w = Tensor::from_vec(random(sh.weight_len(), 6), [sh.k, sh.c, sh.r, sh.s], device).unwrap().into_var();
        let per_channel = |v: f32| Tensor::full([sh.c], v, device).unwrap();
        let (gamma, beta, rm, rv) = (per_channel(1.0).into_var(), per_channel(0.0).into_var(), per_channel(0.0), per_channel(1.0));
        let opts = BatchNormOptions { relu: true, ..BatchNormOptions::default() };
        let geometry = [sh.stride, sh.pad, sh.dilation];
        let run = |fused: bool, backward: bool| {
            let y = if backward { y.detach().into_var() } else { y.clone() };
            let out = if fused {
                y.bn_relu_conv2d([&gamma, &beta, &rm, &rv], opts, None, &w, None, geometry, true).unwrap().0
            } else {
                let a = y.batch_norm(&gamma, &beta, &rm, &rv, opts).unwrap();
                a.conv2d_with_bn_partials(&w, None, sh.stride, sh.pad, sh.dilation).unwrap().0
            };
            if backward {
                out.sum_all().unwrap().backward().unwrap();
            }
        };
        let group = format!("bn_relu_conv_{}", case.name);
        let mut times = [0.0; 4];
        for (i, (fused, backward)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate() {
            let id = format!("{}_{}", if fused { "fused" } else { "composed" }, if backward { "fwd_bwd" } else { "fwd" });
            let flops = sh.flops() * if backward { 3.0 } else { 1.0 };
            times[i] = measure(c, dev.stream(), &group, &id, flops, &mut || run(fused, backward));
        }
        rows.push((case.name, times));
    }
    dev.set_tc_variant(TcVariant::default());
    println!("\nbn_relu_conv summary: relu(batch_norm(y)) into a bf16 channels-last convolution, median ms of 20 event-timed runs");
    println!("| shape | composed fwd | fused fwd | ratio | composed fwd+bwd | fused fwd+bwd | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, [cf, ff, cb, fb]) in rows {
        println!("| {name} | {cf:.3} | {ff:.3} | {:.2} | {cb:.3} | {fb:.3} | {:.2} |", cf / ff, cb / fb);
    }
}

fn bench(c: &mut Criterion) {
    let Some(dev) = gpu::device_or_skip("conv_gpu") else {
        return;
    };
    eprintln!("conv_gpu on {} (sm_{}{})", dev.name(), dev.compute_capability().0, dev.compute_capability().1);
    let mut table = Table::new();
    ours(c, &dev, &mut table);
    cudnn_reference(c, &dev, &mut table);
    print_table(&table);
    // COSEG_CONV_TUNE=1: the "ours" columns ran the tuned plans; the tuner's own table.
    let tuned = coseg::backend::cuda::conv_tune::records(&dev).unwrap();
    if !tuned.is_empty() {
        println!("\nconv_gpu plans tuned by timing (COSEG_CONV_TUNE):\n{}", coseg::backend::cuda::conv_tune::table(&tuned));
    }
    conv_bn(c, &dev);
    bn_relu_conv(c, &dev);
    block_end(c, &dev);
    weight_reorder(c, &dev);
}

criterion_group!(benches, bench);
criterion_main!(benches);
