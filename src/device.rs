//! Where a tensor lives. Every build has the same API: asking for CUDA on a machine without a
//! driver or GPU returns `Error::DeviceRequest`, never a panic.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

/// The device a user asks for, as `--device` (clap parses it with [`FromStr`]) and as the
/// config's `[train] device` (serde reads it from the same strings): `auto`, `cpu`, `cuda` (the
/// first GPU) or `cuda:N`. [`resolve`] turns it into a [`Device`] on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// Why `s` is not a device request, naming it and what is accepted.
fn not_a_device(s: &str) -> String {
    format!("'{s}' is not one of auto, cpu, cuda, cuda:N")
}

impl FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
                _ => Err(Error::invalid("device", not_a_device(s))),
            },
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The config reader names the file, line and key; the message names the value.
        s.parse().map_err(|_| serde::de::Error::custom(not_a_device(&s)))
    }
}

impl serde::Serialize for DeviceRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The arithmetic of the GPU convolutions. Tensors stay f32 in memory at every precision; the
/// tensor-core kernels round operands as they load them and accumulate in f32 (kernels/conv2d_tc.cu
/// says why). The matrix products (cuBLAS) follow it with TF32 tensor-op math at tf32 and bf16
/// (src/backend/cuda/blas.rs says why not bf16). The CPU always computes in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Plain f32 FMA (the SIMT kernels): the reference, and a device's setting until changed.
    #[default]
    Fp32,
    /// Tensor cores on f32 data: operands rounded to TF32 (10-bit mantissa), f32 accumulation.
    Tf32,
    /// Tensor cores with operands rounded to bf16 (8-bit mantissa), f32 accumulation.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];
    /// What training, eval and segment use on a GPU unless told otherwise: the fastest precision
    /// whose short training run followed fp32's (README, "Precision").
    pub const CUDA_DEFAULT: Precision = Precision::Bf16;
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Which tensor-core convolution kernels run the tf32 and bf16 convolutions on a GPU.
/// `Staged` (kernels/conv2d_tc.cu) moves each tile through registers, rounding it as it is
/// written to shared memory. `Pipelined` (kernels/conv2d_tcp.cu) copies tiles with cp.async,
/// four deep, and rounds fragments as they are read. Both take every shape. `Nhwc`
/// (kernels/conv2d_nhwc.cu) runs the bf16 passes from channels-last bf16 copies of their
/// operands (ldmatrix, half the shared memory, two 128 x 128 blocks per SM) where the channels it
/// copies are multiples of 8, and the pipelined kernels for everything else (tf32, the 3-channel
/// stem's forward and weight gradient). Chosen per process with
/// `COSEG_CONV_TC=staged|pipelined|nhwc|wgmma` (read when a GPU is opened) or
/// [`CudaDevice::set_tc_variant`](crate::backend::cuda::CudaDevice::set_tc_variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TcVariant {
    Staged,
    /// The default: on the H200 it was the faster in 46 of the 48 tensor-core rows of
    /// `cargo bench --bench conv_gpu` and took the training step from 60.8 to 47.5 ms in bf16
    /// (kernels/NOTES.md).
    #[default]
    Pipelined,
    /// Not the default until a GPU has timed it: written and checked on the CPU emulator
    /// (scripts/kernel-emu, bit for bit against `Pipelined`), not yet run on a GPU.
    Nhwc,
    /// `Nhwc` with its three bf16 passes on Hopper's wgmma (kernels/conv2d_wgmma.cu, built for
    /// sm_90a): only on a compute capability 9.0 GPU, elsewhere `Nhwc`. The model plans wgmma
    /// wherever the channels-last kernels take the pass; tuning times it beside their tiles.
    /// Checked on the CPU emulator only (bit for bit against `Nhwc`'s 128 x 128 kernels), not yet
    /// run on a GPU.
    Wgmma,
}

impl TcVariant {
    pub const ALL: [TcVariant; 4] = [TcVariant::Staged, TcVariant::Pipelined, TcVariant::Nhwc, TcVariant::Wgmma];
    pub fn name(self) -> &'static str {
        match self {
            TcVariant::Staged => "staged",
            TcVariant::Pipelined => "pipelined",
            TcVariant::Nhwc => "nhwc",
            TcVariant::Wgmma => "wgmma",
        }
    }
}

impl FromStr for TcVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TcVariant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| Error::Config(format!("COSEG_CONV_TC='{s}' is not one of staged, pipelined, nhwc, wgmma")))
    }
}

impl fmt::Display for TcVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sets the convolutions' precision for `device` and returns it: `requested`, or
/// [`Precision::CUDA_DEFAULT`] on a GPU; always fp32 on the CPU (which has no other arithmetic),
/// saying so when something else was asked for.
pub fn use_precision(device: Device, requested: Option<Precision>) -> Result<Precision> {
    match device {
        Device::Cpu => {
            if let Some(p) = requested.filter(|p| *p != Precision::Fp32) {
                eprintln!("note: precision {p} applies to GPU convolutions; the CPU computes in fp32");
            }
            Ok(Precision::Fp32)
        }
        Device::Cuda(n) => {
            let p = requested.unwrap_or(Precision::CUDA_DEFAULT);
            crate::backend::cuda::CudaDevice::get(n)?.set_precision(p);
            Ok(p)
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::Config(format!("precision '{s}' is not one of fp32, tf32, bf16")))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device a request means on this machine: `auto` is cuda:0 when a CUDA device can be
/// opened, else the CPU; `cuda:N` is checked now, so a missing driver or GPU is a clear error
/// (naming the device) before any work starts.
pub fn resolve(req: DeviceRequest) -> Result<Device> {
    use crate::backend::cuda::CudaDevice;
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(if CudaDevice::get(0).is_ok() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceRequest::Cuda(n) => CudaDevice::get(n).map(|_| Device::Cuda(n)).map_err(|e| match e {
            Error::Cuda(source) => Error::DeviceRequest { request: req, source },
            other => other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_parse_print_and_name_a_bad_value() {
        for (s, want) in [("auto", DeviceRequest::Auto), ("cpu", DeviceRequest::Cpu), ("cuda", DeviceRequest::Cuda(0)), ("cuda:3", DeviceRequest::Cuda(3))] {
            let r: DeviceRequest = s.parse().unwrap();
            assert_eq!(r, want, "{s}");
            assert_eq!(r.to_string().parse::<DeviceRequest>().unwrap(), r);
        }
        for bad in ["tpu", "cuda:", "cuda:-1", "CPU", ""] {
            let e = bad.parse::<DeviceRequest>().unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("auto, cpu, cuda, cuda:N"), "{e}");
        }
    }

    // COSEG_CONV_TC's values: each variant's name parses back to it; anything else is refused
    // with the value and the choices.
    #[test]
    fn tensor_core_variants_parse_their_names() {
        for v in TcVariant::ALL {
            assert_eq!(v.name().parse::<TcVariant>().unwrap(), v);
            assert_eq!(v.to_string(), v.name());
        }
        assert_eq!(TcVariant::ALL.map(TcVariant::name), ["staged", "pipelined", "nhwc", "wgmma"]);
        let e = "NHWC".parse::<TcVariant>().unwrap_err().to_string();
        assert!(e.contains("'NHWC'") && e.contains("staged, pipelined, nhwc, wgmma"), "{e}");
    }
}
