//! Our implicit-GEMM atrous convolution against cuDNN, side by side in one run, on the network's
//! 3x3 layers at 128x128 input (DESIGN.md): forward, and forward + input grad + weight grad.
//! Throughput is reported as elements = FLOPs, so criterion's "Gelem/s" reads as GFLOP/s.
//! Skips with a message when there is no GPU (or no cuDNN for the reference half).

use coseg::backend::cuda::{CudaDevice, conv};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cudarc::cudnn::{self, ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn};
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const SHAPES: [(usize, usize, usize, usize); 4] = [(20, 64, 32, 1), (20, 256, 16, 2), (20, 512, 16, 4), (20, 512, 16, 8)];

fn shape(n: usize, c: usize, hw: usize, dil: usize) -> conv::Conv2dShape {
    conv::Conv2dShape { n, c, h: hw, w: hw, k: c, r: 3, s: 3, stride: 1, pad: dil, dilation: dil }
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn ours(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    for &(n, ch, hw, dil) in &SHAPES {
        let sh = shape(n, ch, hw, dil);
        let x = dev.htod(&random(sh.input_len(), 1)).unwrap();
        let w = dev.htod(&random(sh.weight_len(), 2)).unwrap();
        let dy = dev.htod(&random(sh.output_len(), 3)).unwrap();
        let (mut y, mut dx, mut dw) = (dev.alloc(sh.output_len()).unwrap(), dev.alloc(sh.input_len()).unwrap(), dev.alloc(sh.weight_len()).unwrap());
        let mut g = c.benchmark_group(format!("conv_gpu/n{n}_c{ch}_{hw}x{hw}_d{dil}"));
        g.sample_size(20);
        g.throughput(Throughput::Elements(sh.flops() as u64));
        g.bench_function("ours_fwd", |b| {
            b.iter(|| {
                conv::conv2d_fwd(dev, &sh, &x, &w, None, &mut y).unwrap();
                dev.synchronize().unwrap();
            })
        });
        g.throughput(Throughput::Elements(3 * sh.flops() as u64));
        g.bench_function("ours_fwd_bwd", |b| {
            b.iter(|| {
                conv::conv2d_fwd(dev, &sh, &x, &w, None, &mut y).unwrap();
                conv::conv2d_bwd_input(dev, &sh, &dy, &w, &mut dx).unwrap();
                conv::conv2d_bwd_weight(dev, &sh, &x, &dy, &mut dw).unwrap();
                dev.synchronize().unwrap();
            })
        });
        g.finish();
    }
}

fn cudnn_reference(c: &mut Criterion, dev: &Arc<CudaDevice>) {
    // SAFETY: only tries to dlopen libcudnn.
    if !unsafe { cudnn::sys::is_culib_present() } {
        eprintln!("conv_gpu: libcudnn not found on the loader path: cuDNN reference skipped");
        return;
    }
    let stream = dev.stream().clone();
    let handle = Cudnn::new(stream.clone()).expect("cudnn handle");
    let nchw = cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    for &(n, ch, hw, dil) in &SHAPES {
        let sh = shape(n, ch, hw, dil);
        let d = |v: usize| v as i32;
        let xd = handle.create_4d_tensor::<f32>(nchw, [d(n), d(ch), d(hw), d(hw)]).unwrap();
        let yd = handle.create_4d_tensor::<f32>(nchw, [d(n), d(ch), d(hw), d(hw)]).unwrap();
        let wd = handle.create_4d_filter::<f32>(nchw, [d(ch), d(ch), 3, 3]).unwrap();
        let mut cd = handle
            .create_conv2d::<f32>([d(dil); 2], [1, 1], [d(dil); 2], cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
            .unwrap();
        // Plain fp32 (no TF32 tensor cores): the same arithmetic as our kernel.
        cd.set_math_type(cudnn::sys::cudnnMathType_t::CUDNN_FMA_MATH).unwrap();
        let x: CudaSlice<f32> = stream.clone_htod(&random(sh.input_len(), 1)).unwrap();
        let w: CudaSlice<f32> = stream.clone_htod(&random(sh.weight_len(), 2)).unwrap();
        let dy: CudaSlice<f32> = stream.clone_htod(&random(sh.output_len(), 3)).unwrap();
        let mut y: CudaSlice<f32> = stream.alloc_zeros(sh.output_len()).unwrap();
        let mut dx: CudaSlice<f32> = stream.alloc_zeros(sh.input_len()).unwrap();
        let mut dw: CudaSlice<f32> = stream.alloc_zeros(sh.weight_len()).unwrap();
        let fwd = ConvForward { conv: &cd, x: &xd, w: &wd, y: &yd };
        let bwd_data = ConvBackwardData { conv: &cd, dx: &xd, w: &wd, dy: &yd };
        let bwd_filter = ConvBackwardFilter { conv: &cd, x: &xd, dw: &wd, dy: &yd };
        let (fa, da, wa) = (fwd.pick_algorithm().unwrap(), bwd_data.pick_algorithm().unwrap(), bwd_filter.pick_algorithm().unwrap());
        let ws_len = fwd.get_workspace_size(fa).unwrap().max(bwd_data.get_workspace_size(da).unwrap()).max(bwd_filter.get_workspace_size(wa).unwrap()).max(1);
        let mut ws: CudaSlice<u8> = stream.alloc_zeros(ws_len).unwrap();
        let mut g = c.benchmark_group(format!("conv_gpu/n{n}_c{ch}_{hw}x{hw}_d{dil}"));
        g.sample_size(20);
        g.throughput(Throughput::Elements(sh.flops() as u64));
        g.bench_function("cudnn_fwd", |b| {
            b.iter(|| {
                // SAFETY: buffers match the descriptors (sizes from the same shape).
                unsafe { fwd.launch(fa, Some(&mut ws), (1.0, 0.0), &x, &w, &mut y) }.unwrap();
                stream.synchronize().unwrap();
            })
        });
        g.throughput(Throughput::Elements(3 * sh.flops() as u64));
        g.bench_function("cudnn_fwd_bwd", |b| {
            b.iter(|| {
                // SAFETY: as above.
                unsafe {
                    fwd.launch(fa, Some(&mut ws), (1.0, 0.0), &x, &w, &mut y).unwrap();
                    bwd_data.launch(da, Some(&mut ws), (1.0, 0.0), &mut dx, &w, &dy).unwrap();
                    bwd_filter.launch(wa, Some(&mut ws), (1.0, 0.0), &x, &mut dw, &dy).unwrap();
                }
                stream.synchronize().unwrap();
            })
        });
        g.finish();
    }
}

fn bench(c: &mut Criterion) {
    let dev = match CudaDevice::get(0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("conv_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    eprintln!("conv_gpu on {} (sm_{}{})", dev.name(), dev.compute_capability().0, dev.compute_capability().1);
    ours(c, &dev);
    cudnn_reference(c, &dev);
}

criterion_group!(benches, bench);
criterion_main!(benches);
