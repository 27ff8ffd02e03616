//! Matrix products on cuBLAS.

use super::{GemmOperand, MatmulKernels};
use crate::backend::cuda::blas;
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::{device};
use crate::tensor::Storage;

impl MatmulKernels for Cuda {
    fn gemm(
        &self,
        op: &'static str,
        batch: usize,
        a: GemmOperand,
        b: GemmOperand,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Storage> {
        let dev = device(op, a.1)?;
        let (sa, sb) = (a.1.storage(), b.1.storage());
        let mut c = dev.alloc(batch * m * n)?;
        blas::sgemm(
            &dev,
            batch,
            (a.0, sa.as_cuda(op)?, a.2),
            (b.0, sb.as_cuda(op)?, b.2),
            m,
            n,
            k,
            &mut c,
        )?;
        Ok(Storage::Cuda(c))
    }
}
