//! The co-segmentation network (paper sections 2.2-2.3): ResNet encoders (plain, dilated DRN,
//! multi-grid DRN-MG), bottleneck co-attention (SE / ECA channel, MSA / ASPP spatial, DANet),
//! decoders D1 / D2, the Siamese model and the FCN-32 baseline, and torchvision weight loading.
//!
//! ```text
//! a, b (N,3,128,128) --concat--> ResNet (shared) --> layer4 fa | fb --> CoAttention(fa, fb)
//!                                     |  layer1 (low-level)                 | fa', fb'
//!                                     +-------------------------> Decoder D1 | D2 (shared)
//!                                                                    --> logits (N,2,128,128) each
//! ```
//!
//! # API (what training, evaluation and the CLI use)
//! ```text
//! let cfg = ModelConfig::default();                 // DRN-MG-101 CSA(SE+MSA) + D2
//! let mut params = ParamStore::new(Device::Cpu, seed); // the seed sets the initial weights
//! let net = CosegNet::new(&cfg, &mut params)?;      // parameters now live in `params`
//! load_torchvision_resnet(Path::new("resnet101.safetensors"), &mut params, "encoder")?;
//! let (la, lb) = net.forward_pair(&a, &b, true)?;   // (N,2,H,W) logits for each side
//! let l = net.forward_single(&x, false)?;           // FCN-32, or the image paired with itself
//! let e = net.embed(&x)?;                           // (N, 2048 x width), no_grad, eval mode
//! ```
//! - [`ModelConfig`]: serde, `deny_unknown_fields`, every key optional (default = the paper's
//!   DRN-MG-101 CSA + D2): `depth` 18|34|50|101|152, `width`, `output_stride` 8|16,
//!   `multi_grid`, `channel_attention` none|se|eca, `spatial_attention` none|msa|aspp, `danet`,
//!   `decoder` D1|D2, `siamese` (false = FCN-32), `in_channels` 3, `classes` 2.
//! - Checkpoints are the [`ParamStore`](crate::autograd::ParamStore) saved as safetensors;
//!   loading one of another architecture names the first tensor that doesn't fit.
//! - Input: [`input`]: crops normalised with ImageNet's mean/std (`input::normalise`).
//! - Inference: wrap `forward_*` with `train = false` in [`no_grad`](crate::autograd::no_grad).
//!
//! Details and the exact choices (dilation rates, how the pair's channel vectors are fused,
//! the decoders' layers) are in the submodules' docs: [`resnet`], [`attention`], [`decoder`],
//! [`model`], [`pretrained`].

pub mod attention;
pub mod decoder;
pub mod input;
pub mod layers;
pub mod model;
pub mod pretrained;
pub mod resnet;

pub use attention::{ChannelAttention, CoAttention, SpatialAttention};
pub use decoder::Decoder;
pub use model::{CosegNet, ModelConfig};
pub use pretrained::{load_encoder_weights, load_torchvision_resnet};
pub use resnet::{MULTI_GRID, ResNet, ResNetSpec};
