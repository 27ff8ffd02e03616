//! Matrix products on cuBLAS (one handle per device, on the device's stream), for row-major
//! operands: row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the call swaps
//! the operands and their transposes and passes the row lengths as leading dimensions.
//!
//! Tensor cores: at the device's precision ([`CudaDevice::precision`]) tf32 or bf16 the products
//! run with cuBLAS's TF32 tensor-op math (operands rounded to TF32's 10-bit mantissa, f32
//! accumulation, f32 in and out); fp32 keeps the exact SIMT path. TF32 rather than bf16 for both
//! settings: the data stays f32 (bf16 would need a conversion pass and buffers per operand, or
//! CUBLAS_COMPUTE_32F_FAST_16BF, for products that are small here: DANet's C x C channel energy
//! and softmax-weighted sum, SE's FCs); and the channel energy x xᵀ sums 256 products of
//! post-ReLU features (at 16x16) into logits of order 10^2 that go straight into a softmax, where
//! bf16's rounding (relative 4e-3: 0.4 on a logit of 100) would scale an attention weight by up to
//! e^0.4 = 1.5, TF32's (5e-4: 0.05) by 1.05. The convolutions have their own bf16 kernels
//! (kernels/conv2d_tc.cu).

use super::alloc::GpuBuffer;
use super::context::CudaDevice;
use super::error::CudaError;
use super::launch::to_i32;
use crate::error::{Error, Result};
use crate::device::Precision;
use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t, cublasSetMathMode};
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
    set_math_mode(dev, &blas, dev.precision())?;
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

/// The handle's math mode for `precision`: TF32 tensor ops for tf32 and bf16 (see the module
/// docs), cuBLAS's default (exact f32) for fp32. Set before every product: the handle is shared by
/// the device, whose precision a run may change.
fn set_math_mode(dev: &CudaDevice, blas: &CudaBlas, precision: Precision) -> Result<()> {
    let mode = match precision {
        Precision::Fp32 => cublasMath_t::CUBLAS_DEFAULT_MATH,
        Precision::Tf32 | Precision::Bf16 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
    };
    // SAFETY: a live handle of this device; setting its math mode touches no memory.
    unsafe { cublasSetMathMode(*blas.handle(), mode) }.result().map_err(|status| {
        CudaError::Blas { ordinal: dev.ordinal(), call: format!("{OP}: setting the math mode for {}", precision.name()), status }.into()
    })
}

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
