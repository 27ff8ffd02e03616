// DANet's position attention (src/ops/danet) as flash-style tiled kernels. For one image, with
// q, k (D, L) and v (C, L) (NCHW maps flattened, L = H*W, row-major, column i = position i):
//   S[i,j] = sum_d q[d,i] k[d,j],  P = softmax_j(S),  out[c,i] = sum_j P[i,j] v[c,j],
//   lse[i] = log sum_j exp(S[i,j]) (saved for the backward).
// Backward (flash-attention 2): delta[i] = sum_c dO[c,i] out[c,i]; P recomputed as
// exp(S - lse); dP[i,j] = sum_c dO[c,i] v[c,j]; dS = P * (dP - delta);
//   dv[c,j] = sum_i dO[c,i] P[i,j],  dq[d,i] = sum_j dS[i,j] k[d,j],  dk[d,j] = sum_i dS[i,j] q[d,i].
//
// Design. Forward and the three gradients are one template, pam_tiles<MODE, BC>, in two kernels
// (pam_fwd_f32; pam_bwd_f32, whose blockIdx.y picks dq, dk or dv) after a small one for delta
// (pam_bwd_delta_f32). A block owns BR = 64 "rows"
// (queries for fwd and dq, keys for dv and dk) and BC output channels of one image, and walks the
// other positions ("columns") in tiles of BCOL = 32. Per column tile it computes a BR x BCOL
// weight tile W in registers (S from a D-sum, and for dq/dk dP from a C-sum, both through
// score_tile over shared-memory chunks of KC = 32), writes W to shared memory, and accumulates
// acc[ch][row] += sum_col X[ch][col] W[row][col] from a BC x BCOL tile of X:
//   fwd: W = online softmax of S (running max and sum per row, the accumulator rescaled), X = v;
//   dv:  W = P^T (exact, from the saved lse), X = dO;
//   dq:  W = dS, X = k;       dk: W = dS^T, X = q.
// No L x L matrix ever leaves the block: a W tile lives in registers and 8.5 KB of shared memory.
//
// Why split the channels across blocks (gridDim.y) rather than loop over them: at the paper's
// shape C = 512, and a block holding all of out's C x 64 tile would need 128 accumulators per
// thread for C = 512 and could not serve any C. Each channel block recomputes S, which costs
// D / BC of the P.V work (64/128 = 0.5 at the paper's shape), and the grid (L/64, C/128, N) = 320
// blocks fills the 132 SMs. For dq and dk the output channels are D (64 at the paper's shape, one
// chunk of BC = 64), and dP's C-sum is recomputed by the dq and the dk blocks: that keeps both
// free of atomics.
//
// Deterministic: no atomics; every sum runs in a fixed order (a run repeats to the bit). Tails
// (L, D, C not multiples of the tiles, L = 1) are zero-filled in shared memory and masked (a
// column past L gets weight 0; rows and channels past the ends are not written).
// Accuracy: fp32 throughout, expf/logf (no fast math), so parity with the composed bmm/softmax
// path is about 1e-6 relative.

#include <math.h>

#define BR 64                        // rows per block
#define BCOL 32                      // columns per tile
#define KC 32                        // reduction chunk of score_tile
#define PAM_THREADS 256              // blockDim.x, as the launch sets it
#define RPT 2                        // W rows per thread (adjacent)
#define CPW 4                        // W columns per thread (adjacent)
#define TPR (BCOL / CPW)             // threads (adjacent lanes) sharing a pair of W rows: 8
#define WS_LD (BR + 4)               // Ws's row stride: the float2 stores of a warp hit 16 banks, not 4
static_assert(RPT * CPW * PAM_THREADS == BR * BCOL, "one W value per thread and slot");

enum { PAM_FWD = 0, PAM_DV = 1, PAM_DQ = 2, PAM_DK = 3 };

// s[r][c] = sum_k A[k][r0 + wr + r] * B[k][c0 + wc + c] over k < K, for this thread's W rows
// wr = 2 * (t / TPR) + r and columns wc = 4 * (t % TPR) + c; A and B are (K, L) (one image),
// zero-filled past K and L. A warp's reads per k: one float2 and one float4 (2 smem wavefronts
// for 8 FMAs).
__device__ __forceinline__ void score_tile(const float* __restrict__ A, const float* __restrict__ B, int K, int L,
                                           int r0, int c0, float (*As)[BR], float (*Bs)[BCOL],
                                           float (&s)[RPT][CPW]) {
    const int t = threadIdx.x, wr = RPT * (t / TPR), wc = CPW * (t % TPR);
#pragma unroll
    for (int r = 0; r < RPT; ++r) s[r][0] = s[r][1] = s[r][2] = s[r][3] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += KC) {
        __syncthreads();  // the last readers of As/Bs are done
        for (int e = t; e < KC * BR; e += PAM_THREADS) {
            const int kk = k0 + e / BR, rr = r0 + e % BR;
            As[e / BR][e % BR] = (kk < K && rr < L) ? A[(long long)kk * L + rr] : 0.0f;
        }
        for (int e = t; e < KC * BCOL; e += PAM_THREADS) {
            const int kk = k0 + e / BCOL, cc = c0 + e % BCOL;
            Bs[e / BCOL][e % BCOL] = (kk < K && cc < L) ? B[(long long)kk * L + cc] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < KC; ++kk) {
            const float2 av = *reinterpret_cast<const float2*>(&As[kk][wr]);
            const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][wc]);
            s[0][0] = fmaf(av.x, bv.x, s[0][0]); s[0][1] = fmaf(av.x, bv.y, s[0][1]);
            s[0][2] = fmaf(av.x, bv.z, s[0][2]); s[0][3] = fmaf(av.x, bv.w, s[0][3]);
            s[1][0] = fmaf(av.y, bv.x, s[1][0]); s[1][1] = fmaf(av.y, bv.y, s[1][1]);
            s[1][2] = fmaf(av.y, bv.z, s[1][2]); s[1][3] = fmaf(av.y, bv.w, s[1][3]);
        }
    }
}

// Sum (or max) over the TPR adjacent lanes that hold one pair of W rows.
__device__ __forceinline__ float row_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v + __shfl_xor_sync(0xffffffffu, v, 4);
}
__device__ __forceinline__ float row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
}

// fwd: one tile of the online softmax. The scores w (columns past L masked to -inf) become
// exp(w - m) with m each row's running max, l its running sum; rowv[row] gets the factor that
// rescales what the row accumulated so far (0 on the first tile, where m was -inf).
__device__ __forceinline__ void online_softmax(float (&w)[RPT][CPW], float (&m)[RPT], float (&l)[RPT], int c0, int L,
                                               float* rowv) {
    const int t = threadIdx.x, wr = RPT * (t / TPR), wc = CPW * (t % TPR);
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
        float tmax = -INFINITY;
#pragma unroll
        for (int c = 0; c < CPW; ++c) {
            if (c0 + wc + c >= L) w[r][c] = -INFINITY;
            tmax = fmaxf(tmax, w[r][c]);
        }
        const float m_new = fmaxf(m[r], row_max(tmax));  // finite: column c0 < L is in the tile
        const float alpha = expf(m[r] - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int c = 0; c < CPW; ++c) {
            w[r][c] = expf(w[r][c] - m_new);  // exp(-inf) = 0 past L
            sum += w[r][c];
        }
        l[r] = l[r] * alpha + row_sum(sum);
        m[r] = m_new;
        if (t % TPR == 0) rowv[wr + r] = alpha;
    }
}

// dv, dq, dk: the scores w become P = exp(S - lse), and for dq and dk dS = P (dP - delta), with dP
// a second score tile over C (a2, b2). lse and delta are per row for dq (rows are queries; the
// caller read them once), per column for dv and dk.
template <int MODE>
__device__ __forceinline__ void grad_weights(float (&w)[RPT][CPW], const float (&lse_row)[RPT],
                                             const float (&delta_row)[RPT], const float* __restrict__ lse,
                                             const float* __restrict__ delta, const float* __restrict__ a2,
                                             const float* __restrict__ b2, int C, int L, int r0, int c0,
                                             float (*As)[BR], float (*Bs)[BCOL]) {
    const int wc = CPW * (threadIdx.x % TPR);
    float p[RPT][CPW];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
        for (int c = 0; c < CPW; ++c) {
            const int col = c0 + wc + c;
            const float lse_v = MODE == PAM_DQ ? lse_row[r] : (col < L ? lse[col] : 0.0f);
            p[r][c] = col < L ? expf(w[r][c] - lse_v) : 0.0f;
        }
    if (MODE == PAM_DV) {
#pragma unroll
        for (int r = 0; r < RPT; ++r)
#pragma unroll
            for (int c = 0; c < CPW; ++c) w[r][c] = p[r][c];
        return;
    }
    score_tile(a2, b2, C, L, r0, c0, As, Bs, w);  // w = dP (dq) or dP^T (dk)
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
        for (int c = 0; c < CPW; ++c) {
            const int col = c0 + wc + c;
            const float dl = MODE == PAM_DQ ? delta_row[r] : (col < L ? delta[col] : 0.0f);
            w[r][c] = p[r][c] * (w[r][c] - dl);
        }
}

// acc[i][k] += sum_j Xs[tc*CPT + i][j] * Ws[j][4*tr + k] over the BCOL columns of the tile.
template <int CPT, int BC>
__device__ __forceinline__ void accumulate(float (&acc)[CPT][4], const float (*Xs)[BCOL], const float (*Ws)[WS_LD], int tr,
                                           int tc) {
#pragma unroll 2
    for (int j = 0; j < BCOL; j += 4) {
        float4 xv[CPT];
#pragma unroll
        for (int i = 0; i < CPT; ++i) xv[i] = *reinterpret_cast<const float4*>(&Xs[tc * CPT + i][j]);
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const float4 w = *reinterpret_cast<const float4*>(&Ws[j + jj][4 * tr]);
#pragma unroll
            for (int i = 0; i < CPT; ++i) {
                const float x = jj == 0 ? xv[i].x : jj == 1 ? xv[i].y : jj == 2 ? xv[i].z : xv[i].w;
                acc[i][0] = fmaf(x, w.x, acc[i][0]);
                acc[i][1] = fmaf(x, w.y, acc[i][1]);
                acc[i][2] = fmaf(x, w.z, acc[i][2]);
                acc[i][3] = fmaf(x, w.w, acc[i][3]);
            }
        }
    }
}

// Shared memory of one block of pam_tiles, carved from one array the kernel declares (so that the
// backward's three modes, one kernel, share it rather than each declaring its own).
#define SMEM_FLOATS (KC * BR + KC * BCOL + BCOL * WS_LD + 128 * BCOL + BR)

// One block: rows r0..r0+BR of image n, output channels chunk*BC.. of X's CX. Pointers are to the
// whole (N, ., L) tensors. a, b: S's operands (D rows each); a2, b2: dP's (C rows, dq/dk only);
// lse, delta: per position (N, L), read by dv/dq/dk; lse_out written by fwd's first channel chunk.
template <int MODE, int BC>
__device__ __forceinline__ void pam_tiles(float* smem, int chunk, const float* __restrict__ a,
                                          const float* __restrict__ b, int D, const float* __restrict__ a2,
                                          const float* __restrict__ b2, int C, const float* __restrict__ x, int CX,
                                          const float* __restrict__ lse, const float* __restrict__ delta,
                                          float* __restrict__ out, float* __restrict__ lse_out, int L) {
    static_assert(BC <= 128, "Xs holds 128 channels");
    constexpr int CPT = BC / 16;  // 16 channel groups x 16 row groups of 4 = 256 threads
    float(*As)[BR] = reinterpret_cast<float(*)[BR]>(smem);
    float(*Bs)[BCOL] = reinterpret_cast<float(*)[BCOL]>(smem + KC * BR);
    float(*Ws)[WS_LD] = reinterpret_cast<float(*)[WS_LD]>(smem + KC * BR + KC * BCOL);
    float(*Xs)[BCOL] = reinterpret_cast<float(*)[BCOL]>(smem + KC * BR + KC * BCOL + BCOL * WS_LD);
    float* rowv = smem + KC * BR + KC * BCOL + BCOL * WS_LD + 128 * BCOL;  // fwd: each row's rescale, then 1 / its sum
    const int n = blockIdx.z, r0 = blockIdx.x * BR, ch0 = chunk * BC;
    const int t = threadIdx.x, wr = RPT * (t / TPR), wc = CPW * (t % TPR), tr = t % 16, tc = t / 16;
    a += (long long)n * D * L;
    b += (long long)n * D * L;
    x += (long long)n * CX * L;
    out += (long long)n * CX * L;
    if (MODE == PAM_DQ || MODE == PAM_DK) {
        a2 += (long long)n * C * L;
        b2 += (long long)n * C * L;
    }
    if (MODE != PAM_FWD) {
        lse += (long long)n * L;
        delta += (long long)n * L;
    }
    // dq's rows are queries: their lse and delta are per row, the same for every column tile.
    float lse_row[RPT], delta_row[RPT], m[RPT], l[RPT];  // m, l: fwd's running max and sum per row
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
        const bool in = MODE == PAM_DQ && r0 + wr + r < L;
        lse_row[r] = in ? lse[r0 + wr + r] : 0.0f;
        delta_row[r] = in ? delta[r0 + wr + r] : 0.0f;
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    float acc[CPT][4];
#pragma unroll
    for (int i = 0; i < CPT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    for (int c0 = 0; c0 < L; c0 += BCOL) {
        float w[RPT][CPW];
        score_tile(a, b, D, L, r0, c0, As, Bs, w);
        if (MODE == PAM_FWD) {
            online_softmax(w, m, l, c0, L, rowv);
        } else {
            grad_weights<MODE>(w, lse_row, delta_row, lse, delta, a2, b2, C, L, r0, c0, As, Bs);
        }
#pragma unroll
        for (int c = 0; c < CPW; ++c) *reinterpret_cast<float2*>(&Ws[wc + c][wr]) = make_float2(w[0][c], w[1][c]);
        for (int e = t; e < BC * BCOL; e += PAM_THREADS) {
            const int ch = ch0 + e / BCOL, col = c0 + e % BCOL;
            Xs[e / BCOL][e % BCOL] = (ch < CX && col < L) ? x[(long long)ch * L + col] : 0.0f;
        }
        __syncthreads();
        if (MODE == PAM_FWD) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float alpha = rowv[4 * tr + k];
#pragma unroll
                for (int i = 0; i < CPT; ++i) acc[i][k] *= alpha;
            }
        }
        accumulate<CPT, BC>(acc, Xs, Ws, tr, tc);
        __syncthreads();
    }

    if (MODE == PAM_FWD) {
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            if (t % TPR == 0) {
                rowv[wr + r] = 1.0f / l[r];
                if (chunk == 0 && r0 + wr + r < L) lse_out[(long long)n * L + r0 + wr + r] = m[r] + logf(l[r]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < CPT; ++i) {
        const int ch = ch0 + tc * CPT + i;
        if (ch >= CX) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int rr = r0 + 4 * tr + k;
            if (rr < L) out[(long long)ch * L + rr] = MODE == PAM_FWD ? acc[i][k] * rowv[4 * tr + k] : acc[i][k];
        }
    }
}

// Grid (ceil(L/64), ceil(C/128), N). out (N, C, L); lse (N, L).
extern "C" __global__ void __launch_bounds__(PAM_THREADS)
    pam_fwd_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                float* __restrict__ out, float* __restrict__ lse, int D, int C, int L) {
    __shared__ __align__(16) float smem[SMEM_FLOATS];
    pam_tiles<PAM_FWD, 128>(smem, blockIdx.y, q, k, D, nullptr, nullptr, 0, v, C, nullptr, nullptr, out, lse, L);
}

// dq (N, D, L), dk (N, D, L), dv (N, C, L) in one launch, after pam_bwd_delta_f32. Grid
// (ceil(L/64), 2 * ceil(D/64) + ceil(C/128), N): blockIdx.y picks the gradient and its channel
// chunk (uniform per block): first dq's chunks (rows are queries), then dk's (rows are keys), then
// dv's (rows are keys). One launch rather than three: at the paper's shape dq and dk have 80
// blocks each, fewer than the SMs; together with dv's 320 they fill the card, the heavy dq and dk
// blocks (each sums dP over all C) first among each image's blocks (N is the slowest grid index;
// danet_tc.cu puts the gradient there instead, so all heavy blocks go first).
extern "C" __global__ void __launch_bounds__(PAM_THREADS)
    pam_bwd_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                const float* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv, int D, int C, int L) {
    __shared__ __align__(16) float smem[SMEM_FLOATS];
    const int dchunks = (D + 63) / 64, y = blockIdx.y;
    if (y < dchunks) {
        pam_tiles<PAM_DQ, 64>(smem, y, q, k, D, dout, v, C, k, D, lse, delta, dq, nullptr, L);
    } else if (y < 2 * dchunks) {
        pam_tiles<PAM_DK, 64>(smem, y - dchunks, k, q, D, v, dout, C, q, D, lse, delta, dk, nullptr, L);
    } else {
        pam_tiles<PAM_DV, 128>(smem, y - 2 * dchunks, k, q, D, nullptr, nullptr, 0, dout, C, lse, lse, dv, nullptr, L);
    }
}

// delta[n,i] = sum_c dout[n,c,i] * out[n,c,i]. Grid (ceil(L/32), N), 256 threads: lane = position,
// warp w sums channels w, w+8, ...; the 8 partial sums are added in warp order (deterministic).
extern "C" __global__ void __launch_bounds__(PAM_THREADS)
    pam_bwd_delta_f32(const float* __restrict__ dout, const float* __restrict__ out, float* __restrict__ delta,
                      int C, int L) {
    __shared__ float part[PAM_THREADS / 32][32];
    const int n = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, i = blockIdx.x * 32 + lane;
    float s = 0.0f;
    if (i < L) {
        const long long base = (long long)n * C * L + i;
        for (int c = warp; c < C; c += PAM_THREADS / 32) s = fmaf(dout[base + (long long)c * L], out[base + (long long)c * L], s);
    }
    part[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && i < L) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < PAM_THREADS / 32; ++w) sum += part[w][lane];
        delta[(long long)n * L + i] = sum;
    }
}
