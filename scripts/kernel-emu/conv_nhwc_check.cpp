// kernels/conv2d_nhwc.cu under emu_tc.h (cp.async, dynamic shared memory, ldmatrix, mma.sync),
// launched as src/ops/conv/cuda.rs launches it for the `nhwc` variant:
//  - nchw_to_nhwc_bf16 copies the gathered operand (x; dy for the input gradient) to channels-last
//    bf16, and the weights to (K, R, S, C) (as "N = K, C, HW = R*S") and (C, R, S, K) (as
//    "N = 1, C = K, HW = C*R*S"); each copy is compared bit for bit with a host transpose and
//    round-to-nearest-even; bn_relu_nchw_to_nhwc_bf16 (batch norm and ReLU as the copy is made)
//    bit for bit against batch norm's forward with its ReLU followed by the copy;
//  - the forward and input-gradient kernels, all four tiles (64 x 64 too, a tuning candidate),
//    4 stages x (BM + BN) x 80 bytes of dynamic shared memory (NaN in both bf16 halves before each
//    block), the forward with batch-norm partial statistics (unsplit) and a bias on even-numbered
//    shapes;
//  - the weight-gradient kernels (dw in (K, R, S, C), put back in (K, C, R, S) as cuda.rs does);
//  - every pass unsplit and split in three over its reduction (split-K: each split into its
//    NaN-poisoned slice, the slices summed in order as sum_splits_f32 does, the bias in slice 0
//    only), the pipelined kernel given the same split;
// against f64 loops on the bf16-rounded operands (error relative to each sum's sum of |terms| at
// most 1e-5), and bit for bit against conv2d_tcp.cu's bf16 kernels of the same tile (the same
// roundings, fragments and mma order: the header of conv2d_nhwc.cu says why they must agree; the
// 64 x 64 tile has no pipelined twin).
// Then kernels/conv2d_wgmma.cu's forward and input gradient (128 x 128, unsplit) and weight
// gradient (unsplit and in three, MN-major operands; wgmma emulated from its descriptors,
// emu_tc.h): against f64, the forward's statistics, and bit for bit against the channels-last
// 128 x 128 kernel of the same split (each k-step of 16 one rounding in both emulations).
// Shapes have C (forward), K (input gradient) or both (weight gradient) multiples of 8, the
// kernels' condition; a pass whose channels are not runs nowhere here (cuda.rs sends it to
// conv2d_tcp.cu).
// Built from one emu_ptx.py rewrite of both kernel files (run.sh writes it), so their shared
// headers are inlined once.
#include "emu_tc.h"
#ifndef CONV_KERNELS
#define CONV_KERNELS "/tmp/kernel-emu/conv2d_nhwc_emu.cu"
#endif
#include CONV_KERNELS
#include "check.h"
#include "conv_check.h"
#include <chrono>
#include <cstdint>
#include <cstdlib>

using Nhwc = void (*)(const unsigned short*, const unsigned short*, const float*, float*, float*, ConvGeom, int);
using Pipe = void (*)(const float*, const float*, const float*, float*, float*, ConvGeom, int);
static const Nhwc NHWC[3][4] = {
    {conv2d_nhwc_fwd_128x128_bf16, conv2d_nhwc_fwd_64x128_bf16, conv2d_nhwc_fwd_128x64_bf16, conv2d_nhwc_fwd_64x64_bf16},
    {conv2d_nhwc_bwd_input_128x128_bf16, conv2d_nhwc_bwd_input_64x128_bf16, conv2d_nhwc_bwd_input_128x64_bf16,
     conv2d_nhwc_bwd_input_64x64_bf16},
    {conv2d_nhwc_bwd_weight_128x128_bf16, conv2d_nhwc_bwd_weight_64x128_bf16, conv2d_nhwc_bwd_weight_128x64_bf16,
     conv2d_nhwc_bwd_weight_64x64_bf16}};
static const Pipe PIPE_BF16[3][3] = {
    {conv2d_pipe_fwd_128x128_bf16, conv2d_pipe_fwd_64x128_bf16, conv2d_pipe_fwd_128x64_bf16},
    {conv2d_pipe_bwd_input_128x128_bf16, conv2d_pipe_bwd_input_64x128_bf16, conv2d_pipe_bwd_input_128x64_bf16},
    {conv2d_pipe_bwd_weight_128x128_bf16, conv2d_pipe_bwd_weight_64x128_bf16, conv2d_pipe_bwd_weight_128x64_bf16}};
static const Nhwc WGMMA[3] = {conv2d_wgmma_fwd_128x128_bf16, conv2d_wgmma_bwd_input_128x128_bf16, conv2d_wgmma_bwd_weight_128x128_bf16};
static const int TILES[4][2] = {{128, 128}, {64, 128}, {128, 64}, {64, 64}};  // the first three have pipelined twins
static const char* PASS[3] = {"forward", "input grad", "wgrad"};

static float bf16r(float v) { return emu_u2f(emu_bf16_rn(v) << 16); }

// 16-byte aligned words of exactly n (cp.async reads 16 bytes at a time; ASan sees an overrun).
struct Words {
    std::unique_ptr<unsigned[]> p;
    size_t n;
    explicit Words(size_t n) : p(new unsigned[n]), n(n) {
        if ((uintptr_t)p.get() % 16) { printf("unaligned host buffer\n"); std::abort(); }
        std::fill_n(p.get(), n, 0x7fc07fc0u);  // NaN poison: a word no thread writes fails
    }
    const unsigned short* half() const { return reinterpret_cast<const unsigned short*>(p.get()); }
};

// nchw_to_nhwc_bf16 as cuda.rs launches it, checked bit for bit against the host's transpose.
static bool to_nhwc(const V& x, int n, int c, int hw, Words& y, const char* what) {
    launch({(unsigned)cdiv(hw, 32), (unsigned)cdiv(c, 64), (unsigned)n}, 256, [&] { nchw_to_nhwc_bf16(x.data(), y.p.get(), c, hw); });
    for (int i = 0; i < n; ++i)
        for (int p = 0; p < hw; ++p)
            for (int j = 0; j < c / 2; ++j) {
                const size_t at = ((size_t)i * hw + p) * (c / 2) + j;
                const unsigned want = emu_cvt_rn_bf16x2_f32(x[((size_t)i * c + 2 * j + 1) * hw + p], x[((size_t)i * c + 2 * j) * hw + p]);
                if (y.p[at] != want) {
                    printf("  nchw_to_nhwc_bf16 (%s, n %d c %d hw %d): word (%d, %d, %d) = %08x, want %08x\n", what, n, c, hw, i, p, j, y.p[at], want);
                    return false;
                }
            }
    return true;
}


// bn_relu_nchw_to_nhwc_bf16 as cuda.rs launches it (a convolution's batch-norm + ReLU prologue,
// Tensor::bn_relu_conv2d): bit for bit nchw_to_nhwc_bf16 of batch norm's forward with its ReLU
// (bn_value.cuh's operations, which batchnorm.cu's bn_fwd_f32 runs), that forward within 1e-6 of
// f64, about half the values clipped; padding channels and pixels stay zero (not batch norm of 0).
static bool bn_relu_to_nhwc(const V& x, int n, int c, int hw, std::mt19937& rng) {
    const V mean = rand_vec(rng, c, -0.3f, 0.3f), var = rand_vec(rng, c, 0.5f, 2.0f), gamma = rand_vec(rng, c, 0.5f, 1.5f),
            beta = rand_vec(rng, c, -0.3f, 0.3f);
    const float eps = 1e-5f;
    V a(x.size());
    size_t clipped = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const int ch = (int)(i / hw % c);
        a[i] = relu_value(bn_value(x[i], mean[ch], var[ch], gamma[ch], beta[ch], eps));
        const double want = std::max(0.0, ((double)x[i] - mean[ch]) / std::sqrt((double)var[ch] + eps) * gamma[ch] + beta[ch]);
        clipped += a[i] == 0.0f;
        if (std::fabs(a[i] - want) > 1e-6 * std::max(1.0, std::fabs(want))) {
            printf("  batch norm + ReLU (n %d c %d hw %d): element %zu = %g, f64 %g\n", n, c, hw, i, a[i], want);
            return false;
        }
    }
    Words composed(x.size() / 2), fused(x.size() / 2);
    if (!to_nhwc(a, n, c, hw, composed, "relu(batch norm(x))")) return false;
    launch({(unsigned)cdiv(hw, 32), (unsigned)cdiv(c, 64), (unsigned)n}, 256, [&] {
        bn_relu_nchw_to_nhwc_bf16(x.data(), mean.data(), var.data(), gamma.data(), beta.data(), fused.p.get(), c, hw, eps);
    });
    const bool same = std::equal(fused.p.get(), fused.p.get() + fused.n, composed.p.get());
    const bool some = clipped > x.size() / 5 && clipped < x.size() * 4 / 5;
    printf("  bn_relu_nchw_to_nhwc_bf16 (n %d c %d hw %d, %zu of %zu clipped): %s\n", n, c, hw, clipped, x.size(),
           same && some ? "the bits of batch norm + ReLU, then the copy" : "DIFFERS (or too few / many clipped)");
    return same && some;
}

int main(int argc, char** argv) {
    const Shape shapes[] = {
        {2, 32, 6, 6, 48, 3, 3, 1, 1, 1},     // C = 32: a tile row is one tap; 9 tiles forward, 13.5 input grad
        {1, 16, 11, 11, 8, 5, 5, 1, 2, 1},    // 5x5, K = 8, RED = 400 (a tail at 16 of 32)
        {1, 40, 16, 16, 72, 3, 3, 1, 2, 2},   // C = 40: a tile's chunks in two taps; 256 pixels (2 tiles of 128)
        {2, 24, 9, 9, 40, 3, 3, 2, 1, 1},     // stride 2: the input gradient's holes
        {1, 64, 7, 9, 16, 3, 3, 2, 2, 2},     // stride 2, dilation 2, H != W
        {2, 40, 7, 7, 136, 1, 1, 1, 0, 1},    // 1x1, K = 136 (two 128-row tiles forward)
        {1, 24, 8, 8, 200, 1, 1, 2, 0, 1},    // 1x1 stride 2
        {1, 136, 8, 8, 72, 3, 3, 1, 4, 4},    // dilation 4 on 8x8 (most taps padding), C = 136
    };
    std::vector<int> only;
    for (int i = 1; i < argc; ++i) only.push_back(std::atoi(argv[i]));
    const bool fail_fast = std::getenv("EMU_FAIL_FAST") != nullptr;
    bool ok = true;
    double worst[3] = {}, worst_stats = 0;
    int same = 0, ran = 0, wgmma_same = 0, wgmma_ran = 0;
    auto t_all = std::chrono::steady_clock::now();
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); ++si) {
        if (!only.empty() && std::find(only.begin(), only.end(), si) == only.end()) continue;
        const Shape& sh = shapes[si];
        auto t0 = std::chrono::steady_clock::now();
        const ConvGeom g = conv_geom(sh);
        const int oh = g.oh, ow = g.ow;
        const int RS = sh.r * sh.s, HW = sh.h * sh.w, OHW = oh * ow;
        const size_t nx = (size_t)sh.n * sh.c * HW, nw = (size_t)sh.k * sh.c * RS, ny = (size_t)sh.n * sh.k * OHW;
        std::mt19937 rng(2000 + si);
        V x = rand_vec(rng, nx), w = rand_vec(rng, nw), dy = rand_vec(rng, ny), bias = rand_vec(rng, sh.k);
        printf("N=%d C=%d H=%d W=%d K=%d %dx%d stride %d pad %d dil %d -> %dx%d:\n", sh.n, sh.c, sh.h, sh.w, sh.k, sh.r, sh.s,
               sh.stride, sh.pad, sh.dil, oh, ow);
        // The copies cuda.rs makes: x and dy channels-last, the weights in both orders, all bf16.
        Words xh(nx / 2), dyh(ny / 2), wf(nw / 2), wt(nw / 2);
        ok = ok && to_nhwc(x, sh.n, sh.c, HW, xh, "x") && to_nhwc(dy, sh.n, sh.k, OHW, dyh, "dy") &&
             to_nhwc(w, sh.k, sh.c, RS, wf, "weights (K, R, S, C)") && to_nhwc(w, 1, sh.k, sh.c * RS, wt, "weights (C, R, S, K)") &&
             bn_relu_to_nhwc(x, sh.n, sh.c, HW, rng);
        // conv2d_tcp.cu's f32 operands: weights (K, R, S, C) and (C, R, S, K).
        V wf32(nw), wt32(nw);
        for (int k = 0; k < sh.k; ++k)
            for (int c = 0; c < sh.c; ++c)
                for (int q = 0; q < RS; ++q) {
                    wf32[((size_t)k * RS + q) * sh.c + c] = w[((size_t)k * sh.c + c) * RS + q];
                    wt32[((size_t)c * RS + q) * sh.k + k] = w[((size_t)k * sh.c + c) * RS + q];
                }
        // f64 references on the bf16-rounded operands, and each sum's sum of |terms|.
        D y(ny), yf(ny), dx(nx, 0), dxf(nx, 0), dw(nw, 0), dwf(nw, 0);
        for (int n = 0; n < sh.n; ++n)
            for (int k = 0; k < sh.k; ++k)
                for (int i = 0; i < oh; ++i)
                    for (int j = 0; j < ow; ++j) {
                        const size_t yi = (((size_t)n * sh.k + k) * oh + i) * ow + j;
                        double s = bias[k], sf = std::fabs(bias[k]);
                        for (int c = 0; c < sh.c; ++c)
                            for (int r = 0; r < sh.r; ++r)
                                for (int q = 0; q < sh.s; ++q) {
                                    const int ih = i * sh.stride - sh.pad + r * sh.dil, iw = j * sh.stride - sh.pad + q * sh.dil;
                                    if (ih < 0 || ih >= sh.h || iw < 0 || iw >= sh.w) continue;
                                    const size_t xi = (((size_t)n * sh.c + c) * sh.h + ih) * sh.w + iw, wi = ((size_t)k * sh.c + c) * RS + r * sh.s + q;
                                    const double t = (double)bf16r(x[xi]) * bf16r(w[wi]), u = (double)bf16r(dy[yi]) * bf16r(w[wi]);
                                    const double v = (double)bf16r(dy[yi]) * bf16r(x[xi]);
                                    s += t, sf += std::fabs(t);
                                    dx[xi] += u, dxf[xi] += std::fabs(u);
                                    dw[wi] += v, dwf[wi] += std::fabs(v);
                                }
                        y[yi] = s, yf[yi] = sf;
                    }
        for (int pass = 0; pass < 3; ++pass) {
            if (pass == 0 ? sh.c % 8 : pass == 1 ? sh.k % 8 : (sh.c % 8 || sh.k % 8)) continue;
            const int M = pass == 1 ? sh.c : sh.k;
            const int N = pass == 0 ? sh.n * OHW : pass == 1 ? sh.n * HW : sh.c * RS;
            const int RED = pass == 0 ? sh.c * RS : pass == 1 ? sh.k * RS : sh.n * OHW;
            const D& ref = pass == 0 ? y : pass == 1 ? dx : dw;
            const D& fl = pass == 0 ? yf : pass == 1 ? dxf : dwf;
            const bool with_bias = pass == 0 && si % 2 == 0;
            // The batch-norm partial statistics of a forward (BN-wide block tiles, `slots` per row)
            // against the output it wrote: the largest relative error.
            auto stats_err = [&](const V& out, const V& stats, int BN, size_t slots) {
                double se = 0;
                for (int c = 0; c < M && std::isfinite(se); ++c)
                    for (size_t j = 0; j < slots; ++j) {
                        const double gs = stats[c * slots + j], gq = stats[(M + c) * slots + j];
                        const size_t cols = (size_t)N, lo = std::min(cols, j * (BN / 4)), hi = std::min(cols, lo + BN / 4);
                        double s = 0, a = 0, sq = 0, q = 0;
                        auto v = [&](size_t col) { return (double)out[((col / OHW) * M + c) * OHW + col % OHW]; };
                        for (size_t col = lo; col < hi; ++col) s += v(col), a += std::fabs(v(col)), sq += v(col) * v(col);
                        const double mean = hi > lo ? s / (hi - lo) : 0;
                        for (size_t col = lo; col < hi; ++col) q += (v(col) - mean) * (v(col) - mean);
                        if (!std::isfinite(gs) || !std::isfinite(gq)) { se = INFINITY; break; }
                        se = std::max({se, std::fabs(gs - s) / std::max(a, 1e-30), std::fabs(gq - q) / std::max(q + 1e-3 * sq, 1e-30)});
                    }
                return se;
            };
            // A launch's output against f64 (less the bias where none was given) and, for an
            // unsplit forward, its statistics: the errors kept as the worst and held to 1e-5.
            auto check_out = [&](const V& out) {
                D r = ref;
                if (pass == 0 && !with_bias)
                    for (size_t i = 0; i < r.size(); ++i) r[i] -= bias[(i / (size_t)OHW) % sh.k];
                const double e = err(out, r, fl);
                worst[pass] = std::max(worst[pass], e);
                ok = ok && e <= 1e-5;
                return e;
            };
            auto check_stats = [&](const V& out, const V& stats, int BN, size_t slots) {
                const double se = stats_err(out, stats, BN, slots);
                worst_stats = std::max(worst_stats, se);
                ok = ok && se <= 1e-5;
            };
            V nhwc128;  // the 128 x 128 channels-last kernel's unsplit output
            printf("  %-10s:", PASS[pass]);
            for (int tile = 0; tile < 4; ++tile) {
              const int BM = TILES[tile][0], BN = TILES[tile][1];
              // Unsplit, then in three splits of whole 32-element tiles of the reduction.
              const size_t third = cdiv(cdiv(RED, 3), 32) * 32;
              std::vector<size_t> chunks{(size_t)RED};
              if (third < (size_t)RED) chunks.push_back(third);
              for (size_t chunk : chunks) {
                const unsigned splits = (unsigned)cdiv(RED, chunk);
                const bool sliced = pass == 2 || splits > 1;  // into a (splits, output) buffer
                const dim3 grid{(unsigned)cdiv(N, BN), (unsigned)cdiv(M, BM), splits};
                const size_t slots = 4 * grid.x;
                V out(ref.size(), NAN), stats(pass == 0 ? 2 * (size_t)M * slots : 0, NAN), parts(splits * ref.size(), NAN);
                float* st = pass == 0 && splits == 1 ? stats.data() : nullptr;  // a split forward writes none
                const float* b = with_bias ? bias.data() : nullptr;
                const Words& a16 = pass == 0 ? wf : pass == 1 ? wt : dyh;
                const Words& b16 = pass == 1 ? dyh : xh;
                emu_set_dynamic_smem(pass == 2 ? (size_t)4 * 32 * (BM + BN + 16) * 2 : (size_t)4 * (BM + BN) * 40 * 2);
                launch(grid, 256, [&] { NHWC[pass][tile](a16.half(), b16.half(), b, sliced ? parts.data() : out.data(), st, g, (int)chunk); });
                emu_clear_dynamic_smem();
                auto sum_slices = [&](const V& from, V& to) {  // in order, as sum_splits_f32
                    for (size_t i = 0; i < to.size(); ++i) {
                        float acc = from[i];
                        for (unsigned z = 1; z < splits; ++z) acc += from[z * to.size() + i];
                        to[i] = acc;
                    }
                };
                if (pass != 2 && splits > 1) sum_slices(parts, out);
                // the weight gradient's slices summed in order (sum_splits_f32), then (K, R, S, C) -> (K, C, R, S)
                auto restore_wgrad = [&](const V& parts, V& out) {
                    for (int k = 0; k < sh.k; ++k)
                        for (int q = 0; q < RS; ++q)
                            for (int c = 0; c < sh.c; ++c) {
                                const size_t from = ((size_t)k * RS + q) * sh.c + c;
                                float acc = parts[from];
                                for (unsigned z = 1; z < splits; ++z) acc += parts[z * ref.size() + from];
                                out[((size_t)k * sh.c + c) * RS + q] = acc;
                            }
                };
                if (pass == 2) restore_wgrad(parts, out);
                const double e = check_out(out);
                if (pass == 0 && splits == 1) check_stats(out, stats, BN, slots);  // every slot's, as the pipe kernels' are
                if (tile == 0 && splits == 1) nhwc128 = out;  // conv2d_wgmma.cu's bits, below
                if (tile == 0 && pass == 2) {
                    // conv2d_wgmma.cu's weight gradient (MN-major operands) with the same split:
                    // within 1e-5 of f64 and the bits of this 128 x 128 kernel.
                    V wparts(splits * ref.size(), NAN), wout(ref.size(), NAN);
                    emu_set_dynamic_smem((size_t)3 * 2 * 128 * 128 + 1024);
                    launch(grid, 256, [&] { WGMMA[2](dyh.half(), xh.half(), nullptr, wparts.data(), nullptr, g, (int)chunk); });
                    emu_clear_dynamic_smem();
                    restore_wgrad(wparts, wout);
                    const double we = check_out(wout);
                    const bool wbits = same_bits(wout, out);
                    wgmma_same += wbits;
                    ++wgmma_ran;
                    ok = ok && wbits;
                    printf(" [wgmma%s %.2e%s]", splits > 1 ? ("/" + std::to_string(splits)).c_str() : "", we, wbits ? " = nhwc" : " DIFFERS from nhwc");
                }
                if (tile == 3) {  // no pipelined twin
                    printf(" %dx%d%s %.2e", BM, BN, splits > 1 ? ("/" + std::to_string(splits)).c_str() : "", e);
                    if (!ok && fail_fast) { printf("\nFAILED (fail fast)\n"); return 1; }
                    continue;
                }
                // conv2d_tcp.cu's bf16 kernel of the same tile and split on the f32 operands: the same bits.
                V pipe(ref.size(), NAN), pipe_parts(splits * ref.size(), NAN);
                const size_t pipe_smem = (size_t)(BM * BN > 8192 ? 4 : 3) * (BM * 40 + (pass == 2 ? BN * 40 : 32 * (BN + 4))) * 4;
                const float* pa = pass == 0 ? wf32.data() : pass == 1 ? wt32.data() : dy.data();
                const float* pb = pass == 1 ? dy.data() : x.data();
                emu_set_dynamic_smem(pipe_smem);
                launch(grid, 256, [&] { PIPE_BF16[pass][tile](pa, pb, b, sliced ? pipe_parts.data() : pipe.data(), nullptr, g, (int)chunk); });
                emu_clear_dynamic_smem();
                if (sliced) sum_slices(pipe_parts, pipe);
                const bool bits = same_bits(out, pipe);
                same += bits;
                ++ran;
                ok = ok && bits;
                printf(" %dx%d%s %.2e%s", BM, BN, splits > 1 ? ("/" + std::to_string(splits)).c_str() : "", e, bits ? " (= pipe)" : " (DIFFERS from pipe)");
                if (!ok && fail_fast) { printf("\nFAILED (fail fast)\n"); return 1; }
              }
            }
            if (pass != 2) {
                // conv2d_wgmma.cu (128 x 128, unsplit): within 1e-5 of f64, its statistics as
                // the others', and conv2d_nhwc.cu's 128 x 128 bits (the same k-steps of 16 in the
                // same order; emulated, each k-step is one rounding in both).
                const dim3 grid{(unsigned)cdiv(N, 128), (unsigned)cdiv(M, 128), 1};
                const size_t slots = 4 * grid.x;
                V out(ref.size(), NAN), stats(pass == 0 ? 2 * (size_t)M * slots : 0, NAN);
                const Words& a16 = pass == 0 ? wf : wt;
                const Words& b16 = pass == 0 ? xh : dyh;
                emu_set_dynamic_smem((size_t)3 * 2 * 128 * 128 + 1024);
                launch(grid, 256, [&] {
                    WGMMA[pass](a16.half(), b16.half(), with_bias ? bias.data() : nullptr, out.data(), pass == 0 ? stats.data() : nullptr, g, RED);
                });
                emu_clear_dynamic_smem();
                const double e = check_out(out);
                if (pass == 0) check_stats(out, stats, 128, slots);
                const bool bits = same_bits(out, nhwc128);
                wgmma_same += bits;
                ++wgmma_ran;
                ok = ok && bits;
                printf(" | wgmma %.2e%s", e, bits ? " (= nhwc)" : " (DIFFERS from nhwc)");
                if (!ok && fail_fast) { printf("\nFAILED (fail fast)\n"); return 1; }
            }
            printf("\n");
            fflush(stdout);
        }
        printf("  (%.1fs)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    printf("max relative error (to the sum of |terms|): forward %.2e; input grad %.2e; weight grad %.2e; batch-norm statistics %.2e\n",
           worst[0], worst[1], worst[2], worst_stats);
    printf("bit-identical to conv2d_tcp.cu's bf16 kernels: %d of %d launches; total %.1fs\n", same, ran,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count());
    printf("conv2d_wgmma.cu bit-identical to conv2d_nhwc.cu's 128 x 128 kernels: %d of %d launches\n", wgmma_same, wgmma_ran);
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
