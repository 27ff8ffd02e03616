//! Matrix products on the CPU GEMM.

use super::{Gemm, MatmulKernels};
use crate::backend::cpu::gemm::sgemm;
use crate::error::Result;
use crate::ops::Cpu;
use crate::tensor::Storage;

/// `batch` independent products C_i = op(A_i) op(B_i); a batch stride of 0 reuses one matrix.
#[allow(clippy::too_many_arguments)]
fn gemm_batches(
    batch: usize,
    (trans_a, a, a_stride): (bool, &[f32], usize),
    (trans_b, b, b_stride): (bool, &[f32], usize),
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut c = vec![0f32; batch * m * n];
    if m * n == 0 {
        return c;
    }
    for (i, ci) in c.chunks_mut(m * n).enumerate() {
        sgemm(
            trans_a,
            trans_b,
            m,
            n,
            k,
            1.0,
            &a[i * a_stride..],
            &b[i * b_stride..],
            0.0,
            ci,
        );
    }
    c
}

impl MatmulKernels for Cpu {
    fn gemm(&self, p: &Gemm) -> Result<Storage> {
        let (sa, sb) = (p.a.1.storage(), p.b.1.storage());
        let (a, b) = ((p.a.0, sa.as_cpu(p.op)?, p.a.2), (p.b.0, sb.as_cpu(p.op)?, p.b.2));
        Ok(Storage::Cpu(gemm_batches(p.batch, a, b, p.m, p.n, p.k)))
    }
}
