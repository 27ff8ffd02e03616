//! The parameter registry: named tensors a model is made of, in a stable (sorted) order.
//!
//! Trainable parameters are variables (they collect gradients) and are what an optimiser walks;
//! buffers (batch-norm running statistics) are saved and loaded with them but never trained.
//! Names are dotted paths (`backbone.layer1.0.conv1.weight`), as in PyTorch state dicts, so
//! converted torchvision weights load by name.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// How `ParamStore::var` fills a parameter it creates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Const(f32),
    Uniform {
        lo: f32,
        hi: f32,
    },
    Normal {
        mean: f32,
        std: f32,
    },
    /// He et al.: Normal(0, sqrt(2 / fan_in)), for layers followed by ReLU.
    KaimingNormal {
        fan_in: usize,
    },
}

struct Entry {
    tensor: Tensor,
    trainable: bool,
}

/// Named parameters and buffers on one device, with a seeded generator for their initial values.
pub struct ParamStore {
    device: Device,
    rng: ChaCha8Rng,
    entries: BTreeMap<String, Entry>,
}

/// What `ParamStore::load_matching` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// In the store but not in the file: kept their current values.
    pub missing: Vec<String>,
    /// In the file but not in the store: ignored.
    pub unexpected: Vec<String>,
}

impl ParamStore {
    pub fn new(device: Device, seed: u64) -> ParamStore {
        ParamStore {
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
            entries: BTreeMap::new(),
        }
    }
    pub fn device(&self) -> Device {
        self.device
    }

    /// The trainable parameter `name`: created with `init` the first time, returned as is after
    /// (an error if the shape asked for differs from the one it has).
    pub fn var(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        self.get_or_create(name, shape.into(), init, true)
    }
    /// A buffer (saved, loaded, never trained), e.g. running statistics.
    pub fn buffer(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        self.get_or_create(name, shape.into(), init, false)
    }

    fn get_or_create(
        &mut self,
        name: &str,
        shape: Shape,
        init: Init,
        trainable: bool,
    ) -> Result<Tensor> {
        if let Some(e) = self.entries.get(name) {
            if e.tensor.shape() != &shape || e.trainable != trainable {
                return Err(Error::shape(
                    "ParamStore::var",
                    format!(
                        "'{name}' exists with shape {} ({}), asked for {shape} ({})",
                        e.tensor.shape(),
                        kind(e.trainable),
                        kind(trainable)
                    ),
                ));
            }
            return Ok(e.tensor.clone());
        }
        let t = match init {
            Init::Const(v) => Tensor::full(shape, v, self.device)?,
            Init::Uniform { lo, hi } => Tensor::uniform(shape, lo, hi, self.device, &mut self.rng)?,
            Init::Normal { mean, std } => {
                Tensor::randn(shape, mean, std, self.device, &mut self.rng)?
            }
            Init::KaimingNormal { fan_in } => {
                if fan_in == 0 {
                    return Err(Error::invalid(
                        "ParamStore::var",
                        format!("'{name}': KaimingNormal with fan_in 0"),
                    ));
                }
                Tensor::randn(
                    shape,
                    0.0,
                    (2.0 / fan_in as f32).sqrt(),
                    self.device,
                    &mut self.rng,
                )?
            }
        };
        let t = if trainable { t.into_var() } else { t };
        self.entries.insert(
            name.to_string(),
            Entry {
                tensor: t.clone(),
                trainable,
            },
        );
        Ok(t)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.get(name).map(|e| &e.tensor)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Every entry, parameters and buffers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), &e.tensor))
    }
    /// The trainable parameters, sorted by name: what an optimiser updates.
    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.trainable)
            .map(|(n, e)| (n.as_str(), &e.tensor))
    }
    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().map(|(_, t)| t.numel()).sum()
    }
    pub fn zero_grads(&self) {
        for (_, t) in self.trainable() {
            t.zero_grad();
        }
    }
    /// `zero_grads` that keeps the buffers for the next backward to write into (the training
    /// loop's: the gradients keep their addresses from step to step).
    pub fn zero_grads_keeping_buffers(&self) {
        for (_, t) in self.trainable() {
            t.zero_grad_keeping_buffer();
        }
    }

    /// Writes every entry to a .safetensors file (f32, little endian).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .iter()
            .map(|(n, t)| {
                Ok((
                    n.to_string(),
                    bytemuck::cast_slice(&t.to_vec()?).to_vec(),
                    t.dims().to_vec(),
                ))
            })
            .collect::<Result<_>>()?;
        let views = bytes
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::format(path, None, format!("tensor '{n}': {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, None)
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        crate::io::write_atomic(path, &out)
    }

    /// Loads every entry from a .safetensors file: each must be present with the same shape, and
    /// the file must hold nothing else; the first misfit is named in the error and nothing is
    /// changed.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        let mut values = Vec::with_capacity(self.entries.len());
        for (name, entry) in &self.entries {
            let view = file.tensor(name).map_err(|_| {
                Error::format(
                    path,
                    None,
                    format!("tensor '{name}' is missing from the file"),
                )
            })?;
            let data = read_view(path, name, &view, entry.tensor.shape())?;
            check_finite(path, name, &data)?;
            values.push((entry.tensor.clone(), data));
        }
        if let Some(extra) = file
            .names()
            .into_iter()
            .filter(|n| !self.entries.contains_key(*n))
            .min()
        {
            return Err(Error::format(
                path,
                None,
                format!("tensor '{extra}' in the file is not a parameter of this model"),
            ));
        }
        for (t, data) in values {
            t.assign(&Tensor::from_vec(data, t.shape().clone(), t.device())?)?;
        }
        Ok(())
    }

    /// Loads the entries the file has (shapes must fit), and reports what was missing or extra:
    /// for pretrained backbones whose heads differ.
    pub fn load_matching(&mut self, path: impl AsRef<Path>) -> Result<LoadReport> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, None, e.to_string()))?;
        let mut report = LoadReport::default();
        let mut values = Vec::new();
        for (name, entry) in &self.entries {
            match file.tensor(name) {
                Ok(view) => {
                    let data = read_view(path, name, &view, entry.tensor.shape())?;
                    check_finite(path, name, &data)?;
                    values.push((entry.tensor.clone(), data));
                    report.loaded.push(name.clone());
                }
                Err(_) => report.missing.push(name.clone()),
            }
        }
        let mut unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !self.entries.contains_key(*n))
            .map(String::from)
            .collect();
        unexpected.sort();
        report.unexpected = unexpected;
        for (t, data) in values {
            t.assign(&Tensor::from_vec(data, t.shape().clone(), t.device())?)?;
        }
        Ok(report)
    }
}

fn kind(trainable: bool) -> &'static str {
    if trainable { "parameter" } else { "buffer" }
}

pub(crate) fn read_view(path: &Path, name: &str, view: &TensorView<'_>, want: &Shape) -> Result<Vec<f32>> {
    if view.shape() != want.dims() {
        return Err(Error::format(
            path,
            None,
            format!(
                "tensor '{name}' has shape {} in the file, the model needs {want}",
                Shape::from(view.shape())
            ),
        ));
    }
    match view.dtype() {
        Dtype::F32 => Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(view
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        Dtype::BF16 => Ok(view
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        other => Err(Error::format(
            path,
            None,
            format!("tensor '{name}' has dtype {other:?}; f32, f16 or bf16 expected"),
        )),
    }
}

/// A weight that is NaN or infinite makes every output NaN (a Dice of 0 without a word): such a
/// file is refused naming the tensor, before anything is assigned.
fn check_finite(path: &Path, name: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::format(
            path,
            None,
            format!("tensor '{name}' holds a non-finite value ({}) at flat index {i}: the weights are unusable", data[i]),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("coseg-params-{}-{name}", std::process::id()))
    }

    #[test]
    fn save_load_roundtrip_and_misfits() {
        let mut a = ParamStore::new(Device::Cpu, 1);
        a.var(
            "conv.weight",
            [4, 3, 3, 3],
            Init::KaimingNormal { fan_in: 27 },
        )
        .unwrap();
        a.buffer("bn.running_mean", [4], Init::Uniform { lo: -1.0, hi: 1.0 })
            .unwrap();
        let path = tmp("ok.safetensors");
        a.save(&path).unwrap();

        let mut b = ParamStore::new(Device::Cpu, 2);
        b.var("conv.weight", [4, 3, 3, 3], Init::Const(0.0))
            .unwrap();
        b.buffer("bn.running_mean", [4], Init::Const(0.0)).unwrap();
        b.load(&path).unwrap();
        for (name, t) in a.iter() {
            assert_eq!(
                t.to_vec().unwrap(),
                b.get(name).unwrap().to_vec().unwrap(),
                "{name}"
            );
        }
        assert_eq!(b.trainable().count(), 1);
        assert!(b.get("conv.weight").unwrap().requires_grad());

        let mut c = ParamStore::new(Device::Cpu, 3);
        c.var("conv.weight", [4, 3, 1, 1], Init::Const(0.0))
            .unwrap();
        let e = c.load(&path).unwrap_err().to_string();
        assert!(
            e.contains("conv.weight") && e.contains("[4, 3, 3, 3]") && e.contains("[4, 3, 1, 1]"),
            "{e}"
        );
        let mut d = ParamStore::new(Device::Cpu, 3);
        d.var("conv.weight", [4, 3, 3, 3], Init::Const(0.0))
            .unwrap();
        let e = d.load(&path).unwrap_err().to_string();
        assert!(e.contains("bn.running_mean"), "{e}");
        assert_eq!(
            d.get("conv.weight").unwrap().to_vec().unwrap(),
            vec![0.0; 108],
            "nothing changed on error"
        );
        let r = d.load_matching(&path).unwrap();
        assert_eq!(r.unexpected, vec!["bn.running_mean".to_string()]);
        assert_eq!(r.loaded, vec!["conv.weight".to_string()]);
        std::fs::remove_file(&path).ok();
    }
}
