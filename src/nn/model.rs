//! The Siamese co-segmentation network and the FCN-32 single-image baseline (paper section 2.2,
//! Table 1 row 1), configured by [`ModelConfig`].

use super::attention::{AttentionSpec, ChannelAttention, CoAttention, SpatialAttention};
use super::decoder::{Decoder, SegDecoder};
use super::layers::{Conv2d, ConvSpec};
use super::resnet::{ResNet, ResNetFeatures, ResNetSpec};
use crate::autograd::{ParamStore, in_part, no_grad};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The network's architecture. `Default` is the paper's best model, DRN-MG-101 CSA + D2:
/// dilated ResNet-101 at output stride 8 with multi-grid rates 2, 4, 8, SE channel attention
/// fused across the pair, MSA spatial attention, the DeepLabv3+ decoder.
///
/// In TOML every key is optional (missing keys take the default) and an unknown key is an
/// error naming it: `channel_attention = "se" | "eca" | "none"`, `spatial_attention = "msa" |
/// "aspp" | "none"`, `decoder = "D1" | "D2"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// ResNet depth: 18, 34 (basic blocks), 50, 101, 152 (bottlenecks).
    pub depth: usize,
    /// Channel multiplier (1.0 = torchvision's widths); small values for tests and the CPU.
    pub width: f32,
    /// 8 or 16: layer3 and layer4 (8) or only layer4 (16) dilated instead of strided.
    pub output_stride: usize,
    /// Layer4's blocks at dilation rates 2, 4, 8 (DRN-MG).
    pub multi_grid: bool,
    pub channel_attention: ChannelAttention,
    pub spatial_attention: SpatialAttention,
    /// DANet's position + channel attention instead of channel/spatial attention.
    pub danet: bool,
    pub decoder: Decoder,
    /// false: the FCN-32 baseline (encoder + 1x1 classifier + upsampling, one image at a time);
    /// the attention and decoder keys are then unused.
    pub siamese: bool,
    /// Input channels: 3 (slices key-1, key, key+1).
    pub in_channels: usize,
    /// Output classes: 2 (background, lesion).
    pub classes: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            depth: 101,
            width: 1.0,
            output_stride: 8,
            multi_grid: true,
            channel_attention: ChannelAttention::Se,
            spatial_attention: SpatialAttention::Msa,
            danet: false,
            decoder: Decoder::D2,
            siamese: true,
            in_channels: 3,
            classes: 2,
        }
    }
}

impl ModelConfig {
    /// The encoder part of the configuration.
    pub fn resnet(&self) -> ResNetSpec {
        ResNetSpec { depth: self.depth, width: self.width, output_stride: self.output_stride, multi_grid: self.multi_grid, in_channels: self.in_channels }
    }
    /// A short name in the paper's style, e.g. `DRN-MG-101 CSA(SE+MSA) + D2` or `DRN-101 FCN-32`.
    pub fn name(&self) -> String {
        let enc = format!("DRN{}-{}{}", if self.multi_grid { "-MG" } else { "" }, self.depth, if self.width != 1.0 { format!(" x{}", self.width) } else { String::new() });
        if !self.siamese {
            return format!("{enc} FCN-32");
        }
        let att = if self.danet { "DANet".to_string() } else { format!("CSA({:?}+{:?})", self.channel_attention, self.spatial_attention).to_uppercase() };
        format!("{enc} {att} + {:?}", self.decoder)
    }
}

enum Head {
    Siamese { attention: CoAttention, decoder: SegDecoder },
    Fcn { classifier: Conv2d },
}

/// The co-segmentation network: one encoder shared by both images of a pair, attention in the
/// bottleneck, one decoder shared by both (or the FCN-32 baseline when `siamese` is false).
///
/// Parameters in the store: `encoder.*` (torchvision ResNet names), `attention.*`,
/// `decoder.*`, and `classifier.*` for FCN-32.
///
/// A pair runs as one batch of 2N images through the encoder and decoder (the weights are
/// shared, so this is the same network as two passes, with one GEMM per layer instead of two);
/// batch norm therefore normalises both images of every pair with the same statistics in
/// training, which keeps the network symmetric in a and b.
pub struct CosegNet {
    cfg: ModelConfig,
    encoder: ResNet,
    head: Head,
}

impl CosegNet {
    /// Builds the network, creating its parameters in `params` (drawn from the store's seeded
    /// generator) or reusing those already there with the same names and shapes.
    pub fn new(cfg: &ModelConfig, params: &mut ParamStore) -> Result<CosegNet> {
        if cfg.classes == 0 {
            return Err(Error::Config("classes must be at least 1".into()));
        }
        let encoder = ResNet::new(cfg.resnet(), params, "encoder")?;
        let c4 = cfg.resnet().layer4_channels()?;
        let head = if cfg.siamese {
            let spec = AttentionSpec {
                channels: c4,
                width: cfg.width,
                output_stride: cfg.output_stride,
                channel: cfg.channel_attention,
                spatial: cfg.spatial_attention,
                danet: cfg.danet,
            };
            let attention = CoAttention::new(params, "attention", spec)?;
            let decoder = SegDecoder::new(params, "decoder", cfg.decoder, attention.out_channels(), cfg.resnet().layer1_channels()?, cfg.width, cfg.classes)?;
            Head::Siamese { attention, decoder }
        } else {
            Head::Fcn { classifier: Conv2d::new(params, "classifier", ConvSpec::new(c4, cfg.classes, 1).with_bias())? }
        };
        Ok(CosegNet { cfg: cfg.clone(), encoder, head })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn encoder(&self) -> &ResNet {
        &self.encoder
    }

    /// The attention's fused kernels (`true`) or its composed generic ops (`false`), as
    /// [`CoAttention::set_fused`] (the before and after of the attention kernels, e.g. in
    /// `benches/step_gpu.rs`). The FCN-32 baseline has no attention: nothing changes.
    pub fn set_attention_fused(&mut self, fused: bool) {
        if let Head::Siamese { attention, .. } = &mut self.head {
            attention.set_fused(fused);
        }
    }

    fn check_input(&self, op: &'static str, x: &Tensor) -> Result<()> {
        x.shape().expect_rank(op, 4, "(N,C,H,W)")?;
        let d = x.dims();
        if d[1] != self.cfg.in_channels || d[0] == 0 || d[2] < 8 || d[3] < 8 {
            return Err(Error::shape(op, format!("input {} must be (N>=1, {}, H>=8, W>=8)", x.shape(), self.cfg.in_channels)));
        }
        Ok(())
    }

    /// `a`, `b`: (N, C, H, W) crops of the two lesions of each pair; logits (N, classes, H, W)
    /// for each. `train`: batch statistics in batch norm (and their running update).
    pub fn forward_pair(&self, a: &Tensor, b: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        const OP: &str = "CosegNet::forward_pair";
        self.check_input(OP, a)?;
        if a.shape() != b.shape() {
            return Err(Error::shape(OP, format!("the two sides of a pair batch differ: {} and {}", a.shape(), b.shape())));
        }
        let n = a.dims()[0];
        let both = in_part("pair split and join", || Tensor::concat(&[a, b], 0))?;
        let logits = match &self.head {
            Head::Fcn { .. } => self.forward_single(&both, train)?,
            Head::Siamese { attention, decoder } => {
                let ResNetFeatures { layer1, layer4 } = self.encoder.forward(&both, train)?;
                let attended = in_part("attention", || {
                    let halves = layer4.split(0, &[n, n])?;
                    let (fa, fb) = attention.forward_pair(&halves[0], &halves[1], train)?;
                    Tensor::concat(&[&fa, &fb], 0)
                })?;
                in_part("decoder", || decoder.forward(&attended, &layer1, a.dims()[2], a.dims()[3], train))?
            }
        };
        let mut halves = in_part("pair split and join", || logits.split(0, &[n, n]))?.into_iter();
        Ok((halves.next().expect("two halves"), halves.next().expect("two halves")))
    }

    /// One image at a time: the FCN-32 baseline, or the Siamese network with each image as its
    /// own partner. Logits (N, classes, H, W).
    pub fn forward_single(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input("CosegNet::forward_single", x)?;
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let ResNetFeatures { layer1, layer4 } = self.encoder.forward(x, train)?;
        match &self.head {
            Head::Fcn { classifier } => in_part("decoder", || classifier.forward(&layer4)?.resize_bilinear(h, w)),
            Head::Siamese { attention, decoder } => {
                let attended = in_part("attention", || attention.forward_single(&layer4, train))?;
                in_part("decoder", || decoder.forward(&attended, &layer1, h, w, train))
            }
        }
    }

    /// Global-average-pooled layer4 features of the encoder, (N, C4) (C4 = 2048 x width for
    /// ResNet-50/101/152): the lesion embedding. Inference only (running batch-norm statistics,
    /// nothing recorded for gradients).
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input("CosegNet::embed", x)?;
        no_grad(|| {
            let f = self.encoder.forward(x, false)?.layer4;
            let (n, c) = (f.dims()[0], f.dims()[1]);
            f.global_avg_pool()?.reshape([n, c])
        })
    }
}
