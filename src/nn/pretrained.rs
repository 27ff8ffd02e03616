//! Torchvision's pretrained ResNet weights.
//!
//! The encoder's parameter names are torchvision's state-dict keys, so a torchvision ResNet
//! state dict saved as .safetensors loads by name. From a `.pth` (python, with torch and
//! safetensors installed), one line:
//!
//! ```text
//! python3 -c 'import torch, safetensors.torch as s; s.save_file(torch.load("resnet101.pth"), "resnet101.safetensors")'
//! ```
//!
//! (`torchvision.models.resnet101(weights="IMAGENET1K_V1").state_dict()` works in place of
//! `torch.load(...)`.) The file's `fc.*` and `*.num_batches_tracked` entries are not part of
//! the encoder and are reported as unused.

use crate::autograd::{LoadReport, ParamStore, read_view};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::SafeTensors;
use std::path::Path;

/// Loads a torchvision ResNet state dict (.safetensors, f32/f16/bf16) into every entry of
/// `params` under `prefix.` (e.g. `encoder`): entry `encoder.layer1.0.conv1.weight` takes the
/// file's `layer1.0.conv1.weight`. Every such entry must be in the file with the same shape;
/// otherwise the error names the first (in sorted order) that is missing or has another shape,
/// and nothing is changed. The report lists what loaded and the file's tensors left unused.
pub fn load_torchvision_resnet(path: &Path, params: &mut ParamStore, prefix: &str) -> Result<LoadReport> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, None, e.to_string()))?;
    let dotted = if prefix.is_empty() { String::new() } else { format!("{prefix}.") };
    let mut report = LoadReport::default();
    let mut values = Vec::new();
    for (name, tensor) in params.iter() {
        let Some(key) = name.strip_prefix(dotted.as_str()) else { continue };
        let view = file.tensor(key).map_err(|_| {
            Error::format(path, None, format!("tensor '{key}' (for parameter '{name}') is missing from the file: is it a torchvision ResNet of this depth?"))
        })?;
        let data = read_view(path, key, &view, tensor.shape())?;
        values.push((tensor.clone(), data));
        report.loaded.push(name.to_string());
    }
    if values.is_empty() {
        return Err(Error::invalid("load_torchvision_resnet", format!("the model has no parameter under prefix '{prefix}'")));
    }
    let wanted: std::collections::HashSet<&str> = report.loaded.iter().map(|n| &n[dotted.len()..]).collect();
    let mut unexpected: Vec<String> = file.names().into_iter().filter(|k| !wanted.contains(*k)).map(String::from).collect();
    unexpected.sort();
    report.unexpected = unexpected;
    for (t, data) in values {
        t.assign(&Tensor::from_vec(data, t.shape().clone(), t.device())?)?;
    }
    Ok(report)
}
