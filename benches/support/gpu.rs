//! What the GPU benches share (included with `#[path]`; not a bench of its own).

use coseg::backend::cuda::CudaDevice;
use std::sync::Arc;

/// cuda:0, or None after telling stderr that `bench` is skipped for want of a GPU.
pub fn device_or_skip(bench: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::get(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            eprintln!("{bench}: skipped, no GPU ({e})");
            None
        }
    }
}

/// What the step benches time: every precision on the default tensor-core kernels, and tf32 and
/// bf16 on the pipelined ones (kernels/conv2d_tcp.cu), with the label their ids end in
/// (`bf16`, `bf16_pipelined`, ...).
#[allow(dead_code)] // not every bench that includes this file times steps
pub fn precision_variants() -> Vec<(coseg::device::Precision, coseg::device::TcVariant, String)> {
    use coseg::device::{Precision, TcVariant};
    let mut out: Vec<_> = Precision::ALL.into_iter().map(|p| (p, TcVariant::default(), p.to_string())).collect();
    for p in [Precision::Tf32, Precision::Bf16] {
        out.push((p, TcVariant::Pipelined, format!("{p}_pipelined")));
    }
    out
}
