// coseg-arch: compute_90a
// (build.rs compiles this module for compute_90a, NVRTC too: wgmma exists only on sm_90a, so the
// module loads on compute capability 9.0 alone; the device runs the variant only there,
// CudaDevice::tc_variant.)
//
// The three passes of a 2-D convolution in BF16 on Hopper's warpgroup tensor-core instruction,
// wgmma (`COSEG_CONV_TC=wgmma`): conv2d_nhwc.cu's GEMMs and copies, with mma.sync and ldmatrix
// replaced by wgmma reading both operands straight from shared memory.
//
// Why: HOPPER.md's lead is that a matrix kernel showing only HMMA in its SASS is on the slower
// path, and on the H200 the mma.sync kernels reached 56 TFLOP/s at best against cuDNN's 220 on
// the 512-channel 16x16 layer (kernels/NOTES.md). With mma.sync every warp loads its own fragments
// (ldmatrix) and issues 16 x 8 x 16 products at a time; a wgmma of m64n128k16 is issued once per
// warpgroup (4 warps) for 64 x 128 x 16, reads A and B from shared memory itself, and runs
// asynchronously while the warps go on to the next copies. Per 64-deep tile a warp here issues 4
// wgmma and about 8 cp.async; conv2d_nhwc.cu's issues 64 HMMA and 24 LDSM per 64.
//
// Layout (the PTX ISA's "matrix descriptor" and "128-byte swizzling" for K-major operands):
// - Block tile 128 x 128 (M = output channels for the forward, input channels for the input
//   gradient; N = pixels), 64 reduction elements per stage, 3 stages; 256 threads = 2 warpgroups,
//   warpgroup w owns rows 64 w .. 64 w + 63 and all 128 columns (64 f32 accumulators a thread).
// - Both tiles are [row][64 bf16] = 128-byte rows, K-major, in the 128-byte swizzle: the 16-byte
//   chunk c of row r lives at r * 128 + ((c ^ (r % 8)) * 16). The hardware applies that XOR to
//   bits 4-6 of the address from bits 7-9, so each tile starts on 1024 bytes (the dynamic shared
//   memory is rounded up to it: 1 KB of slack). 8-row groups are 1024 bytes apart (the
//   descriptor's stride byte offset); the k-steps of 16 (32 bytes) advance the start address.
// - The copies are conv2d_nhwc.cu's (nhwc_copy.cuh), 8 chunks a row: thread t copies chunk t % 8
//   of rows t / 8 + 32 p, so its 4 A and 4 B rows share r % 8 and one swizzled offset.
// - Per stage: wait for the copies, fence.proxy.async (cp.async writes through the generic
//   proxy; wgmma reads through the async proxy), barrier, issue the copies two stages ahead, then
//   wgmma.fence, 4 wgmma per warpgroup, commit and wait for them (the stage is overwritten two
//   iterations later, after the next barrier, so it must be read by then). The copies of later
//   stages and the other block on the SM overlap that wait.
// - 3 stages x 32 KB + 1 KB = 97 KB and at most 128 registers: two blocks per SM.
// - The epilogue is conv_tc.cuh's store_tile_at (bias, NCHW f32 output, batch-norm partial
//   statistics): a warp's accumulators are mma.sync's C fragments of 16 rows, repeated over the
//   16 8-column tiles (wgmma's D layout for m64nNk16).
// The forward's and input gradient's reduction is not split (tuning offers no split of it:
// checked unsplit only); C (forward) or K (input gradient) a multiple of 8, as conv2d_nhwc.cu.
// The weight gradient (conv_wgmma_wgrad below) takes MN-major operands and is split as
// conv2d_nhwc.cu's.
//
// Checked on the CPU (scripts/kernel-emu conv_nhwc_check, wgmma emulated from the descriptors,
// reading shared memory when the warpgroup waits): bit for bit conv2d_nhwc.cu's 128 x 128
// kernels (the weight gradient in the same split), whose k-steps of 16 it makes in the same
// order. Not yet run on a GPU.
#include "conv_tc.cuh"
#include "cp_async.cuh"
#include "nhwc_copy.cuh"

#define WG_KT 64        // reduction elements per stage: one 128-byte row
#define WG_STAGES 3
#define WG_TILE_BYTES (128 * 128)  // one 128-row operand tile of a stage

// The shared-memory matrix descriptor of a K-major bf16 operand in the 128-byte swizzle whose
// first row (of a 1024-byte aligned 8-row group, plus the k-step's 32 bytes) is at `addr`:
// start address >> 4 (bits 0-13), leading byte offset 16 >> 4 (bits 16-29; unused by a swizzled
// K-major operand), stride byte offset 1024 >> 4 between 8-row groups (bits 32-45), base offset
// 0 (bits 49-51: the group is aligned), swizzle mode 1 = 128 bytes (bits 62-63).
// An MN-major operand (the weight gradient's) gives `lbo`, the bytes between its 64-wide blocks
// of M or N; its 8-row groups of k are 1024 bytes apart too.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr, unsigned lbo = 16) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins the accumulators at this point of the program (CUTLASS's warpgroup_fence_operand): an
// empty asm that reads and writes each, so the compiler moves no access to them across the
// wgmma that owns them until the wait (the hardware writes them asynchronously).
__device__ __forceinline__ void wgmma_fence_acc(float (&d)[1][16][4]) {
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int v = 0; v < 4; ++v) asm volatile("" : "+f"(d[0][j][v])::"memory");
}

// d (64 x 128 of the warpgroup, this thread's 64 f32) += A (64 x 16) * B (16 x 128), both bf16
// in shared memory, K-major (MN_MAJOR false: the forward's and input gradient's [row][k] tiles)
// or MN-major (true: the weight gradient's [pixel][channel] tiles, imm-trans-a and -b set);
// d[j][v] is D's (16 warp + lane / 4 + 8 (v / 2), 8 j + 2 (lane % 4) + v % 2), warp and lane
// within the warpgroup. (The operands are written out: scripts/kernel-emu parses them.)
template <bool MN_MAJOR>
__device__ __forceinline__ void wgmma_m64n128k16_bf16(float (&d)[1][16][4], unsigned long long a, unsigned long long b) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
        " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "
        "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0][0][0]), "+f"(d[0][0][1]), "+f"(d[0][0][2]), "+f"(d[0][0][3]),
          "+f"(d[0][1][0]), "+f"(d[0][1][1]), "+f"(d[0][1][2]), "+f"(d[0][1][3]),
          "+f"(d[0][2][0]), "+f"(d[0][2][1]), "+f"(d[0][2][2]), "+f"(d[0][2][3]),
          "+f"(d[0][3][0]), "+f"(d[0][3][1]), "+f"(d[0][3][2]), "+f"(d[0][3][3]),
          "+f"(d[0][4][0]), "+f"(d[0][4][1]), "+f"(d[0][4][2]), "+f"(d[0][4][3]),
          "+f"(d[0][5][0]), "+f"(d[0][5][1]), "+f"(d[0][5][2]), "+f"(d[0][5][3]),
          "+f"(d[0][6][0]), "+f"(d[0][6][1]), "+f"(d[0][6][2]), "+f"(d[0][6][3]),
          "+f"(d[0][7][0]), "+f"(d[0][7][1]), "+f"(d[0][7][2]), "+f"(d[0][7][3]),
          "+f"(d[0][8][0]), "+f"(d[0][8][1]), "+f"(d[0][8][2]), "+f"(d[0][8][3]),
          "+f"(d[0][9][0]), "+f"(d[0][9][1]), "+f"(d[0][9][2]), "+f"(d[0][9][3]),
          "+f"(d[0][10][0]), "+f"(d[0][10][1]), "+f"(d[0][10][2]), "+f"(d[0][10][3]),
          "+f"(d[0][11][0]), "+f"(d[0][11][1]), "+f"(d[0][11][2]), "+f"(d[0][11][3]),
          "+f"(d[0][12][0]), "+f"(d[0][12][1]), "+f"(d[0][12][2]), "+f"(d[0][12][3]),
          "+f"(d[0][13][0]), "+f"(d[0][13][1]), "+f"(d[0][13][2]), "+f"(d[0][13][3]),
          "+f"(d[0][14][0]), "+f"(d[0][14][1]), "+f"(d[0][14][2]), "+f"(d[0][14][3]),
          "+f"(d[0][15][0]), "+f"(d[0][15][1]), "+f"(d[0][15][2]), "+f"(d[0][15][3])
        : "l"(a), "l"(b), "r"(1), "n"(MN_MAJOR ? 1 : 0), "n"(MN_MAJOR ? 1 : 0)
        : "memory");
}

// The forward (FWD: a = weights (K, R, S, C), b = x as (N, H, W, C)) or input gradient
// (BWD_INPUT: a = weights (C, R, S, K), b = dy as (N, OH, OW, K)), both bf16; out, bias and stats
// as conv2d_nhwc.cu's; red_chunk the whole reduction (unsplit).
template <int PASS>
__device__ __forceinline__ void conv_wgmma(const unsigned short* __restrict__ a_src, const unsigned short* __restrict__ b_src,
                                           const float* __restrict__ bias, float* __restrict__ out, float* __restrict__ stats,
                                           const ConvGeom& g, int red_chunk) {
    constexpr int BM = 128, BN = 128, KT = WG_KT, STAGES = WG_STAGES, STAGE_BYTES = 2 * WG_TILE_BYTES;
    using Copy = NhwcTileCopy<BM, BN, PASS, KT>;
    static_assert(Copy::ROWS_APART == 32 && Copy::ROWS_APART % 8 == 0, "a thread's rows share r % 8");
    extern __shared__ __align__(16) unsigned char smem[];  // rounded up to 1024 below
    if (dynamic_smem_bytes() < (unsigned)(STAGES * STAGE_BYTES + 1024)) asm volatile("trap;");

    const BlockTile<BM, BN, PASS> bt(g, red_chunk);
    Copy copy(a_src, b_src, bt, g);
    const unsigned smem0 = (smem_u32(smem) + 1023u) & ~1023u;  // tiles on 1024 bytes (the swizzle's period)
    const unsigned dst = copy.row0 * 128 + ((copy.chunk ^ (copy.row0 & 7)) << 4);
    auto issue = [&](int stage, int k0) {
        const unsigned a_dst = smem0 + stage * STAGE_BYTES + dst;
        copy.template issue<Copy::ROWS_APART * 128, Copy::ROWS_APART * 128>(a_dst, a_dst + WG_TILE_BYTES, k0, g);
    };

    float acc[1][16][4];
    zero_tiles(acc);
    const int wg = bt.t >> 7;  // this thread's warpgroup: A rows 64 wg .. 64 wg + 63
    cp_async_pipeline<STAGES, KT, true>(bt.red_begin, bt.red_end, issue, [&](int st) {
        const unsigned a = smem0 + st * STAGE_BYTES + wg * 64 * 128, b = smem0 + st * STAGE_BYTES + WG_TILE_BYTES;
        wgmma_fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KT / 16; ++ks) wgmma_m64n128k16_bf16<false>(acc, wgmma_desc(a + 32 * ks), wgmma_desc(b + 32 * ks));
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_acc(acc);
    });

    store_tile_at<BM, BN, PASS, 1, 16>(acc, bt, 64 * wg + 16 * ((bt.t >> 5) & 3), 0, bias, out, g, stats);
}

// The weight gradient: dw (K, R*S*C) += dy^T x over a split of the output pixels (gridDim.z, as
// conv2d_nhwc.cu's conv_nhwc_wgrad and with its copies, nhwc_copy.cuh NhwcWgradCopy): a = dy as
// (N, OH, OW, K), b = x as (N, H, W, C), bf16, K and C multiples of 8. Both operands are
// MN-major here: a stage's 64 pixels are its k, and each pixel's channels are contiguous. Per
// stage, A is two 64-channel blocks of dy and B two 64-column blocks of x's taps, each block 64
// pixel rows of 128 bytes in the 128-byte swizzle (row q's chunk c at q * 128 + (c ^ q % 8) * 16),
// 8 KB apart (the descriptor's leading byte offset; 8-pixel groups 1024 bytes apart). A k-step of
// 16 pixels is 2048 bytes on. Warpgroup w takes A's block w.
__device__ __forceinline__ void conv_wgmma_wgrad(const unsigned short* __restrict__ dy, const unsigned short* __restrict__ x,
                                                 float* __restrict__ out, const ConvGeom& g, int red_chunk) {
    constexpr int BM = 128, BN = 128, KT = WG_KT, STAGES = WG_STAGES, STAGE_BYTES = 2 * WG_TILE_BYTES, BLOCK = 64 * 128;
    using Copy = NhwcWgradCopy<BM, BN, KT>;
    static_assert(Copy::A_STEP % 8 == 0 && Copy::B_STEP % 8 == 0 && Copy::A_CH == 16 && Copy::B_CH == 16, "rows share q % 8");
    extern __shared__ __align__(16) unsigned char smem[];  // rounded up to 1024 below
    if (dynamic_smem_bytes() < (unsigned)(STAGES * STAGE_BYTES + 1024)) asm volatile("trap;");

    const BlockTile<BM, BN, BWD_WEIGHT> bt(g, red_chunk);
    Copy copy(dy, x, bt, g);
    const unsigned smem0 = (smem_u32(smem) + 1023u) & ~1023u;
    // chunk ch (8 channels) of pixel row q: block ch / 8, chunk ch % 8 swizzled by q % 8
    auto at = [](int ch, int q) { return (unsigned)((ch >> 3) * BLOCK + q * 128 + (((ch & 7) ^ (q & 7)) << 4)); };
    const unsigned a_dst = at(copy.a_ch, copy.a_row), b_dst = WG_TILE_BYTES + at(copy.b_ch, copy.b_row);
    auto issue = [&](int stage, int k0) {
        const unsigned base = smem0 + stage * STAGE_BYTES;
        copy.template issue<Copy::A_STEP * 128, Copy::B_STEP * 128>(base + a_dst, base + b_dst, k0, g);
    };

    float acc[1][16][4];
    zero_tiles(acc);
    const int wg = bt.t >> 7;  // this thread's warpgroup: dy's channels m0 + 64 wg .. + 63
    cp_async_pipeline<STAGES, KT, true>(bt.red_begin, bt.red_end, issue, [&](int st) {
        const unsigned a = smem0 + st * STAGE_BYTES + wg * BLOCK, b = smem0 + st * STAGE_BYTES + WG_TILE_BYTES;
        wgmma_fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KT / 16; ++ks)
            wgmma_m64n128k16_bf16<true>(acc, wgmma_desc(a + 2048 * ks, BLOCK), wgmma_desc(b + 2048 * ks, BLOCK));
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_acc(acc);
    });

    store_tile_at<BM, BN, BWD_WEIGHT, 1, 16>(acc, bt, 64 * wg + 16 * ((bt.t >> 5) & 3), 0, nullptr, out, g);
}

// conv2d_nhwc.cu's arguments (the weight gradient's bias and stats unused). Dynamic shared memory 3 x 32 KB + 1 KB (src/ops/conv/cuda.rs
// `wgmma_shared_bytes`; the kernel traps when given less).
#define CONV_WGMMA(NAME, PASS)                                                                                       \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)                                                      \
        NAME(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b, const float* __restrict__ bias, \
             float* __restrict__ out, float* __restrict__ stats, ConvGeom g, int red_chunk) {                          \
        conv_wgmma<PASS>(a, b, bias, out, stats, g, red_chunk);                                                      \
    }

CONV_WGMMA(conv2d_wgmma_fwd_128x128_bf16, FWD)
CONV_WGMMA(conv2d_wgmma_bwd_input_128x128_bf16, BWD_INPUT)
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
    conv2d_wgmma_bwd_weight_128x128_bf16(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                                         const float* __restrict__ bias, float* __restrict__ out, float* __restrict__ stats,
                                         ConvGeom g, int red_chunk) {
    conv_wgmma_wgrad(a, b, out, g, red_chunk);
}
