// The three passes of a 2-D convolution on the tensor cores in BF16, from channels-last bf16
// copies of their operands: conv2d_tcp.cu's cp.async pipeline and GEMMs, with tiles half the
// bytes, every copy 16 bytes, fragments read by ldmatrix, and no rounding in the inner loop.
//
// Why: on the H200 conv2d_tcp.cu's bf16 forward of the 512-channel 16x16 layer ran at 0.25x
// cuDNN (0.434 ms, 56 TFLOP/s). Its tiles are f32 in shared memory (cp.async copies bytes and
// cannot round), so a 128 x 128 block needs 150 KB at 4 stages and sits alone on its SM (the
// profile: 2 warps per scheduler, no eligible warp 64% of cycles, 1.21 waves for 160 blocks),
// and each tile of 32 costs the warp 64 shared loads and 48 conversions beside its 32 mma. And
// its gather of x moves 4 bytes at a time: in NCHW a tap's pixels shift by padding and dilation,
// so they are not 16-byte runs, and a bf16 NCHW gather would be 2-byte copies, which cp.async
// does not have.
//
// So the gathered operand (x; dy for the input gradient) is first copied to (N, H, W, C) in
// bf16 by nchw_to_nhwc_bf16 below (one memory-bound pass, 6 bytes per element), and the weights
// to (K, R, S, C) / (C, R, S, K) in bf16 by the same kernel (the weights are (K, C, R*S) = "N, C,
// HW" with N = K; and (1, K, C*R*S) -> (C*R*S, K)). Then, with the reduction in (r, s, c) order:
// - a tile row's 32 reduction elements are 32 channels of one tap of one pixel (C % 8 == 0: every
//   layer of the network but the 3-channel stem, which conv2d_tcp.cu keeps), four 16-byte
//   cp.async each, one bounds check per pixel and tile;
// - both tiles are [row][k] bf16, 80-byte rows (32 elements + 8 of padding): 20 KB a stage for
//   128 x 128, 80 KB at 4 stages, so two blocks share an SM (launch bounds 2; 160 blocks of the
//   512-channel layer fit the 264 slots of 132 SMs in one wave);
// - fragments come from ldmatrix.x4 (four 8 x 8 bf16 matrices per instruction, each row an
//   aligned 16 bytes): per 16-deep k-step a warp of a 128 x 128 block issues 4 for A and 2 for B
//   against 16 mma, no conversion. 80-byte rows put the 8 rows of each matrix in 8 distinct
//   16-byte bank groups (offsets 0, 5, 10, .. 35 in 16-byte units, distinct mod 8): no conflicts.
// - shared-memory addresses are 32-bit offsets computed once (smem_u32); a generic 64-bit address
//   per copy and per ldmatrix cost about 70 of a tile's 264 instructions in the first version.
//   The forward's main loop is now 197 instructions per warp and tile of 32 (32 HMMA, 12 LDSM, 4
//   LDGSTS), against about 380 executed by conv2d_tcp.cu's (SASS, sm_90).
// The weight gradient (conv_nhwc_wgrad) reduces over output pixels: dy's channels and a tap's
// x channels are contiguous in the copies, so both tiles are [pixel][channel] rows of 16-byte
// chunks, read by ldmatrix.trans, and dw comes out in (K, R, S, C) order (cuda.rs restores
// (K, C, R, S)).
//
// Activations stay f32 in the tensor graph (autograd, batch norm and the CPU reference all read
// them, and f32 is the master copy the issue asks for); the bf16 channels-last copies are made per
// convolution pass and freed after it. Their cost is two extra memory-bound passes per pass
// (about 5 us for the 512-channel 16x16 input at the H200's bandwidth) against a kernel that
// moves half the shared-memory bytes. (x is copied twice per training step, for the forward and
// the weight gradient; dy once, shared by the input and weight gradients (cuda.rs conv2d_bwd).
// Where x is relu(batch_norm(y)) (inside a ResNet block), Tensor::bn_relu_conv2d makes the copy
// from y with batch norm and the ReLU applied (bn_relu_nchw_to_nhwc_bf16) and keeps it for the
// weight gradient: batch norm's f32 output is never written and x is copied once.)
//
// Results equal conv2d_tcp.cu's bf16 bits (given the same split of the weight gradient): the
// same bf16 roundings (cvt.rn, round to nearest even, here in the copy instead of at the fragment
// read), the same fragments and the same sequence of mma per accumulator. The epilogue (bias,
// NCHW f32 output, batch-norm partial statistics; the weight gradient's split slices) is
// conv_tc.cuh's store_tile.
#include "bn_value.cuh"
#include "conv_tc.cuh"
#include "cp_async.cuh"
#include "nhwc_copy.cuh"

#define NHWC_KT 32      // reduction elements per stage: four 16-byte chunks per tile row
#define NHWC_ROW 40     // bf16 elements per shared-memory row (80 bytes)
#define NHWC_STAGES 4

// x (n, c, hw) f32 -> y (n, hw, c) bf16, two channels per 32-bit word (channel 2j in the low
// half), rounded to nearest even, each value first mapped by `f(value, channel)`. c must be even
// (the wrappers check). Grid (ceil(hw / 32), ceil(c / 64), n), 256 threads: a block transposes 64
// channels x 32 pixels through shared memory, reading 32 consecutive pixels per warp and writing
// 32 consecutive words per warp. Past the tensor's edge the tile holds zeros (not f(0)).
template <class F>
__device__ __forceinline__ void to_nhwc_bf16(const float* __restrict__ x, unsigned* __restrict__ y, int c, int hw, F f) {
    __shared__ float tile[64][33];
    const int p0 = blockIdx.x * 32, c0 = blockIdx.y * 64, lane = threadIdx.x & 31, row = threadIdx.x >> 5;
    const float* xn = x + (long long)blockIdx.z * c * hw;
    for (int i = row; i < 64; i += 8) {
        const int ch = c0 + i, p = p0 + lane;
        tile[i][lane] = ch < c && p < hw ? f(xn[(long long)ch * hw + p], ch) : 0.0f;
    }
    __syncthreads();
    const int pairs = c >> 1, pair = (c0 >> 1) + lane;
    unsigned* yn = y + (long long)blockIdx.z * hw * pairs;
    for (int i = row; i < 32; i += 8) {
        const int p = p0 + i;
        if (p < hw && pair < pairs) yn[(long long)p * pairs + pair] = Bf16::pair(tile[2 * lane][i], tile[2 * lane + 1][i]);
    }
}

extern "C" __global__ void __launch_bounds__(256) nchw_to_nhwc_bf16(const float* __restrict__ x, unsigned* __restrict__ y,
                                                                    int c, int hw) {
    to_nhwc_bf16(x, y, c, hw, [](float v, int) { return v; });
}

// The prologue of a convolution whose input is relu(batch_norm(x)) (Tensor::bn_relu_conv2d): the
// copy above of relu(bn_value(x)) per channel, so batch norm's output is never written in f32.
// The same bits as batchnorm.cu's forward with its ReLU followed by nchw_to_nhwc_bf16
// (bn_value.cuh: one sequence of operations for both).
extern "C" __global__ void __launch_bounds__(256) bn_relu_nchw_to_nhwc_bf16(const float* __restrict__ x, const float* __restrict__ mean,
                                                                            const float* __restrict__ var, const float* __restrict__ gamma,
                                                                            const float* __restrict__ beta, unsigned* __restrict__ y,
                                                                            int c, int hw, float eps) {
    to_nhwc_bf16(x, y, c, hw, [&](float v, int ch) { return relu_value(bn_value(v, mean[ch], var[ch], gamma[ch], beta[ch], eps)); });
}

// Four 8 x 8 bf16 matrices from shared memory: lanes 8i .. 8i + 7 give the row addresses of
// matrix i (32-bit shared addresses, 16 aligned bytes each); every lane receives word i = (row
// lane / 4, elements 2 (lane % 4), +1) of matrix i, the layout of an mma fragment.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row)
                 : "memory");
}

// The same with .trans: each 8 x 8 matrix transposed, so lane receives (row 2 (lane % 4), column
// lane / 4) and (row 2 (lane % 4) + 1, the same column): the fragment of a tile stored k-major
// ([k][m] or [k][n]), as the weight gradient stores both of its operands.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row)
                 : "memory");
}

// One stage's 32-deep tile: two k-steps of the warp's MT x NT mma, fragments by ldmatrix (.trans
// when the tiles are k-major). Byte strides in the stage, from this lane's first row (a_at,
// b_at): A_TILE to A's next 16-row tile, A_K to its next k; B_PAIR to B's next pair of 8-column
// tiles, B_K to its next k.
template <bool TRANS, int MT, int NT, int A_TILE, int A_K, int B_PAIR, int B_K>
__device__ __forceinline__ void multiply_stage(float (&acc)[MT][NT][4], unsigned a_at, unsigned b_at) {
#pragma unroll
    for (int ks = 0; ks < NHWC_KT; ks += Bf16::K_STEP) {
        unsigned af[MT][4], bf[NT][2];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            if constexpr (TRANS) ldmatrix_x4_trans(af[i], a_at + i * A_TILE + ks * A_K);
            else ldmatrix_x4(af[i], a_at + i * A_TILE + ks * A_K);
        }
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            unsigned r[4];
            if constexpr (TRANS) ldmatrix_x4_trans(r, b_at + (j / 2) * B_PAIR + ks * B_K);
            else ldmatrix_x4(r, b_at + (j / 2) * B_PAIR + ks * B_K);
            bf[j][0] = r[0];
            bf[j][1] = r[1];
            bf[j + 1][0] = r[2];
            bf[j + 1][1] = r[3];
        }
        mma_tiles<Bf16>(acc, af, bf);
    }
}

// The forward (PASS FWD: a = weights (K, R, S, C), b = x as (N, H, W, C)) or input gradient
// (BWD_INPUT: a = weights (C, R, S, K), b = dy as (N, OH, OW, K)), both bf16; out, bias, stats
// and red_chunk as conv2d_tcp.cu's.
template <int BM, int BN, int PASS>
__device__ __forceinline__ void conv_nhwc(const unsigned short* __restrict__ a_src, const unsigned short* __restrict__ b_src,
                                          const float* __restrict__ bias, float* __restrict__ out, float* __restrict__ stats,
                                          const ConvGeom& g, int red_chunk) {
    static_assert(PASS != BWD_WEIGHT, "the weight gradient is conv_nhwc_wgrad");
    constexpr int KT = NHWC_KT, ROW = NHWC_ROW, STAGES = NHWC_STAGES;
    constexpr int A_ELEMS = BM * ROW, STAGE_ELEMS = (BM + BN) * ROW;
    constexpr int MT = BM / 32, NT = BN / 32;
    static_assert(NhwcTileCopy<BM, BN, PASS, KT>::ROWS_APART == 64, "four chunks per 32-deep row");
    extern __shared__ __align__(16) unsigned short smem[];
    if (dynamic_smem_bytes() < (unsigned)(STAGES * STAGE_ELEMS * 2)) asm volatile("trap;");

    const BlockTile<BM, BN, PASS> bt(g, red_chunk);
    const int lane = bt.t & 31;
    NhwcTileCopy<BM, BN, PASS, KT> copy(a_src, b_src, bt, g);

    // Shared memory by 32-bit address (smem_u32): stage s at smem0 + s * STAGE_ELEMS * 2 bytes;
    // this thread's copies land at `dst` (A rows, then + A_ELEMS * 2 for B) + 64 rows per p / j.
    const unsigned smem0 = smem_u32(smem), dst = (copy.row0 * ROW + 8 * copy.chunk) * 2;
    auto issue = [&](int stage, int k0) {
        const unsigned a_dst = smem0 + stage * STAGE_ELEMS * 2 + dst;
        copy.template issue<64 * ROW * 2, 64 * ROW * 2>(a_dst, a_dst + A_ELEMS * 2, k0, g);
    };

    float acc[MT][NT][4];
    zero_tiles(acc);

    // Where this lane's ldmatrix rows start in a stage: A matrices (rows 0-7, k 0-7), (8-15, 0-7),
    // (0-7, 8-15), (8-15, 8-15) of a 16-row tile = a0..a3; B matrices (columns 0-7, k 0-7),
    // (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) of two 8-column tiles = b[j][0], b[j][1], b[j+1][0], b[j+1][1].
    // (In elements; bytes below.)
    const int a_lds = (bt.wm * (BM / 2) + (lane & 15)) * ROW + (lane >> 4) * 8;
    const int b_lds = A_ELEMS + (bt.wn * (BN / 4) + (lane & 7) + (lane >> 4) * 8) * ROW + ((lane >> 3) & 1) * 8;

    cp_async_pipeline<STAGES, KT>(bt.red_begin, bt.red_end, issue, [&](int st) {
        const unsigned stage = smem0 + st * STAGE_ELEMS * 2;
        // [row][k] tiles: 16 rows (A) or two 8-column tiles (B) are 16 rows further; k is 2 bytes.
        multiply_stage<false, MT, NT, 16 * ROW * 2, 2, 16 * ROW * 2, 2>(acc, stage + a_lds * 2, stage + b_lds * 2);
    });

    store_tile<BM, BN, PASS, MT, NT>(acc, bt, bias, out, g, stats);
}

// The weight gradient: dw[k][(r, s, c)] = sum over output pixels q of dy[q][k] x[q at tap (r, s)][c],
// with a = dy as (N, OH, OW, K) and b = x as (N, H, W, C), both bf16 (K and C multiples of 8), and
// dw written in (K, R, S, C) order (cuda.rs puts it back in (K, C, R, S)); the reduction over q is
// split over gridDim.z as conv2d_tcp.cu's (slice z of a (splits, K, C*R*S) buffer).
// Both tiles are k-major, [32 pixels][BM or BN + 8] bf16: a pixel's K (or a tap's C) values are
// contiguous in the channels-last copies, so each row is 16-byte chunks of 8 channels (a chunk of
// B is 8 channels of one tap, C % 8 == 0); ldmatrix.trans turns them into the fragments. Rows of
// BM + 8 = 136 elements (272 bytes, 17 16-byte units) put the 8 rows of a matrix in distinct bank
// groups. 4 stages x 32 x (BM + BN + 16) x 2 bytes: 68 KB for 128 x 128, two blocks per SM.
template <int BM, int BN>
__device__ __forceinline__ void conv_nhwc_wgrad(const unsigned short* __restrict__ dy, const unsigned short* __restrict__ x,
                                                float* __restrict__ out, const ConvGeom& g, int red_chunk) {
    constexpr int KT = NHWC_KT, STAGES = NHWC_STAGES, AROW = BM + 8, BROW = BN + 8;
    constexpr int A_ELEMS = KT * AROW, STAGE_ELEMS = KT * (AROW + BROW);
    constexpr int MT = BM / 32, NT = BN / 32;
    extern __shared__ __align__(16) unsigned short smem[];
    if (dynamic_smem_bytes() < (unsigned)(STAGES * STAGE_ELEMS * 2)) asm volatile("trap;");

    const BlockTile<BM, BN, BWD_WEIGHT> bt(g, red_chunk);
    const int lane = bt.t & 31;
    using Copy = NhwcWgradCopy<BM, BN, KT>;
    Copy copy(dy, x, bt, g);
    const unsigned smem0 = smem_u32(smem);
    const unsigned a_dst = (copy.a_row * AROW + 8 * copy.a_ch) * 2, b_dst = (A_ELEMS + copy.b_row * BROW + 8 * copy.b_ch) * 2;
    auto issue = [&](int stage, int k0) {
        const unsigned base = smem0 + stage * STAGE_ELEMS * 2;
        copy.template issue<Copy::A_STEP * AROW * 2, Copy::B_STEP * BROW * 2>(base + a_dst, base + b_dst, k0, g);
    };

    float acc[MT][NT][4];
    zero_tiles(acc);
    // This lane's ldmatrix.trans rows (in elements): A matrices (m 0-7, k 0-7), (m 8-15, k 0-7),
    // (m 0-7, k 8-15), (m 8-15, k 8-15) = a0..a3, each 8 k-rows of 8 m; B matrices (k 0-7, n 0-7),
    // (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) = b[j][0], b[j][1], b[j+1][0], b[j+1][1].
    const int a_lds = (((lane >> 4) & 1) * 8 + (lane & 7)) * AROW + bt.wm * (BM / 2) + ((lane >> 3) & 1) * 8;
    const int b_lds = A_ELEMS + (((lane >> 3) & 1) * 8 + (lane & 7)) * BROW + bt.wn * (BN / 4) + (lane >> 4) * 8;
    cp_async_pipeline<STAGES, KT>(bt.red_begin, bt.red_end, issue, [&](int st) {
        const unsigned stage = smem0 + st * STAGE_ELEMS * 2;
        // [k][column] tiles: 16 columns further is 32 bytes; the next k is a row further.
        multiply_stage<true, MT, NT, 16 * 2, AROW * 2, 16 * 2, BROW * 2>(acc, stage + a_lds * 2, stage + b_lds * 2);
    });

    store_tile<BM, BN, BWD_WEIGHT, MT, NT>(acc, bt, nullptr, out, g);
}

// One entry point per pass and tile, with conv2d_tcp.cu's arguments but bf16 operands:
//   forward:         a = weights (K, R, S, C) bf16, b = x (N, H, W, C) bf16, out = y (N, K, OH, OW) f32
//   input gradient:  a = weights (C, R, S, K) bf16, b = dy (N, OH, OW, K) bf16, out = dx (N, C, H, W) f32
//   weight gradient: a = dy (N, OH, OW, K) bf16, b = x (N, H, W, C) bf16, out = dw (K, R, S, C) f32
//                    (gridDim.z > 1: the splits' (splits, K, R*S*C) buffer); bias and stats unused
// C (forward), K (input gradient), both (weight gradient) multiples of 8. Dynamic shared memory
// (src/ops/conv/cuda.rs `nhwc_shared_bytes`; the kernel traps when given less): forward and input
// gradient 4 stages x (BM + BN) x 40 x 2 bytes; weight gradient 4 x 32 x (BM + BN + 16) x 2.
#define CONV_NHWC(NAME, BM, BN, PASS)                                                                                \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)                                                      \
        NAME(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b, const float* __restrict__ bias, \
             float* __restrict__ out, float* __restrict__ stats, ConvGeom g, int red_chunk) {                          \
        conv_nhwc<BM, BN, PASS>(a, b, bias, out, stats, g, red_chunk);                                               \
    }

CONV_NHWC(conv2d_nhwc_fwd_128x128_bf16, 128, 128, FWD)
CONV_NHWC(conv2d_nhwc_fwd_64x128_bf16, 64, 128, FWD)
CONV_NHWC(conv2d_nhwc_fwd_128x64_bf16, 128, 64, FWD)
CONV_NHWC(conv2d_nhwc_bwd_input_128x128_bf16, 128, 128, BWD_INPUT)
CONV_NHWC(conv2d_nhwc_bwd_input_64x128_bf16, 64, 128, BWD_INPUT)
CONV_NHWC(conv2d_nhwc_bwd_input_128x64_bf16, 128, 64, BWD_INPUT)
// 64 x 64: four times the blocks of 128 x 128, for grids too short to fill the SMs (the 16x16
// layers); more ldmatrix per mma (3 per 4 against 6 per 16), so only where it times faster
// (src/ops/conv/tune.rs; the planner's model never picks it).
CONV_NHWC(conv2d_nhwc_fwd_64x64_bf16, 64, 64, FWD)
CONV_NHWC(conv2d_nhwc_bwd_input_64x64_bf16, 64, 64, BWD_INPUT)

#define CONV_NHWC_WGRAD(NAME, BM, BN)                                                                                \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)                                                      \
        NAME(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b, const float* __restrict__ bias, \
             float* __restrict__ out, float* __restrict__ stats, ConvGeom g, int red_chunk) {                          \
        conv_nhwc_wgrad<BM, BN>(a, b, out, g, red_chunk);                                                            \
    }

CONV_NHWC_WGRAD(conv2d_nhwc_bwd_weight_128x128_bf16, 128, 128)
CONV_NHWC_WGRAD(conv2d_nhwc_bwd_weight_64x128_bf16, 64, 128)
CONV_NHWC_WGRAD(conv2d_nhwc_bwd_weight_128x64_bf16, 128, 64)
CONV_NHWC_WGRAD(conv2d_nhwc_bwd_weight_64x64_bf16, 64, 64)
