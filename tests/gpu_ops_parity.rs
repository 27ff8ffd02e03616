//! Tensor-level parity of every op on cuda:0 against the CPU: the same random inputs, forward
//! and backward through autograd on both devices, compared by ||gpu - cpu|| / ||cpu|| (f32: 1e-5
//! for element-wise work, looser where the GPU sums many terms in f32 where the CPU uses f64).
//! Ends with a whole tiny ResNet-18 forward + backward and the optimisers' one-launch steps. Skips without a GPU; fails with
//! REQUIRE_CUDA=1. What an op refuses, on every device, is tests/op_edge_cases.rs.

mod common;
mod gpu_common;
use coseg::Error;
use coseg::autograd::{Init, ParamStore};
use coseg::device::Device;
use coseg::nn::resnet::{ResNet, ResNetSpec};
use coseg::ops::BatchNormOptions;
use coseg::tensor::Tensor;
use coseg::train::{Optimizer, OptimizerParams, poly_lr};
use common::test_gpu;
use gpu_common::*;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const GPU: Device = Device::Cuda(0);
/// Reductions over thousands of terms, batch statistics, cuBLAS: f32 sums in another order.
const SUM_TOL: f64 = 1e-4;

/// One input of an op under test: its dims, values, and whether it is a variable.
struct Input {
    dims: Vec<usize>,
    data: Vec<f32>,
    var: bool,
}

fn normal(rng: &mut ChaCha8Rng, dims: &[usize]) -> Input {
    let n = dims.iter().product();
    Input {
        dims: dims.to_vec(),
        data: randn(rng, n).into_iter().map(|v| 2.0 * v).collect(),
        var: true,
    }
}
/// Values in [0.5, 2): for log, sqrt, powf and divisors.
fn positive(rng: &mut ChaCha8Rng, dims: &[usize]) -> Input {
    let n = dims.iter().product();
    Input {
        dims: dims.to_vec(),
        data: (0..n).map(|_| rng.random_range(0.5f32..2.0)).collect(),
        var: true,
    }
}
/// 0/1 labels (targets, masks; constants).
fn labels(rng: &mut ChaCha8Rng, dims: &[usize], p_one: f64) -> Input {
    let n = dims.iter().product();
    Input {
        dims: dims.to_vec(),
        data: (0..n)
            .map(|_| rng.random_bool(p_one) as u8 as f32)
            .collect(),
        var: false,
    }
}
fn constant(input: Input) -> Input {
    Input {
        var: false,
        ..input
    }
}

/// What one device computed: the output, each input's gradient, each input's final values
/// (running statistics are updated in place).
struct Run {
    y: Vec<f32>,
    grads: Vec<Option<Vec<f32>>>,
    after: Vec<Vec<f32>>,
}

type OpFn<'a> = &'a dyn Fn(&[Tensor]) -> coseg::Result<Tensor>;

fn run(inputs: &[Input], device: Device, f: OpFn) -> Run {
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|i| {
            let t = Tensor::from_vec(i.data.clone(), i.dims.clone(), device).unwrap();
            if i.var { t.into_var() } else { t }
        })
        .collect();
    let y = f(&ts).unwrap();
    assert_eq!(y.device(), device);
    // A random weighting of the output, the same on both devices, so every output element
    // sends a different gradient back.
    let mut wr = ChaCha8Rng::seed_from_u64(99);
    let w = Tensor::from_vec(randn(&mut wr, y.numel()), y.shape().clone(), device).unwrap();
    let loss = y.mul(&w).unwrap().sum_all().unwrap();
    if loss.tracks_grad() {
        loss.backward().unwrap();
    }
    Run {
        y: y.to_vec().unwrap(),
        grads: ts
            .iter()
            .map(|t| t.grad().map(|g| g.to_vec().unwrap()))
            .collect(),
        after: ts.iter().map(|t| t.to_vec().unwrap()).collect(),
    }
}

/// Runs `f` on both devices and compares output, gradients and updated inputs.
fn check(name: &str, tol: f64, inputs: &[Input], f: OpFn) {
    let cpu = run(inputs, Device::Cpu, f);
    let gpu = run(inputs, GPU, f);
    assert_close(&format!("{name} forward"), &gpu.y, &cpu.y, tol);
    for (i, (g, c)) in gpu.grads.iter().zip(&cpu.grads).enumerate() {
        match (g, c) {
            (Some(g), Some(c)) => assert_close(&format!("{name} gradient of input {i}"), g, c, tol),
            (None, None) => {}
            _ => panic!("{name}: input {i} has a gradient on one device only"),
        }
        assert_close(
            &format!("{name} input {i} after the step"),
            &gpu.after[i],
            &cpu.after[i],
            tol,
        );
    }
}

test_gpu!(gpu_elementwise_ops_match_cpu, |_dev| {
    let mut r = rng(1);
    // Broadcasts of several ranks, a rank-5 one that merges to more than 4 dims included.
    let pairs: &[(&[usize], &[usize])] = &[
        (&[2, 3, 4, 5], &[3, 1, 1]),
        (&[2, 1, 4, 1], &[1, 3, 1, 5]),
        (&[3, 5], &[5]),
        (&[2, 1, 3, 1, 4], &[1, 5, 1, 6, 1]),
        (&[7], &[]),
    ];
    for (ad, bd) in pairs {
        let ins = [normal(&mut r, ad), positive(&mut r, bd)];
        check(&format!("add {ad:?} {bd:?}"), F32_TOL, &ins, &|t| {
            t[0].add(&t[1])
        });
        check(&format!("sub {ad:?} {bd:?}"), F32_TOL, &ins, &|t| {
            t[0].sub(&t[1])
        });
        check(&format!("mul {ad:?} {bd:?}"), F32_TOL, &ins, &|t| {
            t[0].mul(&t[1])
        });
        check(&format!("div {ad:?} {bd:?}"), F32_TOL, &ins, &|t| {
            t[0].div(&t[1])
        });
    }
    let x = [normal(&mut r, &[3, 4, 5, 6])];
    check("affine", F32_TOL, &x, &|t| t[0].affine(-1.5, 0.25));
    check("relu", F32_TOL, &x, &|t| t[0].relu());
    check("sigmoid", F32_TOL, &x, &|t| t[0].sigmoid());
    check("tanh", F32_TOL, &x, &|t| t[0].tanh());
    check("exp", F32_TOL, &x, &|t| t[0].exp());
    check("sqr", F32_TOL, &x, &|t| t[0].sqr());
    check("abs", F32_TOL, &x, &|t| t[0].abs());
    check("clamp", F32_TOL, &x, &|t| t[0].clamp(-0.5, 1.0));
    let p = [positive(&mut r, &[3, 4, 5, 6])];
    check("log", F32_TOL, &p, &|t| t[0].log());
    check("sqrt", F32_TOL, &p, &|t| t[0].sqrt());
    check("powf", F32_TOL, &p, &|t| t[0].powf(1.7));
    // Dropout draws its mask on the host from the caller's generator: the same on both devices.
    check("dropout", F32_TOL, &x, &|t| {
        t[0].dropout(0.3, true, &mut ChaCha8Rng::seed_from_u64(5))
    });
});

test_gpu!(gpu_reductions_and_layout_ops_match_cpu, |_dev| {
    let mut r = rng(2);
    let x = [normal(&mut r, &[4, 6, 17, 19])];
    check("sum axes 0,2", SUM_TOL, &x, &|t| t[0].sum(&[0, 2], false));
    check("mean axes 1,3 keepdim", SUM_TOL, &x, &|t| {
        t[0].mean(&[1, 3], true)
    });
    check("mean_all", SUM_TOL, &x, &|t| t[0].mean_all());
    check("global_avg_pool", SUM_TOL, &x, &|t| t[0].global_avg_pool());
    // Six alternating runs of kept and summed axes: the GPU reduces in stages.
    let alt = [normal(&mut r, &[2, 3, 4, 3, 2, 5])];
    check("sum alternating axes", SUM_TOL, &alt, &|t| {
        t[0].sum(&[1, 3, 5], true)
    });
    let small = [normal(&mut r, &[3, 1, 5])];
    check("broadcast_to", F32_TOL, &small, &|t| {
        t[0].broadcast_to(&[2, 3, 4, 5].into())
    });
    check("permute", F32_TOL, &x, &|t| t[0].permute(&[2, 0, 3, 1]));
    check("transpose+reshape", F32_TOL, &x, &|t| {
        t[0].transpose(1, 3)?.reshape([4, 19 * 17, 6])
    });
    // Copies that transpose a matrix, plain or batched: nd.cu's tiled transpose_f32.
    check("matrix transpose", F32_TOL, &x, &|t| t[0].reshape([24, 17 * 19])?.transpose(0, 1));
    check("batched transpose", F32_TOL, &x, &|t| t[0].reshape([4, 6 * 17, 19])?.transpose(1, 2));
    check("narrow", F32_TOL, &x, &|t| t[0].narrow(1, 2, 3));
    check("split", F32_TOL, &x, &|t| {
        let parts = t[0].split(2, &[5, 12])?;
        parts[0].sum(&[2], true)?.add(&parts[1].mean(&[2], true)?)
    });
    let cat = [
        normal(&mut r, &[2, 3, 4, 5]),
        normal(&mut r, &[2, 1, 4, 5]),
        normal(&mut r, &[2, 4, 4, 5]),
    ];
    check("concat axis 1", F32_TOL, &cat, &|t| {
        Tensor::concat(&[&t[0], &t[1], &t[2]], 1)
    });
    let rows = [normal(&mut r, &[3, 4]), normal(&mut r, &[2, 4])];
    check("concat axis 0", F32_TOL, &rows, &|t| {
        Tensor::concat(&[&t[0], &t[1]], 0)
    });
    // Gradient accumulation: one tensor used three times.
    check("accumulated gradient", F32_TOL, &small, &|t| {
        t[0].mul(&t[0])?.add(&t[0].sigmoid()?)
    });
});

test_gpu!(gpu_products_and_convolutions_match_cpu, |_dev| {
    let mut r = rng(3);
    let mm = [normal(&mut r, &[13, 21]), normal(&mut r, &[21, 9])];
    check("matmul", SUM_TOL, &mm, &|t| t[0].matmul(&t[1]));
    let bmm = [normal(&mut r, &[3, 16, 8]), normal(&mut r, &[3, 8, 16])];
    check("bmm", SUM_TOL, &bmm, &|t| t[0].bmm(&t[1]));
    let lin = [
        normal(&mut r, &[2, 5, 12]),
        normal(&mut r, &[7, 12]),
        normal(&mut r, &[7]),
    ];
    check("linear", SUM_TOL, &lin, &|t| {
        t[0].linear(&t[1], Some(&t[2]))
    });
    let conv = [
        normal(&mut r, &[2, 5, 13, 11]),
        normal(&mut r, &[6, 5, 3, 3]),
        normal(&mut r, &[6]),
    ];
    check("conv2d", SUM_TOL, &conv, &|t| {
        t[0].conv2d(&t[1], Some(&t[2]), 1, 1, 1)
    });
    check("conv2d strided", SUM_TOL, &conv, &|t| {
        t[0].conv2d(&t[1], Some(&t[2]), 2, 1, 1)
    });
    check("conv2d dilated", SUM_TOL, &conv, &|t| {
        t[0].conv2d(&t[1], None, 1, 2, 2)
    });
    let c1 = [normal(&mut r, &[3, 16, 1, 1]), normal(&mut r, &[1, 1, 5])];
    check("conv1d_channels", F32_TOL, &c1, &|t| {
        t[0].conv1d_channels(&t[1])
    });
});

test_gpu!(gpu_norm_pool_resize_softmax_and_losses_match_cpu, |_dev| {
    let mut r = rng(4);
    let bn = |r: &mut ChaCha8Rng| {
        [
            normal(r, &[3, 4, 7, 6]),
            positive(r, &[4]),
            normal(r, &[4]),
            constant(normal(r, &[4])),
            constant(positive(r, &[4])),
        ]
    };
    for training in [true, false] {
        let opts = BatchNormOptions {
            training,
            ..Default::default()
        };
        // "after the step" compares the running statistics updated in place.
        check(
            &format!("batch_norm training={training}"),
            SUM_TOL,
            &bn(&mut r),
            &|t| t[0].batch_norm(&t[1], &t[2], &t[3], &t[4], opts),
        );
    }
    let x = [normal(&mut r, &[2, 3, 15, 14])];
    check("max_pool2d", F32_TOL, &x, &|t| t[0].max_pool2d(3, 2, 1));
    check("resize up", F32_TOL, &x, &|t| t[0].resize_bilinear(31, 23));
    check("resize down", F32_TOL, &x, &|t| t[0].resize_bilinear(7, 5));
    check("softmax channels", F32_TOL, &x, &|t| t[0].softmax(1));
    check("softmax rows", F32_TOL, &x, &|t| t[0].softmax(-1));
    let ce = [
        normal(&mut r, &[2, 2, 9, 8]),
        labels(&mut r, &[2, 9, 8], 0.3),
        labels(&mut r, &[2, 9, 8], 0.8),
    ];
    check("cross_entropy masked", SUM_TOL, &ce, &|t| {
        t[0].cross_entropy_2class(&t[1], Some(&t[2]))
    });
    check("cross_entropy", SUM_TOL, &ce, &|t| {
        t[0].cross_entropy_2class(&t[1], None)
    });
    let bce = [
        normal(&mut r, &[4, 1, 6, 5]),
        constant(positive(&mut r, &[4, 1, 6, 5])),
    ];
    check("bce_with_logits", SUM_TOL, &bce, &|t| {
        t[0].bce_with_logits(&t[1].mul_scalar(0.5)?)
    });
});

test_gpu!(gpu_ops_refuse_inputs_on_different_devices, |_dev| {
    let mut r = rng(5);
    let a = Tensor::randn([2, 3], 0.0, 1.0, Device::Cpu, &mut r).unwrap();
    let b = a.to_device(GPU).unwrap();
    let w = Tensor::randn([3, 3], 0.0, 1.0, GPU, &mut r).unwrap();
    let cases: Vec<(&str, coseg::Result<Tensor>)> = vec![
        ("add", a.add(&b)),
        ("mul", b.mul(&a)),
        ("matmul", a.matmul(&w)),
        ("concat", Tensor::concat(&[&a, &b], 0)),
        ("linear", a.linear(&w, None)),
    ];
    for (op, res) in cases {
        match res {
            Err(e @ Error::DeviceMismatch { first, second, .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with(op) && msg.contains("cpu") && msg.contains("cuda:0"), "{msg}");
                assert!(matches!((first, second), (Device::Cpu, Device::Cuda(0)) | (Device::Cuda(0), Device::Cpu)));
            }
            other => panic!("{op} mixing cpu and cuda:0 gave {other:?}"),
        }
    }
});

test_gpu!(gpu_tiny_resnet18_forward_and_backward_match_cpu, |_dev| {
    let spec = ResNetSpec {
        depth: 18,
        width: 0.125,
        output_stride: 8,
        multi_grid: false,
        in_channels: 3,
    };
    let mut r = rng(6);
    let x = randn(&mut r, 2 * 3 * 32 * 32);
    let step = |device: Device| {
        let mut params = ParamStore::new(device, 17);
        let net = ResNet::new(spec, &mut params, "encoder").unwrap();
        let input = Tensor::from_vec(x.clone(), [2, 3, 32, 32], device).unwrap();
        let f = net.forward(&input, true).unwrap();
        let mut wr = ChaCha8Rng::seed_from_u64(8);
        let w1 = Tensor::from_vec(
            randn(&mut wr, f.layer1.numel()),
            f.layer1.shape().clone(),
            device,
        )
        .unwrap();
        let w4 = Tensor::from_vec(
            randn(&mut wr, f.layer4.numel()),
            f.layer4.shape().clone(),
            device,
        )
        .unwrap();
        let loss = f
            .layer1
            .mul(&w1)
            .unwrap()
            .mean_all()
            .unwrap()
            .add(&f.layer4.mul(&w4).unwrap().mean_all().unwrap())
            .unwrap();
        loss.backward().unwrap();
        let named: Vec<(String, Vec<f32>, Option<Vec<f32>>)> = params
            .iter()
            .map(|(name, t)| {
                (
                    name.to_string(),
                    t.to_vec().unwrap(),
                    t.grad().map(|g| g.to_vec().unwrap()),
                )
            })
            .collect();
        (
            f.layer1.to_vec().unwrap(),
            f.layer4.to_vec().unwrap(),
            named,
        )
    };
    let (c1, c4, cp) = step(Device::Cpu);
    let (g1, g4, gp) = step(GPU);
    assert_close("resnet layer1", &g1, &c1, SUM_TOL);
    assert_close("resnet layer4", &g4, &c4, SUM_TOL);
    assert_eq!(cp.len(), gp.len());
    let mut with_grad = 0;
    for ((name, cv, cg), (gname, gv, gg)) in cp.iter().zip(&gp) {
        assert_eq!(name, gname);
        // Running statistics were updated in place by the training-mode forward.
        assert_close(&format!("{name} values"), gv, cv, SUM_TOL);
        match (cg, gg) {
            (Some(c), Some(g)) => {
                assert_close(&format!("{name} gradient"), g, c, 1e-3);
                with_grad += 1;
            }
            (None, None) => {}
            _ => panic!("{name}: gradient on one device only"),
        }
    }
    assert!(with_grad > 20, "only {with_grad} parameters got gradients");
});

test_gpu!(gpu_optimiser_steps_match_cpu_and_resume, |_dev| {
    for params in [OptimizerParams::paper_sgd(), OptimizerParams::paper_adam()] {
        let train = |device: Device| {
            let mut store = ParamStore::new(device, 3);
            let a = store
                .var(
                    "a",
                    [5, 7],
                    Init::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                )
                .unwrap();
            // Longer than one chunk of the one-launch kernel.
            let b = store
                .var("b", [40000], Init::Uniform { lo: -1.0, hi: 1.0 })
                .unwrap();
            // No gradient: left alone.
            store.var("c", [3], Init::Const(0.5)).unwrap();
            let mut gr = rng(4);
            let mut step = |opt: &mut Optimizer, i: usize| {
                store.zero_grads();
                let ga = Tensor::from_vec(randn(&mut gr, 35), [5, 7], device).unwrap();
                let gb = Tensor::from_vec(randn(&mut gr, 40000), [40000], device).unwrap();
                let loss = a
                    .mul(&ga)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .add(&b.mul(&gb).unwrap().sum_all().unwrap())
                    .unwrap();
                loss.backward().unwrap();
                opt.step(&store, poly_lr(0.01, i, 10, 0.9)).unwrap();
            };
            let mut opt = Optimizer::new(params).unwrap();
            for i in 0..3 {
                step(&mut opt, i);
            }
            // Save (device state copied back), load into a fresh optimiser, go on.
            let path = std::env::temp_dir().join(format!(
                "coseg-gpu-optim-{:?}-{}.safetensors",
                params.kind, device
            ));
            opt.save(&path).unwrap();
            let mut resumed = Optimizer::new(params).unwrap();
            resumed.load(&path).unwrap();
            std::fs::remove_file(&path).ok();
            step(&mut resumed, 3);
            assert_eq!(resumed.steps_taken(), 4);
            store
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_vec().unwrap()))
                .collect::<Vec<_>>()
        };
        let (cpu, gpu) = (train(Device::Cpu), train(GPU));
        for ((name, c), (_, g)) in cpu.iter().zip(&gpu) {
            assert_close(&format!("{:?} {name}", params.kind), g, c, F32_TOL);
        }
        assert_eq!(gpu.iter().find(|(n, _)| n == "c").unwrap().1, vec![0.5; 3]);
    }
});
