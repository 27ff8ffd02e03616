// The dense CRF on the GPU: the permutohedral lattice (Adams, Baek, Davis 2010) as Krähenbühl's
// densecrf builds it, and mean-field inference for the binary lesion CRF, batched.
//
// src/crf/lattice.rs is the reference; the embedding here repeats its float operations one for
// one, with explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...) so that nvcc cannot fuse a
// multiply and an add into an FMA: the simplex each point falls in, and so the lattice's vertex
// set, is then the CPU's exactly (tests/gpu_crf.rs compares the two).
//
// A lattice is built in four launches and never read back to the host:
//   embed     each point's enclosing simplex: d+1 corner keys (inserted into an open-addressing
//             hash table) and barycentric weights;
//   compact   a dense vertex id for every full slot (an atomic counter: ids are in no set order);
//   finish    corner slots -> vertex ids, and every vertex's two neighbours along each of the
//             d+1 lattice directions (looked up in the table).
// Filtering is then splat (atomic adds into vertex values), blur ([1/2, 1, 1/2] along each
// direction, one launch per direction, ping-pong buffers) and slice (barycentric interpolation).
// Vertex value buffers have a zero sentinel row 0; a missing neighbour is id 0 and reads zero.
// Kernels that walk vertices read the vertex count from device memory, so the host never waits.
//
// The mean field fuses what surrounds the blur: one kernel per iteration slices both lattices'
// messages for every pixel, takes the softmax and splats the next iteration's values.

#define SLOT_EMPTY 0u
#define SLOT_BUSY 1u
#define SLOT_FULL 2u
#define NO_SLOT 0xffffffffu
#define MAX_D1 8
// Coordinates keep this far from the 16-bit limits (src/crf/hash.rs LANE_MARGIN): a corner is
// within d of its remainder-0 point and a neighbour within d+1 of the corner.
#define LANE_MARGIN 18

// Per-dimension scale of the elevation (computed on the host exactly as lattice.rs does).
struct LatticeScale {
    float s[8];
};

__device__ __forceinline__ int grid_start() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int grid_step() { return blockDim.x * gridDim.x; }
__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
// First item of this thread's warp in a grid-stride loop whose trips are the same for every lane
// of a warp (lanes past the end run with valid = false), so warp shuffles inside are safe.
// blockDim.x must be a multiple of 32.
__device__ __forceinline__ int warp_start() { return grid_start() - lane_id(); }

#define FULL_MASK 0xffffffffu

// values[idx] += x for every valid lane. Neighbouring pixels mostly fall in the same simplices,
// so a warp's lanes hit few distinct vertices, and atomics on one address serialise: lanes with
// the same idx are summed in registers and their leader adds once. When the warp's addresses are
// mostly distinct, each lane adds its own.
__device__ __forceinline__ void warp_atomic_add(float* values, long long idx, float x, bool valid) {
    unsigned peers = __match_any_sync(FULL_MASK, valid ? idx : -1ll);
    int lane = lane_id();
    bool leader = valid && __ffs(peers) - 1 == lane;
    unsigned leaders = __ballot_sync(FULL_MASK, leader);
    if (__popc(leaders) > 8) {
        if (valid) atomicAdd(&values[idx], x);
        return;
    }
    while (leaders) {
        int l = __ffs(leaders) - 1;
        unsigned group = __shfl_sync(FULL_MASK, peers, l);
        float sum = (group >> lane) & 1u ? x : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, o);
        if (lane == l) atomicAdd(&values[idx], sum);
        leaders &= leaders - 1u;
    }
}

// ---------------------------------------------------------------------------------------------
// Features (densecrf's DenseCRF2D): smoothness (x/sxy, y/sxy); appearance (x/sxy, y/sxy,
// r/srgb, g/srgb, b/srgb), a grey image used as r = g = b. x is the column, y the row.

extern "C" __global__ void crf_features_spatial_f32(float* __restrict__ f, int width, int pixels, float sxy) {
    for (int i = grid_start(); i < pixels; i += grid_step()) {
        f[2 * i] = __fdiv_rn((float)(i % width), sxy);
        f[2 * i + 1] = __fdiv_rn((float)(i / width), sxy);
    }
}

// `img`: images x pixels x channels bytes (1 or 3 channels); `f`: images*pixels x 5.
extern "C" __global__ void crf_features_bilateral_f32(const unsigned char* __restrict__ img, float* __restrict__ f,
                                                      int points, int pixels, int width, int channels, float sxy,
                                                      float srgb) {
    for (int i = grid_start(); i < points; i += grid_step()) {
        int p = i % pixels;
        const unsigned char* px = img + (long long)i * channels;
        float* fi = f + (long long)i * 5;
        fi[0] = __fdiv_rn((float)(p % width), sxy);
        fi[1] = __fdiv_rn((float)(p / width), sxy);
        for (int c = 0; c < 3; ++c) fi[2 + c] = __fdiv_rn((float)px[channels == 1 ? 0 : c], srgb);
    }
}

// ---------------------------------------------------------------------------------------------
// The hash table: keys are the first d coordinates of a lattice point (the last is implied, they
// sum to 0) as 16-bit lanes biased by 2^15, and the point's image in lane 7, so one table holds
// a whole batch of lattices without mixing them (d <= 7).

// `c` holds N >= d coordinates (N a constant, so the array stays in registers).
template <int N>
__device__ __forceinline__ uint4 pack_key(const int (&c)[N], int d, unsigned image) {
    unsigned lane[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) lane[i] = 0u;
#pragma unroll
    for (int i = 0; i < N; ++i)
        if (i < d) lane[i] = (unsigned)(c[i] + 32768) & 0xffffu;
    lane[7] = image & 0xffffu;
    return make_uint4(lane[0] | lane[1] << 16, lane[2] | lane[3] << 16, lane[4] | lane[5] << 16,
                      lane[6] | lane[7] << 16);
}

__device__ __forceinline__ int key_lane(uint4 k, int i) {
    unsigned w = i < 2 ? k.x : i < 4 ? k.y : i < 6 ? k.z : k.w;
    return (int)((w >> (16 * (i & 1))) & 0xffffu);
}

__device__ __forceinline__ bool key_eq(uint4 a, uint4 b) {
    return a.x == b.x && a.y == b.y && a.z == b.z && a.w == b.w;
}

// Fibonacci hashing of the two 64-bit halves folded together (as src/crf/hash.rs).
__device__ __forceinline__ unsigned key_home(uint4 k, unsigned cap_log2) {
    unsigned long long a = (unsigned long long)k.x | ((unsigned long long)k.y << 32);
    unsigned long long b = (unsigned long long)k.z | ((unsigned long long)k.w << 32);
    unsigned long long x = a ^ ((b << 29) | (b >> 35));
    return (unsigned)((x * 0x9E3779B97F4A7C15ull) >> (64 - cap_log2));
}

// The slot of `key`, claimed if absent. A slot goes EMPTY -> BUSY (the claiming thread writes
// the key) -> FULL; a reader that meets BUSY waits for FULL, then compares keys read from L2
// (__ldcg: another SM wrote them, and this SM's L1 may hold the line from an earlier probe).
// Gives up (NO_SLOT) after `max_probes` slots: a table sized for the expected vertex count may
// fill up, and the host then builds again with one sized for the worst case.
__device__ unsigned table_insert(unsigned* state, uint4* keys, unsigned cap_log2, unsigned max_probes, uint4 key) {
    unsigned mask = (1u << cap_log2) - 1u;
    unsigned h = key_home(key, cap_log2);
    for (unsigned probe = 0; probe < max_probes; ++probe) {
        unsigned s = *(volatile unsigned*)&state[h];
        if (s == SLOT_EMPTY) {
            s = atomicCAS(&state[h], SLOT_EMPTY, SLOT_BUSY);
            if (s == SLOT_EMPTY) {
                keys[h] = key;
                __threadfence();
                atomicExch(&state[h], SLOT_FULL);
                return h;
            }
        }
        while (s == SLOT_BUSY) s = *(volatile unsigned*)&state[h];
        __threadfence();
        if (key_eq(__ldcg(&keys[h]), key)) return h;
        h = (h + 1u) & mask;
    }
    return NO_SLOT;
}

// The slot of `key`, or NO_SLOT (read-only: the table is complete). A key is never further than
// `max_probes` from its home slot.
__device__ __forceinline__ unsigned table_find(const unsigned* state, const uint4* keys, unsigned cap_log2,
                                               unsigned max_probes, uint4 key) {
    unsigned mask = (1u << cap_log2) - 1u;
    unsigned h = key_home(key, cap_log2);
    for (unsigned probe = 0; probe < max_probes; ++probe) {
        if (state[h] != SLOT_FULL) return NO_SLOT;
        if (key_eq(keys[h], key)) return h;
        h = (h + 1u) & mask;
    }
    return NO_SLOT;
}

// ---------------------------------------------------------------------------------------------
// Embedding (Adams et al. 2010; densecrf's Permutohedral::init), one point per thread, D fixed.
// Writes the d+1 corner slots and barycentric weights of every point. meta[4]: a point whose
// remainder-0 coordinates leave the 16-bit keys (0xffffffff - its index, so atomicMax keeps the
// first; it gets no corners); meta[8]: 1 if the table filled up (a corner found no slot).

template <int D>
__device__ void lattice_embed(const float* __restrict__ features, int points, int per_image, LatticeScale sc,
                              unsigned* __restrict__ slot, float* __restrict__ bary_out, unsigned* state,
                              uint4* keys, unsigned cap_log2, unsigned max_probes, unsigned* meta) {
    const float down = 1.0f / (float)(D + 1);  // folded at compile time, correctly rounded
    const float up = (float)(D + 1);
    for (int w0 = warp_start(); w0 < points; w0 += grid_step()) {
        int i = w0 + lane_id();
        bool valid = i < points;
        int at = valid ? i : points - 1;  // a spare lane repeats the last point, inserting nothing
        // Elevate: y = E f, accumulating from the last coordinate.
        float el[D + 1];
        float sm = 0.0f;
#pragma unroll
        for (int j = D; j >= 1; --j) {
            float cf = __fmul_rn(features[(long long)at * D + j - 1], sc.s[j - 1]);
            el[j] = __fsub_rn(sm, __fmul_rn((float)j, cf));
            sm = __fadd_rn(sm, cf);
        }
        el[0] = sm;
        // Nearest remainder-0 point: each coordinate rounded to a multiple of d+1 (ties to even).
        float rem0[D + 1];
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k <= D; ++k) {
            float v = rintf(__fmul_rn(down, el[k]));
            rem0[k] = __fmul_rn(v, up);
            sum = __fadd_rn(sum, v);
        }
        // Rank of each coordinate's remainder, in decreasing order.
        int rank[D + 1];
#pragma unroll
        for (int k = 0; k <= D; ++k) rank[k] = 0;
#pragma unroll
        for (int a = 0; a < D; ++a) {
#pragma unroll
            for (int b = a + 1; b <= D; ++b) {
                int below = __fsub_rn(el[a], rem0[a]) < __fsub_rn(el[b], rem0[b]);
                rank[a] += below;
                rank[b] += 1 - below;
            }
        }
        // Off the hyperplane (sum != 0): walk the rounded point back.
        int isum = (int)sum;
#pragma unroll
        for (int k = 0; k <= D; ++k) {
            int r = rank[k] + isum;
            int wrap = (int)(r < 0) - (int)(r > D);
            rank[k] = r + wrap * (D + 1);
            rem0[k] = __fadd_rn(rem0[k], __fmul_rn((float)wrap, up));
        }
        // Barycentric weights: coordinate k adds its remainder at d - rank and takes it from the
        // next position (compile-time indices only, so the array stays in registers).
        float bary[D + 2];
#pragma unroll
        for (int q = 0; q < D + 2; ++q) bary[q] = 0.0f;
#pragma unroll
        for (int k = 0; k <= D; ++k) {
            float v = __fmul_rn(__fsub_rn(el[k], rem0[k]), down);
            int p = D - rank[k];
#pragma unroll
            for (int q = 0; q < D + 2; ++q) {
                // Adding 0 elsewhere leaves every sum unchanged; a conditional store would make
                // the compiler index the array and move it to local memory.
                bary[q] = __fadd_rn(bary[q], q == p ? v : 0.0f);
                bary[q] = __fsub_rn(bary[q], q == p + 1 ? v : 0.0f);
            }
        }
        bary[0] = __fadd_rn(bary[0], __fadd_rn(1.0f, bary[D + 1]));

        int base[D];
        bool fits = true;
#pragma unroll
        for (int k = 0; k < D; ++k) {
            base[k] = (int)rem0[k];
            fits = fits && base[k] >= -32768 + LANE_MARGIN && base[k] <= 32767 - LANE_MARGIN;
        }
        long long o = (long long)i * (D + 1);
        if (valid && !fits) atomicMax(&meta[4], 0xffffffffu - (unsigned)i);
        bool live = valid && fits;
        unsigned image = (unsigned)(at / per_image);
        // Corner r: rem0 + r, less d+1 where rank > d - r (densecrf's canonical simplex). Lanes
        // with the same key (neighbouring pixels share simplices) probe the table once.
#pragma unroll
        for (int r = 0; r <= D; ++r) {
            int c[D];
#pragma unroll
            for (int k = 0; k < D; ++k) c[k] = base[k] + r - (rank[k] > D - r ? D + 1 : 0);
            uint4 key = pack_key(c, D, image);
            unsigned long long lo = live ? ((unsigned long long)key.y << 32 | key.x) : ~0ull;
            unsigned long long hi = live ? ((unsigned long long)key.w << 32 | key.z) : ~0ull;
            unsigned peers = __match_any_sync(FULL_MASK, lo) & __match_any_sync(FULL_MASK, hi);
            int leader = __ffs(peers) - 1;
            unsigned h = NO_SLOT;
            if (live && leader == lane_id()) {
                h = table_insert(state, keys, cap_log2, max_probes, key);
                if (h == NO_SLOT) atomicExch(&meta[8], 1u);  // many threads may set the flag
            }
            h = __shfl_sync(FULL_MASK, h, leader);
            if (valid) {
                slot[o + r] = live ? h : NO_SLOT;
                bary_out[o + r] = live ? bary[r] : 0.0f;
            }
        }
    }
}

extern "C" __global__ void lattice_embed_d2_f32(const float* __restrict__ features, int points, int per_image,
                                                LatticeScale sc, unsigned* __restrict__ slot,
                                                float* __restrict__ bary, unsigned* state, uint4* keys,
                                                unsigned cap_log2, unsigned max_probes, unsigned* meta) {
    lattice_embed<2>(features, points, per_image, sc, slot, bary, state, keys, cap_log2, max_probes, meta);
}

extern "C" __global__ void lattice_embed_d5_f32(const float* __restrict__ features, int points, int per_image,
                                                LatticeScale sc, unsigned* __restrict__ slot,
                                                float* __restrict__ bary, unsigned* state, uint4* keys,
                                                unsigned cap_log2, unsigned max_probes, unsigned* meta) {
    lattice_embed<5>(features, points, per_image, sc, slot, bary, state, keys, cap_log2, max_probes, meta);
}

// A dense id for every full slot; meta[0] counts the vertices.
extern "C" __global__ void lattice_compact_f32(const unsigned* __restrict__ state, unsigned* __restrict__ ids,
                                               int cap, unsigned* meta) {
    for (int h = grid_start(); h < cap; h += grid_step())
        if (state[h] == SLOT_FULL) ids[h] = atomicAdd(&meta[0], 1u);
}

// Corner slots -> vertex id + 1 (in place; 0 for a point that did not fit), and for every vertex
// its neighbours at -/+ (1,...,1,-d,1,...,1) along each direction j (the -d at j; direction d
// moves only the implied last coordinate): neighbors[vertex * (d+1) + j] = (id+1 below, id+1 above).
extern "C" __global__ void lattice_finish_f32(unsigned* __restrict__ corners, int n_corners,
                                              const unsigned* __restrict__ state, const uint4* __restrict__ keys,
                                              const unsigned* __restrict__ ids, unsigned cap_log2,
                                              unsigned max_probes, int d, uint2* __restrict__ neighbors) {
    for (int i = grid_start(); i < n_corners; i += grid_step()) {
        unsigned s = corners[i];
        corners[i] = s == NO_SLOT ? 0u : ids[s] + 1u;
    }
    int cap = 1 << cap_log2;
    for (int h = grid_start(); h < cap; h += grid_step()) {
        if (state[h] != SLOT_FULL) continue;
        uint4 key = keys[h];
        unsigned id = ids[h];
        int c[MAX_D1 - 1];
#pragma unroll
        for (int k = 0; k < MAX_D1 - 1; ++k) c[k] = key_lane(key, k) - 32768;
        unsigned image = (unsigned)key_lane(key, 7);
        for (int j = 0; j <= d; ++j) {
            int lo[MAX_D1 - 1], hi[MAX_D1 - 1];
#pragma unroll
            for (int k = 0; k < MAX_D1 - 1; ++k) {
                int step = k == j ? d + 1 : 0;
                lo[k] = c[k] - 1 + step;
                hi[k] = c[k] + 1 - step;
            }
            unsigned a = table_find(state, keys, cap_log2, max_probes, pack_key(lo, d, image));
            unsigned b = table_find(state, keys, cap_log2, max_probes, pack_key(hi, d, image));
            neighbors[(long long)id * (d + 1) + j] =
                make_uint2(a == NO_SLOT ? 0u : ids[a] + 1u, b == NO_SLOT ? 0u : ids[b] + 1u);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Filtering over one lattice (the generic path: lattice tests and any custom use).

// values[corner] += bary * in over every point's corners; values: (vertices + 1) x channels, zeroed.
extern "C" __global__ void lattice_splat_f32(const unsigned* __restrict__ offsets, const float* __restrict__ bary,
                                             int points, int d1, const float* __restrict__ in, int channels,
                                             float* values) {
    int n = points * channels;
    for (int e = grid_start(); e < n; e += grid_step()) {
        int i = e / channels, c = e % channels;
        float x = in[e];
        for (int r = 0; r < d1; ++r) {
            long long o = (long long)i * d1 + r;
            atomicAdd(&values[(long long)offsets[o] * channels + c], __fmul_rn(bary[o], x));
        }
    }
}

// out = alpha * sum over the corners of bary * values.
extern "C" __global__ void lattice_slice_f32(const unsigned* __restrict__ offsets, const float* __restrict__ bary,
                                             int points, int d1, const float* __restrict__ values, int channels,
                                             float alpha, float* __restrict__ out) {
    int n = points * channels;
    for (int e = grid_start(); e < n; e += grid_step()) {
        int i = e / channels, c = e % channels;
        float y = 0.0f;
        for (int r = 0; r < d1; ++r) {
            long long o = (long long)i * d1 + r;
            y = __fadd_rn(y, __fmul_rn(bary[o], values[(long long)offsets[o] * channels + c]));
        }
        out[e] = __fmul_rn(y, alpha);
    }
}

// The blur: out[v] = in[v] + (in[below] + in[above]) / 2 along direction j, for rows 0..vertices
// (row 0, the sentinel, stays zero), every direction in turn. All passes of up to two lattices
// run in one cooperative launch, a grid barrier between passes (the lattices of a CRF batch are
// small: launches, not bytes, set the time). `zero`, when given with a lattice's first pass, has
// rows 0..vertices x zero_channels cleared: the buffer the next splat accumulates into.
struct BlurJob {
    const unsigned* meta;     // meta[0]: vertex count; null: no pass
    const uint2* neighbors;   // vertices x d1
    const float* in;
    float* out;
    float* zero;              // or null
    int d1, j, channels, zero_channels;
};

#define MAX_PASSES 6
struct BlurPasses {
    BlurJob job[MAX_PASSES][2];
    int passes;
};

// Every block of the (cooperative, so co-resident) grid waits here for all others; count
// returns to 0 after each barrier and phase counts barriers, so the two words need clearing
// only once. The fences publish this block's writes before arriving and, after leaving,
// invalidate stale L1 lines (as cooperative_groups' grid.sync does).
__device__ __forceinline__ void grid_barrier(unsigned* count, volatile unsigned* phase) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned seen = *phase;
        __threadfence();
        if (atomicAdd(count, 1u) == gridDim.x - 1u) {
            *count = 0u;
            __threadfence();
            atomicAdd((unsigned*)phase, 1u);
        } else {
            while (*phase == seen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}

__device__ __forceinline__ void blur_pass(const BlurJob& b) {
    int rows = (int)b.meta[0] + 1;
    int n = rows * b.channels;
    for (int e = grid_start(); e < n; e += grid_step()) {
        int v = e / b.channels, c = e % b.channels;
        float y = 0.0f;
        if (v > 0) {
            uint2 nb = b.neighbors[(long long)(v - 1) * b.d1 + b.j];
            // __ldcg: the previous pass wrote these from other multiprocessors.
            float lo = __ldcg(&b.in[(long long)nb.x * b.channels + c]), hi = __ldcg(&b.in[(long long)nb.y * b.channels + c]);
            y = __fadd_rn(__ldcg(&b.in[e]), __fmul_rn(0.5f, __fadd_rn(lo, hi)));
        }
        b.out[e] = y;
    }
    if (b.zero) {
        int z = rows * b.zero_channels;
        for (int e = grid_start(); e < z; e += grid_step()) b.zero[e] = 0.0f;
    }
}

extern "C" __global__ void lattice_blur_f32(BlurPasses p, unsigned* barrier) {
#pragma unroll
    for (int j = 0; j < MAX_PASSES; ++j) {
        if (j >= p.passes) break;
        if (j > 0) grid_barrier(barrier, barrier + 1);
#pragma unroll
        for (int l = 0; l < 2; ++l)
            if (p.job[j][l].meta) blur_pass(p.job[j][l]);
    }
}

// ---------------------------------------------------------------------------------------------
// Mean field of the binary lesion CRF (src/crf/meanfield.rs, kernel.rs), a batch of same-size
// images. Lattice 0 is the smoothness kernel (d = 2), shared by every image of the batch: point
// = pixel, and its iteration values hold one channel per image. Lattice 1 is the appearance
// kernel (d = 5), one per image: point = image * pixels + pixel, one channel.
//
// Per kernel k (pydensecrf's NORMALIZE_SYMMETRIC and Potts compatibility):
//   norm_k = 1 / sqrt(K_k(1) + 1e-20),  total_k = compat_k * norm_k * K_k(norm_k)
//   m_k = compat_k * norm_k * K_k(norm_k * q0)
//   logits = (-u0 + m_0 + m_1, -u1 + (total_0 - m_0) + (total_1 - m_1)),  q = softmax(logits)
// with u = -log(max(p, 1e-5)) of the planes (1 - prob, prob).

struct CrfLattice {
    const unsigned* offsets;  // points x D1, vertex id + 1
    const float* bary;        // points x D1
    float* norm;              // points
    float* total;             // points
    float alpha, compat;
};
struct CrfArgs {
    CrfLattice lat[2];
    int images, pixels;
};

#define D1_SMOOTH 3
#define D1_APPEAR 6

template <int D1>
__device__ __forceinline__ float slice_at(const CrfLattice& l, int point, const float* values, int channels,
                                          int c) {
    float y = 0.0f;
#pragma unroll
    for (int r = 0; r < D1; ++r) {
        long long o = (long long)point * D1 + r;
        y = __fadd_rn(y, __fmul_rn(l.bary[o], values[(long long)l.offsets[o] * channels + c]));
    }
    return __fmul_rn(y, l.alpha);
}

// Called by every lane of a warp (warp-uniform loops); lanes with valid = false add nothing.
template <int D1>
__device__ __forceinline__ void splat_at(const CrfLattice& l, int point, float x, float* values, int channels,
                                         int c, bool valid) {
#pragma unroll
    for (int r = 0; r < D1; ++r) {
        long long o = (long long)point * D1 + r;
        float w = valid ? l.bary[o] : 0.0f;
        long long idx = valid ? (long long)l.offsets[o] * channels + c : 0;
        warp_atomic_add(values, idx, __fmul_rn(w, x), valid);
    }
}

// Points of both lattices in one loop: body0(point, valid) over lattice 0's, then body1 over
// lattice 1's. A warp that straddles the boundary runs both, each with the other's lanes invalid.
template <class Body0, class Body1>
__device__ __forceinline__ void for_both_lattices(const CrfArgs& a, Body0 body0, Body1 body1) {
    int p0 = a.pixels, n = p0 + a.images * a.pixels;
    for (int w0 = warp_start(); w0 < n; w0 += grid_step()) {
        int i = w0 + lane_id();
        if (w0 < p0) body0(i < p0 ? i : p0 - 1, i < p0);
        if (w0 + 32 > p0) body1(i >= p0 && i < n ? i - p0 : 0, i >= p0 && i < n);
    }
}

// K(1): splat ones into both lattices (one channel each; s0, s1 zeroed).
extern "C" __global__ void crf_density_splat_f32(CrfArgs a, float* s0, float* s1) {
    for_both_lattices(
        a, [&](int pt, bool valid) { splat_at<D1_SMOOTH>(a.lat[0], pt, 1.0f, s0, 1, 0, valid); },
        [&](int pt, bool valid) { splat_at<D1_APPEAR>(a.lat[1], pt, 1.0f, s1, 1, 0, valid); });
}

// norm = 1 / sqrt(K(1) + 1e-20) from the blurred r0, r1; then splat norm (one channel) for K(norm).
template <int D1>
__device__ __forceinline__ void norm_at(const CrfLattice& l, int pt, bool valid, const float* r, float* s) {
    float v = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(slice_at<D1>(l, pt, r, 1, 0), 1e-20f)));
    if (valid) l.norm[pt] = v;
    splat_at<D1>(l, pt, v, s, 1, 0, valid);
}

extern "C" __global__ void crf_norm_f32(CrfArgs a, const float* r0, const float* r1, float* s0, float* s1) {
    for_both_lattices(
        a, [&](int pt, bool valid) { norm_at<D1_SMOOTH>(a.lat[0], pt, valid, r0, s0); },
        [&](int pt, bool valid) { norm_at<D1_APPEAR>(a.lat[1], pt, valid, r1, s1); });
}

// The unary of one pixel from its lesion probability: (u0, u1) = -log(max((1 - p, p), 1e-5)).
// With `bad`, a probability outside [0, 1] (NaN included) is recorded in bad[0] (0xffffffff - the
// first index).
__device__ __forceinline__ void unary(float p, int i, unsigned* bad, float& u0, float& u1) {
    if (bad && !(p >= 0.0f && p <= 1.0f)) atomicMax(bad, 0xffffffffu - (unsigned)i);
    u0 = -logf(fmaxf(__fsub_rn(1.0f, p), 1e-5f));
    u1 = -logf(fmaxf(p, 1e-5f));
}

// This lane's pixel in a warp starting at batch pixel w0 of n: i in the batch, image b, pixel p in
// the image. A spare lane (valid false) takes the last pixel: it recomputes it and writes nothing.
struct LanePixel {
    int i, b, p;
    bool valid;
};
__device__ __forceinline__ LanePixel lane_pixel(const CrfArgs& a, int w0, int n) {
    int i = w0 + lane_id();
    bool valid = i < n;
    if (!valid) i = n - 1;
    return {i, i / a.pixels, i % a.pixels, valid};
}

// Two-label softmax as meanfield.rs: the logistic of the difference, one exp.
__device__ __forceinline__ void softmax2(float x0, float x1, float& q0, float& q1) {
    float e = expf(-fabsf(__fsub_rn(x0, x1)));
    float big = __fdiv_rn(1.0f, __fadd_rn(1.0f, e)), small = __fdiv_rn(e, __fadd_rn(1.0f, e));
    if (x0 >= x1) { q0 = big; q1 = small; } else { q0 = small; q1 = big; }
}

// Either the next iteration's splat (norm * q0 into both lattices; s0 has one channel per image)
// or, after the last iteration, the lesion marginal q1.
__device__ __forceinline__ void emit(const CrfArgs& a, int b, int p, int i, float q0, float q1, float* s0,
                                     float* s1, float* out, int last, bool valid) {
    if (last) {
        if (valid) out[i] = q1;
    } else {
        splat_at<D1_SMOOTH>(a.lat[0], p, __fmul_rn(a.lat[0].norm[p], q0), s0, a.images, b, valid);
        splat_at<D1_APPEAR>(a.lat[1], i, __fmul_rn(a.lat[1].norm[i], q0), s1, 1, 0, valid);
    }
}

// total = compat * norm * K(norm) from the blurred r0, r1 (lattice 0's by the first image's
// threads), then the initial Q = softmax(-unary) and its splat (or, with no iteration, the output).
extern "C" __global__ void crf_start_f32(CrfArgs a, const float* r0, const float* r1, const float* __restrict__ prob,
                                         float* s0, float* s1, float* __restrict__ out, unsigned* bad, int last) {
    int n = a.images * a.pixels;
    for (int w0 = warp_start(); w0 < n; w0 += grid_step()) {
        auto [i, b, p, valid] = lane_pixel(a, w0, n);
        if (valid && b == 0) {
            float k = slice_at<D1_SMOOTH>(a.lat[0], p, r0, 1, 0);
            a.lat[0].total[p] = __fmul_rn(k, __fmul_rn(a.lat[0].compat, a.lat[0].norm[p]));
        }
        float k = slice_at<D1_APPEAR>(a.lat[1], i, r1, 1, 0);
        if (valid) a.lat[1].total[i] = __fmul_rn(k, __fmul_rn(a.lat[1].compat, a.lat[1].norm[i]));
        float u0, u1, q0, q1;
        unary(prob[i], i, valid ? bad : nullptr, u0, u1);
        softmax2(-u0, -u1, q0, q1);
        emit(a, b, p, i, q0, q1, s0, s1, out, last, valid);
    }
}

// One mean-field iteration: messages sliced from the blurred r0, r1, softmax, emit.
extern "C" __global__ void crf_step_f32(CrfArgs a, const float* r0, const float* r1, const float* __restrict__ prob,
                                        float* s0, float* s1, float* __restrict__ out, unsigned* bad, int last) {
    int n = a.images * a.pixels;
    for (int w0 = warp_start(); w0 < n; w0 += grid_step()) {
        auto [i, b, p, valid] = lane_pixel(a, w0, n);
        float u0, u1;
        unary(prob[i], i, nullptr, u0, u1);  // crf_start recorded any bad probability
        float l0 = -u0, l1 = -u1;
        float m = __fmul_rn(__fmul_rn(a.lat[0].compat, a.lat[0].norm[p]),
                            slice_at<D1_SMOOTH>(a.lat[0], p, r0, a.images, b));
        l0 = __fadd_rn(l0, m);
        l1 = __fadd_rn(l1, __fsub_rn(a.lat[0].total[p], m));
        m = __fmul_rn(__fmul_rn(a.lat[1].compat, a.lat[1].norm[i]), slice_at<D1_APPEAR>(a.lat[1], i, r1, 1, 0));
        l0 = __fadd_rn(l0, m);
        l1 = __fadd_rn(l1, __fsub_rn(a.lat[1].total[i], m));
        float q0, q1;
        softmax2(l0, l1, q0, q1);
        emit(a, b, p, i, q0, q1, s0, s1, out, last, valid);
    }
}

// After the last launch of a refinement: the errors the kernels recorded, behind the marginals,
// so one copy brings both back: [first bad probability's index, its bits, smoothness lattice
// overflow, appearance lattice overflow, smoothness table full, appearance table full] (index
// and overflows as 0xffffffff - first index, 0 when none).
extern "C" __global__ void crf_flags_f32(const unsigned* bad, const float* __restrict__ prob,
                                         const unsigned* meta0, const unsigned* meta1, unsigned* tail) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned b = bad[0];
        tail[0] = b;
        tail[1] = b ? __float_as_uint(prob[0xffffffffu - b]) : 0u;
        tail[2] = meta0[4];
        tail[3] = meta1[4];
        tail[4] = meta0[8];
        tail[5] = meta1[8];
        tail[6] = 0u;
        tail[7] = 0u;
    }
}
