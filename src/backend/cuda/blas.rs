//! Matrix products on cuBLAS (one handle per device, on the device's stream), for row-major
//! operands: row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the call swaps
//! the operands and their transposes and passes the row lengths as leading dimensions.

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::error::CudaError;
use super::launch::to_i32;
use crate::error::{Error, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The device's cuBLAS handle, created on first use.
fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlas>> {
    static HANDLES: OnceLock<Mutex<HashMap<usize, Arc<CudaBlas>>>> = OnceLock::new();
    let mut map = HANDLES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(h) = map.get(&dev.ordinal()) {
        return Ok(h.clone());
    }
    let h = Arc::new(CudaBlas::new(dev.stream().clone()).map_err(|status| CudaError::Blas {
        ordinal: dev.ordinal(),
        call: "creating the handle".into(),
        status,
    })?);
    map.insert(dev.ordinal(), h.clone());
    Ok(h)
}

/// One operand of a batched product: transposed?, buffer, elements between batch entries (0 =
/// the same matrix for every entry).
pub type Operand<'a> = (bool, &'a GpuBuffer, usize);

/// C_i (m x n) = op(A_i) (m x k) op(B_i) (k x n) for i < batch, all row-major; C is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dev: &CudaDevice,
    batch: usize,
    a: Operand,
    b: Operand,
    m: usize,
    n: usize,
    k: usize,
    c: &mut GpuBuffer,
) -> Result<()> {
    check_lengths(batch, a, b, m, n, k, c)?;
    if batch == 0 || m * n == 0 {
        return Ok(());
    }
    if k == 0 {
        return super::elementwise::fill(dev, c, 0.0);
    }
    let cfg = strided_config(batch, a, b, m, n, k)?;
    let blas = handle(dev)?;
    // cuBLAS runs in the calling thread's current context: make it this device's.
    dev.stream()
        .context()
        .bind_to_thread()
        .map_err(|e| CudaError::driver(dev.ordinal(), format!("{OP}: binding the context to this thread"), e))?;
    let timed = dev.time_start()?;
    // SAFETY: the buffers hold at least what the strides and dims above read and write (checked),
    // and cuBLAS runs on the device's one stream, in order with the kernels.
    unsafe { blas.gemm_strided_batched(cfg, b.1.slice(), a.1.slice(), c.slice_mut()) }.map_err(|status| {
        CudaError::Blas { ordinal: dev.ordinal(), call: format!("{OP} ({batch} x {m}x{k} by {k}x{n})"), status }
    })?;
    dev.time_stop(timed, "cublas sgemm")?;
    dev.after_launch("cublas sgemm")
}

const OP: &str = "sgemm";

/// Refuses operands shorter than the products read, and a C not exactly the products' size.
fn check_lengths(batch: usize, a: Operand, b: Operand, m: usize, n: usize, k: usize, c: &GpuBuffer) -> Result<()> {
    let read = |stride: usize, one: usize| if batch == 0 { 0 } else { (batch - 1) * stride + one };
    for (what, len, want) in [("A", a.1.len(), read(a.2, m * k)), ("B", b.1.len(), read(b.2, k * n))] {
        if len < want {
            return Err(Error::shape(
                OP,
                format!("{what} has {len} elements, {batch} products of ({m}x{k})x({k}x{n}) read {want}"),
            ));
        }
    }
    if c.len() != batch * m * n {
        return Err(Error::shape(
            OP,
            format!("C has {} elements, {batch} products of {m}x{n} need {}", c.len(), batch * m * n),
        ));
    }
    Ok(())
}

/// cuBLAS is column-major: the row-major C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T,
/// so B goes first and the dimensions swap.
fn strided_config(batch: usize, a: Operand, b: Operand, m: usize, n: usize, k: usize) -> Result<StridedBatchedConfig<f32>> {
    let ((ta, _, sa), (tb, _, sb)) = (a, b);
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let gemm = GemmConfig {
        transa: op(tb),
        transb: op(ta),
        m: to_i32(OP, "n", n)?,
        n: to_i32(OP, "m", m)?,
        k: to_i32(OP, "k", k)?,
        alpha: 1.0f32,
        lda: to_i32(OP, "ld", if tb { k } else { n })?,
        ldb: to_i32(OP, "ld", if ta { m } else { k })?,
        beta: 0.0f32,
        ldc: to_i32(OP, "ld", n)?,
    };
    Ok(StridedBatchedConfig {
        gemm,
        batch_size: to_i32(OP, "batch", batch)?,
        stride_a: sb as i64,
        stride_b: sa as i64,
        stride_c: (m * n) as i64,
    })
}
