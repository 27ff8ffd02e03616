//! The co-segmentation network: shapes of every variant, symmetry of the co-attention,
//! gradients reaching every parameter, training on a tiny set, configuration errors.

use coseg::Device;
use coseg::autograd::{ParamStore, no_grad};
use coseg::nn::{ChannelAttention, CosegNet, Decoder, ModelConfig, SpatialAttention};
use coseg::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small(depth: usize) -> ModelConfig {
    ModelConfig { depth, width: 0.125, ..ModelConfig::default() }
}

fn input(n: usize, size: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::randn([n, 3, size, size], 0.0, 1.0, Device::Cpu, &mut rng).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.to_vec().unwrap().iter().zip(b.to_vec().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn every_variant_gives_logits_at_the_input_size() {
    let variants = [
        small(18),
        ModelConfig { decoder: Decoder::D1, multi_grid: false, ..small(50) },
        ModelConfig { output_stride: 16, channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Aspp, ..small(50) },
        ModelConfig { channel_attention: ChannelAttention::Eca, spatial_attention: SpatialAttention::Msa, decoder: Decoder::D1, ..small(34) },
        ModelConfig { channel_attention: ChannelAttention::None, spatial_attention: SpatialAttention::None, ..small(18) },
        ModelConfig { danet: true, ..small(50) },
        ModelConfig { siamese: false, ..small(50) },
    ];
    let (a, b) = (input(2, 64, 1), input(2, 64, 2));
    for cfg in variants {
        let mut params = ParamStore::new(Device::Cpu, 7);
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
}
