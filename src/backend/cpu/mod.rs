//! CPU kernels.
//! See the crate docs for where this stage sits in the data flow.
//!
//! - [`gemm`]: row-major SGEMM (single and batched) on the `gemm` crate.
//! - [`conv`]: 2-D convolution forward/backward lowered to SGEMM via im2col.

pub mod conv;
pub mod gemm;
