//! Attention in the bottleneck of the Siamese network, on the layer4 features `fa`, `fb` of the
//! two images of a pair (paper section 2.3; Chen et al., ACCV 2018, for the co-attention).
//!
//! # Channel-spatial co-attention (CSA)
//! ```text
//! c    = ca(fa) ⊙ ca(fb)           (N, C, 1, 1): one channel vector for BOTH images
//! fa'  = fa ⊙ c ⊙ sa(fa)           sa: (N, 1, H, W), each image its own
//! fb'  = fb ⊙ c ⊙ sb(fb)
//! ```
//! The two channel vectors are fused by their element-wise **product**: a channel passes only as
//! far as both images want it, so what the pair shares is kept and what only one has is
//! suppressed ("preserving channels that contribute the most to both feature maps"). The fusion
//! is symmetric, so swapping a and b swaps the outputs. Channel and spatial maps are both
//! computed from the raw features, independently, and applied as element-wise products (the
//! paper's Fig. 1).
//!
//! The feature-sized work runs on fused ops (`Tensor::csa_pool`: the channel gate's pool and
//! MSA's mean over channels in one pass; `Tensor::csa_gate`: `f ⊙ c ⊙ s` in one pass); the small
//! (N, C) gate math stays composed. They run by default on CUDA; the CPU keeps the composed ops,
//! the reference (the fused CPU backward sums in another order, so the CPU's training curves
//! would move in their last digits). [`CoAttention::set_fused`] chooses either on any device; both
//! give the same values (the CPU forward to the bit).
//!
//! - Channel attention SE (Hu et al.): GAP -> FC C->C/16 -> ReLU -> FC C/16->C -> sigmoid.
//! - Channel attention ECA (Wang et al.): GAP -> 1-D conv across channels, kernel
//!   k = t if t odd else t+1, t = |(log2 C + 1) / 2| (7 for C = 2048) -> sigmoid.
//! - Spatial attention MSA: sigmoid of the mean over channels.
//! - Spatial attention ASPP (DeepLabv3's pyramid): 1x1 branch, three 3x3 branches at rates
//!   6, 12, 18 (x2 at output stride 8), and an image-pooling branch (GAP -> 1x1 conv with bias ->
//!   ReLU, no batch norm so a batch of one image still trains), each 256 x width channels; concat ->
//!   1x1 projection + BN + ReLU -> 1x1 conv to one channel -> sigmoid.
//!
//! # DANet (Fu et al., CVPR 2019) in place of CSA
//! Per image, 3x3 conv C -> C/4 (+BN+ReLU) feeds each branch:
//! - position attention: q, k = 1x1 convs to C/32, v = 1x1 conv to C/4; A = softmax over positions of
//!   qᵀk (N, HW, HW); out = γ_p · v Aᵀ + x, γ_p initialised to 0. Composed from bmm and softmax by
//!   default on every device: the fused op ([`Tensor::position_attention`], flash-style: A is
//!   never written to device memory) measured slower on the H200 at the paper's shape in its fp32
//!   kernels (0.131 ms forward against 0.085, 0.72 ms forward + backward against 0.31, captured;
//!   the composed bmm takes TF32 tensor cores at tf32 and bf16). At tf32 and bf16 the fused op
//!   now runs on TF32 tensor cores too (kernels/danet_tc.cu), not yet timed on a GPU, so the
//!   default stays composed until `benches/csa_gpu.rs` shows which is faster;
//!   [`CoAttention::set_fused`]`(true)` runs it;
//! - channel attention: energy E = x xᵀ (N, C/4, C/4); DANet's `max(E) - E` before the softmax
//!   equals `-E` (softmax ignores a per-row shift); out = γ_c · softmax(-E) x + x, γ_c = 0 at first.
//!
//! For the pair, the channel branch's energy is the mean of both images' energies, so both
//! are re-weighted by the channel affinities they share (symmetric, as CSA). Each branch then
//! has a 3x3 conv (+BN+ReLU) and the two are summed: C/4 channels go to the decoder.

use super::layers::{Conv2d, ConvBnRelu, ConvSpec, Linear, join, scaled};
use crate::autograd::{Init, ParamStore};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which channel attention CSA uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelAttention {
    None,
    #[default]
    Se,
    Eca,
}

/// Which spatial attention CSA uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpatialAttention {
    None,
    #[default]
    Msa,
    Aspp,
}

/// ECA's adaptive kernel size for `c` channels (gamma 2, b 1).
pub fn eca_kernel(c: usize) -> usize {
    let t = (((c as f32).log2() + 1.0) / 2.0).abs() as usize;
    if t % 2 == 1 { t } else { t + 1 }
}

enum ChannelGate {
    Se { fc1: Linear, fc2: Linear },
    Eca { weight: Tensor },
}

impl ChannelGate {
    /// The pair's shared gate `gate(pa) ⊙ gate(pb)` from the images' global average pools
    /// (N, C, 1, 1); `pb` None: the image with itself (its gate squared). Fused, the gates of both
    /// images and their product are one op ([`Tensor::se_pair_gate`]: 2 launches forward, 3
    /// backward on a GPU, where each image's composed SE takes about 6 and 12;
    /// [`Tensor::eca_pair_gate`]: 1 and 2, where the composed ECA pair takes 5 and 9).
    fn shared(&self, pa: &Tensor, pb: Option<&Tensor>, fused: bool) -> Result<Tensor> {
        match (fused, self) {
            (true, ChannelGate::Se { fc1, fc2 }) => return Tensor::se_pair_gate(pa, pb.unwrap_or(pa), &fc1.weight, &fc1.bias, &fc2.weight, &fc2.bias),
            (true, ChannelGate::Eca { weight }) => return Tensor::eca_pair_gate(pa, pb.unwrap_or(pa), weight),
            _ => {}
        }
        let ca = self.on_pool(pa)?;
        match pb {
            Some(pb) => ca.mul(&self.on_pool(pb)?),
            None => ca.mul(&ca),
        }
    }
    /// The gate from the global average pool (N, C, 1, 1).
    fn on_pool(&self, pooled: &Tensor) -> Result<Tensor> {
        let (n, c) = (pooled.dims()[0], pooled.dims()[1]);
        let logits = match self {
            ChannelGate::Se { fc1, fc2 } => fc2.forward(&fc1.forward(&pooled.reshape([n, c])?)?.relu()?)?,
            ChannelGate::Eca { weight } => pooled.conv1d_channels(weight)?,
        };
        logits.reshape([n, c, 1, 1])?.sigmoid()
    }
}

struct Aspp {
    branches: Vec<ConvBnRelu>,
    pool: Conv2d,
    project: ConvBnRelu,
    to_map: Conv2d,
}

impl Aspp {
    fn new(params: &mut ParamStore, prefix: &str, cin: usize, width: f32, output_stride: usize) -> Result<Aspp> {
        let mid = scaled(256, width);
        let scale = 16 / output_stride;
        let mut branches = vec![ConvBnRelu::new(params, &join(prefix, "b0"), ConvSpec::new(cin, mid, 1))?];
        for (i, rate) in [6, 12, 18].into_iter().enumerate() {
            branches.push(ConvBnRelu::new(params, &join(prefix, &format!("b{}", i + 1)), ConvSpec::new(cin, mid, 3).dilation(rate * scale))?);
        }
        Ok(Aspp {
            branches,
            pool: Conv2d::new(params, &join(prefix, "pool"), ConvSpec::new(cin, mid, 1).with_bias())?,
            project: ConvBnRelu::new(params, &join(prefix, "project"), ConvSpec::new(5 * mid, mid, 1))?,
            to_map: Conv2d::new(params, &join(prefix, "to_map"), ConvSpec::new(mid, 1, 1).with_bias())?,
        })
    }
    /// (N, C, H, W) -> (N, 1, H, W) in (0, 1).
    fn forward(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        let (h, w) = (f.dims()[2], f.dims()[3]);
        let mut outs = self.branches.iter().map(|b| b.forward(f, train)).collect::<Result<Vec<_>>>()?;
        let pooled = self.pool.forward(&f.global_avg_pool()?)?.relu()?;
        let mut full = pooled.shape().dims().to_vec();
        (full[2], full[3]) = (h, w);
        outs.push(pooled.broadcast_to(&full.into())?);
        let refs: Vec<&Tensor> = outs.iter().collect();
        self.to_map.forward(&self.project.forward(&Tensor::concat(&refs, 1)?, train)?)?.sigmoid()
    }
}

enum SpatialGate {
    Msa,
    Aspp(Box<Aspp>),
}

impl SpatialGate {
    fn forward(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            SpatialGate::Msa => f.mean(&[1], true)?.sigmoid(),
            SpatialGate::Aspp(a) => a.forward(f, train),
        }
    }
}

/// CSA: fused channel gate and per-image spatial gate.
struct Csa {
    channel: Option<ChannelGate>,
    spatial: Option<SpatialGate>,
    /// Whether the fused kernels ([`Tensor::csa_pool`], [`Tensor::csa_gate`]) run the
    /// feature-sized work; false composes it from generic ops (the reference they are tested
    /// and benchmarked against); None: fused on CUDA, composed on the CPU.
    fused: Option<bool>,
}

impl Csa {
    fn fused_on(&self, f: &Tensor) -> bool {
        self.fused.unwrap_or(matches!(f.device(), crate::device::Device::Cuda(_)))
    }

    /// One image's global average pool (when there is a channel gate) and spatial map. With MSA,
    /// fused: the pool and MSA's mean over channels come from one pass over `f`.
    fn pool_and_spatial(&self, f: &Tensor, train: bool) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.fused_on(f) && matches!(self.spatial, Some(SpatialGate::Msa)) {
            let (gap, mean) = f.csa_pool()?;
            return Ok((self.channel.is_some().then_some(gap), Some(mean.sigmoid()?)));
        }
        let gap = self.channel.as_ref().map(|_| f.global_avg_pool()).transpose()?;
        let s = self.spatial.as_ref().map(|s| s.forward(f, train)).transpose()?;
        Ok((gap, s))
    }

    /// The shared channel gate from the images' pools (`pb` None: the image `f` with itself);
    /// None without a channel gate.
    fn shared_gate(&self, f: &Tensor, pa: Option<Tensor>, pb: Option<Tensor>) -> Result<Option<Tensor>> {
        match (&self.channel, pa) {
            (Some(g), Some(pa)) => g.shared(&pa, pb.as_ref(), self.fused_on(f)).map(Some),
            _ => Ok(None),
        }
    }

    /// `f ⊙ c ⊙ s` with the gates present; fused, one pass over `f` when both are.
    fn apply(&self, f: &Tensor, c: Option<&Tensor>, s: Option<&Tensor>) -> Result<Tensor> {
        if let (true, Some(c), Some(s)) = (self.fused_on(f), c, s) {
            return f.csa_gate(c, s);
        }
        let mut y = f.clone();
        if let Some(c) = c {
            y = y.mul(c)?;
        }
        if let Some(s) = s {
            y = y.mul(s)?;
        }
        Ok(y)
    }
}

struct DaNet {
    reduce_p: ConvBnRelu,
    reduce_c: ConvBnRelu,
    query: Conv2d,
    key: Conv2d,
    value: Conv2d,
    gamma_p: Tensor,
    gamma_c: Tensor,
    out_p: ConvBnRelu,
    out_c: ConvBnRelu,
    /// Whether the position attention runs fused ([`Tensor::position_attention`]) or composed
    /// (the reference, and the default: the faster on the H200, see the module's header).
    fused: bool,
}

impl DaNet {
    fn new(params: &mut ParamStore, prefix: &str, cin: usize) -> Result<DaNet> {
        let inter = (cin / 4).max(1);
        let qk = (inter / 8).max(1);
        Ok(DaNet {
            reduce_p: ConvBnRelu::new(params, &join(prefix, "reduce_p"), ConvSpec::new(cin, inter, 3))?,
            reduce_c: ConvBnRelu::new(params, &join(prefix, "reduce_c"), ConvSpec::new(cin, inter, 3))?,
            query: Conv2d::new(params, &join(prefix, "pam.query"), ConvSpec::new(inter, qk, 1).with_bias())?,
            key: Conv2d::new(params, &join(prefix, "pam.key"), ConvSpec::new(inter, qk, 1).with_bias())?,
            value: Conv2d::new(params, &join(prefix, "pam.value"), ConvSpec::new(inter, inter, 1).with_bias())?,
            gamma_p: params.var(&join(prefix, "pam.gamma"), [1], Init::Const(0.0))?,
            gamma_c: params.var(&join(prefix, "cam.gamma"), [1], Init::Const(0.0))?,
            out_p: ConvBnRelu::new(params, &join(prefix, "out_p"), ConvSpec::new(inter, inter, 3))?,
            out_c: ConvBnRelu::new(params, &join(prefix, "out_c"), ConvSpec::new(inter, inter, 3))?,
            fused: false,
        })
    }

    /// Position attention on `x`: fused ([`Tensor::position_attention`]) or composed from bmm and
    /// softmax, as [`CoAttention::set_fused`] chose (unset: composed).
    fn position(&self, x: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = x.shape().nchw();
        let q = self.query.forward(x)?.flatten_from(2)?; // (N, c', HW)
        let k = self.key.forward(x)?.flatten_from(2)?; // (N, c', HW)
        let v = self.value.forward(x)?.flatten_from(2)?; // (N, C, HW)
        let out = if self.fused {
            q.position_attention(&k, &v)?
        } else {
            let attn = q.transpose(1, 2)?.bmm(&k)?.softmax(-1)?; // (N, HW, HW): row i = weights over positions j
            v.bmm(&attn.transpose(1, 2)?)?
        };
        out.reshape([n, c, h, w])?.mul(&self.gamma_p)?.add(x)
    }

    /// Channel energy x xᵀ: (N, C, C).
    fn energy(x: &Tensor) -> Result<Tensor> {
        let flat = x.flatten_from(2)?;
        flat.bmm(&flat.transpose(1, 2)?)
    }

    fn channel(&self, x: &Tensor, energy: &Tensor) -> Result<Tensor> {
        let [n, c, h, w] = x.shape().nchw();
        let attn = energy.neg()?.softmax(-1)?;
        let out = attn.bmm(&x.flatten_from(2)?)?.reshape([n, c, h, w])?;
        out.mul(&self.gamma_c)?.add(x)
    }

    fn forward_pair(&self, fa: &Tensor, fb: Option<&Tensor>, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        let xa = self.reduce_c.forward(fa, train)?;
        let xb = fb.map(|f| self.reduce_c.forward(f, train)).transpose()?;
        let energy = match &xb {
            Some(xb) => Self::energy(&xa)?.add(&Self::energy(xb)?)?.mul_scalar(0.5)?,
            None => Self::energy(&xa)?,
        };
        let one = |f: &Tensor, x: &Tensor| -> Result<Tensor> {
            let p = self.out_p.forward(&self.position(&self.reduce_p.forward(f, train)?)?, train)?;
            let c = self.out_c.forward(&self.channel(x, &energy)?, train)?;
            p.add(&c)
        };
        let ya = one(fa, &xa)?;
        let yb = match (fb, &xb) {
            (Some(f), Some(x)) => Some(one(f, x)?),
            _ => None,
        };
        Ok((ya, yb))
    }
}

enum Kind {
    Csa(Csa),
    DaNet(Box<DaNet>),
}

/// The bottleneck attention of the Siamese network (CSA or DANet), see the module docs.
pub struct CoAttention {
    kind: Kind,
    out_channels: usize,
}

/// What builds a [`CoAttention`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    pub channels: usize,
    pub width: f32,
    pub output_stride: usize,
    pub channel: ChannelAttention,
    pub spatial: SpatialAttention,
    pub danet: bool,
}

impl CoAttention {
    /// Parameters under `prefix` (`se.fc1`, `se.fc2`, `eca.weight`, `aspp.*`, `danet.*`).
    pub fn new(params: &mut ParamStore, prefix: &str, spec: AttentionSpec) -> Result<CoAttention> {
        let c = spec.channels;
        if c == 0 {
            return Err(Error::invalid("CoAttention::new", "zero input channels"));
        }
        if spec.danet {
            let d = DaNet::new(params, &join(prefix, "danet"), c)?;
            let out_channels = d.out_p.out_channels();
            return Ok(CoAttention { kind: Kind::DaNet(Box::new(d)), out_channels });
        }
        let channel = match spec.channel {
            ChannelAttention::None => None,
            ChannelAttention::Se => {
                let hidden = (c / 16).max(1);
                Some(ChannelGate::Se {
                    fc1: Linear::new(params, &join(prefix, "se.fc1"), c, hidden)?,
                    fc2: Linear::new(params, &join(prefix, "se.fc2"), hidden, c)?,
                })
            }
            ChannelAttention::Eca => {
                let k = eca_kernel(c);
                let bound = 1.0 / (k as f32).sqrt();
                Some(ChannelGate::Eca { weight: params.var(&join(prefix, "eca.weight"), [1, 1, k], Init::Uniform { lo: -bound, hi: bound })? })
            }
        };
        let spatial = match spec.spatial {
            SpatialAttention::None => None,
            SpatialAttention::Msa => Some(SpatialGate::Msa),
            SpatialAttention::Aspp => Some(SpatialGate::Aspp(Box::new(Aspp::new(params, &join(prefix, "aspp"), c, spec.width, spec.output_stride)?))),
        };
        Ok(CoAttention { kind: Kind::Csa(Csa { channel, spatial, fused: None }), out_channels: c })
    }

    /// Channels of the attended features.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The fused kernels (`true`) or the composed generic ops (`false`: the reference the fused
    /// ops are tested and benchmarked against), on any device: CSA's feature-sized work (the same
    /// values, the CPU forward to the bit), DANet's position attention (the same values within
    /// f32 round-off). Unset, CSA's fused kernels run on CUDA and its composed ops on the CPU, and
    /// DANet's position attention is composed everywhere (its fused kernel is the slower).
    pub fn set_fused(&mut self, fused: bool) {
        match &mut self.kind {
            Kind::Csa(csa) => csa.fused = Some(fused),
            Kind::DaNet(d) => d.fused = fused,
        }
    }

    /// Attends the pair (fa, fb) jointly; shapes (N, C, H, W) each, the same for both.
    pub fn forward_pair(&self, fa: &Tensor, fb: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        if fa.shape() != fb.shape() {
            return Err(Error::shape("CoAttention::forward_pair", format!("features of a pair differ: {} and {}", fa.shape(), fb.shape())));
        }
        match &self.kind {
            Kind::Csa(csa) => {
                let (pa, sa) = csa.pool_and_spatial(fa, train)?;
                let (pb, sb) = csa.pool_and_spatial(fb, train)?;
                let shared = csa.shared_gate(fa, pa, pb)?;
                Ok((csa.apply(fa, shared.as_ref(), sa.as_ref())?, csa.apply(fb, shared.as_ref(), sb.as_ref())?))
            }
            Kind::DaNet(d) => {
                let (a, b) = d.forward_pair(fa, Some(fb), train)?;
                Ok((a, b.expect("a partner was given")))
            }
        }
    }

    /// One image attended with itself as its partner (CSA: its channel vector squared), at the
    /// cost of one image.
    pub fn forward_single(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        match &self.kind {
            Kind::Csa(csa) => {
                let (p, s) = csa.pool_and_spatial(f, train)?;
                let squared = csa.shared_gate(f, p, None)?;
                csa.apply(f, squared.as_ref(), s.as_ref())
            }
            Kind::DaNet(d) => Ok(d.forward_pair(f, None, train)?.0),
        }
    }
}
