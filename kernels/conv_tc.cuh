// What the two tensor-core convolution files share (conv2d_tc.cu: register-staged tiles;
// conv2d_tcp.cu: cp.async pipeline): the GEMM of each pass (on mma.cuh's wrappers), the
// (c, r, s) stepper and the epilogue that writes a block's accumulators.
#pragma once
#include "conv_geom.cuh"
#include "mma.cuh"

#define TC_THREADS 256

enum ConvPass { FWD = 0, BWD_INPUT = 1, BWD_WEIGHT = 2 };

// (c, r, s) or (k, r, s) of a flattened reduction index, stepped without division.
struct Crs {
    int c, r, s;
    __device__ __forceinline__ void decode(int idx, int R, int S) {
        int RS = R * S;
        c = idx / RS;
        int rs = idx - c * RS;
        r = rs / S;
        s = rs - r * S;
    }
    __device__ __forceinline__ void step(int R, int S) {
        if (++s == S) {
            s = 0;
            if (++r == R) {
                r = 0;
                ++c;
            }
        }
    }
};

// A warp's MT x NT accumulator tiles: zeroed, and every A fragment i times every B fragment j.
template <int MT, int NT>
__device__ __forceinline__ void zero_tiles(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;
}
template <class P, int MT, int NT>
__device__ __forceinline__ void mma_tiles(float (&acc)[MT][NT][4], const unsigned (&af)[MT][4], const unsigned (&bf)[NT][2]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) P::mma(acc[i][j], af[i], bf[j]);
}

// (M, N, reduction) of a pass's GEMM: forward K x (N*OH*OW) over C*R*S; input gradient
// C x (N*H*W) over K*R*S; weight gradient K x (C*R*S) over N*OH*OW.
struct ConvGemm {
    int m, n, red;
};
template <int PASS>
__device__ __forceinline__ ConvGemm conv_gemm(const ConvGeom& g) {
    const int RS = g.r * g.s;
    if constexpr (PASS == FWD) return {g.k, g.n * g.oh * g.ow, g.c * RS};
    else if constexpr (PASS == BWD_INPUT) return {g.c, g.n * g.h * g.w, g.k * RS};
    else return {g.k, g.c * RS, g.n * g.oh * g.ow};
}

// The gathered operand of the forward (x) and input gradient (dy) for one pixel: element
// (tap rs, channel ch) of the reduction, with ch running fastest. `at` is the pixel of the image
// the tap lands on (-1: padding, hole or past the image): conv2d_tcp.cu reads channel ch of it
// a plane further per channel (NCHW), conv2d_nhwc.cu at at * C + ch (channels-last).
template <int PASS>
struct TapGather {
    int base_h, base_w;  // forward: top-left input pixel (ih0, iw0); input gradient: (h + pad, w + pad)
    __device__ __forceinline__ int at(const ConvGeom& g, int r, int s) const {
        if constexpr (PASS == FWD) {
            const int ih = base_h + r * g.dil, iw = base_w + s * g.dil;
            return ((unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w) ? ih * g.w + iw : -1;
        } else {
            int th = base_h - r * g.dil, tw = base_w - s * g.dil;
            if (th < 0 || tw < 0) return -1;
            if (g.stride != 1) {
                if (th % g.stride != 0 || tw % g.stride != 0) return -1;
                th /= g.stride;
                tw /= g.stride;
            }
            return (th < g.oh && tw < g.ow) ? th * g.ow + tw : -1;
        }
    }
};

// Where a thread's block and warp sit in the pass's GEMM: the 2 x 4 warps (wm, wn), a lane's
// fragment coordinates (g8 = lane / 4, t4 = lane % 4), the GEMM (M x N over RED), the block's
// output origin (m0, n0) and its slice of the reduction, [red_begin, red_end) (blockIdx.z's
// chunk of red_chunk). One definition for both kernel files and their epilogue.
template <int BM, int BN, int PASS>
struct BlockTile {
    int t, wm, wn, g8, t4, M, N, RED, m0, n0, red_begin, red_end;
    __device__ __forceinline__ BlockTile(const ConvGeom& g, int red_chunk) {
        t = threadIdx.x;
        const int lane = t & 31, warp = t >> 5;
        wm = warp >> 2;
        wn = warp & 3;
        g8 = lane >> 2;
        t4 = lane & 3;
        const ConvGemm gm = conv_gemm<PASS>(g);
        M = gm.m;
        N = gm.n;
        RED = gm.red;
        m0 = blockIdx.y * BM;
        n0 = blockIdx.x * BN;
        red_begin = blockIdx.z * red_chunk;
        red_end = min(RED, red_begin + red_chunk);
    }
};

// Writes a block's accumulators: the warp's tile (i, j) holds rows row0 + 16 i + g8 (+8),
// columns col0 + 8 j + 2 t4 (+1) of the block's BM x BN output (store_tile below: the 2 x 4 warps
// of the mma.sync kernels; conv2d_wgmma.cu: a warpgroup's 64 rows, a warp's 16 of them across
// all BN columns). Forward: y (N, K, OH, OW) plus the bias; input
// gradient: dx (N, C, H, W); weight gradient: dw (K, C*R*S). A reduction split over gridDim.z
// (the weight gradient's; the forward's and input gradient's when tuning picks it) writes split
// z into slice z of a (splits, output) buffer that the host sums in order (reduce.cu's
// sum_splits_f32; no atomics, the same bits every run); the bias goes into slice 0 only.
//
// `stats` (forward only, unsplit; null: none) receives batch-norm partial statistics for the output
// channels: per row m and slot (a run of BN/4 columns of the block, slot = blockIdx.x * 4 + its
// index; a warp covers NT * 8 / (BN / 4) of them, one for the mma.sync kernels), of which
// min(BN/4, N - slot * BN/4) are inside the output, the sum of the values and the sum of their
// squared deviations from the slot's own mean, at stats[m * P + slot] and stats[(M + m) * P +
// slot], P = gridDim.x * 4 (0 for a slot wholly past the output). Centred per slot so that the
// variance does not come from E[x^2] - mean^2, which cancels when the mean is large. Each is
// written exactly once (no atomics: the same bits every run); batchnorm.cu's
// bn_stats_partials_f32 combines them per channel in double (Chan et al.'s pairwise formula).
template <int BM, int BN, int PASS, int MT, int NT>
__device__ __forceinline__ void store_tile_at(const float (&acc)[MT][NT][4], const BlockTile<BM, BN, PASS>& bt, int row0, int col0,
                                              const float* __restrict__ bias, float* __restrict__ out, const ConvGeom& g,
                                              float* __restrict__ stats = nullptr) {
    const int M = bt.M, N = bt.N, m0 = bt.m0, n0 = bt.n0, g8 = bt.g8, t4 = bt.t4;
    const int OHW = g.oh * g.ow, HW = g.h * g.w;
    out += (long long)blockIdx.z * M * N;  // this split's slice (M x N is the whole output)
    if (blockIdx.z != 0) bias = nullptr;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int col = n0 + col0 + j * 8 + 2 * t4 + half;
            if (col >= N) continue;
            long long col_base;  // out index of (row 0, col); rows step by row_step
            long long row_step;
            if constexpr (PASS == FWD) {
                const int pn = col / OHW;
                col_base = (long long)pn * M * OHW + (col - pn * OHW);
                row_step = OHW;
            } else if constexpr (PASS == BWD_INPUT) {
                const int pn = col / HW;
                col_base = (long long)pn * M * HW + (col - pn * HW);
                row_step = HW;
            } else {
                col_base = col;
                row_step = N;
            }
#pragma unroll
            for (int i = 0; i < MT; ++i) {
#pragma unroll
                for (int up = 0; up < 2; ++up) {
                    const int m = m0 + row0 + i * 16 + g8 + up * 8;
                    if (m >= M) continue;
                    float v = acc[i][j][up * 2 + half];
                    float* o = out + col_base + (long long)m * row_step;
                    if constexpr (PASS == FWD) {
                        if (bias != nullptr) v += __ldg(bias + m);
                    }
                    *o = v;
                }
            }
        }
    }
    if constexpr (PASS == FWD) {
        if (stats != nullptr) {
            constexpr int SLOT_TILES = BN / 32;  // 8-column tiles per slot of BN/4 columns
            static_assert(NT % SLOT_TILES == 0, "a warp covers whole slots");
            const int P = gridDim.x * 4;
#pragma unroll
            for (int sg = 0; sg < NT / SLOT_TILES; ++sg) {
                const int slot = blockIdx.x * 4 + col0 / (BN / 4) + sg, j0 = sg * SLOT_TILES;
                const int inside = min(BN / 4, max(0, N - slot * (BN / 4)));  // the slot's columns in the output
#pragma unroll
                for (int i = 0; i < MT; ++i) {
#pragma unroll
                    for (int up = 0; up < 2; ++up) {
                        const int m = m0 + row0 + i * 16 + g8 + up * 8;
                        const float b = (bias != nullptr && m < M) ? __ldg(bias + m) : 0.0f;
                        float s = 0.0f;
#pragma unroll
                        for (int j = j0; j < j0 + SLOT_TILES; ++j)
#pragma unroll
                            for (int half = 0; half < 2; ++half)
                                if (n0 + col0 + j * 8 + 2 * t4 + half < N) s += acc[i][j][up * 2 + half] + b;
                        // the row's other three lanes (t4 = 1, 2, 3), every lane taking part
                        s += __shfl_xor_sync(0xffffffffu, s, 1);
                        s += __shfl_xor_sync(0xffffffffu, s, 2);
                        const float mean = inside > 0 ? s / (float)inside : 0.0f;
                        float q = 0.0f;
#pragma unroll
                        for (int j = j0; j < j0 + SLOT_TILES; ++j)
#pragma unroll
                            for (int half = 0; half < 2; ++half)
                                if (n0 + col0 + j * 8 + 2 * t4 + half < N) {
                                    const float d = acc[i][j][up * 2 + half] + b - mean;
                                    q += d * d;
                                }
                        q += __shfl_xor_sync(0xffffffffu, q, 1);
                        q += __shfl_xor_sync(0xffffffffu, q, 2);
                        if (t4 == 0 && m < M) {
                            stats[(long long)m * P + slot] = s;
                            stats[(long long)(M + m) * P + slot] = q;
                        }
                    }
                }
            }
        }
    }
}

// store_tile_at for the 2 x 4 warps of the mma.sync kernels: warp (wm, wn) holds rows
// wm * BM/2 + .., columns wn * BN/4 + .. (MT = BM / 32 and NT = BN / 32 tiles).
template <int BM, int BN, int PASS, int MT, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[MT][NT][4], const BlockTile<BM, BN, PASS>& bt,
                                           const float* __restrict__ bias, float* __restrict__ out, const ConvGeom& g,
                                           float* __restrict__ stats = nullptr) {
    store_tile_at<BM, BN, PASS, MT, NT>(acc, bt, bt.wm * (BM / 2), bt.wn * (BN / 4), bias, out, g, stats);
}
