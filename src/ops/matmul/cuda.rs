//! Matrix products on cuBLAS.

use super::{Gemm, MatmulKernels};
use crate::backend::cuda::blas;
use crate::error::Result;
use crate::ops::Cuda;
use crate::ops::cuda_common::device;
use crate::tensor::Storage;

impl MatmulKernels for Cuda {
    fn gemm(&self, p: &Gemm) -> Result<Storage> {
        let dev = device(p.op, p.a.1)?;
        let (sa, sb) = (p.a.1.storage(), p.b.1.storage());
        let (a, b) = ((p.a.0, sa.as_cuda(p.op)?, p.a.2), (p.b.0, sb.as_cuda(p.op)?, p.b.2));
        let mut c = dev.alloc(p.batch * p.m * p.n)?;
        blas::sgemm(&dev, p.batch, a, b, p.m, p.n, p.k, &mut c)?;
        Ok(Storage::Cuda(c))
    }
}
