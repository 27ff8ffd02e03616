//! The co-segmentation network: shapes of every variant, symmetry of the co-attention,
//! gradients reaching every parameter, training on a tiny set, configuration errors.
//! The shapes and the gradients run on every device present (`test_device!`), the rest on the CPU.

mod common;

use coseg::Device;
use coseg::autograd::{ParamStore, no_grad};
use coseg::nn::{ChannelAttention, CoAttention, CosegNet, Decoder, ModelConfig, SpatialAttention};
use coseg::tensor::Tensor;
use coseg::train::{Optimizer, OptimizerParams};
use common::test_device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small(depth: usize) -> ModelConfig {
    ModelConfig { depth, width: 0.125, ..ModelConfig::default() }
}

fn input(n: usize, size: usize, seed: u64, device: Device) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::randn([n, 3, size, size], 0.0, 1.0, device, &mut rng).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.to_vec().unwrap().iter().zip(b.to_vec().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

test_device!(every_variant_gives_logits_at_the_input_size, |device| {
    let variants = [
        small(18),
        ModelConfig { decoder: Decoder::D1, multi_grid: false, ..small(50) },
        ModelConfig { output_stride: 16, channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Aspp, ..small(50) },
        ModelConfig { channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Msa, decoder: Decoder::D1, ..small(34) },
        ModelConfig { channel_attention: ChannelAttention::None, spatial_attention: SpatialAttention::None, ..small(18) },
        ModelConfig { danet: true, ..small(50) },
        ModelConfig { siamese: false, ..small(50) },
    ];
    let (a, b) = (input(2, 64, 1, device), input(2, 64, 2, device));
    for cfg in variants {
        let mut params = ParamStore::new(device, 7);
        let net = CosegNet::new(&cfg, &mut params).unwrap();
        let (la, lb) = no_grad(|| net.forward_pair(&a, &b, true)).unwrap();
        assert_eq!(la.dims(), [2, 2, 64, 64], "{}", cfg.name());
        assert_eq!(lb.dims(), [2, 2, 64, 64], "{}", cfg.name());
        assert!(la.to_vec().unwrap().iter().all(|v| v.is_finite()), "{}", cfg.name());
        let single = no_grad(|| net.forward_single(&a, false)).unwrap();
        assert_eq!(single.dims(), [2, 2, 64, 64], "{}", cfg.name());
        let e = net.embed(&a).unwrap();
        let c4 = if cfg.depth >= 50 { 256 } else { 64 };
        assert_eq!(e.dims(), [2, c4], "{}", cfg.name());
    }
});

/// Sets every DANet gamma (0 at initialisation, which would hide the attention branches).
fn open_danet_gammas(params: &ParamStore, value: f32) {
    for (name, t) in params.trainable() {
        if name.ends_with(".gamma") {
            t.assign(&Tensor::full(t.shape().clone(), value, t.device()).unwrap()).unwrap();
        }
    }
}

#[test]
fn swapping_the_pair_swaps_the_outputs() {
    let variants = [
        small(18),
        ModelConfig { channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Aspp, decoder: Decoder::D1, ..small(18) },
        ModelConfig { danet: true, ..small(18) },
    ];
    let (a, b) = (input(2, 48, 3, Device::Cpu), input(2, 48, 4, Device::Cpu));
    for cfg in variants {
        let mut params = ParamStore::new(Device::Cpu, 11);
        let net = CosegNet::new(&cfg, &mut params).unwrap();
        open_danet_gammas(&params, 0.5);
        for train in [false, true] {
            let (ab_a, ab_b) = no_grad(|| net.forward_pair(&a, &b, train)).unwrap();
            let (ba_b, ba_a) = no_grad(|| net.forward_pair(&b, &a, train)).unwrap();
            // Batch statistics sum in another order when swapped: a few ulps in training mode.
            let tol = if train { 1e-3 } else { 1e-5 };
            assert!(max_abs_diff(&ab_a, &ba_a) <= tol, "{} train={train}: a's logits changed", cfg.name());
            assert!(max_abs_diff(&ab_b, &ba_b) <= tol, "{} train={train}: b's logits changed", cfg.name());
        }
    }
}

#[test]
fn pairing_an_image_with_itself_is_forward_single() {
    for cfg in [small(18), ModelConfig { danet: true, ..small(18) }, ModelConfig { siamese: false, ..small(18) }] {
        let mut params = ParamStore::new(Device::Cpu, 5);
        let net = CosegNet::new(&cfg, &mut params).unwrap();
        open_danet_gammas(&params, 0.5);
        let x = input(1, 40, 9, Device::Cpu);
        let (pa, pb) = no_grad(|| net.forward_pair(&x, &x, false)).unwrap();
        let single = no_grad(|| net.forward_single(&x, false)).unwrap();
        assert!(max_abs_diff(&pa, &single) <= 1e-5, "{}", cfg.name());
        assert!(max_abs_diff(&pb, &single) <= 1e-5, "{}", cfg.name());
    }
}

test_device!(gradients_reach_every_parameter, |device| {
    let variants = [
        small(50),
        ModelConfig { channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Aspp, decoder: Decoder::D1, output_stride: 16, ..small(18) },
        ModelConfig { danet: true, ..small(18) },
        ModelConfig { siamese: false, ..small(18) },
    ];
    let (a, b) = (input(2, 32, 21, device), input(2, 32, 22, device));
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let target = Tensor::uniform([2, 32, 32], 0.0, 1.0, device, &mut rng).unwrap().affine(1.0, -0.5).unwrap().relu().unwrap().sqrt().unwrap();
    let target = Tensor::from_vec(target.to_vec().unwrap().iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect(), [2, 32, 32], device).unwrap();
    for cfg in variants {
        let mut params = ParamStore::new(device, 13);
        let net = CosegNet::new(&cfg, &mut params).unwrap();
        open_danet_gammas(&params, 0.5);
        let (la, lb) = net.forward_pair(&a, &b, true).unwrap();
        let loss = la.cross_entropy_2class(&target, None).unwrap().add(&lb.cross_entropy_2class(&target, None).unwrap()).unwrap();
        loss.backward().unwrap();
        let mut checked = 0;
        for (name, p) in params.trainable() {
            let g = p.grad().unwrap_or_else(|| panic!("{}: no gradient for {name}", cfg.name()));
            let norm: f32 = g.to_vec().unwrap().iter().map(|v| v * v).sum();
            assert!(norm > 0.0 && norm.is_finite(), "{}: gradient of {name} has squared norm {norm}", cfg.name());
            checked += 1;
        }
        assert!(checked > 20, "{}: only {checked} parameters", cfg.name());
    }
});

/// A tiny set: bright disks of random radius and place on noise; the label is the disk.
fn disk_set(n: usize, size: usize, seed: u64) -> (Tensor, Tensor) {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(n * 3 * size * size);
    let mut y = Vec::with_capacity(n * size * size);
    let mut masks = Vec::new();
    for _ in 0..n {
        let (cx, cy) = (rng.random_range(10.0..size as f32 - 10.0), rng.random_range(10.0..size as f32 - 10.0));
        let r: f32 = rng.random_range(4.0..9.0);
        let mask: Vec<f32> = (0..size * size)
            .map(|i| if ((i % size) as f32 - cx).hypot((i / size) as f32 - cy) <= r { 1.0 } else { 0.0 })
            .collect();
        masks.push(mask);
    }
    for mask in &masks {
        for _ in 0..3 {
            x.extend(mask.iter().map(|&m| m * 1.5 - 0.5 + rng.random_range(-0.3..0.3)));
        }
        y.extend(mask);
    }
    (Tensor::from_vec(x, [n, 3, size, size], Device::Cpu).unwrap(), Tensor::from_vec(y, [n, size, size], Device::Cpu).unwrap())
}

#[test]
fn a_few_sgd_steps_reduce_the_loss_on_a_tiny_set() {
    let cfg = ModelConfig { depth: 18, width: 0.125, ..ModelConfig::default() };
    let mut params = ParamStore::new(Device::Cpu, 17);
    let net = CosegNet::new(&cfg, &mut params).unwrap();
    let (xa, ya) = disk_set(4, 32, 31);
    let (xb, yb) = disk_set(4, 32, 32);
    let loss_of = |train: bool| -> Tensor {
        let (la, lb) = net.forward_pair(&xa, &xb, train).unwrap();
        la.cross_entropy_2class(&ya, None).unwrap().add(&lb.cross_entropy_2class(&yb, None).unwrap()).unwrap()
    };
    let first = loss_of(true).to_scalar().unwrap();
    // Plain SGD with momentum: v = 0.9 v + g, w -= 0.05 v.
    let mut sgd = Optimizer::new(OptimizerParams { momentum: 0.9, weight_decay: 0.0, ..OptimizerParams::paper_sgd() }).unwrap();
    let mut last = first;
    for _ in 0..12 {
        params.zero_grads();
        let loss = loss_of(true);
        last = loss.to_scalar().unwrap();
        loss.backward().unwrap();
        sgd.step(&params, 0.05).unwrap();
    }
    assert!(last.is_finite() && last < 0.6 * first, "loss {first} -> {last}");
}

#[test]
fn config_errors_name_the_key() {
    let cfg: ModelConfig = toml::from_str("depth = 50\nwidth = 0.5\ndecoder = \"D1\"\nspatial_attention = \"aspp\"").unwrap();
    assert_eq!((cfg.depth, cfg.width, cfg.decoder, cfg.spatial_attention), (50, 0.5, Decoder::D1, SpatialAttention::Aspp));
    assert_eq!(cfg.channel_attention, ChannelAttention::Se, "missing keys take the paper's default");
    let e = toml::from_str::<ModelConfig>("depht = 50").unwrap_err().to_string();
    assert!(e.contains("depht"), "{e}");
    let e = toml::from_str::<ModelConfig>("width = \"wide\"").unwrap_err().to_string();
    assert!(e.contains("width"), "{e}");
    let e = toml::from_str::<ModelConfig>("channel_attention = \"cbam\"").unwrap_err().to_string();
    assert!(e.contains("cbam"), "{e}");
    for (bad, word) in [(ModelConfig { depth: 42, ..small(18) }, "42"), (ModelConfig { output_stride: 32, ..small(18) }, "output_stride"), (ModelConfig { width: 0.0, ..small(18) }, "width")] {
        let mut params = ParamStore::new(Device::Cpu, 1);
        let e = CosegNet::new(&bad, &mut params).err().expect("a bad config is refused").to_string();
        assert!(e.contains(word), "{e}");
    }
    let mut params = ParamStore::new(Device::Cpu, 1);
    let net = CosegNet::new(&small(18), &mut params).unwrap();
    let e = net.forward_single(&Tensor::zeros([1, 4, 32, 32], Device::Cpu).unwrap(), false).unwrap_err().to_string();
    assert!(e.contains("[1, 4, 32, 32]"), "{e}");
    let e = net.forward_pair(&input(1, 32, 1, Device::Cpu), &input(2, 32, 1, Device::Cpu), false).unwrap_err().to_string();
    assert!(e.contains("[1, 3, 32, 32]") && e.contains("[2, 3, 32, 32]"), "{e}");
}

#[test]
fn csa_fuses_the_pair_channel_vectors_by_product() {
    use coseg::nn::attention::{AttentionSpec, eca_kernel};
    assert_eq!((eca_kernel(2048), eca_kernel(256), eca_kernel(64)), (7, 5, 3));
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    let fa = Tensor::randn([2, 32, 6, 6], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
    let fb = Tensor::randn([2, 32, 6, 6], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
    let fc = Tensor::randn([2, 32, 6, 6], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
    let spec = AttentionSpec { channels: 32, width: 0.125, output_stride: 8, channel: ChannelAttention::Se, spatial: SpatialAttention::Msa, danet: false };
    let mut params = ParamStore::new(Device::Cpu, 62);
    let att = CoAttention::new(&mut params, "att", spec).unwrap();
    let (ya, yb) = att.forward_pair(&fa, &fb, false).unwrap();
    // The formula written out: c = se(fa) * se(fb); f' = f * c * sigmoid(mean_c f).
    let p = |n: &str| params.get(n).unwrap().clone();
    let se = |f: &Tensor| -> Tensor {
        let v = f.global_avg_pool().unwrap().reshape([2, 32]).unwrap();
        let h = v.linear(&p("att.se.fc1.weight"), Some(&p("att.se.fc1.bias"))).unwrap().relu().unwrap();
        h.linear(&p("att.se.fc2.weight"), Some(&p("att.se.fc2.bias"))).unwrap().sigmoid().unwrap().reshape([2, 32, 1, 1]).unwrap()
    };
    let c = se(&fa).mul(&se(&fb)).unwrap();
    let msa = |f: &Tensor| f.mean(&[1], true).unwrap().sigmoid().unwrap();
    assert!(max_abs_diff(&ya, &fa.mul(&c).unwrap().mul(&msa(&fa)).unwrap()) < 1e-6);
    assert!(max_abs_diff(&yb, &fb.mul(&c).unwrap().mul(&msa(&fb)).unwrap()) < 1e-6);
    // The partner matters for every attention kind (DANet through its shared channel energy).
    for (channel, spatial, danet) in [(ChannelAttention::Eca, SpatialAttention::Aspp, false), (ChannelAttention::Se, SpatialAttention::None, false), (ChannelAttention::None, SpatialAttention::None, true)] {
        let mut params = ParamStore::new(Device::Cpu, 63);
        let att = CoAttention::new(&mut params, "att", AttentionSpec { channel, spatial, danet, ..spec }).unwrap();
        open_danet_gammas(&params, 0.5);
        let (with_b, _) = att.forward_pair(&fa, &fb, false).unwrap();
        let (with_c, _) = att.forward_pair(&fa, &fc, false).unwrap();
        assert!(max_abs_diff(&with_b, &with_c) > 1e-3, "{channel:?} {spatial:?} danet={danet}: partner ignored");
    }
}

/// The model's switch reaches its attention: DANet's fused position attention sums in f64 on the
/// CPU and the composed one in f32, so the logits differ in their last bits and agree to
/// round-off; CSA's fused CPU forward is its composed ops, to the bit.
#[test]
fn the_attention_switch_reaches_the_attention() {
    let (a, b) = (input(2, 64, 11, Device::Cpu), input(2, 64, 12, Device::Cpu));
    let logits = |cfg: &ModelConfig, fused: bool| {
        let mut params = ParamStore::new(Device::Cpu, 3);
        let mut net = CosegNet::new(cfg, &mut params).unwrap();
        open_danet_gammas(&params, 0.5);
        net.set_attention_fused(fused);
        no_grad(|| net.forward_pair(&a, &b, false)).unwrap().0
    };
    let danet = ModelConfig { danet: true, ..small(18) };
    let (f, c) = (logits(&danet, true), logits(&danet, false));
    let d = max_abs_diff(&f, &c);
    assert!(d > 0.0 && d < 1e-4, "DANet fused against composed: max difference {d}");
    let csa = small(18);
    assert_eq!(logits(&csa, true).to_vec().unwrap(), logits(&csa, false).to_vec().unwrap());
}
