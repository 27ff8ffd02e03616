//! The ops whose GPU kernels used to add with atomics, now deterministic (issue 13: the captured
//! and the eager step give the same losses; a run repeats): the weight gradient of a convolution
//! whose reduction is split over blocks (each split into its own slice, summed in order), at every
//! precision and tensor-core variant; the bilinear resize's gradient (a gather per input cell); and
//! a sum split over blocks. Each twice on the same inputs: the same bits, and close to the CPU.
//! Skips without a GPU; fails with REQUIRE_CUDA=1.

mod common;
mod gpu_common;
use coseg::backend::cuda::conv::{self, Conv2dShape, ConvPass};
use coseg::device::{Device, Precision, TcVariant};
use coseg::tensor::Tensor;
use common::test_gpu;
use gpu_common::*;

const GPU: Device = Device::Cuda(0);

const SPLIT_SHAPE: Conv2dShape = Conv2dShape { n: 8, c: 64, h: 16, w: 16, k: 96, r: 3, s: 3, stride: 1, pad: 2, dilation: 2 };

#[test]
fn the_weight_gradient_test_shape_is_split_on_an_h200() {
    for variant in TcVariant::ALL {
        for p in Precision::ALL {
            let plan = conv::plan(&SPLIT_SHAPE, ConvPass::WeightGrad, p, variant, 132);
            assert!(plan.splits > 1, "{variant} {p}: {plan:?}");
        }
    }
}

// A layer4-like convolution (N * OH * OW = 2,048 pixels to reduce over): its weight gradient is
// split at every precision and variant (checked from the plan; on the H200's 132 SMs also below).
test_gpu!(a_split_weight_gradient_repeats_to_the_bit, |dev| {
    let _one_at_a_time = serial();
    let sh = SPLIT_SHAPE;
    let mut r = rng(41);
    let (xv, wv) = (randn(&mut r, sh.input_len()), randn(&mut r, sh.weight_len()));
    let run = |device: Device| -> [Vec<f32>; 2] {
        let x = Tensor::from_vec(xv.clone(), [sh.n, sh.c, sh.h, sh.w], device).unwrap().into_var();
        let w = Tensor::from_vec(wv.clone(), [sh.k, sh.c, sh.r, sh.s], device).unwrap().into_var();
        let y = x.conv2d(&w, None, sh.stride, sh.pad, sh.dilation).unwrap();
        y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        [w.grad().unwrap().to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()]
    };
    let cpu = run(Device::Cpu);
    let _settings = DeviceSettings::saved(&dev);
    for variant in TcVariant::ALL {
        dev.set_tc_variant(variant);
        for p in Precision::ALL {
            dev.set_precision(p);
            let plan = conv::plan(&sh, ConvPass::WeightGrad, p, variant, dev.sm_count() as usize);
            assert!(plan.splits > 1, "{variant} {p}: {} is not split ({plan:?}): the test misses the split path", plan.kernel.name);
            let (a, b) = (run(GPU), run(GPU));
            assert_eq!(bits(&a[0]), bits(&b[0]), "{variant} {p}: the weight gradient changed between two runs");
            let tol = match p {
                Precision::Fp32 => 1e-4,
                Precision::Tf32 => 1e-2,
                Precision::Bf16 => 3e-2,
            };
            assert_close(&format!("{variant} {p} dw"), &a[0], &cpu[0], tol);
        }
    }
});

// The decoder's 8x upsampling and an odd downsampling: the gradient repeats and matches the CPU.
test_gpu!(the_resize_gradient_repeats_to_the_bit, |_dev| {
    let _one_at_a_time = serial();
    let mut r = rng(42);
    for (dims, (oh, ow)) in [([2usize, 3, 16, 16], (128usize, 128usize)), ([1, 2, 33, 17], (16, 8)), ([3, 1, 7, 5], (13, 11))] {
        let n: usize = dims.iter().product();
        let (xv, gv) = (randn(&mut r, n), randn(&mut r, dims[0] * dims[1] * oh * ow));
        let run = |device: Device| {
            let x = Tensor::from_vec(xv.clone(), dims, device).unwrap().into_var();
            let g = Tensor::from_vec(gv.clone(), [dims[0], dims[1], oh, ow], device).unwrap();
            x.resize_bilinear(oh, ow).unwrap().mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            x.grad().unwrap().to_vec().unwrap()
        };
        let (a, b) = (run(GPU), run(GPU));
        assert_eq!(bits(&a), bits(&b), "{dims:?} -> {oh}x{ow}: the gradient changed between two runs");
        assert_close(&format!("{dims:?} -> {oh}x{ow}"), &a, &run(Device::Cpu), F32_TOL);
    }
});

// A bias-gradient-like sum (channels kept, over N*H*W = 2^19 terms: split over blocks).
test_gpu!(a_split_sum_repeats_to_the_bit, |_dev| {
    let _one_at_a_time = serial();
    let mut r = rng(43);
    let dims = [32usize, 4, 128, 128];
    let xv = randn(&mut r, dims.iter().product());
    let run = |device: Device| Tensor::from_vec(xv.clone(), dims, device).unwrap().sum(&[0, 2, 3], false).unwrap().to_vec().unwrap();
    let (a, b) = (run(GPU), run(GPU));
    assert_eq!(bits(&a), bits(&b), "the split sum changed between two runs");
    assert_close("sum over N, H, W", &a, &run(Device::Cpu), 1e-5);
});
