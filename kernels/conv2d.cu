// 2-D convolution (stride, zero padding, dilation), NCHW activations, KCRS weights, as implicit
// GEMM: the im2col matrix is never stored; each tile of it is gathered straight into shared memory.
//
//   forward          Y[k, pix]      = sum_{(c,r,s)}  W[k, (c,r,s)]  * X~[(c,r,s), pix]     M=K  N=N*OH*OW  red=C*R*S
//   input gradient   dX[c, pix]     = sum_{(k,r,s)}  W[k, c, r, s]  * dY~[(k,r,s), pix]    M=C  N=N*H*W    red=K*R*S
//   weight gradient  dW[k, (c,r,s)] = sum_{pix}      dY[k, pix]     * X~[(c,r,s), pix]     M=K  N=C*R*S    red=N*OH*OW
//
// One block computes a BM x BN tile of the GEMM output with 256 threads as a 16 x 16 grid, each
// thread a 4 x 4 micro-tile; the reduction advances BK = 16 at a time through shared memory.
// Thread (tx, ty) owns output rows ty*4..ty*4+3 and columns tx*4..tx*4+3: its 4 columns are
// consecutive pixels, so the epilogue's stores are coalesced along W.
// Out-of-range rows, columns, reduction indices and padding cells load 0, so any size is correct.
// The weight gradient may split the reduction over gridDim.z (split-K): split z then writes its
// partial dW into slice z of a (splits, K, C*R*S) buffer, which the host sums in order
// (reduce.cu's sum_splits_f32): no atomics, the same bits every run.

#define BM 64
#define BN 64
#define BK 16
#define PAD 4  // keeps rows 16-byte aligned for float4 reads, spreads the transposed stores
#define THREADS 256

#include "conv_geom.cuh"

// acc += As^T Bs over one BK slice.
__device__ __forceinline__ void mma_tile(const float (*As)[BM + PAD], const float (*Bs)[BN + PAD],
                                         float acc[4][4], int tx, int ty) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
        float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
        float av[4] = {a.x, a.y, a.z, a.w};
        float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
}

// Once every thread has stored its part of the tile: acc += As^T Bs, then wait until all threads
// are done reading before the tile is overwritten.
__device__ __forceinline__ void accumulate_tile(const float (*As)[BM + PAD], const float (*Bs)[BN + PAD],
                                                float acc[4][4], int tx, int ty) {
    __syncthreads();
    mma_tile(As, Bs, acc, tx, ty);
    __syncthreads();
}

// Hands each element of this thread's micro-tile inside the GEMM output (rows below M, columns below
// NCOL) to store(m, col, value), a row at a time.
template <class Store>
__device__ __forceinline__ void store_tile(const float (&acc)[4][4], int m0, int c0, int tx, int ty, int M, int NCOL,
                                           Store store) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int col = c0 + tx * 4 + j;
            if (col >= NCOL) continue;
            store(m, col, acc[i][j]);
        }
    }
}

// The reduction of the forward and input-gradient GEMMs, whose B columns are pixels, one per thread
// of a row of BN: acc += A[m0.., :] * B[:, pixel], reading A through a(gm, gk) for gm < M, gk < RED
// and this thread's pixel's column through b(gk) for gk < RED when pix_ok; 0 elsewhere.
template <class LoadA, class LoadB>
__device__ __forceinline__ void pixel_gemm(float acc[4][4], int m0, int M, int RED, bool pix_ok, LoadA a, LoadB b) {
    __shared__ __align__(16) float As[BK][BM + PAD];
    __shared__ __align__(16) float Bs[BK][BN + PAD];
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int bcol = t % BN, brow0 = t / BN;  // B rows brow0 + 4*i
    for (int k0 = 0; k0 < RED; k0 += BK) {
        // A: 16 consecutive threads read 16 consecutive reduction indices.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int idx = t + i * THREADS, row = idx / BK, col = idx % BK;
            int gm = m0 + row, gk = k0 + col;
            As[col][row] = (gm < M && gk < RED) ? a(gm, gk) : 0.0f;
        }
        // B: consecutive threads read consecutive pixels (along W).
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int row = brow0 + 4 * i, gk = k0 + row;
            Bs[row][bcol] = (pix_ok && gk < RED) ? b(gk) : 0.0f;
        }
        accumulate_tile(As, Bs, acc, tx, ty);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_fwd_f32(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
               float* __restrict__ y, ConvGeom g) {
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int M = g.k, RS = g.r * g.s, RED = g.c * RS, OHW = g.oh * g.ow, NPIX = g.n * OHW;
    const int m0 = blockIdx.y * BM, p0 = blockIdx.x * BN;

    // This thread's im2col column (t % BN in pixel_gemm) is fixed for the whole reduction: decode its
    // pixel once.
    const int pix = p0 + t % BN;
    const bool pix_ok = pix < NPIX;
    const int pn = pix_ok ? pix / OHW : 0;
    const int pohw = pix_ok ? pix - pn * OHW : 0;
    const int ih0 = (pohw / g.ow) * g.stride - g.pad;
    const int iw0 = (pohw % g.ow) * g.stride - g.pad;
    const float* xn = x + (long long)pn * g.c * g.h * g.w;

    float acc[4][4] = {};
    pixel_gemm(
        acc, m0, M, RED, pix_ok,
        // A = W[m][red], row-major.
        [&](int gm, int gk) { return wt[(long long)gm * RED + gk]; },
        // B = X~[(c,r,s)][pix].
        [&](int gk) {
            int c = gk / RS, rs = gk - c * RS;
            int ih = ih0 + (rs / g.s) * g.dil, iw = iw0 + (rs % g.s) * g.dil;
            return (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w) ? xn[(c * g.h + ih) * g.w + iw] : 0.0f;
        });

    // Not store_tile: the bias is read once per row.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        float b = bias != nullptr ? bias[m] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int p = p0 + tx * 4 + j;
            if (p >= NPIX) continue;
            int n = p / OHW, ohw = p - n * OHW;
            y[((long long)n * M + m) * OHW + ohw] = acc[i][j] + b;
        }
    }
}

// dX[n, c, h, w] = sum_{k, r, s} W[k, c, r, s] * dY[n, k, oh, ow] where h = oh*stride - pad + r*dil
// (and likewise w): oh = (h + pad - r*dil) / stride when that divides exactly and is in range.
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_input_f32(const float* __restrict__ dy, const float* __restrict__ wt, float* __restrict__ dx,
                     ConvGeom g) {
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int M = g.c, RS = g.r * g.s, RED = g.k * RS, HW = g.h * g.w, NPIX = g.n * HW, OHW = g.oh * g.ow;
    const int m0 = blockIdx.y * BM, p0 = blockIdx.x * BN;

    const int pix = p0 + t % BN;
    const bool pix_ok = pix < NPIX;
    const int pn = pix_ok ? pix / HW : 0;
    const int phw = pix_ok ? pix - pn * HW : 0;
    const int hp = phw / g.w + g.pad, wp = phw % g.w + g.pad;  // h + pad, w + pad
    const float* dyn = dy + (long long)pn * g.k * OHW;

    float acc[4][4] = {};
    pixel_gemm(
        acc, m0, M, RED, pix_ok,
        // A[c][(k,r,s)] = W[k, c, r, s]
        [&](int gm, int gk) {
            int kk = gk / RS, rs = gk - kk * RS;
            return wt[((long long)kk * g.c + gm) * RS + rs];
        },
        // B[(k,r,s)][pix] = dY[n, k, oh, ow] or 0
        [&](int gk) {
            int kk = gk / RS, rs = gk - kk * RS;
            int th = hp - (rs / g.s) * g.dil, tw = wp - (rs % g.s) * g.dil;
            float v = 0.0f;
            if (th >= 0 && tw >= 0 && th % g.stride == 0 && tw % g.stride == 0) {
                int oh = th / g.stride, ow = tw / g.stride;
                if (oh < g.oh && ow < g.ow) v = dyn[(kk * g.oh + oh) * g.ow + ow];
            }
            return v;
        });

    store_tile(acc, m0, p0, tx, ty, M, NPIX, [&](int m, int p, float v) {
        int n = p / HW, hw = p - n * HW;
        dx[((long long)n * M + m) * HW + hw] = v;
    });
}

// dW[k, (c,r,s)] = sum_pix dY[k, pix] * X~[(c,r,s), pix]. gridDim.z splits the pixel reduction
// into chunks of `red_chunk` (a multiple of BK); with more than one split, dw is the (splits, K,
// C*R*S) buffer of the splits' partial sums (summed in order by sum_splits_f32).
extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_bwd_weight_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dw,
                      ConvGeom g, int red_chunk) {
    __shared__ __align__(16) float As[BK][BM + PAD];
    __shared__ __align__(16) float Bs[BK][BN + PAD];
    const int t = threadIdx.x, tx = t % 16, ty = t / 16;
    const int M = g.k, RS = g.r * g.s, NCOL = g.c * RS, OHW = g.oh * g.ow, RED = g.n * OHW;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    const int red_begin = blockIdx.z * red_chunk;
    const int red_end = min(RED, red_begin + red_chunk);

    // Both loads put consecutive threads on consecutive pixels (the reduction index).
    const int lk = t % BK, lrow0 = t / BK;  // rows/cols lrow0 + 16*i

    float acc[4][4] = {};
    for (int k0 = red_begin; k0 < red_end; k0 += BK) {
        const int q = k0 + lk;
        const bool q_ok = q < red_end;
        const int qn = q_ok ? q / OHW : 0;
        const int qohw = q_ok ? q - qn * OHW : 0;
        const int ih0 = (qohw / g.ow) * g.stride - g.pad;
        const int iw0 = (qohw % g.ow) * g.stride - g.pad;
        // A[k][pix] = dY[n, k, ohw]
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int row = lrow0 + 16 * i, gm = m0 + row;
            As[lk][row] = (q_ok && gm < M) ? dy[((long long)qn * M + gm) * OHW + qohw] : 0.0f;
        }
        // B[pix][(c,r,s)] = X[n, c, ih0 + r*dil, iw0 + s*dil]
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int col = lrow0 + 16 * i, gc = c0 + col;
            float v = 0.0f;
            if (q_ok && gc < NCOL) {
                int c = gc / RS, rs = gc - c * RS;
                int ih = ih0 + (rs / g.s) * g.dil, iw = iw0 + (rs % g.s) * g.dil;
                if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
                    v = x[(((long long)qn * g.c + c) * g.h + ih) * g.w + iw];
            }
            Bs[lk][col] = v;
        }
        accumulate_tile(As, Bs, acc, tx, ty);
    }

    store_tile(acc, m0, c0, tx, ty, M, NCOL, [&](int m, int col, float v) {
        dw[((long long)blockIdx.z * M + m) * NCOL + col] = v;  // split z's slice (split-K)
    });
}
