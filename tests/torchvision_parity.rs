//! `coseg crops` + `coseg embed` on the DeepLesion sample against torchvision's dilated
//! ResNet-101 (`replace_stride_with_dilation=[False, True, True]`, eval mode, layer4 averaged).
//!
//! ImageNet weights cannot be fetched here, so both sides fill every tensor of the state dict
//! from its name and element index (the formula of scripts/torchvision_golden.py, mirrored
//! below) and only torchvision's output is committed: tests/data/torchvision_r101_dilated_formula.npy,
//! float32 [15, 2048]. The weights reach `coseg embed` as a torchvision-named .safetensors file, so
//! the key names, the strides and dilations, batch norm in eval mode and the crops are all checked.

use coseg::Device;
use coseg::autograd::ParamStore;
use coseg::data::npy::read_npy_f32;
use coseg::nn::{ModelConfig, ResNet};
use coseg::tensor::Tensor;
use std::path::Path;
use std::process::Command;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/deeplesion-sample");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torchvision_r101_dilated_formula.npy");

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

/// n values in [-1, 1), exact in f32: splitmix64 of fnv1a64(name) + (i + 1) * golden ratio.
fn uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 23) as f64 - 1.0
        })
        .collect()
}

/// Convolutions: variance 1/fan_in; batch norm: scale and variance in [0.5, 1], shift and mean in [-0.1, 0.1].
fn formula_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(name, n);
    let v: Vec<f64> = if name.ends_with("running_var") || (name.ends_with(".weight") && shape.len() == 1) {
        u.iter().map(|u| 0.75 + 0.25 * u).collect()
    } else if name.ends_with("running_mean") || name.ends_with(".bias") {
        u.iter().map(|u| 0.1 * u).collect()
    } else {
        let fan_in: usize = shape[1..].iter().product();
        let s = (3.0 / fan_in as f64).sqrt();
        u.iter().map(|u| u * s).collect()
    };
    v.into_iter().map(|v| v as f32).collect()
}

fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_coseg")).args(args).env("COSEG_NO_PROGRESS", "1").output().unwrap();
    assert!(out.status.success(), "coseg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_formula_matches_its_python_twin() {
    // Values printed by scripts/torchvision_golden.py for the same names.
    assert_eq!(uniform("conv1.weight", 3), vec![0.0901498794555664, 0.49032342433929443, -0.9541566371917725]);
    assert_eq!(formula_tensor("layer1.0.bn1.running_var", &[2]), vec![0.8231205f32, 0.9191407]);
    assert_eq!(formula_tensor("layer4.2.conv2.weight", &[1, 2, 1, 1]), vec![-0.6706702f32, 1.1971176]);
}

#[test]
fn embed_matches_torchvision_dilated_resnet101_to_float32_accuracy() {
    let dir = std::env::temp_dir().join(format!("coseg-tv-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Torchvision's names (no prefix), the formula's values.
    let cfg = ModelConfig { multi_grid: false, ..ModelConfig::default() };
    let mut tv = ParamStore::new(Device::Cpu, 0);
    ResNet::new(cfg.resnet(), &mut tv, "").unwrap();
    let mut count = 0;
    for (name, t) in tv.iter() {
        let dims = t.shape().dims().to_vec();
        t.assign(&Tensor::from_vec(formula_tensor(name, &dims), dims.as_slice(), Device::Cpu).unwrap()).unwrap();
        count += 1;
    }
    assert_eq!(count, 520, "torchvision's ResNet-101 trunk has 520 tensors besides fc and num_batches_tracked");
    let weights = dir.join("r101_formula.safetensors");
    tv.save(&weights).unwrap();

    let emb = dir.join("emb.npy");
    run(&["embed", "--weights", &s(&weights), "--data", SAMPLE, "--out", &s(&emb)]);
    let ours = read_npy_f32(&emb).unwrap();
    let theirs = read_npy_f32(GOLDEN).unwrap();
    assert_eq!(ours.shape, theirs.shape);
    let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, 0.0f32);
    for (a, b) in ours.data.iter().zip(&theirs.data) {
        diff += ((a - b) as f64).powi(2);
        norm += (*b as f64).powi(2);
        worst = worst.max((a - b).abs());
    }
    let rel = (diff / norm).sqrt();
    // Measured 8.3e-8 (max 4.8e-7): summation order is all that differs.
    eprintln!("relative L2 error {rel:.3e}, max abs {worst:.3e}");
    assert!(rel < 2e-6, "relative L2 error {rel:.3e} (max abs {worst:.3e}) against torchvision");
    std::fs::remove_dir_all(&dir).ok();
}
