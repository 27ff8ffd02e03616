//! `coseg crops` and `coseg embed` on a small synthetic DeepLesion: shapes, File_name order,
//! rows equal to the library's input and embedding of each lesion.

use coseg::Device;
use coseg::autograd::{ParamStore, no_grad};
use coseg::data::npy::read_npy_f32;
use coseg::data::synth::{SynthParams, synth_dataset};
use coseg::data::{CropParams, read_dl_info};
use coseg::nn::input::lesion_input;
use coseg::nn::{CosegNet, ModelConfig, ResNet};
use coseg::tensor::Tensor;
use std::path::Path;
use std::process::Command;

fn coseg(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coseg")).args(args).env("COSEG_NO_PROGRESS", "1").output().unwrap();
    assert!(out.status.success(), "coseg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn crops_and_embed_write_the_network_input_and_features_in_dl_info_order() {
    let dir = std::env::temp_dir().join(format!("coseg-nn-cli-{}", std::process::id()));
    let data = dir.join("data");
    synth_dataset(&data, &SynthParams { lesions: 5, seed: 3, size: 192, neighbours: true }).unwrap();
    let info = read_dl_info(data.join("DL_info.csv")).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let crops = dir.join("crops.npy");
    coseg(&["crops", "--data", &s(&data), "--out", &s(&crops)]);
    let c = read_npy_f32(&crops).unwrap();
    assert_eq!(c.shape, vec![5, 3, 128, 128]);
    let names: Vec<String> = std::fs::read_to_string(dir.join("crops.txt")).unwrap().lines().map(String::from).collect();
    assert_eq!(names, info.records.iter().map(|r| r.file_name.clone()).collect::<Vec<_>>());
    let per = 3 * 128 * 128;
    for (i, rec) in info.records.iter().enumerate() {
        assert_eq!(c.data[i * per..(i + 1) * per], lesion_input(&data, rec, &CropParams::default()).unwrap()[..], "row {i}");
    }

    // Torchvision-style weights (no prefix) for a small encoder, then `embed` with that model.
    let cfg = ModelConfig { depth: 18, width: 0.125, multi_grid: false, ..ModelConfig::default() };
    let mut tv = ParamStore::new(Device::Cpu, 9);
    ResNet::new(cfg.resnet(), &mut tv, "").unwrap();
    let weights = dir.join("tv.safetensors");
    tv.save(&weights).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(&model, "depth = 18\nwidth = 0.125\nmulti_grid = false\n").unwrap();
    let emb = dir.join("emb.npy");
    coseg(&["embed", "--weights", &s(&weights), "--data", &s(&data), "--out", &s(&emb), "--model", &s(&model), "--batch", "2"]);
    let e = read_npy_f32(&emb).unwrap();
    assert_eq!(e.shape, vec![5, 64]);
    let mut params = ParamStore::new(Device::Cpu, 10);
    let net = CosegNet::new(&cfg, &mut params).unwrap();
    coseg::nn::load_torchvision_resnet(&weights, &mut params, "encoder").unwrap();
    let x = Tensor::from_vec(c.data.clone(), [5, 3, 128, 128], Device::Cpu).unwrap();
    let want = no_grad(|| net.embed(&x)).unwrap().to_vec().unwrap();
    let worst = e.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-5, "embed rows differ from the library's by {worst}");

    // A model file with an unknown key is refused, naming it.
    std::fs::write(&model, "depth = 18\nwidht = 0.125\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coseg")).args(["embed", "--weights", &s(&weights), "--data", &s(&data), "--out", &s(&emb), "--model", &s(&model)]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("widht"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}
