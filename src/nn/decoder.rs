//! Decoders from attended bottleneck features to per-pixel class logits at the input size.
//!
//! - D1 (after Chen et al., ACCV 2018, with fewer convolutions, as the paper says): 3x3 conv
//!   C -> 256w + BN + ReLU, bilinear upsample x2, 3x3 conv 256w -> 128w + BN + ReLU, 1x1
//!   classifier (with bias), bilinear upsample to the input size.
//! - D2 (DeepLabv3+, Chen et al., ECCV 2018): 1x1 reduce of the attended features C -> 256w +
//!   BN + ReLU, bilinear upsample to layer1's size (x OS/4); layer1's features 1x1-reduced to
//!   48w + BN + ReLU; concat; two 3x3 convs (-> 256w) + BN + ReLU; 1x1 classifier (with bias);
//!   bilinear upsample (x4) to the input size.
//!
//! `w` is the width multiplier; all upsampling is bilinear with align_corners = false.

use super::layers::{Conv2d, ConvBnRelu, ConvSpec, join, scaled};
use crate::autograd::ParamStore;
use crate::error::Result;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which decoder the Siamese network uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Decoder {
    D1,
    #[default]
    D2,
}

pub struct SegDecoder {
    kind: Decoder,
    /// D1: [3x3 C->256w, 3x3 256w->128w]; D2: [1x1 reduce, 1x1 low-level, 3x3, 3x3].
    convs: Vec<ConvBnRelu>,
    classifier: Conv2d,
}

impl SegDecoder {
    /// `channels`: attended features; `low_channels`: layer1's (used by D2).
    pub fn new(params: &mut ParamStore, prefix: &str, kind: Decoder, channels: usize, low_channels: usize, width: f32, classes: usize) -> Result<SegDecoder> {
        let (c256, c128, c48) = (scaled(256, width), scaled(128, width), scaled(48, width));
        let p = |name: &str| join(prefix, name);
        let (convs, last) = match kind {
            Decoder::D1 => (
                vec![
                    ConvBnRelu::new(params, &p("conv1"), ConvSpec::new(channels, c256, 3))?,
                    ConvBnRelu::new(params, &p("conv2"), ConvSpec::new(c256, c128, 3))?,
                ],
                c128,
            ),
            Decoder::D2 => (
                vec![
                    ConvBnRelu::new(params, &p("reduce"), ConvSpec::new(channels, c256, 1))?,
                    ConvBnRelu::new(params, &p("low"), ConvSpec::new(low_channels, c48, 1))?,
                    ConvBnRelu::new(params, &p("fuse1"), ConvSpec::new(c256 + c48, c256, 3))?,
                    ConvBnRelu::new(params, &p("fuse2"), ConvSpec::new(c256, c256, 3))?,
                ],
                c256,
            ),
        };
        let classifier = Conv2d::new(params, &p("classifier"), ConvSpec::new(last, classes, 1).with_bias())?;
        Ok(SegDecoder { kind, convs, classifier })
    }

    /// Attended features (N, C, h, w) and layer1 features (N, C1, H/4, W/4) -> logits
    /// (N, classes, out_h, out_w).
    pub fn forward(&self, features: &Tensor, layer1: &Tensor, out_h: usize, out_w: usize, train: bool) -> Result<Tensor> {
        let logits = match self.kind {
            Decoder::D1 => {
                let y = self.convs[0].forward(features, train)?;
                let (h, w) = (y.dims()[2], y.dims()[3]);
                let y = self.convs[1].forward(&y.resize_bilinear(2 * h, 2 * w)?, train)?;
                self.classifier.forward(&y)?
            }
            Decoder::D2 => {
                let (lh, lw) = (layer1.dims()[2], layer1.dims()[3]);
                let high = self.convs[0].forward(features, train)?.resize_bilinear(lh, lw)?;
                let low = self.convs[1].forward(layer1, train)?;
                let y = ConvBnRelu::chain(&self.convs[2..4], &Tensor::concat(&[&high, &low], 1)?, train)?;
                self.classifier.forward(&y)?
            }
        };
        logits.resize_bilinear(out_h, out_w)
    }
}
