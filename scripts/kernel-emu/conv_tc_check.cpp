// kernels/conv2d_tc.cu (tensor-core implicit-GEMM convolution: forward, input gradient, weight
// gradient; TF32 m16n8k8 and BF16 m16n8k16 mma.sync) under emu_tc.h, launched as
// src/ops/conv/cuda.rs launch_plan launches them: 256 threads, grid (ceil(N/BN), ceil(M/BM),
// splits), arguments (a, b, bias, out, ConvGeom by value, red_chunk); the input gradient takes the
// weights transposed to (C, K, R, S); the weight gradient's reduction split as tc_weight_grad_split
// does for 132 SMs (split z writing its slice of a (splits, K, C*R*S) buffer, summed in order as
// reduce.cu's sum_splits_f32 does) and, separately, unsplit.
// Every tile variant (128x128, 64x128, 128x64) of every pass at both precisions, on small odd
// shapes, against f64 loops on the same TF32/BF16-rounded operands: the only difference left is
// the kernel's f32 accumulation, so the error is measured relative to each sum's sum of |terms|.
// Outputs (and every split's slice) start as NaN, so an element no thread writes fails.
// Built from a copy of the kernel file whose inline PTX emu_ptx.py rewrote (run.sh does it).
//
// Built with -DCONV_TCP_KERNELS=<the emu_ptx.py output of kernels/conv2d_tcp.cu> instead, it is
// conv_tcp_check: the pipelined kernels conv2d_pipe_* (cp.async, dynamic shared memory), launched
// as cuda.rs launches them: the weights reordered to (K, R, S, C) for the forward and (C, R, S, K)
// for the input gradient, the weight-gradient split on a granule of 32 at both precisions, and
// pipe_stages(BM, BN) x STAGE_WORDS x 4 bytes of dynamic shared memory (NaN before each block),
// on the same shapes plus four that take the kernel's other paths.
#include "emu_tc.h"
#ifdef CONV_TCP_KERNELS
#define PIPE 1
#include CONV_TCP_KERNELS
#else
#define PIPE 0
#ifndef CONV_TC_KERNELS  // run.sh / mutants.sh: the emu_ptx.py output
#define CONV_TC_KERNELS "/tmp/kernel-emu/conv2d_tc_emu.cu"
#endif
#include CONV_TC_KERNELS
#endif
#include "check.h"
#include "conv_check.h"
#include <chrono>
#include <cstdlib>

// [pass][precision: tf32, bf16][tile: 128x128, 64x128, 128x64], as cuda.rs TC_KERNELS.
#if PIPE
// The pipelined kernels take a batch-norm statistics pointer after `out` (forward only).
using Kern = void (*)(const float*, const float*, const float*, float*, float*, ConvGeom, int);
static const Kern KERNELS[3][2][3] = {
    {{conv2d_pipe_fwd_128x128_tf32, conv2d_pipe_fwd_64x128_tf32, conv2d_pipe_fwd_128x64_tf32},
     {conv2d_pipe_fwd_128x128_bf16, conv2d_pipe_fwd_64x128_bf16, conv2d_pipe_fwd_128x64_bf16}},
    {{conv2d_pipe_bwd_input_128x128_tf32, conv2d_pipe_bwd_input_64x128_tf32, conv2d_pipe_bwd_input_128x64_tf32},
     {conv2d_pipe_bwd_input_128x128_bf16, conv2d_pipe_bwd_input_64x128_bf16, conv2d_pipe_bwd_input_128x64_bf16}},
    {{conv2d_pipe_bwd_weight_128x128_tf32, conv2d_pipe_bwd_weight_64x128_tf32, conv2d_pipe_bwd_weight_128x64_tf32},
     {conv2d_pipe_bwd_weight_128x128_bf16, conv2d_pipe_bwd_weight_64x128_bf16, conv2d_pipe_bwd_weight_128x64_bf16}}};
// Dynamic shared memory of a pipe kernel (cuda.rs pipe_smem_bytes), from the kernel's comment:
// stages x (BM rows of SA words + (weight gradient: BN rows of SA; else 32 rows of SB)) x 4 bytes.
static size_t pipe_smem_bytes(int pass, int prec, int bm, int bn) {
    const size_t stages = bm * bn > 8192 ? 4 : 3, sa = prec == 0 ? 36 : 40, sb = bn + (prec == 0 ? 8 : 4);
    return stages * (bm * sa + (pass == 2 ? bn * sa : 32 * sb)) * 4;
}
#else
using Kern = void (*)(const float*, const float*, const float*, float*, ConvGeom, int);
static const Kern KERNELS[3][2][3] = {
    {{conv2d_fwd_128x128_tf32, conv2d_fwd_64x128_tf32, conv2d_fwd_128x64_tf32},
     {conv2d_fwd_128x128_bf16, conv2d_fwd_64x128_bf16, conv2d_fwd_128x64_bf16}},
    {{conv2d_bwd_input_128x128_tf32, conv2d_bwd_input_64x128_tf32, conv2d_bwd_input_128x64_tf32},
     {conv2d_bwd_input_128x128_bf16, conv2d_bwd_input_64x128_bf16, conv2d_bwd_input_128x64_bf16}},
    {{conv2d_bwd_weight_128x128_tf32, conv2d_bwd_weight_64x128_tf32, conv2d_bwd_weight_128x64_tf32},
     {conv2d_bwd_weight_128x128_bf16, conv2d_bwd_weight_64x128_bf16, conv2d_bwd_weight_128x64_bf16}}};
#endif
static const int TILES[3][2] = {{128, 128}, {64, 128}, {128, 64}};
static const char* PASS[3] = {"fwd", "bwd_input", "bwd_weight"};
static const char* PREC[2] = {"tf32", "bf16"};

// launch.rs split_reduction: (splits, chunk), for the unsplit plan below.
static std::pair<size_t, size_t> split_reduction(size_t parallel, size_t wanted, size_t red, size_t least, size_t granule) {
    size_t splits = std::clamp(cdiv(wanted, std::max<size_t>(parallel, 1)), (size_t)1, std::clamp(red / least, (size_t)1, (size_t)65535));
    size_t chunk = std::max(cdiv(cdiv(red, splits), granule) * granule, granule);
    return {std::max(cdiv(red, chunk), (size_t)1), chunk};
}
// cuda.rs tc_weight_grad_split: the split with the least waves x (tiles per split + 4).
static std::pair<size_t, size_t> tc_weight_grad_split(size_t blocks, size_t red, size_t tile_k, size_t sms, size_t per_sm) {
    const size_t slots = std::max<size_t>(sms * per_sm, 1), most = std::clamp(red / (4 * tile_k), (size_t)1, (size_t)1024);
    size_t best_cost = SIZE_MAX, best_splits = 1, best_chunk = std::max<size_t>(cdiv(red, tile_k), 1) * tile_k;
    for (size_t wanted = 1; wanted <= most; ++wanted) {
        const size_t chunk = std::max<size_t>(cdiv(cdiv(red, wanted), tile_k), 1) * tile_k, splits = std::max<size_t>(cdiv(red, chunk), 1);
        const size_t cost = cdiv(blocks * splits, slots) * (chunk / tile_k + 4);
        if (cost < best_cost) best_cost = cost, best_splits = splits, best_chunk = chunk;
    }
    return {best_splits, best_chunk};
}

// The rounding of the kernel's shared-memory tiles, as a float.
static float rnd(float v, int prec) {
    return prec == 0 ? emu_u2f(emu_cvt_rna_tf32_f32(v)) : emu_u2f(emu_bf16_rn(v) << 16);
}
static V rounded(const V& v, int prec) { V r(v); for (auto& x : r) x = rnd(x, prec); return r; }

// The emulated conversions on values whose rounding is known.
static bool rounding_ok() {
    const float one = 1.0f;
    float tie_tf = one + std::ldexp(1.0f, -11), tie_bf = one + std::ldexp(1.0f, -8), tie_bf3 = one + 3 * std::ldexp(1.0f, -8);
    bool ok = rnd(tie_tf, 0) == one + std::ldexp(1.0f, -10)      // tie: away from zero
              && rnd(-tie_tf, 0) == -(one + std::ldexp(1.0f, -10))
              && rnd(one + std::ldexp(1.0f, -12), 0) == one         // below half: down
              && rnd(tie_bf, 1) == one                              // tie: to even (down)
              && rnd(tie_bf3, 1) == one + std::ldexp(1.0f, -6)      // tie: to even (up)
              && rnd(-tie_bf3, 1) == -(one + std::ldexp(1.0f, -6))
              && (emu_cvt_rna_tf32_f32(tie_tf) & 0x1fffu) == 0
              && emu_cvt_rn_bf16x2_f32(2.0f, -1.0f) == (0x4000u << 16 | 0xbf80u);
    if (!ok) printf("emulated TF32/BF16 rounding WRONG\n");
    return ok;
}

#if PIPE
// The forward's batch-norm partial statistics against the output it wrote: for every channel and
// slot (BN/4 consecutive output pixels, `width`), the slot's sum and its squared deviations from
// the slot's mean, computed in f64 from `out`; the error relative to the slot's sum of |values|
// (resp. its sum of squares, the scale of f32 rounding there). Infinite if a slot is not finite
// (never written).
static double worst_stats = 0;
static double stats_err(const V& stats, const V& out, int K, size_t slots, size_t width, size_t plane, int n) {
    const size_t cols = (size_t)n * plane;
    double e = 0;
    for (int c = 0; c < K; ++c)
        for (size_t j = 0; j < slots; ++j) {
            const double gs = stats[c * slots + j], gq = stats[(K + c) * slots + j];
            if (!std::isfinite(gs) || !std::isfinite(gq)) return INFINITY;
            const size_t lo = std::min(cols, j * width), hi = std::min(cols, lo + width);
            auto v = [&](size_t col) { return (double)out[((col / plane) * K + c) * plane + col % plane]; };
            double s = 0, a = 0, sq = 0, q = 0;
            for (size_t col = lo; col < hi; ++col) s += v(col), a += std::fabs(v(col)), sq += v(col) * v(col);
            const double mean = hi > lo ? s / (hi - lo) : 0;
            for (size_t col = lo; col < hi; ++col) q += (v(col) - mean) * (v(col) - mean);
            e = std::max({e, std::fabs(gs - s) / std::max(a, 1e-30), std::fabs(gq - q) / std::max(q + 1e-3 * sq, 1e-30)});
        }
    return e;
}
#endif


int main(int argc, char** argv) {
    // Odd shapes: channel counts off the tiles, tails in every GEMM dimension, 'same' padding at
    // dilations 1, 2 and 4, 1x1, stride 2, the 7x7 stride-2 stem on 3 channels.
    const Shape shapes[] = {
        {2, 13, 9, 9, 5, 3, 3, 1, 1, 1},     // 3x3 same, N = 2, K = 5
        {1, 40, 16, 16, 70, 3, 3, 1, 2, 2},  // dilation 2, K = 70 (two 64-row tiles)
        {1, 13, 16, 16, 64, 3, 3, 1, 4, 4},  // dilation 4
        {2, 40, 7, 7, 130, 1, 1, 1, 0, 1},   // 1x1, K = 130 (two 128-row tiles)
        {1, 3, 16, 16, 16, 7, 7, 2, 3, 1},   // the stem: 7x7 stride 2 pad 3, C = 3
        {2, 13, 9, 9, 40, 3, 3, 2, 1, 1},    // 3x3 stride 2 (input gradient with holes)
        {1, 64, 7, 9, 13, 3, 3, 2, 2, 2},    // stride 2 and dilation 2, H != W
#if PIPE
        // The pipe kernels' other paths: channel runs whole per tap (C, K multiples of 16 / 8),
        // OH*OW % 4 == 0 (16-byte dy copies), reductions of 9 .. 18 tiles of 32 (the stages wrap
        // around), a reduction tail inside a tile of 32 (400 = 12.5 tiles), K = 8 (runs whole on
        // the 64-wide tiles only), and C*R*S odd with OH*OW % 4 == 0.
        {2, 32, 6, 6, 48, 3, 3, 1, 1, 1},    // C = 32, K = 48: whole runs in both passes; 9 / 13.5 tiles
        {1, 16, 11, 11, 8, 5, 5, 1, 2, 1},   // 5x5, C = 16, K = 8, RED = 400 (tail at 16 of 32)
        {1, 64, 6, 9, 24, 3, 3, 1, 1, 1},    // C = 64: 18 tiles forward; OH*OW = 54 (= 2 mod 4)
        {2, 7, 10, 10, 12, 3, 3, 1, 1, 1},   // C*R*S = 63 (4-byte A copies), OH*OW = 100 (16-byte dy)
#endif
    };
    std::vector<int> only;  // shapes named on the command line only (development; run.sh's early-mode run)
    for (int i = 1; i < argc; ++i) only.push_back(std::atoi(argv[i]));
    const bool fail_fast = std::getenv("EMU_FAIL_FAST") != nullptr;  // mutants.sh: stop at the first failure
    const unsigned SMS = 132;                       // the H200's SMs, for the weight-gradient split
    bool ok = rounding_ok();
    if (!ok && fail_fast) return 1;
    double worst[3][2] = {};
    auto t_all = std::chrono::steady_clock::now();
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); ++si) {
        if (!only.empty() && std::find(only.begin(), only.end(), si) == only.end()) continue;
        const Shape& sh = shapes[si];
        auto t0 = std::chrono::steady_clock::now();
        const ConvGeom g = conv_geom(sh);
        const int oh = g.oh, ow = g.ow;
        const int RS = sh.r * sh.s;
        const size_t nx = (size_t)sh.n * sh.c * sh.h * sh.w, nw = (size_t)sh.k * sh.c * RS, ny = (size_t)sh.n * sh.k * oh * ow;
        std::mt19937 rng(1000 + si);
        V x = rand_vec(rng, nx), w = rand_vec(rng, nw), dy = rand_vec(rng, ny), bias = rand_vec(rng, sh.k);
        // The weights as cuda.rs hands them over. conv2d_tc.cu: the forward takes w (K, C, R, S), the
        // input gradient (C, K, R, S). conv2d_tcp.cu: the forward (K, R, S, C), the input gradient
        // (C, R, S, K).
        V wf(nw), wt(nw);
        for (int k = 0; k < sh.k; ++k)
            for (int c = 0; c < sh.c; ++c)
                for (int q = 0; q < RS; ++q) {
                    const float v = w[((size_t)k * sh.c + c) * RS + q];
                    if (PIPE) {
                        wf[((size_t)k * RS + q) * sh.c + c] = v;
                        wt[((size_t)c * RS + q) * sh.k + k] = v;
                    } else {
                        wf[((size_t)k * sh.c + c) * RS + q] = v;
                        wt[((size_t)c * sh.k + k) * RS + q] = v;
                    }
                }
        printf("N=%d C=%d H=%d W=%d K=%d %dx%d stride %d pad %d dil %d -> %dx%d:\n", sh.n, sh.c, sh.h, sh.w, sh.k, sh.r, sh.s,
               sh.stride, sh.pad, sh.dil, oh, ow);
        for (int prec = 0; prec < 2; ++prec) {
            // f64 references on the rounded operands, and each sum's sum of |terms|.
            V xr = rounded(x, prec), wr = rounded(w, prec), dyr = rounded(dy, prec);
            D y(ny), yf(ny), dx(nx, 0), dxf(nx, 0), dw(nw, 0), dwf(nw, 0);
            for (int n = 0; n < sh.n; ++n)
                for (int k = 0; k < sh.k; ++k)
                    for (int i = 0; i < oh; ++i)
                        for (int j = 0; j < ow; ++j) {
                            size_t yi = (((size_t)n * sh.k + k) * oh + i) * ow + j;
                            double s = bias[k], sf = std::fabs(bias[k]);
                            for (int c = 0; c < sh.c; ++c)
                                for (int r = 0; r < sh.r; ++r)
                                    for (int q = 0; q < sh.s; ++q) {
                                        int ih = i * sh.stride - sh.pad + r * sh.dil, iw = j * sh.stride - sh.pad + q * sh.dil;
                                        if (ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w) continue;
                                        size_t xi = (((size_t)n * sh.c + c) * sh.h + ih) * sh.w + iw, wi = ((size_t)k * sh.c + c) * RS + r * sh.s + q;
                                        double t = (double)xr[xi] * wr[wi];
                                        s += t, sf += std::fabs(t);
                                        double u = (double)dyr[yi] * wr[wi];
                                        dx[xi] += u, dxf[xi] += std::fabs(u);
                                        double v = (double)dyr[yi] * xr[xi];
                                        dw[wi] += v, dwf[wi] += std::fabs(v);
                                    }
                            y[yi] = s, yf[yi] = sf;
                        }
            for (int pass = 0; pass < 3; ++pass) {
                const int M = pass == 1 ? sh.c : sh.k;
                const int N = pass == 0 ? sh.n * oh * ow : pass == 1 ? sh.n * sh.h * sh.w : sh.c * RS;
                const int RED = pass == 0 ? sh.c * RS : pass == 1 ? sh.k * RS : sh.n * oh * ow;
                const float* a = pass == 0 ? wf.data() : pass == 1 ? wt.data() : dy.data();
                const float* b = pass == 1 ? dy.data() : x.data();
                const D& ref = pass == 0 ? y : pass == 1 ? dx : dw;
                const D& fl = pass == 0 ? yf : pass == 1 ? dxf : dwf;
                printf("  %-10s %s:", PASS[pass], PREC[prec]);
                for (int tile = 0; tile < 3; ++tile) {
                    const int BM = TILES[tile][0], BN = TILES[tile][1], tile_k = PIPE || prec == 1 ? 32 : 16;
                    // the weight gradient: as planned for 132 SMs, then unsplit (NaN-poisoned)
                    std::vector<std::pair<size_t, size_t>> plans;
                    if (pass == 2) {
                        auto p = tc_weight_grad_split(cdiv(M, BM) * cdiv(N, BN), RED, tile_k, SMS, tile == 0 ? 1 : 2);
                        plans.push_back(p);
                        if (p.first > 1) plans.push_back(split_reduction(1, 1, RED, 4 * tile_k, tile_k));
                    } else {
                        plans.push_back({1, (size_t)RED});
                    }
                    for (auto [splits, chunk] : plans) {
                        // Split: into the splits' slices (all NaN first), summed below.
                        V out(ref.size(), NAN), parts(splits > 1 ? splits * ref.size() : 0, NAN);
                        float* dst = splits > 1 ? parts.data() : out.data();
                        // forward: with the bias on even shapes, without on odd ones
                        const bool with_bias = pass == 0 && si % 2 == 0;
                        const dim3 grid{(unsigned)cdiv(N, BN), (unsigned)cdiv(M, BM), (unsigned)splits};
                        Kern kern = KERNELS[pass][prec][tile];
#if PIPE
                        // The forward also writes batch-norm partial statistics (conv_tc.cuh
                        // store_tile): 2 x M x (4 grid.x), NaN-poisoned so a slot no lane writes fails.
                        const size_t slots = 4 * grid.x;
                        V stats(pass == 0 ? 2 * (size_t)M * slots : 0, NAN);
                        float* st = pass == 0 ? stats.data() : nullptr;
                        emu_set_dynamic_smem(pipe_smem_bytes(pass, prec, BM, BN));  // NaN before each block
                        launch(grid, 256, [&] { kern(a, b, with_bias ? bias.data() : nullptr, dst, st, g, (int)chunk); });
                        emu_clear_dynamic_smem();
                        if (pass == 0) {
                            const double se = stats_err(stats, out, M, slots, BN / 4, (size_t)oh * ow, sh.n);
                            worst_stats = std::max(worst_stats, se);
                            ok = ok && se <= 1e-5;
                        }
#else
                        launch(grid, 256, [&] { kern(a, b, with_bias ? bias.data() : nullptr, dst, g, (int)chunk); });
#endif
                        if (splits > 1)  // sum_splits_f32: slice 0, then 1, ... in f32
                            for (size_t i = 0; i < out.size(); ++i) {
                                float acc = parts[i];
                                for (size_t z = 1; z < splits; ++z) acc += parts[z * out.size() + i];
                                out[i] = acc;
                            }
                        D r = ref;
                        if (pass == 0 && !with_bias)
                            for (size_t i = 0; i < r.size(); ++i) r[i] -= bias[(i / ((size_t)oh * ow)) % sh.k];
                        double e = err(out, r, fl);
                        worst[pass][prec] = std::max(worst[pass][prec], e);
                        printf(" %dx%d%s %.2e", BM, BN, splits > 1 ? ("/" + std::to_string(splits)).c_str() : "", e);
                        ok = ok && e <= 1e-5;
                        if (!ok && fail_fast) { printf("\nFAILED (fail fast)\n"); return 1; }
                    }
                }
                printf("\n");
                fflush(stdout);
            }
        }
        printf("  (%.1fs)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    printf("max relative error (to the sum of |terms|):");
    for (int p = 0; p < 3; ++p)
        for (int q = 0; q < 2; ++q) printf(" %s %s %.2e;", PASS[p], PREC[q], worst[p][q]);
    printf(" total %.1fs\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count());
#if PIPE
    printf("batch-norm partial statistics of the forward: max relative error %.2e\n", worst_stats);
    printf("cp.async copies landing %s\n", emu_cp_async_early() ? "early (at issue)" : "late (at the wait)");
#endif
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
