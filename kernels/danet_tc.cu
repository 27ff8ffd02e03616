// DANet's position attention on the tensor cores: TF32 mma.sync (m16n8k8; f32 in memory, operands
// rounded to TF32 as fragments are read, f32 accumulation), the path of the tf32 and bf16
// precisions (src/ops/danet/cuda.rs). The maths and the split of the work are danet.cu's (read
// its header): a block owns 64 "rows" of one image and a chunk of output channels, walks the
// other positions ("columns") in tiles of 32, makes each tile's weights W (fwd: the online
// softmax of S; dv: P^T; dq: dS; dk: dS^T) and accumulates out^T[row][ch] += sum_col W[row][col]
// X[ch][col]. What differs:
// - each warp owns 16 rows. W is made in the S mma's accumulators and goes straight into the
//   second mma as its A operand: an accumulator lane (g, t) = (lane / 4, lane % 4) holds columns
//   2t and 2t+1 of rows g and g+8 of each 8-column n-tile; read as A's k = t and t+4 of that
//   k-step, with X's B fragment taken at the same two columns, the product is the same sum in
//   another order. So W never goes through shared memory;
// - the rows' D operand (q for fwd and dq, k for dk and dv) is copied to shared memory once per
//   block; each column tile (the columns' D operand, X for fwd and dv, and dk's and dv's per-column
//   lse and delta) arrives by cp.async one tile ahead (cp_async_pipeline), and dq's and dk's dP
//   sums over C stream their chunks of 32 two ahead (a chunk is only 16 mma a warp: the copies'
//   latency, not the tensor cores, sets that loop's pace);
// - dq's and dk's X is the columns' D operand itself (k for dq, q for dk), already in shared
//   memory: a dq or dk block holds all of D (D <= 128, 16 n-tiles of accumulators), one block
//   per row tile. Larger D goes to danet.cu's kernels (the wrapper's choice, logged).
// P and dS are rounded to TF32 when made, and the forward's softmax sum adds the rounded
// weights, so each row's weights sum to 1 as the output uses them.
//
// Shared memory (dynamic, floats; Dp = D rounded up to 8, src/ops/danet/cuda.rs `tc_smem_floats`
// computes the same): the rows' operand Dp x 64; two column stages of Dp x 32 (+ 128 x 32 of X for
// fwd and dv) + 64 (the columns' lse and delta); dq and dk: three dP stages of 32 x 64 + 32 x 32.
// Rows are not padded: positions are XOR-swizzled (`swz`) so fragment reads hit distinct banks,
// which keeps the forward at 66 KB (three blocks per SM: the paper's 320 blocks in one wave)
// where padded rows took 80 KB (two per SM: 1.2 waves).
// Deterministic: no atomics, every sum in a fixed order. Tails are zero-filled by cp.async (rows,
// columns and channels past the ends, D and C past the k-steps) and masked as in danet.cu.

#include <math.h>
#include "cp_async.cuh"
#include "mma.cuh"

#define PT_THREADS 128               // 4 warps, as the launch sets it
#define PT_BR 64                     // rows per block, 16 per warp
#define PT_BCOL 32                   // columns per tile: 4 n-tiles of 8
#define PT_KC 32                     // dP's chunk of C
#define PT_DP_STAGES 3               // dP's pipeline: its chunks carry 16 mma a warp, so two in flight
#define PT_BC 128                    // fwd's and dv's output channels per block
#define PT_DMAX 128                  // the largest D (dq's and dk's accumulators hold all of it)
#define PT_NT (PT_BC / 8)            // accumulator n-tiles per warp (PT_DMAX / 8 as well)
static_assert(PT_DMAX / 8 == PT_NT, "dq's and dk's D fits fwd's accumulators");

enum { PT_FWD = 0, PT_DV = 1, PT_DQ = 2, PT_DK = 3 };

__device__ __forceinline__ unsigned tf32_bits(float v) { return Tf32::word(v); }
__device__ __forceinline__ float tf32_round(float v) { return __uint_as_float(Tf32::word(v)); }

// Where element (r, c) of a W-wide tile (r: k or channel, c: position in the tile) lives in
// shared memory: rows unpadded, the position XORed with 8 (r % 4), so that a fragment's lanes
// (rows r..r+3 by lane % 4, 8 positions by lane / 4) hit 32 distinct banks, and X's float2
// pairs (8 rows by lane / 4, columns 2t) 16 distinct 64-bit banks per half warp. Groups of 8
// positions stay whole, so 16-byte copies and float2 reads stay contiguous.
template <int W>
__device__ __forceinline__ int swz(int r, int c) {
    return r * W + (c ^ ((r & 3) << 3));
}

// Issues the copies of rows [k0, k0 + kn) of one image's (K, L) operand at positions
// [p0, p0 + W) into dst (local rows 0 .. kn-1, swizzled as `swz`), zero-filled past K and L: 16 bytes per cp.async where
// L is a multiple of 4 and the image's base 16-byte aligned (then a row's 4-float groups are
// all in or all out, p0 being a multiple of 32), else 4. The test is uniform over the block.
template <int W>
__device__ __forceinline__ void issue_tile(float* dst, const float* __restrict__ src, int K, int k0, int kn, int L,
                                           int p0) {
    if ((L & 3) == 0 && (reinterpret_cast<unsigned long long>(src) & 15) == 0) {
        for (int e = threadIdx.x; e < kn * (W / 4); e += PT_THREADS) {
            const int kk = e / (W / 4), pp = 4 * (e % (W / 4)), row = k0 + kk, pos = p0 + pp;
            const bool in = row < K && pos < L;
            cp_async16(dst + swz<W>(kk, pp), in ? src + (long long)row * L + pos : src, in);
        }
    } else {
        for (int e = threadIdx.x; e < kn * W; e += PT_THREADS) {
            const int kk = e / W, pp = e % W, row = k0 + kk, pos = p0 + pp;
            const bool in = row < K && pos < L;
            cp_async4(dst + swz<W>(kk, pp), in ? src + (long long)row * L + pos : src, in);
        }
    }
}

// s[j] += the scores of the warp's 16 rows and column n-tile j over `ksteps` k-steps of 8: A from
// as (k, row: a 64-wide tile), B from bs (k, column: 32 wide), both as `swz` lays them out.
__device__ __forceinline__ void mma_scores(const float* as, const float* bs, int ksteps, float (&s)[4][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, wrow = (threadIdx.x >> 5) * 16;
    for (int ks = 0; ks < ksteps; ++ks) {
        const int k = 8 * ks + t;
        const unsigned a[4] = {tf32_bits(as[swz<PT_BR>(k, wrow + g)]), tf32_bits(as[swz<PT_BR>(k, wrow + g + 8)]),
                               tf32_bits(as[swz<PT_BR>(k + 4, wrow + g)]), tf32_bits(as[swz<PT_BR>(k + 4, wrow + g + 8)])};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const unsigned b[2] = {tf32_bits(bs[swz<PT_BCOL>(k, 8 * j + g)]), tf32_bits(bs[swz<PT_BCOL>(k + 4, 8 * j + g)])};
            Tf32::mma(s[j], a, b);
        }
    }
}

// acc[i] += W X^T for the warp's 16 rows and channels 8i..8i+7 of xs (channel, column: 32 wide,
// `swz`), i < nt. W (TF32 values already) is in the S accumulators' layout; k-step j takes
// columns 8j+2t (A's k = t) and 8j+2t+1 (k = t+4) of both W and X.
__device__ __forceinline__ void accumulate(float (&acc)[PT_NT][4], const float (&w)[4][4], const float* xs, int nt) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const unsigned a[4] = {__float_as_uint(w[j][0]), __float_as_uint(w[j][2]), __float_as_uint(w[j][1]),
                               __float_as_uint(w[j][3])};
#pragma unroll
        for (int i = 0; i < PT_NT; ++i) {
            if (i < nt) {
                const float2 x = *reinterpret_cast<const float2*>(xs + swz<PT_BCOL>(8 * i + g, 8 * j + 2 * t));
                const unsigned b[2] = {tf32_bits(x.x), tf32_bits(x.y)};
                Tf32::mma(acc[i], a, b);
            }
        }
    }
}

// Sum and max over the 4 lanes (t) that hold one row's columns.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// fwd: one tile of the online softmax over the scores w (columns past L masked to -inf): w
// becomes the TF32-rounded exp(w - m), m each row's running max and l its running sum of those
// weights; the accumulators are rescaled by exp(m_old - m) (0 on the first tile, m_old = -inf).
__device__ __forceinline__ void online_softmax(float (&w)[4][4], float (&m)[2], float (&l)[2], float (&acc)[PT_NT][4],
                                               int c0, int L) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // row g + 8h: accumulator elements 2h and 2h+1
        float tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                if (c0 + 8 * j + 2 * t + e >= L) w[j][2 * h + e] = -INFINITY;
                tmax = fmaxf(tmax, w[j][2 * h + e]);
            }
        const float m_new = fmaxf(m[h], quad_max(tmax));  // finite: column c0 < L is in the tile
        const float alpha = expf(m[h] - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float p = tf32_round(expf(w[j][2 * h + e] - m_new));  // exp(-inf) = 0 past L
                w[j][2 * h + e] = p;
                sum += p;
            }
        l[h] = l[h] * alpha + quad_sum(sum);
        m[h] = m_new;
#pragma unroll
        for (int i = 0; i < PT_NT; ++i) {
            acc[i][2 * h] *= alpha;
            acc[i][2 * h + 1] *= alpha;
        }
    }
}

// One block: rows r0 .. r0 + 63 of image n, output channels chunk * 128 .. of X (fwd, dv) or all
// of D (dq, dk). Pointers are to the whole (N, ., L) tensors. ra, cb: S's operands (D x L each;
// rows' and columns'); a2, b2: dP's (C x L; dq and dk); x: X (CX x L; fwd and dv); lse, delta:
// per position (N, L), read by dv, dq and dk; lse_out: written by fwd's first channel chunk.
template <int MODE>
__device__ __forceinline__ void pam_block(float* smem, int n, int chunk, const float* __restrict__ ra,
                                          const float* __restrict__ cb, int D, const float* __restrict__ a2,
                                          const float* __restrict__ b2, int C, const float* __restrict__ x, int CX,
                                          const float* __restrict__ lse, const float* __restrict__ delta,
                                          float* __restrict__ out, float* __restrict__ lse_out, int L) {
    constexpr bool DP = MODE == PT_DQ || MODE == PT_DK;      // dS needs dP, a sum over C
    constexpr bool OWN_X = MODE == PT_FWD || MODE == PT_DV;  // else X is the columns' operand
    constexpr bool COL_STATS = MODE == PT_DK || MODE == PT_DV;
    const int Dp = (D + 7) & ~7, r0 = blockIdx.x * PT_BR, ch0 = OWN_X ? chunk * PT_BC : 0;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, wrow = (threadIdx.x >> 5) * 16;
    const int b_floats = Dp * PT_BCOL, x_floats = OWN_X ? PT_BC * PT_BCOL : 0, stage_floats = b_floats + x_floats + 2 * PT_BCOL;
    float* a1s = smem;
    float* stages = a1s + Dp * PT_BR;
    float* dp_stages = stages + 2 * stage_floats;  // dq, dk: DP_STAGES x (a2 32 x 72, b2 32 x 40)
    constexpr int DP_STAGE = PT_KC * PT_BR + PT_KC * PT_BCOL;
    const int floats = Dp * PT_BR + 2 * stage_floats + (DP ? PT_DP_STAGES * DP_STAGE : 0);
    if (dynamic_smem_bytes() < (unsigned)(floats * 4)) asm volatile("trap;");

    ra += (long long)n * D * L;
    cb += (long long)n * D * L;
    out += (long long)n * (OWN_X ? CX : D) * L;
    if (OWN_X) x += (long long)n * CX * L;
    if (DP) {
        a2 += (long long)n * C * L;
        b2 += (long long)n * C * L;
    }
    if (MODE != PT_FWD) {
        lse += (long long)n * L;
        delta += (long long)n * L;
    }
    // dq's rows are queries: their lse and delta are per row, the same for every column tile.
    float lse_row[2], delta_row[2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = r0 + wrow + g + 8 * h;
        const bool in = MODE == PT_DQ && row < L;
        lse_row[h] = in ? lse[row] : 0.0f;
        delta_row[h] = in ? delta[row] : 0.0f;
    }
    float acc[PT_NT][4];
#pragma unroll
    for (int i = 0; i < PT_NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    const int nt = OWN_X ? PT_NT : Dp / 8;

    // The rows' operand joins the first column tile's commit group.
    issue_tile<PT_BR>(a1s, ra, D, 0, Dp, L, r0);
    auto issue = [&](int st, int col0) {
        float* s = stages + st * stage_floats;
        issue_tile<PT_BCOL>(s, cb, D, 0, Dp, L, col0);
        if (OWN_X) issue_tile<PT_BCOL>(s + b_floats, x, CX, ch0, PT_BC, L, col0);
        if (COL_STATS && threadIdx.x < 2 * PT_BCOL) {
            const int col = col0 + threadIdx.x % PT_BCOL;
            const float* src = threadIdx.x < PT_BCOL ? lse : delta;
            const bool in = col < L && (MODE == PT_DK || threadIdx.x < PT_BCOL);  // dv reads no delta
            cp_async4(s + b_floats + x_floats + threadIdx.x, in ? src + col : lse, in);
        }
    };
    int c0 = 0;
    auto multiply = [&](int st) {
        const float* s = stages + st * stage_floats;
        const float* stats = s + b_floats + x_floats;  // the tile's lse (32), then delta (32)
        float w[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) w[j][0] = w[j][1] = w[j][2] = w[j][3] = 0.0f;
        mma_scores(a1s, s, Dp / 8, w);
        if (MODE == PT_FWD) {
            online_softmax(w, m, l, acc, c0, L);
        } else {
            float p[4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int v = 0; v < 4; ++v) {
                    const int cl = 8 * j + 2 * t + (v & 1);
                    const float lse_v = MODE == PT_DQ ? lse_row[v >> 1] : stats[cl];
                    p[j][v] = c0 + cl < L ? expf(w[j][v] - lse_v) : 0.0f;
                    w[j][v] = 0.0f;
                }
            if (DP) {  // w = dP (dq) or dP^T (dk): a2's rows against b2's columns, summed over C
                auto issue_dp = [&](int st2, int k0) {
                    float* d = dp_stages + st2 * DP_STAGE;
                    issue_tile<PT_BR>(d, a2, C, k0, PT_KC, L, r0);
                    issue_tile<PT_BCOL>(d + PT_KC * PT_BR, b2, C, k0, PT_KC, L, c0);
                };
                auto multiply_dp = [&](int st2) {
                    const float* d = dp_stages + st2 * DP_STAGE;
                    mma_scores(d, d + PT_KC * PT_BR, PT_KC / 8, w);
                };
                cp_async_pipeline<PT_DP_STAGES, PT_KC>(0, C, issue_dp, multiply_dp);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int v = 0; v < 4; ++v) {
                    const float dl = MODE == PT_DQ ? delta_row[v >> 1] : stats[PT_BCOL + 8 * j + 2 * t + (v & 1)];
                    w[j][v] = tf32_round(DP ? p[j][v] * (w[j][v] - dl) : p[j][v]);
                }
        }
        accumulate(acc, w, OWN_X ? s + b_floats : s, nt);
        c0 += PT_BCOL;
    };
    cp_async_pipeline<2, PT_BCOL>(0, L, issue, multiply);

    float scale[2] = {1.0f, 1.0f};
    if (MODE == PT_FWD) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = r0 + wrow + g + 8 * h;
            scale[h] = 1.0f / l[h];
            if (chunk == 0 && t == 0 && row < L) lse_out[(long long)n * L + row] = m[h] + logf(l[h]);
        }
    }
    const int out_channels = OWN_X ? CX : D;
#pragma unroll
    for (int i = 0; i < PT_NT; ++i)
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            const int ch = ch0 + 8 * i + 2 * t + (v & 1), row = r0 + wrow + g + 8 * (v >> 1);
            if (i < nt && ch < out_channels && row < L) out[(long long)ch * L + row] = acc[i][v] * scale[v >> 1];
        }
}

// Grid (ceil(L/64), ceil(C/128), N), 128 threads, dynamic shared memory as the header says.
// out (N, C, L); lse (N, L). D <= 128.
extern "C" __global__ void __launch_bounds__(PT_THREADS)
    pam_fwd_tf32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                 float* __restrict__ out, float* __restrict__ lse, int D, int C, int L) {
    extern __shared__ __align__(16) float pt_smem[];
    pam_block<PT_FWD>(pt_smem, blockIdx.z, blockIdx.y, q, k, D, nullptr, nullptr, 0, v, C, nullptr, nullptr, out, lse, L);
}

// dq (N, D, L), dk (N, D, L), dv (N, C, L) in one launch, after danet.cu's pam_bwd_delta_f32.
// Grid (ceil(L/64), N, 2 + ceil(C/128)): blockIdx.z 0 is dq (rows are queries), 1 dk (rows are
// keys), 2.. dv's chunks of C (rows are keys). The gradient is the slowest grid index so that
// the heavy dq and dk blocks (each sums dP over all of C, about 4.5 dv blocks' work) of every
// image are dispatched first and the light dv blocks fill in behind them. D <= 128.
extern "C" __global__ void __launch_bounds__(PT_THREADS)
    pam_bwd_tf32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                 const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                 float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv, int D, int C, int L) {
    extern __shared__ __align__(16) float pt_smem[];
    const int n = blockIdx.y, z = blockIdx.z;
    if (z == 0) {
        pam_block<PT_DQ>(pt_smem, n, 0, q, k, D, dout, v, C, nullptr, 0, lse, delta, dq, nullptr, L);
    } else if (z == 1) {
        pam_block<PT_DK>(pt_smem, n, 0, k, q, D, v, dout, C, nullptr, 0, lse, delta, dk, nullptr, L);
    } else {
        pam_block<PT_DV>(pt_smem, n, z - 2, k, q, D, nullptr, nullptr, 0, dout, C, lse, delta, dv, nullptr, L);
    }
}
