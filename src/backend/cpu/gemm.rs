//! Single-precision GEMM on the CPU, row-major, BLAS-style semantics.
//!
//! The heavy lifting is done by the `gemm` crate (packed, SIMD micro-kernels, rayon threads); this
//! module fixes the row-major/transpose convention the rest of coseg uses and the batching policy.
//!
//! Slice lengths are the caller's responsibility (tensor ops validate shapes and return
//! `coseg::Error` before calling here); they are only checked with `debug_assert!`.

use gemm::Parallelism;

/// How a GEMM call may use threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Run on the calling thread only (the caller already parallelises around it).
    Single,
    /// Split the GEMM over the rayon pool.
    Pool,
}

impl Threads {
    fn parallelism(self) -> Parallelism {
        match self {
            Threads::Single => Parallelism::None,
            // gemm falls back to one thread by itself below its work threshold.
            Threads::Pool => Parallelism::Rayon(rayon::current_num_threads()),
        }
    }
}

/// One product C = alpha * op(A)\[m,k\] * op(B)\[k,n\] + beta * C, all row-major, less its data:
/// op(X) = X^T when `trans_x` (then A is stored k x m, B is stored n x k).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Product {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Product {
    /// op(A) and op(B) as strided views of the stored `a` and `b`.
    fn operands(&self, a: &[f32], b: &[f32]) -> (Strided, Strided) {
        let (a_rs, a_cs) = strides(self.trans_a, self.m, self.k);
        let (b_rs, b_cs) = strides(self.trans_b, self.k, self.n);
        let a = Strided {
            ptr: a.as_ptr(),
            rs: a_rs,
            cs: a_cs,
        };
        let b = Strided {
            ptr: b.as_ptr(),
            rs: b_rs,
            cs: b_cs,
        };
        (a, b)
    }
}

/// (row stride, column stride) in elements of a row-major `rows x cols` op(X), stored transposed
/// (as `cols x rows`) if `trans`.
fn strides(trans: bool, rows: usize, cols: usize) -> (isize, isize) {
    if trans {
        // op(X)[i, j] = X[j * rows + i].
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

/// C\[m,n\] = alpha * op(A)\[m,k\] * op(B)\[k,n\] + beta * C, all row-major; op(X) = X^T when `trans_x`
/// (then A is stored k x m, B is stored n x k). Uses the rayon pool for large products.
///
/// As in BLAS, `beta == 0` means C is not read (NaN/garbage in C does not propagate).
/// Lengths are only debug-asserted: callers validate shapes.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    let p = Product {
        trans_a,
        trans_b,
        m,
        n,
        k,
        alpha,
        beta,
    };
    sgemm_threads(Threads::Pool, p, a, b, c);
}

/// [`sgemm`] of `p` on contiguous stacks of `batch` matrices: A is `batch * m * k`, B
/// `batch * k * n`, C `batch * m * n`. Parallel over the batch when it is large enough to feed
/// every thread, otherwise parallel inside each product.
pub fn sgemm_batched(batch: usize, p: Product, a: &[f32], b: &[f32], c: &mut [f32]) {
    use rayon::prelude::*;
    let (a_len, b_len, c_len) = (p.m * p.k, p.k * p.n, p.m * p.n);
    debug_assert!(a.len() >= batch * a_len, "sgemm_batched: A too short");
    debug_assert!(b.len() >= batch * b_len, "sgemm_batched: B too short");
    debug_assert!(c.len() >= batch * c_len, "sgemm_batched: C too short");
    if batch == 0 || c_len == 0 {
        return;
    }
    let one = |i: usize, c_i: &mut [f32], threads: Threads| {
        let a_i = &a[i * a_len..(i + 1) * a_len];
        let b_i = &b[i * b_len..(i + 1) * b_len];
        sgemm_threads(threads, p, a_i, b_i, c_i);
    };
    let c = &mut c[..batch * c_len];
    // Small products are not worth splitting internally; many of them are split by batch.
    let small = p.m * p.n * p.k < 64 * 64 * 64;
    if batch >= rayon::current_num_threads() || (small && batch > 1) {
        c.par_chunks_mut(c_len)
            .enumerate()
            .for_each(|(i, c_i)| one(i, c_i, Threads::Single));
    } else {
        c.chunks_mut(c_len)
            .enumerate()
            .for_each(|(i, c_i)| one(i, c_i, Threads::Pool));
    }
}

/// [`sgemm`] of `p` with an explicit threading choice (used by the convolution kernels).
pub(crate) fn sgemm_threads(threads: Threads, p: Product, a: &[f32], b: &[f32], c: &mut [f32]) {
    let Product { m, n, k, .. } = p;
    debug_assert!(
        a.len() >= m * k,
        "sgemm: A has {} elements, needs {m}x{k}",
        a.len()
    );
    debug_assert!(
        b.len() >= k * n,
        "sgemm: B has {} elements, needs {k}x{n}",
        b.len()
    );
    debug_assert!(
        c.len() >= m * n,
        "sgemm: C has {} elements, needs {m}x{n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 || p.alpha == 0.0 {
        scale(c, p.beta);
        return;
    }
    let (a, b) = p.operands(a, b);
    let threads_n = rayon::current_num_threads();
    if threads == Threads::Pool
        && threads_n > 1
        && m.min(n) <= SPLIT_MAX_SHORT_SIDE
        && 2 * m * n * k >= 1 << 22
    {
        split_long_side(threads_n, p, a, b, c);
        return;
    }
    // SAFETY: the strides address exactly op(A) (m x k), op(B) (k x n) and C (m x n) inside
    // slices at least that long (asserted above / guaranteed by the callers' shape checks), and C
    // does not alias A or B (it is a unique borrow).
    unsafe { raw_sgemm(threads.parallelism(), p, a, b, c.as_mut_ptr(), n) };
}

/// C = beta * C, the product without a product term (k == 0 or alpha == 0); beta == 0 clears
/// without reading.
fn scale(c: &mut [f32], beta: f32) {
    if beta == 0.0 {
        c.fill(0.0);
    } else if beta != 1.0 {
        c.iter_mut().for_each(|v| *v *= beta);
    }
}

/// Splits C (m x n, as `p`) along its long side into one block per thread (at most `threads_n`),
/// each a single-threaded product.
fn split_long_side(threads_n: usize, p: Product, a: Strided, b: Strided, c: &mut [f32]) {
    use rayon::prelude::*;
    let (m, n) = (p.m, p.n);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let split_cols = n >= m;
    let (len, align) = (if split_cols { n } else { m }, 16);
    let tasks = threads_n.min(len.div_ceil(align));
    let block = len.div_ceil(tasks).next_multiple_of(align);
    (0..len.div_ceil(block)).into_par_iter().for_each(|t| {
        let (lo, hi) = (t * block, ((t + 1) * block).min(len));
        // SAFETY: blocks are disjoint column (row) ranges of C, which holds m x n elements; A and
        // B are only read.
        unsafe {
            if split_cols {
                let b_t = Strided {
                    ptr: b.ptr.offset(lo as isize * b.cs),
                    ..b
                };
                let p_t = Product { n: hi - lo, ..p };
                raw_sgemm(Parallelism::None, p_t, a, b_t, c_ptr.get().add(lo), n);
            } else {
                let a_t = Strided {
                    ptr: a.ptr.offset(lo as isize * a.rs),
                    ..a
                };
                let p_t = Product { m: hi - lo, ..p };
                raw_sgemm(Parallelism::None, p_t, a_t, b, c_ptr.get().add(lo * n), n);
            }
        }
    });
}

/// For products with a side this short (e.g. 64 output channels) the gemm crate's own threading
/// wastes about a third of the CPU time (measured on C = K = 64 convolutions: 40 vs 60 GFLOP/s per
/// core), so we split the long side ourselves; each block re-packs the short operand, which is cheap.
const SPLIT_MAX_SHORT_SIDE: usize = 128;

/// A read-only matrix view: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}
// SAFETY: only ever read, from slices borrowed for the whole parallel call.
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes a disjoint block.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // A method (not field access) so closures capture the Send wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// C (row-major, row stride `ldc`) = alpha * A * B + beta * C for the sizes and scalars of `p`
/// (its transposes are already in the strides of `a` and `b`) via the gemm crate, whose naming is
/// dst = alpha_g * dst + beta_g * lhs * rhs. `beta == 0` does not read C.
///
/// # Safety
/// `a`, `b` must address m x k and k x n readable elements, `c` m x n writable ones not aliasing them.
unsafe fn raw_sgemm(par: Parallelism, p: Product, a: Strided, b: Strided, c: *mut f32, ldc: usize) {
    unsafe {
        gemm::gemm(
            p.m,
            p.n,
            p.k,
            c,
            1,
            ldc as isize,
            p.beta != 0.0,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            p.beta,
            p.alpha,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Textbook triple loop with explicit transposes: the reference.
    fn naive(p: Product, a: &[f32], b: &[f32], c: &mut [f32]) {
        let Product { m, n, k, .. } = p;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for q in 0..k {
                    let av = if p.trans_a {
                        a[q * m + i]
                    } else {
                        a[i * k + q]
                    };
                    let bv = if p.trans_b {
                        b[j * k + q]
                    } else {
                        b[q * n + j]
                    };
                    acc += av as f64 * bv as f64;
                }
                let old = if p.beta == 0.0 {
                    0.0
                } else {
                    p.beta * c[i * n + j]
                };
                c[i * n + j] = p.alpha * acc as f32 + old;
            }
        }
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }

    #[test]
    fn sgemm_matches_naive_for_all_transposes_and_scalars() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // The last two are big enough for the block split of short-sided products (by columns,
        // then by rows) when the pool has several threads.
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 9, 33),
            (64, 48, 70),
            (130, 67, 129),
            (64, 1100, 40),
            (1000, 60, 40),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    for &(alpha, beta) in &[(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                        let a = random(&mut rng, m * k);
                        let b = random(&mut rng, k * n);
                        let c0 = random(&mut rng, m * n);
                        let mut got = c0.clone();
                        let mut want = c0.clone();
                        sgemm(ta, tb, m, n, k, alpha, &a, &b, beta, &mut got);
                        let p = Product {
                            trans_a: ta,
                            trans_b: tb,
                            m,
                            n,
                            k,
                            alpha,
                            beta,
                        };
                        naive(p, &a, &b, &mut want);
                        let what = format!("m{m} n{n} k{k} ta{ta} tb{tb} a{alpha} b{beta}");
                        assert_close(&got, &want, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn sgemm_beta_zero_ignores_nan_in_c_and_k_zero_scales() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (m, n, k) = (5, 6, 4);
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let mut got = vec![f32::NAN; m * n];
        let mut want = vec![0.0; m * n];
        sgemm(false, false, m, n, k, 1.0, &a, &b, 0.0, &mut got);
        let p = Product {
            trans_a: false,
            trans_b: false,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        };
        naive(p, &a, &b, &mut want);
        assert_close(&got, &want, "beta 0 over NaN");

        let c0 = random(&mut rng, m * n);
        let mut c = c0.clone();
        sgemm(false, false, m, n, 0, 1.0, &[], &[], 3.0, &mut c);
        let scaled: Vec<f32> = c0.iter().map(|v| 3.0 * v).collect();
        assert_close(&c, &scaled, "k = 0");
    }

    #[test]
    fn sgemm_batched_matches_per_matrix_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Small batch of big products (inner threads) and big batch of small ones (outer threads).
        for &(batch, m, n, k) in &[(2, 70, 65, 80), (9, 6, 7, 5), (1, 33, 3, 2)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = random(&mut rng, batch * m * k);
                let b = random(&mut rng, batch * k * n);
                let c0 = random(&mut rng, batch * m * n);
                let p = Product {
                    trans_a: ta,
                    trans_b: tb,
                    m,
                    n,
                    k,
                    alpha: 1.5,
                    beta: 0.5,
                };
                let mut got = c0.clone();
                sgemm_batched(batch, p, &a, &b, &mut got);
                let mut want = c0.clone();
                for i in 0..batch {
                    let (a_i, b_i) = (
                        &a[i * m * k..(i + 1) * m * k],
                        &b[i * k * n..(i + 1) * k * n],
                    );
                    naive(p, a_i, b_i, &mut want[i * m * n..(i + 1) * m * n]);
                }
                assert_close(
                    &got,
                    &want,
                    &format!("batch {batch} m{m} n{n} k{k} ta{ta} tb{tb}"),
                );
            }
        }
    }
}
