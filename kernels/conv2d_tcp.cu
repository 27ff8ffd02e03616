// 2-D convolution on the tensor cores with a cp.async pipeline: the same three implicit GEMMs,
// tiles, warps and mma.sync instructions as conv2d_tc.cu, and the same results up to the order
// of the reduction, with the loads taken off the critical path.
//
// Why a second kernel file: conv2d_tc.cu (measured on the H200 at 22-52 TFLOP/s, 0.14-0.52x cuDNN
// on the big 3x3 layers) moves every element global -> registers -> (rounded) shared memory, with
// one tile in flight; its time per tile is about eight times its mma time, i.e. it waits on
// memory. Here each thread issues `cp.async` copies straight into shared memory, STAGES = 4
// tiles deep (3 in flight while one is multiplied), so the L2/HBM latency hides behind three
// tiles of mma instead of one, and no register holds a loaded value.
//
// What that costs, and why it is paid:
// - Shared memory holds f32, not TF32/BF16: cp.async copies bytes and cannot round. Operands are
//   rounded as fragments are read (one cvt per TF32 word, one cvt.bf16x2 per BF16 pair), the same
//   roundings conv2d_tc.cu applies on its stores. 4 stages x (BM + BN) x 32 elements x 4 bytes:
//   up to 160 KB of dynamic shared memory, one 128 x 128 block per SM (two of the smaller tiles,
//   at 3 stages).
// - Reduction order (r, s, c) instead of (c, r, s) for the forward and input gradient: a tile of
//   32 consecutive reduction elements is then (for C >= 32) one kernel tap over 32 channels, so a
//   pixel's bounds check is made once per tap, and the next element is one plane further
//   (pointer += H*W) instead of a decode. The host hands the weights over as (K, R, S, C) for the
//   forward and (C, R, S, K) for the input gradient (src/ops/conv/cuda.rs reorders them; a
//   weight-sized copy).
// - The gathered operand (x, dy) is copied 4 bytes at a time (a tap's pixels are not 16-byte
//   aligned runs: padding, dilation and stride shift them), each zero-filled where out of range
//   (`src-size` 0), so tails, padding and strided holes read 0 as in conv2d_tc.cu. The row-major
//   operands (the weights; dy's rows in the weight gradient when OH*OW % 4 == 0) go 16 bytes at a
//   time.
//
// Shared-memory layouts and their bank arithmetic (32 banks of 4 bytes):
// - A, [BM rows][SA words], k contiguous; B of the weight gradient likewise [BN][SA]. TF32 reads
//   word (row g8, k t4): SA = 36 puts lanes at banks 4 g8 + t4, all distinct. BF16 reads the pair
//   (row g8, k 2t4, 2t4+1) as one 8-byte load: SA = 40 puts them at 8 g8 + 2 t4 (+1), distinct in
//   each half-warp (an 8-byte load is served per half-warp).
// - B of the forward and input gradient, [32 k rows][SB words], pixels contiguous, so a warp's
//   cp.async of 32 consecutive pixels writes 32 consecutive words. TF32 reads (k t4, pixel g8):
//   SB = BN + 8 (= 8 mod 32) gives banks 8 t4 + g8; BF16 reads (k 2t4, g8) and (k 2t4+1, g8):
//   SB = BN + 4 gives 8 t4 + g8 (+4). Distinct either way.
//
// Pipeline: cp_async.cuh's cp_async_pipeline (one barrier per tile, STAGES - 1 tiles in flight),
// shared with conv2d_nhwc.cu.
#include "conv_tc.cuh"
#include "cp_async.cuh"

#define PIPE_KT 32  // reduction elements per stage

// Tiles in shared memory at once: 4 for a 128 x 128 block (one per SM, up to 160 KB); 3 for the
// smaller tiles, so two blocks fit an SM's 228 KB (6 tiles in flight per SM either way).
__host__ __device__ constexpr int pipe_stages(int bm, int bn) { return bm * bn > 8192 ? 4 : 3; }

// Shared-memory row strides in words (see the header).
template <class P, int BN = 0>
struct PipeLayout {
    static constexpr int SA = P::K_STEP == 8 ? 36 : 40;      // [row][k] tiles
    static constexpr int SB = BN + (P::K_STEP == 8 ? 8 : 4);  // [k][pixel] tiles, BN pixels
};

// Fragments from f32 shared memory, rounded as they are read. Words as conv2d_tc.cu's (PTX ISA
// "Matrix Fragments for mma.m16n8k8 / m16n8k16"): A rows g8 and g8 + 8, k t4 and t4 + 4 (TF32) or
// pairs 2t4 and 2t4 + 8 (BF16); B column g8, the same k.
template <class P>
__device__ __forceinline__ unsigned frag_word(const float* p, int next) {  // p: the lower k; next: the stride to k + 1
    if constexpr (P::K_STEP == 8) return Tf32::word(p[0]);
    else return Bf16::pair(p[0], p[next]);
}
template <class P>
__device__ __forceinline__ unsigned frag_pair_row(const float* p) {  // k-contiguous row: one 8-byte read for BF16
    if constexpr (P::K_STEP == 8) {
        return Tf32::word(p[0]);
    } else {
        const float2 v = *reinterpret_cast<const float2*>(p);
        return Bf16::pair(v.x, v.y);
    }
}
// A (and B of the weight gradient): [row][SA], k contiguous. `p` = &tile[row g8][ks].
template <class P>
__device__ __forceinline__ void frag_a(unsigned (&a)[4], const float* p, int t4) {
    constexpr int SA = PipeLayout<P>::SA, KH = P::K_STEP / 2;  // k offset of the second word pair
    const int k = P::K_STEP == 8 ? t4 : 2 * t4;
    a[0] = frag_pair_row<P>(p + k);
    a[1] = frag_pair_row<P>(p + 8 * SA + k);
    a[2] = frag_pair_row<P>(p + k + KH);
    a[3] = frag_pair_row<P>(p + 8 * SA + k + KH);
}
template <class P>
__device__ __forceinline__ void frag_b_rows(unsigned (&b)[2], const float* p, int t4) {  // p = &tile[col g8][ks]
    constexpr int KH = P::K_STEP / 2;
    const int k = P::K_STEP == 8 ? t4 : 2 * t4;
    b[0] = frag_pair_row<P>(p + k);
    b[1] = frag_pair_row<P>(p + k + KH);
}
// B of the forward and input gradient: [k][SB], pixels contiguous. `p` = &tile[ks][col g8].
template <class P, int SB>
__device__ __forceinline__ void frag_b_cols(unsigned (&b)[2], const float* p, int t4) {
    constexpr int KH = P::K_STEP / 2;
    const int k = P::K_STEP == 8 ? t4 : 2 * t4;
    b[0] = frag_word<P>(p + k * SB, SB);
    b[1] = frag_word<P>(p + (k + KH) * SB, SB);
}

template <int BM, int BN, class P, int PASS>
__device__ __forceinline__ void conv_tcp(const float* __restrict__ a_src, const float* __restrict__ b_src,
                                         const float* __restrict__ bias, float* __restrict__ out,
                                         float* __restrict__ stats, const ConvGeom& g, int red_chunk) {
    constexpr int KT = PIPE_KT, STAGES = pipe_stages(BM, BN);
    constexpr bool B_ROWS = PASS == BWD_WEIGHT;  // B tile [pixel-reduction k contiguous] vs [k][pixel]
    constexpr int SA = PipeLayout<P>::SA, SB = PipeLayout<P, BN>::SB;
    constexpr int A_WORDS = BM * SA, STAGE_WORDS = A_WORDS + (B_ROWS ? BN * SA : KT * SB);
    constexpr int MT = BM / 32, NT = BN / 32;
    extern __shared__ __align__(16) float smem[];
    if (dynamic_smem_bytes() < (unsigned)(STAGES * STAGE_WORDS * 4)) asm volatile("trap;");

    const BlockTile<BM, BN, PASS> bt(g, red_chunk);
    const int OHW = g.oh * g.ow, HW = g.h * g.w;

    // A: quads of 4 reduction elements; thread t takes quad t % 8 of rows t / 8 + 32 p.
    const int a_quad = bt.t & 7, a_row0 = bt.t >> 3;
    // Forward / input gradient: A is a row-major [M][RED] matrix (the reordered weights).
    // Weight gradient: A is dy, row m = output channel, k = pixel q: dy[q / OHW][m][q % OHW].
    const bool a_vec = PASS == BWD_WEIGHT ? (OHW & 3) == 0 : (bt.RED & 3) == 0;
    // This thread's first A row (formed, read only where inside the matrix), its rows 32 apart,
    // and which of its BM / 32 rows are inside M (bit p). Forward / input gradient: row-major
    // [M][RED], from the thread's quad; weight gradient: dy's channel m of image 0 (rows OHW apart
    // within an image; the image and pixel come from the cursor below).
    const long long a_ld = PASS == BWD_WEIGHT ? OHW : bt.RED;
    const float* a_row = a_src + (long long)(bt.m0 + a_row0) * a_ld + (PASS == BWD_WEIGHT ? 0 : 4 * a_quad);
    const long long a_rows_apart = 32 * a_ld;
    unsigned a_rows_in = 0;
#pragma unroll
    for (int p = 0; p < BM / 32; ++p) a_rows_in |= (unsigned)(bt.m0 + a_row0 + 32 * p < bt.M) << p;
    // B of the forward / input gradient: pixel t % BN, reduction rows (t / BN) * B_RUN + j.
    constexpr int B_RUN = KT * BN / TC_THREADS;
    const int b_pix = bt.t % BN, b_grp = bt.t / BN;
    const int CH = PASS == FWD ? g.c : g.k;  // channels of the gathered tensor
    const int plane = PASS == FWD ? HW : OHW;
    TapGather<PASS> tap{0, 0};
    const float* b_img = b_src;
    bool pix_ok = false;
    // Where this thread's run of the next B tile starts: element idx = rs * CH + ch, rs = r * S + s,
    // and the tap's pixel offset `at`. Tiles are issued in order, KT elements apart, so the cursor
    // steps by KT after each (no division in the loop).
    struct {
        int ch, r, s, at;
    } cur{0, 0, 0, -1};
    // B of the weight gradient: pixel-reduction column t % 32, rows (t / 32) * W_RUN + j of N.
    constexpr int W_RUN = BN * KT / TC_THREADS;
    const int w_q = bt.t & 31, w_grp = bt.t >> 5;
    Crs col0{0, 0, 0};
    // Weight gradient: the pixels this thread copies, as cursors that step by KT per tile (tiles are
    // issued in order; no division in the loop): A's quad at q = k0 + 4 a_quad as (image, offset
    // in the image), B's column at q = k0 + w_q as (image, row, column).
    struct {
        int n, at;
    } aq{0, 0};
    struct {
        int n, oh, ow;
    } bq{0, 0, 0};
    if constexpr (PASS == BWD_WEIGHT) {
        col0.decode(min(bt.n0 + w_grp * W_RUN, bt.N), g.r, g.s);
        const int qa = bt.red_begin + 4 * a_quad, qb = bt.red_begin + w_q;
        aq.n = qa / OHW;
        aq.at = qa - aq.n * OHW;
        bq.n = qb / OHW;
        bq.oh = (qb - bq.n * OHW) / g.ow;
        bq.ow = qb - bq.n * OHW - bq.oh * g.ow;
    } else {
        const int p = bt.n0 + b_pix;
        const int pplane = PASS == FWD ? OHW : HW, pw = PASS == FWD ? g.ow : g.w;
        pix_ok = p < bt.N;
        const int pn = pix_ok ? p / pplane : 0, pr = pix_ok ? p - pn * pplane : 0;
        if constexpr (PASS == FWD) tap = {(pr / pw) * g.stride - g.pad, (pr % pw) * g.stride - g.pad};
        else tap = {pr / pw + g.pad, pr % pw + g.pad};
        b_img = b_src + (long long)pn * CH * plane;
        const int idx0 = bt.red_begin + b_grp * B_RUN, rs = idx0 / CH;
        cur.ch = idx0 - rs * CH;
        cur.r = rs / g.s;
        cur.s = rs - cur.r * g.s;
        cur.at = pix_ok && cur.r < g.r ? tap.at(g, cur.r, cur.s) : -1;
    }
    auto advance_cursor = [&]() {
        cur.ch += KT;
        if (cur.ch < CH) return;
        do {
            cur.ch -= CH;
            if (++cur.s == g.s) {
                cur.s = 0;
                ++cur.r;
            }
        } while (cur.ch >= CH);
        cur.at = pix_ok && cur.r < g.r ? tap.at(g, cur.r, cur.s) : -1;
    };

    auto advance_pixels = [&]() {
        aq.at += KT;
        while (aq.at >= OHW) {
            aq.at -= OHW;
            ++aq.n;
        }
        bq.ow += KT;
        while (bq.ow >= g.ow) {
            bq.ow -= g.ow;
            if (++bq.oh == g.oh) {
                bq.oh = 0;
                ++bq.n;
            }
        }
    };

    auto issue = [&](int stage, int k0) {
        float* As = smem + stage * STAGE_WORDS;
        float* Bs = As + A_WORDS;
        // A
        if constexpr (PASS == BWD_WEIGHT) {
            const int q = k0 + 4 * a_quad;
            if (a_vec) {  // 4 pixels of one image (OHW % 4 == 0 and q % 4 == 0)
                const bool q_ok = q < bt.red_end;
                const float* src = a_row + (long long)aq.n * g.k * OHW + aq.at;
#pragma unroll
                for (int p = 0; p < BM / 32; ++p) {
                    const bool ok = q_ok && (a_rows_in >> p & 1);
                    cp_async16(As + (a_row0 + 32 * p) * SA + 4 * a_quad, ok ? src + p * a_rows_apart : a_src, ok);
                }
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool q_ok = q + e < bt.red_end;
                    const int qn = q_ok ? (q + e) / OHW : 0, qr = q_ok ? q + e - qn * OHW : 0;
                    const float* src = a_src + (long long)qn * g.k * OHW + qr;
#pragma unroll
                    for (int p = 0; p < BM / 32; ++p) {
                        const int m = bt.m0 + a_row0 + 32 * p;
                        const bool ok = q_ok && m < bt.M;
                        cp_async4(As + (a_row0 + 32 * p) * SA + 4 * a_quad + e, ok ? src + (long long)m * OHW : a_src, ok);
                    }
                }
            }
        } else {
            const int k = k0 + 4 * a_quad;
            float* dst = As + a_row0 * SA + 4 * a_quad;
            if (a_vec) {  // RED % 4 == 0: a quad is in the reduction whole or not at all
                const bool k_ok = k < bt.red_end;
#pragma unroll
                for (int p = 0; p < BM / 32; ++p) {
                    const bool ok = k_ok && (a_rows_in >> p & 1);
                    cp_async16(dst + 32 * p * SA, ok ? a_row + p * a_rows_apart + k0 : a_src, ok);
                }
            } else {
#pragma unroll
                for (int p = 0; p < BM / 32; ++p) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = k + e < bt.red_end && (a_rows_in >> p & 1);
                        cp_async4(dst + 32 * p * SA + e, ok ? a_row + p * a_rows_apart + k0 + e : a_src, ok);
                    }
                }
            }
        }
        // B
        if constexpr (PASS == BWD_WEIGHT) {
            const int q = k0 + w_q;
            const bool q_ok = q < bt.red_end;
            const int ih0 = bq.oh * g.stride - g.pad, iw0 = bq.ow * g.stride - g.pad;
            const float* xq = b_src + (long long)bq.n * g.c * HW;
            advance_pixels();
            Crs cc = col0;
#pragma unroll
            for (int j = 0; j < W_RUN; ++j) {
                const int ih = ih0 + cc.r * g.dil, iw = iw0 + cc.s * g.dil;
                const bool ok = q_ok && cc.c < g.c && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
                cp_async4(Bs + (w_grp * W_RUN + j) * SA + w_q, ok ? xq + (cc.c * g.h + ih) * g.w + iw : b_src, ok);
                cc.step(g.r, g.s);
            }
        } else {
            // Element idx = rs * CH + ch from the cursor, then stepped (a new tap every CH elements).
            const int idx0 = k0 + b_grp * B_RUN;
            int ch = cur.ch, r = cur.r, s = cur.s, at = cur.at;
            advance_cursor();
            float* dst = Bs + b_grp * B_RUN * SB + b_pix;
            if (CH % B_RUN == 0) {
                // The run is one tap (every layer of the network but the 3-channel stem): one
                // bounds check, then a plane apart each; RED is a multiple of B_RUN too, so the
                // run is inside the reduction whole or not at all.
                const bool ok = at >= 0 && idx0 < bt.red_end;
                const float* src = ok ? b_img + ch * plane + at : b_src;
                const int step = ok ? plane : 0;
#pragma unroll
                for (int j = 0; j < B_RUN; ++j) cp_async4(dst + j * SB, src + j * step, ok);
                return;
            }
#pragma unroll
            for (int j = 0; j < B_RUN; ++j) {
                const bool ok = at >= 0 && idx0 + j < bt.red_end;
                cp_async4(dst + j * SB, ok ? b_img + ch * plane + at : b_src, ok);
                if (++ch == CH) {
                    ch = 0;
                    if (++s == g.s) {
                        s = 0;
                        ++r;
                    }
                    at = pix_ok && r < g.r ? tap.at(g, r, s) : -1;
                }
            }
        }
    };

    float acc[MT][NT][4];
    zero_tiles(acc);

    cp_async_pipeline<STAGES, KT>(bt.red_begin, bt.red_end, issue, [&](int st) {
        const float* As = smem + st * STAGE_WORDS;
        const float* Bs = As + A_WORDS;
#pragma unroll
        for (int ks = 0; ks < KT; ks += P::K_STEP) {
            unsigned af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) frag_a<P>(af[i], As + (bt.wm * (BM / 2) + i * 16 + bt.g8) * SA + ks, bt.t4);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int c = bt.wn * (BN / 4) + j * 8 + bt.g8;
                if constexpr (B_ROWS) frag_b_rows<P>(bf[j], Bs + c * SA + ks, bt.t4);
                else frag_b_cols<P, SB>(bf[j], Bs + ks * SB + c, bt.t4);
            }
            mma_tiles<P>(acc, af, bf);
        }
    });

    store_tile<BM, BN, PASS, MT, NT>(acc, bt, bias, out, g, stats);
}

// One entry point per pass, precision and tile, with conv2d_tc.cu's arguments and `stats` after
// `out` (forward: batch-norm partial sums, conv_tc.cuh store_tile; null for none, and always
// null for the gradients):
//   forward:         a = weight reordered to (K, R, S, C), b = x,  out = y  (bias may be null)
//   input gradient:  a = weight reordered to (C, R, S, K), b = dy, out = dx
//   weight gradient: a = dy, b = x, out = dw (gridDim.z > 1: the splits' (splits, K, C*R*S) buffer)
// Dynamic shared memory: pipe_stages(BM, BN) x (BM x SA + (forward, input gradient: 32 x SB; weight
// gradient: BN x SA)) x 4 bytes (src/ops/conv/cuda.rs `pipe_smem_bytes`); the kernel traps when
// given less. red_chunk: the reduction each blockIdx.z covers, a multiple of 32.
#define CONV_TCP(NAME, BM, BN, PREC, PASS)                                                                  \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, pipe_stages(BM, BN) == 4 ? 1 : 2)             \
        NAME(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias,      \
             float* __restrict__ out, float* __restrict__ stats, ConvGeom g, int red_chunk) {               \
        conv_tcp<BM, BN, PREC, PASS>(a, b, bias, out, stats, g, red_chunk);                                 \
    }

CONV_TCP(conv2d_pipe_fwd_128x128_tf32, 128, 128, Tf32, FWD)
CONV_TCP(conv2d_pipe_fwd_64x128_tf32, 64, 128, Tf32, FWD)
CONV_TCP(conv2d_pipe_fwd_128x64_tf32, 128, 64, Tf32, FWD)
CONV_TCP(conv2d_pipe_fwd_128x128_bf16, 128, 128, Bf16, FWD)
CONV_TCP(conv2d_pipe_fwd_64x128_bf16, 64, 128, Bf16, FWD)
CONV_TCP(conv2d_pipe_fwd_128x64_bf16, 128, 64, Bf16, FWD)
CONV_TCP(conv2d_pipe_bwd_input_128x128_tf32, 128, 128, Tf32, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_input_64x128_tf32, 64, 128, Tf32, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_input_128x64_tf32, 128, 64, Tf32, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_input_128x128_bf16, 128, 128, Bf16, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_input_64x128_bf16, 64, 128, Bf16, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_input_128x64_bf16, 128, 64, Bf16, BWD_INPUT)
CONV_TCP(conv2d_pipe_bwd_weight_128x128_tf32, 128, 128, Tf32, BWD_WEIGHT)
CONV_TCP(conv2d_pipe_bwd_weight_64x128_tf32, 64, 128, Tf32, BWD_WEIGHT)
CONV_TCP(conv2d_pipe_bwd_weight_128x64_tf32, 128, 64, Tf32, BWD_WEIGHT)
CONV_TCP(conv2d_pipe_bwd_weight_128x128_bf16, 128, 128, Bf16, BWD_WEIGHT)
CONV_TCP(conv2d_pipe_bwd_weight_64x128_bf16, 64, 128, Bf16, BWD_WEIGHT)
CONV_TCP(conv2d_pipe_bwd_weight_128x64_bf16, 128, 64, Bf16, BWD_WEIGHT)
