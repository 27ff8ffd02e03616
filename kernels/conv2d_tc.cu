// 2-D convolution on the tensor cores: the three implicit GEMMs of conv2d.cu (forward, input
// gradient, weight gradient; same layouts, NCHW activations, KCRS weights, any stride, padding and
// dilation) with `mma.sync` in TF32 (m16n8k8) or BF16 (m16n8k16), f32 accumulation.
//
// Why this design:
// - Activations and weights stay f32 in device memory and are rounded to TF32 / BF16 as a tile is
//   written to shared memory. The rest of the framework (batch norm, autograd, SGD on f32 master
//   weights) is unchanged, the fp32 kernels stay the reference, and the precision is a switch on
//   the device, not a second tensor type. The price is f32 bytes on loads, small by the count: a
//   512-channel 3x3 layer at 16x16 (N = 20) does about 800 FLOP per byte it must move, four times
//   the H200's bf16 ridge point.
// - `mma.sync` (an sm_80 instruction, run on sm_90) rather than Hopper's `wgmma`: it assembles from
//   the compute_90 PTX this build ships and from NVRTC's fallback alike, and the operands here are
//   gathered (im2col on the fly, padding, dilation, stride), which the tensor-memory accelerator's
//   box copies do not express for the dilated and strided cases.
//
// Tiling: a block of 256 threads (8 warps as 2 x 4) computes a BM x BN tile of the GEMM output; each
// warp a (BM/2) x (BN/4) sub-tile of 16 x 8 MMA tiles. The reduction advances 16 32-bit words per
// tile (16 TF32 or 32 BF16 elements), two MMA k-steps, double-buffered in shared memory: the next
// tile's global loads are issued before the current tile's MMAs, and stored after them, with one
// barrier per tile. Rows of shared memory are 20 words, so the fragment reads (8 rows x 4 words
// per warp) and the 16-byte tile stores (8 rows per phase) fall in distinct banks.
//
// Loads: for the forward and input-gradient passes the weights (A) are read as a row-major matrix,
// quads of 4 consecutive reduction elements per thread, 16-byte loads where aligned, a warp on
// whole lines (the input gradient takes the weights transposed to (C, K, R, S) by the host). For
// the gathered operand (B: x or dy) a thread owns one pixel and a run of consecutive reduction
// elements, decoded once per tile and then stepped without division; consecutive threads take
// consecutive pixels, so the gathers are coalesced along W. For the weight gradient the reduction runs over pixels, so a thread owns
// one pixel and a run of consecutive rows. Anything out of range (tails, padding, the holes of a
// strided input gradient) loads 0: every size is correct.
#include "conv_tc.cuh"

#define TILE_WORDS 16  // 32-bit words of the reduction per tile
#define ROW_WORDS 20   // TILE_WORDS + 4 (bank spread)

// Writes a thread's run of RUN consecutive reduction elements of one row (k-run layout).
template <class P, int RUN>
__device__ __forceinline__ void store_run(unsigned* row_words, const float (&v)[RUN]) {
    constexpr int WORDS = RUN * 16 / P::E;
    unsigned w[WORDS];
#pragma unroll
    for (int i = 0; i < WORDS; ++i) {
        if constexpr (P::E == 16) w[i] = Tf32::word(v[i]);
        else w[i] = Bf16::pair(v[2 * i], v[2 * i + 1]);
    }
#pragma unroll
    for (int i = 0; i < WORDS; i += 4)
        *reinterpret_cast<uint4*>(row_words + i) = make_uint4(w[i], w[i + 1], w[i + 2], w[i + 3]);
}

// Writes one reduction element `e` for RUN consecutive rows (row-run layout).
template <class P, int RUN>
__device__ __forceinline__ void store_column(unsigned (*rows)[ROW_WORDS], int e, const float (&v)[RUN]) {
#pragma unroll
    for (int j = 0; j < RUN; ++j) {
        if constexpr (P::E == 16) rows[j][e] = Tf32::word(v[j]);
        else reinterpret_cast<unsigned short*>(rows[j])[e] = (unsigned short)(Bf16::pair(v[j], 0.0f) & 0xffffu);
    }
}

// x[c, ih, iw] of one image (xn), 0 when !ok or outside the image (the zero padding).
__device__ __forceinline__ float x_at(bool ok, const float* __restrict__ xn, const ConvGeom& g, int c, int ih, int iw) {
    return (ok && c < g.c && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w) ? __ldg(xn + (c * g.h + ih) * g.w + iw)
                                                                                            : 0.0f;
}

template <int BM, int BN, class P, int PASS>
__device__ __forceinline__ void conv_tc(const float* __restrict__ a_src, const float* __restrict__ b_src,
                                        const float* __restrict__ bias, float* __restrict__ out,
                                        const ConvGeom& g, int red_chunk) {
    constexpr int E = P::E;
    constexpr int RUN_A = BM * E / TC_THREADS, RUN_B = BN * E / TC_THREADS;
    constexpr int MT = BM / 32, NT = BN / 32;  // 16x8 MMA tiles per warp along M and N
    __shared__ __align__(16) unsigned As[2][BM][ROW_WORDS];
    __shared__ __align__(16) unsigned Bs[2][BN][ROW_WORDS];

    const BlockTile<BM, BN, PASS> bt(g, red_chunk);
    const int OHW = g.oh * g.ow, HW = g.h * g.w;

    // Per-thread load state, fixed for the whole reduction.
    // A of FWD and BWD_INPUT is a row-major [M][RED] matrix (the weights; for BWD_INPUT the host
    // transposed them to (C, K, R, S)): a thread loads quads of 4 consecutive reduction elements,
    // QUADS consecutive threads cover one row of the tile, so a warp reads whole 128-byte lines.
    constexpr int QUADS = E / 4, QUAD_ROWS = TC_THREADS / QUADS, A_PASSES = BM / QUAD_ROWS;
    const int a_quad = bt.t % QUADS, a_row0 = bt.t / QUADS;
    const bool a_vec = (bt.RED & 3) == 0 && (reinterpret_cast<unsigned long long>(a_src) & 15) == 0;
    // B of FWD and BWD_INPUT (k-run): row t % BN (a pixel), part t / BN of the tile's elements.
    const int b_row = bt.t % BN, b_part = bt.t / BN;
    // row-run (BWD_WEIGHT): reduction element t % E, rows (t / E) * RUN.
    const int e_col = bt.t % E, grp = bt.t / E;
    int pix_n = 0, base_h = 0, base_w = 0;  // the B row's pixel (FWD: ih0/iw0; BWD_INPUT: h+pad, w+pad)
    bool pix_ok = false;
    Crs col0{0, 0, 0};  // BWD_WEIGHT: (c, r, s) of this thread's first B row
    if constexpr (PASS == FWD || PASS == BWD_INPUT) {
        const int p = bt.n0 + b_row;
        const int plane = PASS == FWD ? OHW : HW, pw = PASS == FWD ? g.ow : g.w;
        pix_ok = p < bt.N;
        pix_n = pix_ok ? p / plane : 0;
        const int pr = pix_ok ? p - pix_n * plane : 0;
        if constexpr (PASS == FWD) {
            base_h = (pr / pw) * g.stride - g.pad;
            base_w = (pr % pw) * g.stride - g.pad;
        } else {
            base_h = pr / pw + g.pad;
            base_w = pr % pw + g.pad;
        }
    } else {
        col0.decode(min(bt.n0 + grp * RUN_B, bt.N), g.r, g.s);
    }

    float va[RUN_A], vb[RUN_B];
    // A rows (FWD, BWD_INPUT): pass p holds row a_row0 + p * QUAD_ROWS, elements 4p .. 4p + 3.
    auto load_rows = [&](int k0) {
#pragma unroll
        for (int p = 0; p < A_PASSES; ++p) {
            const int m = bt.m0 + a_row0 + p * QUAD_ROWS, k = k0 + a_quad * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (m < bt.M) {
                const float* src = a_src + (long long)m * bt.RED + k;
                if (a_vec && k + 4 <= bt.RED) {
                    v = __ldg(reinterpret_cast<const float4*>(src));
                } else {
                    if (k < bt.RED) v.x = __ldg(src);
                    if (k + 1 < bt.RED) v.y = __ldg(src + 1);
                    if (k + 2 < bt.RED) v.z = __ldg(src + 2);
                    if (k + 3 < bt.RED) v.w = __ldg(src + 3);
                }
            }
            va[4 * p] = v.x;
            va[4 * p + 1] = v.y;
            va[4 * p + 2] = v.z;
            va[4 * p + 3] = v.w;
        }
    };
    auto load = [&](int k0) {
        if constexpr (PASS != BWD_WEIGHT) {
            load_rows(k0);
            Crs q;
            q.decode(k0 + b_part * RUN_B, g.r, g.s);
            if constexpr (PASS == FWD) {
                const float* xn = b_src + (long long)pix_n * g.c * HW;
#pragma unroll
                for (int j = 0; j < RUN_B; ++j) {
                    vb[j] = x_at(pix_ok, xn, g, q.c, base_h + q.r * g.dil, base_w + q.s * g.dil);
                    q.step(g.r, g.s);
                }
            } else {
                const float* dyn = b_src + (long long)pix_n * g.k * OHW;
#pragma unroll
                for (int j = 0; j < RUN_B; ++j) {
                    float v = 0.0f;
                    int th = base_h - q.r * g.dil, tw = base_w - q.s * g.dil;
                    if (pix_ok && q.c < g.k && th >= 0 && tw >= 0) {
                        int oh = th, ow = tw;
                        bool hit = true;
                        if (g.stride != 1) {
                            hit = th % g.stride == 0 && tw % g.stride == 0;
                            oh = th / g.stride;
                            ow = tw / g.stride;
                        }
                        if (hit && oh < g.oh && ow < g.ow) v = __ldg(dyn + (q.c * g.oh + oh) * g.ow + ow);
                    }
                    vb[j] = v;
                    q.step(g.r, g.s);
                }
            }
        } else {
            const int q = k0 + e_col;
            const bool q_ok = q < bt.red_end;
            const int qn = q_ok ? q / OHW : 0, qohw = q_ok ? q - qn * OHW : 0;
            const int ih0 = (qohw / g.ow) * g.stride - g.pad, iw0 = (qohw % g.ow) * g.stride - g.pad;
            const int ma = bt.m0 + grp * RUN_A;
            const float* dyq = a_src + ((long long)qn * g.k + ma) * OHW + qohw;
#pragma unroll
            for (int j = 0; j < RUN_A; ++j) va[j] = (q_ok && ma + j < bt.M) ? __ldg(dyq + j * OHW) : 0.0f;
            Crs cc = col0;
            const float* xq = b_src + (long long)qn * g.c * HW;
#pragma unroll
            for (int j = 0; j < RUN_B; ++j) {
                vb[j] = x_at(q_ok, xq, g, cc.c, ih0 + cc.r * g.dil, iw0 + cc.s * g.dil);
                cc.step(g.r, g.s);
            }
        }
    };
    auto store = [&](int buf) {
        if constexpr (PASS == BWD_WEIGHT) {
            store_column<P, RUN_A>(&As[buf][grp * RUN_A], e_col, va);
            store_column<P, RUN_B>(&Bs[buf][grp * RUN_B], e_col, vb);
        } else {
#pragma unroll
            for (int p = 0; p < A_PASSES; ++p) {
                unsigned* row = &As[buf][a_row0 + p * QUAD_ROWS][0];
                if constexpr (E == 16) {
                    *reinterpret_cast<uint4*>(row + a_quad * 4) =
                        make_uint4(Tf32::word(va[4 * p]), Tf32::word(va[4 * p + 1]), Tf32::word(va[4 * p + 2]), Tf32::word(va[4 * p + 3]));
                } else {
                    *reinterpret_cast<uint2*>(row + a_quad * 2) =
                        make_uint2(Bf16::pair(va[4 * p], va[4 * p + 1]), Bf16::pair(va[4 * p + 2], va[4 * p + 3]));
                }
            }
            store_run<P, RUN_B>(&Bs[buf][b_row][b_part * (RUN_B * 16 / E)], vb);
        }
    };

    float acc[MT][NT][4];
    zero_tiles(acc);

    const int tiles = bt.red_end > bt.red_begin ? (bt.red_end - bt.red_begin + E - 1) / E : 0;
    if (tiles > 0) {
        load(bt.red_begin);
        store(0);
    }
    __syncthreads();
    for (int kt = 0; kt < tiles; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < tiles;
        if (more) load(bt.red_begin + (kt + 1) * E);
#pragma unroll
        for (int ks = 0; ks < TILE_WORDS; ks += 8) {
            unsigned af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int r = bt.wm * (BM / 2) + i * 16 + bt.g8;
                af[i][0] = As[cur][r][ks + bt.t4];
                af[i][1] = As[cur][r + 8][ks + bt.t4];
                af[i][2] = As[cur][r][ks + bt.t4 + 4];
                af[i][3] = As[cur][r + 8][ks + bt.t4 + 4];
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int c = bt.wn * (BN / 4) + j * 8 + bt.g8;
                bf[j][0] = Bs[cur][c][ks + bt.t4];
                bf[j][1] = Bs[cur][c][ks + bt.t4 + 4];
            }
            mma_tiles<P>(acc, af, bf);
        }
        if (more) store(cur ^ 1);
        __syncthreads();
    }

    store_tile<BM, BN, PASS, MT, NT>(acc, bt, bias, out, g);
}

// One entry point per pass, precision and tile: NAME(a, b, bias, out, geometry, red_chunk).
//   forward:         a = weight (K, C, R, S), b = x,  out = y  (bias may be null)
//   input gradient:  a = weight transposed to (C, K, R, S), b = dy, out = dx
//   weight gradient: a = dy,     b = x,  out = dw (gridDim.z > 1: the splits' (splits, K, C*R*S) buffer)
// red_chunk: the reduction each blockIdx.z covers (a multiple of the tile's elements).
#define CONV_TC(NAME, BM, BN, PREC, PASS)                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                           \
        NAME(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias, \
             float* __restrict__ out, ConvGeom g, int red_chunk) {                                     \
        conv_tc<BM, BN, PREC, PASS>(a, b, bias, out, g, red_chunk);                                    \
    }

CONV_TC(conv2d_fwd_128x128_tf32, 128, 128, Tf32, FWD)
CONV_TC(conv2d_fwd_64x128_tf32, 64, 128, Tf32, FWD)
CONV_TC(conv2d_fwd_128x64_tf32, 128, 64, Tf32, FWD)
CONV_TC(conv2d_fwd_128x128_bf16, 128, 128, Bf16, FWD)
CONV_TC(conv2d_fwd_64x128_bf16, 64, 128, Bf16, FWD)
CONV_TC(conv2d_fwd_128x64_bf16, 128, 64, Bf16, FWD)
CONV_TC(conv2d_bwd_input_128x128_tf32, 128, 128, Tf32, BWD_INPUT)
CONV_TC(conv2d_bwd_input_64x128_tf32, 64, 128, Tf32, BWD_INPUT)
CONV_TC(conv2d_bwd_input_128x64_tf32, 128, 64, Tf32, BWD_INPUT)
CONV_TC(conv2d_bwd_input_128x128_bf16, 128, 128, Bf16, BWD_INPUT)
CONV_TC(conv2d_bwd_input_64x128_bf16, 64, 128, Bf16, BWD_INPUT)
CONV_TC(conv2d_bwd_input_128x64_bf16, 128, 64, Bf16, BWD_INPUT)
CONV_TC(conv2d_bwd_weight_128x128_tf32, 128, 128, Tf32, BWD_WEIGHT)
CONV_TC(conv2d_bwd_weight_64x128_tf32, 64, 128, Tf32, BWD_WEIGHT)
CONV_TC(conv2d_bwd_weight_128x64_tf32, 128, 64, Tf32, BWD_WEIGHT)
CONV_TC(conv2d_bwd_weight_128x128_bf16, 128, 128, Bf16, BWD_WEIGHT)
CONV_TC(conv2d_bwd_weight_64x128_bf16, 64, 128, Bf16, BWD_WEIGHT)
CONV_TC(conv2d_bwd_weight_128x64_bf16, 128, 64, Bf16, BWD_WEIGHT)
