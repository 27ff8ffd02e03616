//! The building blocks every network here is made of: convolution, batch norm, fully connected.
//!
//! Each layer takes its tensors from a [`ParamStore`] under a dotted prefix when it is built, so
//! the store holds the whole model under PyTorch-style names (`layer1.0.conv1.weight`,
//! `bn1.running_mean`), and saving or loading the store is saving or loading the model.

use crate::autograd::{Init, ParamStore};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::{BatchNormOptions, BnPartials};
use crate::tensor::Tensor;

/// `prefix.name`, or `name` alone for an empty prefix.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// Channels after a width multiplier: at least 1, so tiny test models stay well formed.
pub fn scaled(base: usize, width: f32) -> usize {
    ((base as f32 * width).round() as usize).max(1)
}

/// A 2-D convolution (PyTorch's `nn.Conv2d`, groups = 1, square kernel).
#[derive(Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

/// Geometry of a [`Conv2d`]: channels, kernel, stride, dilation; padding keeps "same" size at
/// stride 1 (`dilation * (kernel - 1) / 2`).
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub bias: bool,
}

impl ConvSpec {
    pub fn new(cin: usize, cout: usize, kernel: usize) -> ConvSpec {
        ConvSpec { cin, cout, kernel, stride: 1, dilation: 1, bias: false }
    }
    pub fn stride(self, stride: usize) -> ConvSpec {
        ConvSpec { stride, ..self }
    }
    pub fn dilation(self, dilation: usize) -> ConvSpec {
        ConvSpec { dilation, ..self }
    }
    pub fn with_bias(self) -> ConvSpec {
        ConvSpec { bias: true, ..self }
    }
}

impl Conv2d {
    /// `prefix.weight` (K,C,R,S), initialised as torchvision's ResNet does (Kaiming normal,
    /// fan-out, ReLU gain), and `prefix.bias` (K) when asked for, uniform in ±1/sqrt(fan-in) as
    /// PyTorch's default.
    pub fn new(params: &mut ParamStore, prefix: &str, spec: ConvSpec) -> Result<Conv2d> {
        let ConvSpec { cin, cout, kernel, stride, dilation, bias } = spec;
        if cin == 0 || cout == 0 || kernel == 0 || stride == 0 || dilation == 0 {
            return Err(Error::invalid("Conv2d::new", format!("'{prefix}': zero in {spec:?}")));
        }
        let weight = params.var(&join(prefix, "weight"), [cout, cin, kernel, kernel], Init::KaimingNormal { fan_in: cout * kernel * kernel })?;
        let bias = if bias {
            let bound = 1.0 / ((cin * kernel * kernel) as f32).sqrt();
            Some(params.var(&join(prefix, "bias"), [cout], Init::Uniform { lo: -bound, hi: bound })?)
        } else {
            None
        };
        Ok(Conv2d { weight, bias, stride, padding: dilation * (kernel - 1) / 2, dilation })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.padding, self.dilation)
    }
    /// The forward, for a batch norm that follows: in training on a GPU whose `fuse_bn_stats` is
    /// on, with the partial statistics of the output its kernel writes as it stores (the
    /// tensor-core kernels), so batch norm skips its own pass over the output.
    pub fn forward_for_bn(&self, x: &Tensor, train: bool) -> Result<(Tensor, Option<BnPartials>)> {
        if !wants_bn_partials(x, train)? {
            return Ok((self.forward(x)?, None));
        }
        x.conv2d_with_bn_partials(&self.weight, self.bias.as_ref(), self.stride, self.padding, self.dilation)
    }
    /// [stride, padding, dilation], as the tensor ops take them.
    fn geometry(&self) -> [usize; 3] {
        [self.stride, self.padding, self.dilation]
    }
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Batch norm over channels (PyTorch's `nn.BatchNorm2d`: weight, bias, running_mean,
/// running_var; momentum 0.1, eps 1e-5).
#[derive(Clone)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl BatchNorm2d {
    pub fn new(params: &mut ParamStore, prefix: &str, channels: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: params.var(&join(prefix, "weight"), [channels], Init::Const(1.0))?,
            bias: params.var(&join(prefix, "bias"), [channels], Init::Const(0.0))?,
            running_mean: params.buffer(&join(prefix, "running_mean"), [channels], Init::Const(0.0))?,
            running_var: params.buffer(&join(prefix, "running_var"), [channels], Init::Const(1.0))?,
        })
    }
    /// Batch statistics (and a running-statistics update) when `train`, running statistics else.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, None, train, false, None)
    }
    /// [`Self::forward`] then ReLU, in batch norm's own pass (`BatchNormOptions::relu`).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, None, train, true, None)
    }
    /// This batch norm of `y` (training from `partials` when the convolution that wrote y gave
    /// them), then plus `residual` when given, then the ReLU when `relu`, in batch norm's passes.
    pub fn apply(&self, y: &Tensor, partials: Option<&BnPartials>, train: bool, relu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
        let opts = BatchNormOptions { training: train, relu, ..BatchNormOptions::default() };
        let [gamma, beta, mean, var] = self.params();
        match residual {
            Some(r) => y.batch_norm_add(r, gamma, beta, mean, var, opts, partials),
            None => y.batch_norm_with(gamma, beta, mean, var, opts, partials),
        }
    }
    /// (gamma, beta, running_mean, running_var), as the batch-norm ops take them.
    fn params(&self) -> [&Tensor; 4] {
        [&self.weight, &self.bias, &self.running_mean, &self.running_var]
    }

    /// This batch norm of `conv(x)`, the batch statistics from the convolution's epilogue where
    /// it writes them ([`Conv2d::forward_for_bn`]). The same values either way, up to summation
    /// order.
    pub fn after_conv(&self, conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
        let (y, partials) = conv.forward_for_bn(x, train)?;
        self.apply(&y, partials.as_ref(), train, false, None)
    }
    /// [`Self::after_conv`] then ReLU, in batch norm's own pass.
    pub fn after_conv_relu(&self, conv: &Conv2d, x: &Tensor, train: bool) -> Result<Tensor> {
        let (y, partials) = conv.forward_for_bn(x, train)?;
        self.apply(&y, partials.as_ref(), train, true, None)
    }

    /// `conv(relu(self(y)))`, `partials` those of the convolution that wrote y, returning the
    /// partial statistics of this convolution's output as [`Conv2d::forward_for_bn`] does
    /// (`Tensor::bn_relu_conv2d`: on CUDA in bf16 with the channels-last kernels, batch norm and
    /// the ReLU are the convolution's prologue and their output is never written).
    pub fn relu_into_conv(&self, y: &Tensor, partials: Option<&BnPartials>, conv: &Conv2d, train: bool) -> Result<(Tensor, Option<BnPartials>)> {
        let opts = BatchNormOptions { training: train, relu: true, ..BatchNormOptions::default() };
        y.bn_relu_conv2d(self.params(), opts, partials, &conv.weight, conv.bias.as_ref(), conv.geometry(), wants_bn_partials(y, train)?)
    }
}

/// Convolution, batch norm, ReLU, convolution, ... : the (convolution, batch norm) pairs in
/// sequence from `x`, each batch norm but the last applied with its ReLU by the next convolution
/// as it reads its input ([`BatchNorm2d::relu_into_conv`]). Returns the last convolution's
/// output, its partial statistics, and the last batch norm, which the caller applies (with a
/// ReLU, a shortcut, or neither). `pairs` must not be empty.
pub fn conv_bn_chain<'a>(pairs: &[(&'a Conv2d, &'a BatchNorm2d)], x: &Tensor, train: bool) -> Result<(Tensor, Option<BnPartials>, &'a BatchNorm2d)> {
    let Some(((first, bn0), rest)) = pairs.split_first() else {
        return Err(Error::invalid("conv_bn_chain", "no convolution to run"));
    };
    let (mut y, mut partials) = first.forward_for_bn(x, train)?;
    let mut bn = *bn0;
    for (conv, next) in rest {
        (y, partials) = bn.relu_into_conv(&y, partials.as_ref(), conv, train)?;
        bn = next;
    }
    Ok((y, partials, bn))
}

/// Whether a convolution of `x` feeding a batch norm should write the batch norm's partial
/// statistics: in training on a GPU whose `fuse_bn_stats` is on (the kernels that cannot write
/// them write none).
fn wants_bn_partials(x: &Tensor, train: bool) -> Result<bool> {
    Ok(match x.device() {
        Device::Cuda(n) if train => crate::backend::cuda::CudaDevice::get(n)?.fuse_bn_stats(),
        _ => false,
    })
}

/// Convolution, batch norm, ReLU: the unit of every head and decoder here.
#[derive(Clone)]
pub struct ConvBnRelu {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBnRelu {
    /// Parameters `prefix.conv.*` and `prefix.bn.*`.
    pub fn new(params: &mut ParamStore, prefix: &str, spec: ConvSpec) -> Result<ConvBnRelu> {
        Ok(ConvBnRelu {
            conv: Conv2d::new(params, &join(prefix, "conv"), spec)?,
            bn: BatchNorm2d::new(params, &join(prefix, "bn"), spec.cout)?,
        })
    }
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.after_conv_relu(&self.conv, x, train)
    }
    /// The units in sequence from `x`, the values of calling [`Self::forward`] in turn; each batch
    /// norm and ReLU but the last is applied by the next unit's convolution as it reads its
    /// input ([`conv_bn_chain`]). `units` must not be empty.
    pub fn chain(units: &[ConvBnRelu], x: &Tensor, train: bool) -> Result<Tensor> {
        let pairs: Vec<(&Conv2d, &BatchNorm2d)> = units.iter().map(|u| (&u.conv, &u.bn)).collect();
        let (y, partials, bn) = conv_bn_chain(&pairs, x, train)?;
        bn.apply(&y, partials.as_ref(), train, true, None)
    }
    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }
}

/// A fully connected layer (PyTorch's `nn.Linear`, with bias).
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(params: &mut ParamStore, prefix: &str, fin: usize, fout: usize) -> Result<Linear> {
        if fin == 0 || fout == 0 {
            return Err(Error::invalid("Linear::new", format!("'{prefix}': {fin} -> {fout} features")));
        }
        let bound = 1.0 / (fin as f32).sqrt();
        Ok(Linear {
            weight: params.var(&join(prefix, "weight"), [fout, fin], Init::Uniform { lo: -bound, hi: bound })?,
            bias: params.var(&join(prefix, "bias"), [fout], Init::Uniform { lo: -bound, hi: bound })?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, Some(&self.bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    // A chain of units gives the values and gradients of calling each unit's forward in turn
    // (on the CPU both are the composed ops; on a GPU with the channels-last kernels the chain
    // fuses, tests/gpu_bn_fusion.rs); an empty chain is refused by name.
    #[test]
    fn a_chain_of_units_is_their_forwards_in_turn() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Tensor::randn([2, 5, 9, 7], 0.0, 1.0, Device::Cpu, &mut rng).unwrap();
        let run = |chained: bool| {
            let mut store = ParamStore::new(Device::Cpu, 4);
            let units = [
                ConvBnRelu::new(&mut store, "a", ConvSpec::new(5, 8, 3)).unwrap(),
                ConvBnRelu::new(&mut store, "b", ConvSpec::new(8, 6, 3).dilation(2)).unwrap(),
            ];
            let x = x.detach().into_var();
            let y = if chained { ConvBnRelu::chain(&units, &x, true).unwrap() } else { units[1].forward(&units[0].forward(&x, true).unwrap(), true).unwrap() };
            y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut got = vec![y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()];
            got.extend(store.iter().map(|(_, t)| t.grad().map_or_else(|| t.to_vec().unwrap(), |g| g.to_vec().unwrap())));
            got
        };
        let chained = run(true);
        assert!(chained[0].iter().any(|&v| v == 0.0) && chained[0].iter().any(|&v| v > 0.0));
        assert_eq!(chained, run(false));
        let e = ConvBnRelu::chain(&[], &x, true).unwrap_err().to_string();
        assert!(e.contains("conv_bn_chain"), "{e}");
    }
}
