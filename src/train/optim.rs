//! Optimisers over a [`ParamStore`]'s trainable parameters, as PyTorch defines them, and the
//! paper's poly learning-rate schedule.
//!
//! - SGD with momentum and weight decay (`torch.optim.SGD`, dampening 0, not Nesterov):
//!   `g = grad + wd * p; v = mu * v + g; p -= lr * v` (the first step's `v` is `g`).
//! - Adam with weight decay as an L2 term (`torch.optim.Adam(weight_decay=...)`, not AdamW):
//!   `g = grad + wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
//!   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
//! - Poly: `lr(i) = base * (1 - i / total)^power`, set before every iteration `i` (0-based).
//!
//! On a CUDA device the whole step is one launch (`backend::cuda::optim`, the same formulas) and
//! the state stays in device memory; `save` copies it back to the host.
//!
//! A parameter that received no gradient this step is left alone (its state too), as PyTorch
//! does for `grad is None`. The state (momenta, moments, step count) saves to and loads from a
//! safetensors file keyed by parameter name, so a resumed run continues exactly.

use crate::autograd::ParamStore;
use crate::backend::cuda::optim::{GpuOptimizer, ParamSlot, StepHyper};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Which optimiser; `optimizer = "sgd" | "adam"` in a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// The optimiser's hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerParams {
    pub kind: OptimizerKind,
    pub momentum: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl OptimizerParams {
    /// The paper's SGD: momentum 0.99, weight decay 5e-4.
    pub fn paper_sgd() -> Self {
        OptimizerParams { kind: OptimizerKind::Sgd, momentum: 0.99, weight_decay: 5e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
    /// The paper's Adam: weight decay 5e-4, PyTorch's betas and eps.
    pub fn paper_adam() -> Self {
        OptimizerParams { kind: OptimizerKind::Adam, ..Self::paper_sgd() }
    }
}

/// `base * (1 - iter / total)^power`; 0 at and after `total`.
pub fn poly_lr(base: f32, iter: usize, total: usize, power: f32) -> f32 {
    if total == 0 || iter >= total {
        return 0.0;
    }
    base * (1.0 - iter as f32 / total as f32).powf(power)
}

/// An optimiser and its per-parameter state.
pub struct Optimizer {
    params: OptimizerParams,
    /// Steps taken (Adam's bias correction uses it).
    step: u64,
    /// SGD: one buffer (velocity) per parameter; Adam: two (m, v). A parameter's state is in
    /// `state` (host) or in `device_state` (its parameter is on a GPU), never in both.
    state: BTreeMap<String, Vec<Vec<f32>>>,
    device_state: BTreeMap<String, Vec<GpuBuffer>>,
    /// The GPU step's parameter table (rebuilt when the buffers change).
    gpu: GpuOptimizer,
}

impl Optimizer {
    pub fn new(params: OptimizerParams) -> Result<Self> {
        let p = &params;
        let ok = p.momentum >= 0.0 && p.weight_decay >= 0.0 && (0.0..1.0).contains(&p.beta1) && (0.0..1.0).contains(&p.beta2) && p.eps > 0.0;
        if !ok {
            return Err(Error::Config(format!(
                "optimizer: momentum {} and weight_decay {} must be >= 0, beta1 {} and beta2 {} in [0, 1), eps {} > 0",
                p.momentum, p.weight_decay, p.beta1, p.beta2, p.eps
            )));
        }
        Ok(Optimizer { params, step: 0, state: BTreeMap::new(), device_state: BTreeMap::new(), gpu: GpuOptimizer::default() })
    }
    pub fn params(&self) -> &OptimizerParams {
        &self.params
    }
    pub fn steps_taken(&self) -> u64 {
        self.step
    }
    /// A replay of a captured step ran this optimiser's launch (its state lives on the device and
    /// moved there): count the step.
    pub fn replayed_step(&mut self) {
        self.step += 1;
    }
    /// Sets the step count back after a capture that never ran (see `train::step`).
    pub fn set_steps_taken(&mut self, steps: u64) {
        self.step = steps;
    }

    /// One update of every trainable parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, store: &ParamStore, lr: f32) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::invalid("optimizer step", format!("learning rate {lr} must be finite and >= 0")));
        }
        self.step += 1;
        if let Device::Cuda(ordinal) = store.device() {
            let step = u32::try_from(self.step).map_err(|_| Error::invalid("optimizer step", format!("step {} beyond u32", self.step)))?;
            return self.step_gpu(store, ordinal, StepHyper::Host { lr, step });
        }
        self.step_cpu(store, lr)
    }

    /// The training loop's step on a GPU: the learning rate, Adam's bias corrections and whether
    /// to skip (after a non-finite loss) come from `scalars` in device memory, written this step
    /// by the training monitor, so nothing crosses from the host. The host's step count advances
    /// as the device's does while no step is skipped (a skipped step ends the run).
    pub fn step_device(&mut self, store: &ParamStore, scalars: &GpuBuffer) -> Result<()> {
        let Device::Cuda(ordinal) = store.device() else {
            return Err(Error::WrongDevice { op: "optimizer step", needs: "a CUDA device", found: store.device() });
        };
        self.step += 1;
        self.step_gpu(store, ordinal, StepHyper::Device(scalars))
    }

    fn step_cpu(&mut self, store: &ParamStore, lr: f32) -> Result<()> {
        let p = self.params;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for (name, param) in store.trainable() {
            let Some(grad) = param.grad() else { continue };
            let grad = grad.to_vec()?;
            let n = grad.len();
            let buffers = match p.kind {
                OptimizerKind::Sgd => 1,
                OptimizerKind::Adam => 2,
            };
            let state = self.state.entry(name.to_string()).or_insert_with(|| vec![vec![0.0; n]; buffers]);
            if state.len() != buffers || state.iter().any(|b| b.len() != n) {
                return Err(Error::shape("optimizer step", format!("state of '{name}' does not fit its {n} values")));
            }
            let op = match p.kind {
                OptimizerKind::Sgd => "sgd step",
                OptimizerKind::Adam => "adam step",
            };
            param.update(op, |w| match p.kind {
                OptimizerKind::Sgd => {
                    let v = &mut state[0];
                    for i in 0..n {
                        let g = grad[i] + p.weight_decay * w[i];
                        v[i] = p.momentum * v[i] + g;
                        w[i] -= lr * v[i];
                    }
                }
                OptimizerKind::Adam => {
                    let (m, v) = state.split_at_mut(1);
                    let (m, v) = (&mut m[0], &mut v[0]);
                    for i in 0..n {
                        let g = grad[i] + p.weight_decay * w[i];
                        m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * g;
                        v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
                        w[i] -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + p.eps);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// The step on a GPU: every parameter with a gradient updated by one launch, the state
    /// moved to the device on first use (zeros, or what `load` read).
    fn step_gpu(&mut self, store: &ParamStore, ordinal: usize, hyper: StepHyper) -> Result<()> {
        let op = match self.params.kind {
            OptimizerKind::Sgd => "sgd step",
            OptimizerKind::Adam => "adam step",
        };
        let dev = CudaDevice::get(ordinal)?;
        let buffers = self.buffer_names().len();
        let stepped: Vec<(&str, Tensor, Tensor)> = store.trainable().filter_map(|(name, p)| p.grad().map(|g| (name, p.clone(), g))).collect();
        for (name, param, _) in &stepped {
            let n = param.numel();
            if !self.device_state.contains_key(*name) {
                let host = self.state.remove(*name).unwrap_or_else(|| vec![vec![0.0; n]; buffers]);
                let uploaded = host.iter().map(|b| dev.htod(b)).collect::<Result<Vec<_>>>()?;
                self.device_state.insert(name.to_string(), uploaded);
            }
            let state = &self.device_state[*name];
            if state.len() != buffers || state.iter().any(|b| b.len() != n) {
                return Err(Error::shape(op, format!("state of '{name}' does not fit its {n} values")));
            }
        }
        let grads: Vec<_> = stepped.iter().map(|(_, _, g)| g.storage()).collect();
        let index: HashMap<&str, usize> = stepped.iter().enumerate().map(|(i, (name, _, _))| (*name, i)).collect();
        let params: Vec<&Tensor> = stepped.iter().map(|(_, p, _)| p).collect();
        let (gpu, device_state, p) = (&mut self.gpu, &mut self.device_state, self.params);
        Tensor::update_storages(&params, |storages| {
            let mut states: Vec<Option<&mut Vec<GpuBuffer>>> = (0..stepped.len()).map(|_| None).collect();
            for (name, bufs) in device_state.iter_mut() {
                if let Some(&i) = index.get(name.as_str()) {
                    states[i] = Some(bufs);
                }
            }
            let mut slots = Vec::with_capacity(stepped.len());
            for ((storage, grad), state) in storages.into_iter().zip(&grads).zip(states) {
                let (state1, rest) = state.expect("state uploaded above").split_first_mut().expect("one buffer or more");
                slots.push(ParamSlot { param: storage.as_cuda_mut(op)?, grad: grad.as_cuda(op)?, state1, state2: rest.first_mut() });
            }
            match p.kind {
                OptimizerKind::Sgd => gpu.sgd_step(&dev, &mut slots, hyper, p.momentum, p.weight_decay),
                OptimizerKind::Adam => gpu.adam_step(&dev, &mut slots, hyper, p.beta1, p.beta2, p.eps, p.weight_decay),
            }
        })
    }

    /// Every parameter's state on the host (device state copied back).
    fn host_state(&self) -> Result<BTreeMap<String, Vec<Vec<f32>>>> {
        let mut all = self.state.clone();
        for (name, bufs) in &self.device_state {
            let host = bufs.iter().map(|b| CudaDevice::get(b.ordinal())?.dtoh(b)).collect::<Result<Vec<_>>>()?;
            all.insert(name.clone(), host);
        }
        Ok(all)
    }

    /// Writes the state: tensors `<buffer>.<param>` (buffer = velocity, or m and v) and the
    /// step count and kind in the safetensors metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let names = self.buffer_names();
        let mut blobs: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (param, bufs) in &self.host_state()? {
            for (b, data) in names.iter().zip(bufs) {
                blobs.push((format!("{b}.{param}"), bytemuck::cast_slice(data).to_vec(), data.len()));
            }
        }
        let views = blobs
            .iter()
            .map(|(n, b, len)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::format(path, None, format!("optimizer tensor '{n}': {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("kind".to_string(), format!("{:?}", self.params.kind).to_lowercase());
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::format(path, None, e.to_string()))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Reads the state written by `save`; the kind must match this optimiser's.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, None, e.to_string()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, None, e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let kind = meta.get("kind").cloned().unwrap_or_default();
        let want = format!("{:?}", self.params.kind).to_lowercase();
        if kind != want {
            return Err(Error::format(path, None, format!("optimizer state is for '{kind}', this run uses '{want}'")));
        }
        let step = meta
            .get("step")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::format(path, None, "optimizer state has no step count"))?;
        let names = self.buffer_names();
        let mut state: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        for (name, view) in file.tensors() {
            let (buf, param) = name
                .split_once('.')
                .ok_or_else(|| Error::format(path, None, format!("optimizer tensor '{name}' is not <buffer>.<param>")))?;
            let idx = names
                .iter()
                .position(|b| *b == buf)
                .ok_or_else(|| Error::format(path, None, format!("optimizer tensor '{name}': unknown buffer '{buf}'")))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(Error::format(path, None, format!("optimizer tensor '{name}' is not f32")));
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let entry = state.entry(param.to_string()).or_insert_with(|| vec![Vec::new(); names.len()]);
            entry[idx] = data;
        }
        if let Some((param, _)) = state.iter().find(|(_, b)| b.iter().any(|v| v.len() != b[0].len())) {
            return Err(Error::format(path, None, format!("optimizer state of '{param}' lacks a buffer")));
        }
        self.state = state;
        self.device_state.clear();
        self.step = step;
        Ok(())
    }

    /// Checks the loaded state fits the model: every state entry names a trainable parameter of
    /// the same size (the first misfit is named).
    pub fn check_fits(&self, store: &ParamStore) -> Result<()> {
        let sizes: BTreeMap<&str, usize> = store.trainable().map(|(n, t)| (n, t.numel())).collect();
        for (name, bufs) in &self.host_state()? {
            match sizes.get(name.as_str()) {
                None => return Err(Error::Config(format!("optimizer state names '{name}', which is not a parameter of this model"))),
                Some(&n) if bufs[0].len() != n => {
                    return Err(Error::Config(format!(
                        "optimizer state of '{name}' has {} values, the parameter has {n}",
                        bufs[0].len()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn buffer_names(&self) -> &'static [&'static str] {
        match self.params.kind {
            OptimizerKind::Sgd => &["velocity"],
            OptimizerKind::Adam => &["m", "v"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Init;
    use crate::device::Device;
    use crate::tensor::Tensor;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A store with one parameter and a gradient set from `g` via a linear loss sum(g * p).
    fn store_with(p0: &[f32], seed: u64) -> ParamStore {
        let mut s = ParamStore::new(Device::Cpu, seed);
        let w = s.var("w", [p0.len()], Init::Const(0.0)).unwrap();
        w.assign(&Tensor::from_vec(p0.to_vec(), [p0.len()], Device::Cpu).unwrap()).unwrap();
        s
    }
    fn set_grad(s: &ParamStore, g: &[f32]) {
        s.zero_grads();
        let w = s.get("w").unwrap();
        let gt = Tensor::from_vec(g.to_vec(), [g.len()], Device::Cpu).unwrap();
        w.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
    }

    #[test]
    fn sgd_and_adam_match_reference_formulas() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let p0: Vec<f32> = (0..7).map(|_| rng.random_range(-1.0..1.0)).collect();
        let grads: Vec<Vec<f32>> = (0..4).map(|_| (0..7).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        for params in [OptimizerParams::paper_sgd(), OptimizerParams::paper_adam()] {
            let s = store_with(&p0, 1);
            let mut opt = Optimizer::new(params).unwrap();
            // Reference in f64.
            let mut w: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
            let (mut m, mut v) = (vec![0f64; 7], vec![0f64; 7]);
            for (t, g) in grads.iter().enumerate() {
                let lr = poly_lr(0.01, t, 10, 0.9);
                set_grad(&s, g);
                opt.step(&s, lr).unwrap();
                let (wd, lr) = (params.weight_decay as f64, lr as f64);
                for i in 0..7 {
                    let gi = g[i] as f64 + wd * w[i];
                    match params.kind {
                        OptimizerKind::Sgd => {
                            m[i] = params.momentum as f64 * m[i] + gi;
                            w[i] -= lr * m[i];
                        }
                        OptimizerKind::Adam => {
                            let (b1, b2) = (params.beta1 as f64, params.beta2 as f64);
                            m[i] = b1 * m[i] + (1.0 - b1) * gi;
                            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                            let k = (t + 1) as i32;
                            w[i] -= lr * (m[i] / (1.0 - b1.powi(k))) / ((v[i] / (1.0 - b2.powi(k))).sqrt() + params.eps as f64);
                        }
                    }
                }
            }
            let got = s.get("w").unwrap().to_vec().unwrap();
            for i in 0..7 {
                assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{:?} w[{i}]: {} vs {}", params.kind, got[i], w[i]);
            }
            assert_ne!(got, p0, "the parameters moved");
        }
    }

    #[test]
    fn poly_schedule() {
        assert_eq!(poly_lr(0.01, 0, 100, 0.9), 0.01);
        let mid = poly_lr(0.01, 50, 100, 0.9);
        assert!((mid - 0.01 * 0.5f32.powf(0.9)).abs() < 1e-9, "{mid}");
        assert!(poly_lr(0.01, 99, 100, 0.9) > 0.0);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
    }

    #[test]
    fn state_roundtrip_resumes_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let p0: Vec<f32> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
        let grads: Vec<Vec<f32>> = (0..4).map(|_| (0..5).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let path = std::env::temp_dir().join(format!("coseg-optim-{}.safetensors", std::process::id()));
        for params in [OptimizerParams::paper_sgd(), OptimizerParams::paper_adam()] {
            // Straight through.
            let a = store_with(&p0, 1);
            let mut oa = Optimizer::new(params).unwrap();
            for g in &grads {
                set_grad(&a, g);
                oa.step(&a, 0.01).unwrap();
            }
            // Two steps, save, a fresh optimiser loads, two more.
            let b = store_with(&p0, 1);
            let mut ob = Optimizer::new(params).unwrap();
            for g in &grads[..2] {
                set_grad(&b, g);
                ob.step(&b, 0.01).unwrap();
            }
            ob.save(&path).unwrap();
            let mut oc = Optimizer::new(params).unwrap();
            oc.load(&path).unwrap();
            oc.check_fits(&b).unwrap();
            assert_eq!(oc.steps_taken(), 2);
            for g in &grads[2..] {
                set_grad(&b, g);
                oc.step(&b, 0.01).unwrap();
            }
            assert_eq!(a.get("w").unwrap().to_vec().unwrap(), b.get("w").unwrap().to_vec().unwrap(), "{:?}", params.kind);
        }
        // The wrong kind is refused by name.
        let s = store_with(&p0, 1);
        let mut sgd = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
        set_grad(&s, &grads[0]);
        sgd.step(&s, 0.01).unwrap();
        sgd.save(&path).unwrap();
        let mut adam = Optimizer::new(OptimizerParams::paper_adam()).unwrap();
        let e = adam.load(&path).unwrap_err().to_string();
        assert!(e.contains("'sgd'") && e.contains("'adam'"), "{e}");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn state_of_another_model_is_named() {
        let s = store_with(&[0.5, -0.5, 0.25], 1);
        let mut o = Optimizer::new(OptimizerParams::paper_sgd()).unwrap();
        set_grad(&s, &[1.0, 2.0, 3.0]);
        o.step(&s, 0.1).unwrap();
        let other = store_with(&[0.5, -0.5], 1);
        let e = o.check_fits(&other).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("3 values"), "{e}");
        assert!(o.step(&s, f32::NAN).is_err());
    }
}
