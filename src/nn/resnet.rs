//! ResNet (He et al. 2016) as torchvision builds it, with a width multiplier, the dilated
//! variant (DRN: atrous convolutions instead of the strides of the last stages) and multi-grid
//! rates in the last stage (DRN-MG).
//!
//! Parameter names are torchvision's state-dict keys under the given prefix (`conv1.weight`,
//! `bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`,
//! `layer1.0.downsample.1.running_var`, ...), so torchvision's weights load by name. There is no
//! `fc`: the network only uses the convolutional trunk.
//!
//! Strides and dilations follow torchvision's `replace_stride_with_dilation`: a dilated stage
//! drops its stride and multiplies the running dilation by 2; its first block still uses the
//! previous dilation (that is what torchvision does, and what pretrained features expect).
//! - output stride 16 = `[False, False, True]`: layer3 stride 2; layer4 blocks dilation 1, 2, 2, ...
//! - output stride 8 = `[False, True, True]`: layer3 blocks dilation 1, 2, 2, ...; layer4 2, 4, 4.
//! - multi-grid (DRN-MG): layer4's blocks use the paper's rates 2, 4, 8 exactly (block i gets
//!   `MULTI_GRID[i % 3]`), at either output stride; torchvision has no such option.
//!
//! Torchvision's ResNet v1.5 places a bottleneck's stride on its 3x3 convolution.

use super::layers::{BatchNorm2d, Conv2d, ConvSpec, conv_bn_chain, join, scaled};
use crate::autograd::{ParamStore, in_part};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Layer4's dilation rates under multi-grid (the paper's DRN-MG-101: "dilation rates of 2, 4, and 8").
pub const MULTI_GRID: [usize; 3] = [2, 4, 8];

/// Which ResNet: depth, width, output stride, multi-grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResNetSpec {
    pub depth: usize,
    pub width: f32,
    pub output_stride: usize,
    pub multi_grid: bool,
    pub in_channels: usize,
}

impl ResNetSpec {
    /// Blocks per stage and whether the blocks are bottlenecks (expansion 4) or basic (1).
    pub fn layout(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            d => return Err(Error::Config(format!("resnet depth {d} is not one of 18, 34, 50, 101, 152"))),
        })
    }
    fn expansion(&self) -> Result<usize> {
        Ok(if self.layout()?.1 { 4 } else { 1 })
    }
    /// Channels of layer1's output (the low-level features of decoder D2).
    pub fn layer1_channels(&self) -> Result<usize> {
        Ok(scaled(64, self.width) * self.expansion()?)
    }
    /// Channels of layer4's output (2048 for ResNet-50/101/152 at width 1, 512 for 18/34).
    pub fn layer4_channels(&self) -> Result<usize> {
        Ok(scaled(512, self.width) * self.expansion()?)
    }
    fn validate(&self) -> Result<()> {
        self.layout()?;
        if !(self.width > 0.0 && self.width.is_finite()) {
            return Err(Error::Config(format!("width {} must be a positive number", self.width)));
        }
        if self.output_stride != 8 && self.output_stride != 16 {
            return Err(Error::Config(format!("output_stride {} is not 8 or 16", self.output_stride)));
        }
        if self.in_channels == 0 {
            return Err(Error::Config("in_channels must be at least 1".into()));
        }
        Ok(())
    }
}

/// One residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1), with an optional
/// projection shortcut (`downsample.0` conv 1x1, `downsample.1` batch norm).
struct Block {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(params: &mut ParamStore, prefix: &str, bottleneck: bool, cin: usize, planes: usize, stride: usize, dilation: usize) -> Result<Block> {
        let expansion = if bottleneck { 4 } else { 1 };
        let cout = planes * expansion;
        let mut convs = Vec::new();
        let mut add = |params: &mut ParamStore, i: usize, spec: ConvSpec| -> Result<()> {
            let conv = Conv2d::new(params, &join(prefix, &format!("conv{i}")), spec)?;
            let bn = BatchNorm2d::new(params, &join(prefix, &format!("bn{i}")), spec.cout)?;
            convs.push((conv, bn));
            Ok(())
        };
        if bottleneck {
            add(params, 1, ConvSpec::new(cin, planes, 1))?;
            add(params, 2, ConvSpec::new(planes, planes, 3).stride(stride).dilation(dilation))?;
            add(params, 3, ConvSpec::new(planes, cout, 1))?;
        } else {
            add(params, 1, ConvSpec::new(cin, planes, 3).stride(stride).dilation(dilation))?;
            add(params, 2, ConvSpec::new(planes, planes, 3).dilation(dilation))?;
        }
        let downsample = if stride != 1 || cin != cout {
            Some((
                Conv2d::new(params, &join(prefix, "downsample.0"), ConvSpec::new(cin, cout, 1).stride(stride))?,
                BatchNorm2d::new(params, &join(prefix, "downsample.1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    /// relu(main branch + shortcut). Each batch norm but the last is applied with its ReLU by the
    /// next convolution as it reads its input (`BatchNorm2d::relu_into_conv`); the last adds the
    /// shortcut and applies the block's ReLU in its own pass (`BatchNorm2d::apply`), so the
    /// shortcut is computed first.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.after_conv(conv, x, train)?,
            None => x.clone(),
        };
        let pairs: Vec<(&Conv2d, &BatchNorm2d)> = self.convs.iter().map(|(c, b)| (c, b)).collect();
        let (y, partials, last_bn) = conv_bn_chain(&pairs, x, train)?;
        last_bn.apply(&y, partials.as_ref(), train, true, Some(&identity))
    }
}

/// The features a forward pass gives: layer1 (stride 4) for decoders that use low-level
/// detail, and layer4 (stride 8 or 16).
pub struct ResNetFeatures {
    pub layer1: Tensor,
    pub layer4: Tensor,
}

/// A ResNet trunk (stem, layer1..layer4; no pooling head).
pub struct ResNet {
    spec: ResNetSpec,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [Vec<Block>; 4],
}

impl ResNet {
    pub fn new(spec: ResNetSpec, params: &mut ParamStore, prefix: &str) -> Result<ResNet> {
        spec.validate()?;
        let (counts, bottleneck) = spec.layout()?;
        let expansion = spec.expansion()?;
        let stem = scaled(64, spec.width);
        let conv1 = Conv2d::new(params, &join(prefix, "conv1"), ConvSpec::new(spec.in_channels, stem, 7).stride(2))?;
        let conv1 = Conv2d { padding: 3, ..conv1 };
        let bn1 = BatchNorm2d::new(params, &join(prefix, "bn1"), stem)?;
        // torchvision's replace_stride_with_dilation for layer2..layer4.
        let dilate = [false, spec.output_stride == 8, true];
        let mut dilation = 1;
        let mut cin = stem;
        let mut layers: [Vec<Block>; 4] = Default::default();
        for (li, layer) in layers.iter_mut().enumerate() {
            let planes = scaled(64 << li, spec.width);
            let mut stride = if li == 0 { 1 } else { 2 };
            let previous = dilation;
            if li > 0 && dilate[li - 1] {
                dilation *= stride;
                stride = 1;
            }
            for b in 0..counts[li] {
                let d = if li == 3 && spec.multi_grid {
                    MULTI_GRID[b % MULTI_GRID.len()]
                } else if b == 0 {
                    previous
                } else {
                    dilation
                };
                let s = if b == 0 { stride } else { 1 };
                let block_prefix = join(prefix, &format!("layer{}.{b}", li + 1));
                layer.push(Block::new(params, &block_prefix, bottleneck, cin, planes, s, d)?);
                cin = planes * expansion;
            }
        }
        Ok(ResNet { spec, conv1, bn1, layers })
    }

    pub fn spec(&self) -> &ResNetSpec {
        &self.spec
    }

    /// Dilation of each block of each stage (for documentation and tests).
    pub fn dilations(&self) -> [Vec<usize>; 4] {
        self.layers.each_ref().map(|l| l.iter().map(|b| b.convs[if b.convs.len() == 3 { 1 } else { 0 }].0.dilation).collect())
    }

    /// (N, in_channels, H, W) -> layer1 (N, C1, H/4, W/4) and layer4 (N, C4, H/OS, W/OS)
    /// (sizes rounded up as the strided convolutions round).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<ResNetFeatures> {
        x.shape().expect_rank("ResNet::forward", 4, "(N,C,H,W)")?;
        if x.dims()[1] != self.spec.in_channels {
            return Err(Error::shape("ResNet::forward", format!("input {} has {} channels, the network takes {}", x.shape(), x.dims()[1], self.spec.in_channels)));
        }
        let y = in_part("encoder stem", || self.bn1.after_conv_relu(&self.conv1, x, train)?.max_pool2d(3, 2, 1))?;
        let mut y = self.run_layer(0, y, train)?;
        let layer1 = y.clone();
        for li in 1..4 {
            y = self.run_layer(li, y, train)?;
        }
        Ok(ResNetFeatures { layer1, layer4: y })
    }

    fn run_layer(&self, li: usize, mut y: Tensor, train: bool) -> Result<Tensor> {
        const PARTS: [&str; 4] = ["encoder layer1", "encoder layer2", "encoder layer3", "encoder layer4"];
        in_part(PARTS[li], || {
            for block in &self.layers[li] {
                y = block.forward(&y, train)?;
            }
            Ok(y)
        })
    }
}
