//! ResNet geometry (torchvision's names, strides and dilations), torchvision weight loading and
//! checkpoint misfits.

use coseg::Device;
use coseg::autograd::{Init, ParamStore, no_grad};
use coseg::nn::{CosegNet, ModelConfig, ResNet, ResNetSpec, load_torchvision_resnet};
use coseg::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn spec(depth: usize, output_stride: usize, multi_grid: bool) -> ResNetSpec {
    ResNetSpec { depth, width: 0.125, output_stride, multi_grid, in_channels: 3 }
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("coseg-nn-{}-{name}", std::process::id()))
}

#[test]
fn dilations_and_output_strides_follow_torchvision() {
    let mut p = ParamStore::new(Device::Cpu, 1);
    let os8 = ResNet::new(spec(101, 8, false), &mut p, "").unwrap();
    let d = os8.dilations();
    assert_eq!(d[0], vec![1; 3]);
    assert_eq!(d[1], vec![1; 4]);
    assert_eq!(d[2].len(), 23);
    assert_eq!((d[2][0], d[2][1], d[2][22]), (1, 2, 2), "layer3: first block keeps the previous dilation");
    assert_eq!(d[3], vec![2, 4, 4]);
    let mut p = ParamStore::new(Device::Cpu, 1);
    assert_eq!(ResNet::new(spec(101, 8, true), &mut p, "").unwrap().dilations()[3], vec![2, 4, 8]);
    let mut p = ParamStore::new(Device::Cpu, 1);
    let os16 = ResNet::new(spec(50, 16, false), &mut p, "").unwrap().dilations();
    assert_eq!((os16[2].clone(), os16[3].clone()), (vec![1; 6], vec![1, 2, 2]));

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = Tensor::randn([1, 3, 64, 64], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
    for (depth, os, c1, c4) in [(18, 8, 8, 64), (50, 16, 32, 256)] {
        let mut p = ParamStore::new(Device::Cpu, 2);
        let net = ResNet::new(spec(depth, os, false), &mut p, "enc").unwrap();
        let f = no_grad(|| net.forward(&x, false)).unwrap();
        assert_eq!(f.layer1.dims(), [1, c1, 16, 16], "depth {depth}");
        assert_eq!(f.layer4.dims(), [1, c4, 64 / os, 64 / os], "depth {depth}");
    }
}

#[test]
fn parameter_names_are_torchvision_keys() {
    let mut p = ParamStore::new(Device::Cpu, 1);
    ResNet::new(ResNetSpec { depth: 50, width: 1.0, output_stride: 8, multi_grid: false, in_channels: 3 }, &mut p, "").unwrap();
    // torchvision resnet50's state dict without fc and num_batches_tracked: 53 convs + 53 BNs * 4.
    assert_eq!(p.len(), 53 + 53 * 4);
    for (name, shape) in [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("bn1.running_mean", vec![64]),
        ("layer1.0.conv1.weight", vec![64, 64, 1, 1]),
        ("layer1.0.downsample.0.weight", vec![256, 64, 1, 1]),
        ("layer1.0.downsample.1.running_var", vec![256]),
        ("layer3.5.conv2.weight", vec![256, 256, 3, 3]),
        ("layer4.2.bn3.weight", vec![2048]),
    ] {
        assert_eq!(p.get(name).unwrap_or_else(|| panic!("{name} missing")).dims(), shape.as_slice(), "{name}");
    }
    assert_eq!(p.num_trainable(), 25_557_032 - 2048 * 1000 - 1000, "torchvision resnet50 minus fc");
}

#[test]
fn torchvision_state_dict_loads_into_the_encoder_and_misfits_are_named() {
    // A "torchvision" file: a ResNet-18 trunk at width 0.125 with no prefix, plus fc and
    // num_batches_tracked as torchvision saves them.
    let mut tv = ParamStore::new(Device::Cpu, 41);
    ResNet::new(spec(18, 8, false), &mut tv, "").unwrap();
    let names: Vec<String> = tv.iter().map(|(n, _)| n.to_string()).collect();
    for n in &names {
        if n.ends_with("running_var") {
            tv.buffer(&n.replace("running_var", "num_batches_tracked"), [1], Init::Const(7.0)).unwrap();
        }
    }
    tv.var("fc.weight", [1000, 64], Init::Normal { mean: 0.0, std: 0.01 }).unwrap();
    let path = tmp("tv18.safetensors");
    tv.save(&path).unwrap();

    let cfg = ModelConfig { depth: 18, width: 0.125, multi_grid: false, ..ModelConfig::default() };
    let mut params = ParamStore::new(Device::Cpu, 42);
    let net = CosegNet::new(&cfg, &mut params).unwrap();
    let report = load_torchvision_resnet(&path, &mut params, "encoder").unwrap();
    assert_eq!(report.loaded.len(), names.len());
    assert!(report.unexpected.contains(&"fc.weight".to_string()) && report.unexpected.contains(&"bn1.num_batches_tracked".to_string()));
    for n in &names {
        assert_eq!(params.get(&format!("encoder.{n}")).unwrap().to_vec().unwrap(), tv.get(n).unwrap().to_vec().unwrap(), "{n}");
    }
    // The embedding now equals the torchvision trunk's pooled features.
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let x = Tensor::randn([2, 3, 48, 48], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
    let trunk = ResNet::new(spec(18, 8, false), &mut tv, "").unwrap();
    let want = no_grad(|| trunk.forward(&x, false).unwrap().layer4.global_avg_pool().unwrap()).to_vec().unwrap();
    assert_eq!(net.embed(&x).unwrap().to_vec().unwrap(), want);

    // Another depth: the first missing tensor is named, nothing changes.
    let cfg34 = ModelConfig { depth: 34, ..cfg.clone() };
    let mut p34 = ParamStore::new(Device::Cpu, 44);
    CosegNet::new(&cfg34, &mut p34).unwrap();
    let before = p34.get("encoder.conv1.weight").unwrap().to_vec().unwrap();
    let e = load_torchvision_resnet(&path, &mut p34, "encoder").unwrap_err().to_string();
    assert!(e.contains("'layer1.2.bn1.bias'"), "{e}");
    assert_eq!(p34.get("encoder.conv1.weight").unwrap().to_vec().unwrap(), before);
    // Another width: the first tensor of another shape is named with both shapes.
    let mut wide = ParamStore::new(Device::Cpu, 45);
    CosegNet::new(&ModelConfig { width: 0.25, ..cfg.clone() }, &mut wide).unwrap();
    let e = load_torchvision_resnet(&path, &mut wide, "encoder").unwrap_err().to_string();
    assert!(e.contains("'bn1.bias'") && e.contains("[8]") && e.contains("[16]"), "{e}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn checkpoint_of_another_architecture_names_the_first_misfit() {
    let cfg = ModelConfig { depth: 18, width: 0.125, ..ModelConfig::default() };
    let mut params = ParamStore::new(Device::Cpu, 51);
    CosegNet::new(&cfg, &mut params).unwrap();
    let path = tmp("ckpt.safetensors");
    params.save(&path).unwrap();

    let mut same = ParamStore::new(Device::Cpu, 52);
    CosegNet::new(&cfg, &mut same).unwrap();
    same.load(&path).unwrap();
    for (n, t) in params.iter() {
        assert_eq!(same.get(n).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{n}");
    }
    let mut eca = ParamStore::new(Device::Cpu, 53);
    CosegNet::new(&ModelConfig { channel_attention: coseg::nn::ChannelAttention::Eca, ..cfg.clone() }, &mut eca).unwrap();
    let e = eca.load(&path).unwrap_err().to_string();
    assert!(e.contains("attention.eca.weight"), "{e}");
    let mut d1 = ParamStore::new(Device::Cpu, 54);
    CosegNet::new(&ModelConfig { width: 0.25, ..cfg.clone() }, &mut d1).unwrap();
    let e = d1.load(&path).unwrap_err().to_string();
    assert!(e.contains("attention.se.fc1.bias"), "{e}");
    std::fs::remove_file(&path).ok();
}
