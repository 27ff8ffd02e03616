// Fused channel-spatial co-attention (CSA, src/nn/attention.rs) on f of shape (N, C, HW):
//  - csa_pool_fwd_f32: in one read of f, each channel's mean over its pixels (the channel gate's
//    global average pool) and each pixel's mean over the channels (MSA's input), written packed as
//    (N, C + HW): row n is the C channel means, then the HW pixel means;
//  - csa_pool_bwd_f32: df = dgap[n,c] / HW + dmean[n,p] / C, one write;
//  - csa_gate_fwd_f32: y = f * c[n,ch] * s[n,p], one read of f, one write;
//  - csa_gate_bwd_f32: from one read of dy and f, df = dy * s * c, and the partial sums of
//    dc[n,ch] = sum_p dy*f*s and ds[n,p] = sum_ch dy*f*c;
//  - csa_finish_f32: the second stage of both reductions;
//  - se_*: SE's channel gates of a pair and their product, forward and backward (at the end);
//  - eca_*: the same for ECA's gates (a 1-D convolution across channels and a sigmoid).
//
// The two reductions run in different directions (over pixels and over channels), so a block
// takes a tile of TILE_C channels x TILE_P pixels of one image, sums it both ways and writes
// partial sums, which csa_finish_f32 adds in a fixed order. Two stages rather than atomics: the
// results do not depend on the schedule (a run repeats to the bit), no output needs a zero-fill
// launch first, and the partials are 1/TILE_P + 1/TILE_C (4%) of f.
//
// Products are rounded one at a time (__fmul_rn, no contraction into fma) in the order the CPU
// and the composed ops use, so the element-wise outputs equal the CPU's to the bit.

#define TILE_C 32
#define TILE_P 128
#define CSA_WARPS 8               // blockDim.x = 32 * CSA_WARPS, as the launch sets it
#define PIX_PER_LANE (TILE_P / 32)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Each lane holds PIX_PER_LANE per-pixel sums over the channels its warp visited; the block adds
// the warps' sums and writes the tile's partial sum over its channels for each pixel:
// part_p[(n * cchunks + chunk) * HW + p].
__device__ __forceinline__ void store_pixel_partials(const float (&pix)[PIX_PER_LANE], float* __restrict__ part_p,
                                                     int n, int chunk, int hw, int p0) {
    __shared__ float sums[CSA_WARPS][TILE_P];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int j = 0; j < PIX_PER_LANE; ++j) sums[warp][lane + 32 * j] = pix[j];
    __syncthreads();
    for (int t = threadIdx.x; t < TILE_P; t += blockDim.x) {
        int p = p0 + t;
        if (p < hw) {
            float s = 0.0f;
#pragma unroll
            for (int w = 0; w < CSA_WARPS; ++w) s += sums[w][t];
            part_p[((long long)n * gridDim.y + chunk) * hw + p] = s;
        }
    }
}

// The tile of a block that walks f from its end: blocks are dispatched in order of their linear
// index, and the tensor a kernel reads was just written (or read) from its start to its end, so
// its end is what the L2 cache still holds. Starting there, and the next pass over the same
// tensor starting at its beginning (what this pass left in L2), turns two streams through a
// cache smaller than f (42 MB at the paper's shape against the H200's 50 MB of L2, which the
// producer's other operands share) into partial hits instead of none. The results do not
// depend on the order (each block writes its own partial sums).
struct TileFromEnd {
    int tile, chunk, n;
    __device__ __forceinline__ TileFromEnd()
        : tile(gridDim.x - 1 - blockIdx.x), chunk(gridDim.y - 1 - blockIdx.y), n(gridDim.z - 1 - blockIdx.z) {}
};

// Grid (pixel tiles, channel chunks, N). part_c: (N*C, pixel tiles), part_p: (N, chunks, HW).
// Walks f from its end (TileFromEnd): csa_gate_fwd_f32 then walks it from its start.
extern "C" __global__ void csa_pool_fwd_f32(const float* __restrict__ f, float* __restrict__ part_c,
                                            float* __restrict__ part_p, int C, int hw) {
    const TileFromEnd b;
    const int n = b.n, c0 = b.chunk * TILE_C, p0 = b.tile * TILE_P;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float pix[PIX_PER_LANE];
#pragma unroll
    for (int j = 0; j < PIX_PER_LANE; ++j) pix[j] = 0.0f;
#pragma unroll
    for (int cc = warp; cc < TILE_C; cc += CSA_WARPS) {
        const int ch = c0 + cc;
        if (ch < C) {  // uniform across the warp
            const float* row = f + ((long long)n * C + ch) * hw;
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < PIX_PER_LANE; ++j) {
                int p = p0 + lane + 32 * j;
                float v = p < hw ? row[p] : 0.0f;
                acc += v;
                pix[j] += v;
            }
            acc = warp_sum(acc);
            if (lane == 0) part_c[((long long)n * C + ch) * gridDim.x + b.tile] = acc;
        }
    }
    store_pixel_partials(pix, part_p, n, b.chunk, hw, p0);
}

// Grid (pixel tiles, channel chunks, N); dx = (dy * s) * c, as the composed backward rounds it.
// Walks dy from its end (TileFromEnd): the kernel that wrote it went from its start.
extern "C" __global__ void csa_gate_bwd_f32(const float* __restrict__ dy, const float* __restrict__ f,
                                            const float* __restrict__ c, const float* __restrict__ s,
                                            float* __restrict__ dx, float* __restrict__ part_c,
                                            float* __restrict__ part_p, int C, int hw) {
    const TileFromEnd b;
    const int n = b.n, c0 = b.chunk * TILE_C, p0 = b.tile * TILE_P;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float pix[PIX_PER_LANE], sp[PIX_PER_LANE];
#pragma unroll
    for (int j = 0; j < PIX_PER_LANE; ++j) {
        int p = p0 + lane + 32 * j;
        pix[j] = 0.0f;
        sp[j] = p < hw ? s[(long long)n * hw + p] : 0.0f;
    }
#pragma unroll
    for (int cc = warp; cc < TILE_C; cc += CSA_WARPS) {
        const int ch = c0 + cc;
        if (ch < C) {
            const long long base = ((long long)n * C + ch) * hw;
            const float cv = c[(long long)n * C + ch];
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < PIX_PER_LANE; ++j) {
                int p = p0 + lane + 32 * j;
                if (p < hw) {
                    float g = dy[base + p], x = f[base + p];
                    float gs = __fmul_rn(g, sp[j]);
                    dx[base + p] = __fmul_rn(gs, cv);
                    acc += __fmul_rn(gs, x);
                    pix[j] += __fmul_rn(g, __fmul_rn(x, cv));
                }
            }
            acc = warp_sum(acc);
            if (lane == 0) part_c[((long long)n * C + ch) * gridDim.x + b.tile] = acc;
        }
    }
    store_pixel_partials(pix, part_p, n, b.chunk, hw, p0);
}

// out_c[n * c_stride + c_off + ch] = scale_c * sum over tiles t of part_c[(n*C + ch) * ptiles + t],
// out_p[n * p_stride + p_off + p] = scale_p * sum over chunks k of part_p[(n*chunks + k) * HW + p],
// each summed in tile order. One thread per output. out_c and out_p may be one buffer (the pool's
// packed output), hence not __restrict__.
extern "C" __global__ void csa_finish_f32(const float* __restrict__ part_c, const float* __restrict__ part_p,
                                          float* out_c, float* out_p, int N, int C,
                                          int hw, int ptiles, int chunks, int c_off, int c_stride, int p_off,
                                          int p_stride, float scale_c, float scale_p) {
    const int nc = N * C, total = nc + N * hw;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        if (i < nc) {
            const float* src = part_c + (long long)i * ptiles;
            float acc = 0.0f;
            for (int t = 0; t < ptiles; ++t) acc += src[t];
            out_c[(long long)(i / C) * c_stride + c_off + i % C] = __fmul_rn(acc, scale_c);
        } else {
            const int j = i - nc, n = j / hw, p = j % hw;
            const float* src = part_p + (long long)n * chunks * hw + p;
            float acc = 0.0f;
            for (int k = 0; k < chunks; ++k) acc += src[(long long)k * hw];
            out_p[(long long)n * p_stride + p_off + p] = __fmul_rn(acc, scale_p);
        }
    }
}

// The two element-wise kernels take 4 elements per step when HW is a multiple of 4 (a group
// never straddles two rows, and 16-byte loads stay aligned): one index computation per group,
// whose integer divisions would otherwise cost more than the memory traffic of a float.

// g: the packed (N, C + HW) gradient of csa_pool_fwd's output; dx[n,ch,p] = dgap/HW + dmean/C.
extern "C" __global__ void csa_pool_bwd_f32(const float* __restrict__ g, float* __restrict__ dx, int N, int C,
                                            int hw, float inv_hw, float inv_c) {
    const int total = N * C * hw, row = C + hw, step = blockDim.x * gridDim.x;
    if ((hw & 3) == 0) {
        float4* dx4 = reinterpret_cast<float4*>(dx);
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (total >> 2); i += step) {
            const int e = i << 2, p = e % hw, nc = e / hw, n = nc / C, ch = nc % C;
            const float* gn = g + (long long)n * row;
            const float dg = __fmul_rn(gn[ch], inv_hw);
            const float* dm = gn + C + p;  // not 16-byte aligned when C is odd: four loads
            dx4[i] = make_float4(__fadd_rn(dg, __fmul_rn(dm[0], inv_c)), __fadd_rn(dg, __fmul_rn(dm[1], inv_c)),
                                 __fadd_rn(dg, __fmul_rn(dm[2], inv_c)), __fadd_rn(dg, __fmul_rn(dm[3], inv_c)));
        }
        return;
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const int p = i % hw, nc = i / hw, n = nc / C, ch = nc % C;
        const float* gn = g + (long long)n * row;
        dx[i] = __fadd_rn(__fmul_rn(gn[ch], inv_hw), __fmul_rn(gn[C + p], inv_c));
    }
}

// y = (f * c[n,ch]) * s[n,p], rounded as the composed f.mul(c).mul(s). Walks f from its start,
// which csa_pool_fwd_f32 (walking from the end) read last.
extern "C" __global__ void csa_gate_fwd_f32(const float* __restrict__ f, const float* __restrict__ c,
                                            const float* __restrict__ s, float* __restrict__ y, int N, int C,
                                            int hw) {
    const int total = N * C * hw, step = blockDim.x * gridDim.x;
    if ((hw & 3) == 0) {
        const float4* f4 = reinterpret_cast<const float4*>(f);
        float4* y4 = reinterpret_cast<float4*>(y);
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (total >> 2); i += step) {
            const int e = i << 2, p = e % hw, nc = e / hw, n = nc / C;
            const float cv = c[nc];
            const float4 x = f4[i], sv = *reinterpret_cast<const float4*>(s + (long long)n * hw + p);
            y4[i] = make_float4(__fmul_rn(__fmul_rn(x.x, cv), sv.x), __fmul_rn(__fmul_rn(x.y, cv), sv.y),
                                __fmul_rn(__fmul_rn(x.z, cv), sv.z), __fmul_rn(__fmul_rn(x.w, cv), sv.w));
        }
        return;
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const int p = i % hw, nc = i / hw, n = nc / C;
        y[i] = __fmul_rn(__fmul_rn(f[i], c[nc]), s[(long long)n * hw + p]);
    }
}

// ---- SE's shared channel gate of a pair (src/ops/attention `se_pair_gate`) ----
// For the pair's pooled features pa, pb (N, C) and SE's layers w1 (HD, C), b1 (HD), w2 (C, HD),
// b2 (C), over the 2N rows i (pa's N, then pb's), p_i their pooled features:
//   hid[i] = relu(w1 p_i + b1),  gates[i] = sigmoid(w2 hid[i] + b2),  out[n] = gates[n] * gates[N + n].
// Forward in two launches (se_hidden_f32, se_gate_f32), backward in three (se_bwd_gate_f32,
// se_bwd_hidden_f32, se_bwd_input_f32), where the composed path runs each image through two
// GEMMs with their bias adds, a ReLU and a sigmoid, then the product: about 13 launches forward
// and 25 backward. The formulas are the map kernels' (nd.cu: sigmoid stable on both sides, ReLU
// and its gradient as x > 0). Every sum runs in a fixed order (no atomics): a run repeats to the bit.

__device__ __forceinline__ float se_sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}
__device__ __forceinline__ const float* se_row(const float* pa, const float* pb, int i, int N, int C) {
    return i < N ? pa + (long long)i * C : pb + (long long)(i - N) * C;
}

// hid[i][j] for the 2N x HD (row, hidden unit) pairs, one warp each: lanes stride over the C
// inputs, then warp_sum's fixed shuffle tree.
extern "C" __global__ void se_hidden_f32(const float* __restrict__ pa, const float* __restrict__ pb,
                                         const float* __restrict__ w1, const float* __restrict__ b1,
                                         float* __restrict__ hid, int N, int C, int HD) {
    const int lane = threadIdx.x & 31, warps = gridDim.x * (blockDim.x >> 5);
    for (int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < 2 * N * HD; w += warps) {
        const int i = w / HD, j = w - i * HD;
        const float* p = se_row(pa, pb, i, N, C);
        const float* wr = w1 + (long long)j * C;
        float acc = 0.0f;
        for (int c = lane; c < C; c += 32) acc += wr[c] * p[c];
        acc = warp_sum(acc);
        if (lane == 0) {
            const float z = acc + b1[j];
            hid[w] = z <= 0.0f ? 0.0f : z;
        }
    }
}

// gates and out, a thread per (image n, channel ch), ch the slower index so that a warp's threads
// share w2's row: both images' sums over the HD hidden units, their sigmoids and the product.
extern "C" __global__ void se_gate_f32(const float* __restrict__ hid, const float* __restrict__ w2,
                                       const float* __restrict__ b2, float* __restrict__ gates,
                                       float* __restrict__ out, int N, int C, int HD) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < N * C; e += blockDim.x * gridDim.x) {
        const int ch = e / N, n = e - ch * N;
        const float* wr = w2 + (long long)ch * HD;
        const float *ha = hid + (long long)n * HD, *hb = hid + (long long)(N + n) * HD;
        float za = 0.0f, zb = 0.0f;
        for (int j = 0; j < HD; ++j) {
            za += wr[j] * ha[j];
            zb += wr[j] * hb[j];
        }
        const float ga = se_sigmoid(za + b2[ch]), gb = se_sigmoid(zb + b2[ch]);
        gates[(long long)n * C + ch] = ga;
        gates[(long long)(N + n) * C + ch] = gb;
        out[(long long)n * C + ch] = ga * gb;
    }
}

// From the gradient g (N, C) of out: dz[i][ch], the gradient of row i's pre-sigmoid sum (image a:
// (g * gb) * ga * (1 - ga), as the product's then the sigmoid's backward compose it; image b
// likewise), db2[ch] = sum over i of dz, dw2[ch][j] = sum over i of dz[i][ch] hid[i][j]. One warp
// per channel: lanes over the images for dz, then over j for dw2 (rows in order).
extern "C" __global__ void se_bwd_gate_f32(const float* __restrict__ g, const float* __restrict__ gates,
                                           const float* __restrict__ hid, float* __restrict__ dz,
                                           float* __restrict__ dw2, float* __restrict__ db2, int N, int C, int HD) {
    const int lane = threadIdx.x & 31, warps = gridDim.x * (blockDim.x >> 5);
    for (int ch = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); ch < C; ch += warps) {
        float s = 0.0f;
        for (int n = lane; n < N; n += 32) {
            const long long a = (long long)n * C + ch, b = (long long)(N + n) * C + ch;
            const float go = g[a], ga = gates[a], gb = gates[b];
            const float da = go * gb * ga * (1.0f - ga), dbv = go * ga * gb * (1.0f - gb);
            dz[a] = da;
            dz[b] = dbv;
            s += da + dbv;
        }
        s = warp_sum(s);
        if (lane == 0) db2[ch] = s;
        __syncwarp();  // this warp's dz of the channel, written by its lanes, read by all below
        for (int j = lane; j < HD; j += 32) {
            float acc = 0.0f;
            for (int i = 0; i < 2 * N; ++i) acc += dz[(long long)i * C + ch] * hid[(long long)i * HD + j];
            dw2[(long long)ch * HD + j] = acc;
        }
        // No barrier here: the next channel's dz are other elements.
    }
}

// dz1[i][j] = (hid[i][j] > 0) * sum over ch of dz[i][ch] w2[ch][j]: one block per row i; for each
// 32 hidden units (lanes), warp w sums the channels w, w + 8, ..., then warp 0 adds the 8 sums in order.
extern "C" __global__ void se_bwd_hidden_f32(const float* __restrict__ dz, const float* __restrict__ w2,
                                             const float* __restrict__ hid, float* __restrict__ dz1, int C, int HD) {
    __shared__ float part[CSA_WARPS][32];
    const int i = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float* dzi = dz + (long long)i * C;
    for (int j0 = 0; j0 < HD; j0 += 32) {
        const int j = j0 + lane;
        float acc = 0.0f;
        if (j < HD)
            for (int ch = warp; ch < C; ch += CSA_WARPS) acc += dzi[ch] * w2[(long long)ch * HD + j];
        part[warp][lane] = acc;
        __syncthreads();
        if (warp == 0 && j < HD) {
            float s = 0.0f;
            for (int w = 0; w < CSA_WARPS; ++w) s += part[w][lane];
            dz1[(long long)i * HD + j] = hid[(long long)i * HD + j] > 0.0f ? s : 0.0f;
        }
        __syncthreads();
    }
}

// The input side, a thread per output over one index space: dp[i][ch] = sum over j of dz1[i][j]
// w1[j][ch] (into dpa for i < N, dpb after); dw1[j][ch] = sum over i of dz1[i][j] p_i[ch];
// db1[j] = sum over i of dz1[i][j]. Sums in order of j, resp. i.
extern "C" __global__ void se_bwd_input_f32(const float* __restrict__ dz1, const float* __restrict__ pa,
                                            const float* __restrict__ pb, const float* __restrict__ w1,
                                            float* __restrict__ dpa, float* __restrict__ dpb, float* __restrict__ dw1,
                                            float* __restrict__ db1, int N, int C, int HD) {
    const int n_dp = 2 * N * C, n_dw = HD * C, total = n_dp + n_dw + HD;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += blockDim.x * gridDim.x) {
        if (e < n_dp) {
            const int i = e / C, ch = e - i * C;
            const float* d = dz1 + (long long)i * HD;
            float acc = 0.0f;
            for (int j = 0; j < HD; ++j) acc += d[j] * w1[(long long)j * C + ch];
            (i < N ? dpa + (long long)i * C : dpb + (long long)(i - N) * C)[ch] = acc;
        } else if (e < n_dp + n_dw) {
            const int f = e - n_dp, j = f / C, ch = f - j * C;
            float acc = 0.0f;
            for (int i = 0; i < 2 * N; ++i) acc += dz1[(long long)i * HD + j] * se_row(pa, pb, i, N, C)[ch];
            dw1[f] = acc;
        } else {
            const int j = e - n_dp - n_dw;
            float acc = 0.0f;
            for (int i = 0; i < 2 * N; ++i) acc += dz1[(long long)i * HD + j];
            db1[j] = acc;
        }
    }
}

// ---- ECA's shared channel gate of a pair (src/ops/attention `eca_pair_gate`) ----
// For the pair's pooled features pa, pb (N, C) and ECA's kernel w (k taps, k odd, zero padding
// (k - 1) / 2) across channels, over the 2N rows i (pa's N, then pb's), p_i their pooled features:
//   z_i[c] = sum_j w[j] p_i[c + j - pad],  gates[i] = sigmoid(z_i),  out[n] = gates[n] * gates[N + n].
// Forward in one launch (eca_gate_f32), backward in two (eca_bwd_input_f32 for dpa and dpb,
// eca_bwd_weight_f32 for dw), where the composed path takes 5 (a channel convolution and a
// sigmoid per image, the product) and 9. The sums run in conv1d.cu's order (taps ascending, the
// same expression), the sigmoid and its gradient are the map kernels', so the forward and dp are
// the composed ops' bits; dw is summed over both images at once (warp_sum's fixed tree).

// z_i[c], as conv1d.cu's conv1d_taps sums it.
__device__ __forceinline__ float eca_z(const float* __restrict__ p, const float* __restrict__ w, int c, int C, int k) {
    const int pad = (k - 1) / 2;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
        const int src = c + j - pad;
        if (src >= 0 && src < C) acc += w[j] * p[src];
    }
    return acc;
}

// gates and out, a thread per (image n, channel c).
extern "C" __global__ void eca_gate_f32(const float* __restrict__ pa, const float* __restrict__ pb,
                                        const float* __restrict__ w, float* __restrict__ gates,
                                        float* __restrict__ out, int N, int C, int k) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < N * C; e += blockDim.x * gridDim.x) {
        const int n = e / C, c = e - n * C;
        const float ga = se_sigmoid(eca_z(pa + (long long)n * C, w, c, C, k));
        const float gb = se_sigmoid(eca_z(pb + (long long)n * C, w, c, C, k));
        gates[e] = ga;
        gates[(long long)N * C + e] = gb;
        out[e] = ga * gb;
    }
}

// The gradient of row i's pre-sigmoid z_i[c] from the product's gradient g (N, C): the product's
// backward (g times the other image's gate), then the sigmoid's (times y (1 - y)), as the
// composed ops round them.
__device__ __forceinline__ float eca_dz(const float* __restrict__ g, const float* __restrict__ gates, int i, int c, int N, int C) {
    const int n = i < N ? i : i - N, other = i < N ? i + N : i - N;
    const float y = gates[(long long)i * C + c];
    return g[(long long)n * C + c] * gates[(long long)other * C + c] * y * (1.0f - y);
}

// dp_i[c] = sum_j w[j] dz_i[c - j + pad] (conv1d_bwd_input_f32's mirrored taps), dz recomputed
// at each tap from g and the gates (k of them; nothing written between the launches). A thread
// per (row i, channel c), into dpa for i < N, dpb after.
extern "C" __global__ void eca_bwd_input_f32(const float* __restrict__ g, const float* __restrict__ gates,
                                             const float* __restrict__ w, float* __restrict__ dpa,
                                             float* __restrict__ dpb, int N, int C, int k) {
    const int pad = (k - 1) / 2;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < 2 * N * C; e += blockDim.x * gridDim.x) {
        const int i = e / C, c = e - i * C;
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) {
            const int src = c - j + pad;
            if (src >= 0 && src < C) acc += w[j] * eca_dz(g, gates, i, src, N, C);
        }
        (i < N ? dpa + (long long)i * C : dpb + (long long)(i - N) * C)[c] = acc;
    }
}

// dw[j] = sum over rows i and channels c of dz_i[c] p_i[c + j - pad]: a warp per tap, lanes
// striding over the 2N x C products, then warp_sum's fixed tree.
extern "C" __global__ void eca_bwd_weight_f32(const float* __restrict__ g, const float* __restrict__ gates,
                                              const float* __restrict__ pa, const float* __restrict__ pb,
                                              float* __restrict__ dw, int N, int C, int k) {
    const int pad = (k - 1) / 2, lane = threadIdx.x & 31, warps = gridDim.x * (blockDim.x >> 5);
    for (int j = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); j < k; j += warps) {
        float acc = 0.0f;
        for (int e = lane; e < 2 * N * C; e += 32) {
            const int i = e / C, c = e - i * C, src = c + j - pad;
            if (src >= 0 && src < C) acc += eca_dz(g, gates, i, c, N, C) * se_row(pa, pb, i, N, C)[src];
        }
        acc = warp_sum(acc);
        if (lane == 0) dw[j] = acc;
    }
}
