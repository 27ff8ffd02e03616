// The deterministic passes that replaced atomics (issue 13: a step gives the same bits every run),
// under emu.h, launched as src/ops/resize/cuda.rs and src/ops/reduce/cuda.rs launch them:
//  - pool.cu's resize_bilinear_bwd_f32, a gather per input cell, against an f64 scatter of the
//    forward's taps (the same float source-index rule), on the decoder's 8x upsampling, odd and
//    non-integer ratios, downsampling, one-row and one-column planes and the identity; dx starts
//    as NaN, so an unwritten cell fails;
//  - reduce.cu's reduce_sum_block_f32 and reduce_sum_thread_f32 split over gridDim.y, each split
//    into its slice, then sum_splits_f32, against f64 sums; twice, with the same bits.
#include "emu.h"
#include <cstdio>
#include <cstring>
#include <random>
using std::isnan;  // pool.cu calls it unqualified, as CUDA does
#ifndef POOL_KERNELS  // mutants.sh points these at broken copies
#define POOL_KERNELS "../../kernels/pool.cu"
#endif
#include POOL_KERNELS
#ifndef REDUCE_KERNELS
#define REDUCE_KERNELS "../../kernels/reduce.cu"
#endif
#include REDUCE_KERNELS
#include "check.h"

// The forward's source rule (pool.cu bilinear_src), in the same float arithmetic.
static void taps(int dst, int in, float scale, int& i0, int& i1, float& l1) {
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    i0 = std::min((int)src, in - 1);
    i1 = i0 + (i0 < in - 1 ? 1 : 0);
    l1 = src - (float)i0;
}

static bool check_resize() {
    // planes, H, W, OH, OW
    const int shapes[][5] = {{2, 16, 16, 128, 128}, {3, 7, 5, 14, 10}, {1, 5, 6, 13, 11}, {2, 33, 17, 16, 8},
                             {2, 1, 7, 3, 20},      {1, 9, 1, 4, 5},   {1, 9, 9, 9, 9},   {1, 4, 4, 31, 3}};
    bool ok = true;
    for (auto& s : shapes) {
        const int planes = s[0], H = s[1], W = s[2], OH = s[3], OW = s[4];
        const float sh = (float)H / OH, sw = (float)W / OW;  // the host's scales (resize_args)
        std::mt19937 rng(H * 100 + OH);
        V dy = rand_vec(rng, (size_t)planes * OH * OW);
        D want((size_t)planes * H * W, 0.0), mag((size_t)planes * H * W, 0.0);
        for (int p = 0; p < planes; ++p)
            for (int oh = 0; oh < OH; ++oh)
                for (int ow = 0; ow < OW; ++ow) {
                    int h0, h1, w0, w1;
                    float lh, lw;
                    taps(oh, H, sh, h0, h1, lh);
                    taps(ow, W, sw, w0, w1, lw);
                    const double g = dy[((size_t)p * OH + oh) * OW + ow];
                    const int hs[2] = {h0, h1}, ws[2] = {w0, w1};
                    const double wh[2] = {1.0 - lh, lh}, ww[2] = {1.0 - lw, lw};
                    for (int a = 0; a < 2; ++a)
                        for (int b = 0; b < 2; ++b) {
                            const size_t at = ((size_t)p * H + hs[a]) * W + ws[b];
                            want[at] += wh[a] * ww[b] * g;
                            mag[at] += std::fabs(wh[a] * ww[b] * g);
                        }
                }
        V dx((size_t)planes * H * W, NAN);
        const int n = planes * H * W;
        launch_serial({(unsigned)std::min((n + 255) / 256, 64), 1, 1}, 256,
                      [&] { resize_bilinear_bwd_f32(dy.data(), dx.data(), planes, H, W, OH, OW, sh, sw); });
        const double e = err(dx, want, mag);
        printf("resize bwd %d x %dx%d <- %dx%d: max error %.2e (to the sum of |terms|)\n", planes, H, W, OH, OW, e);
        ok = ok && e <= 1e-6;
    }
    return ok;
}

static bool check_reduce() {
    struct Case {
        int dims[4], keep[4];
        bool by_block;
        int splits;
    };
    // A bias gradient (channels kept, over N*H*W), and a sum over N with H, W kept.
    const Case cases[] = {{{4, 3, 50, 70}, {0, 1, 0, 0}, true, 4}, {{5, 1, 30, 40}, {0, 0, 1, 1}, false, 3}};
    bool ok = true;
    for (auto& c : cases) {
        const int total = c.dims[0] * c.dims[1] * c.dims[2] * c.dims[3];
        int n_out = 1;
        for (int a = 0; a < 4; ++a) n_out *= c.keep[a] ? c.dims[a] : 1;
        const int n_red = total / n_out, chunk = (n_red + c.splits - 1) / c.splits;
        std::mt19937 rng(total);
        V x = rand_vec(rng, total);
        D want(n_out, 0.0), mag(n_out, 0.0);
        Red4 g;
        for (int a = 0; a < 4; ++a) {
            g.dims[a] = c.dims[a];
            g.keep[a] = c.keep[a];
        }
        for (int o = 0; o < n_out; ++o)
            for (int j = 0; j < n_red; ++j) {
                want[o] += 0.5 * x[red_offset(g, o, j)];
                mag[o] += 0.5 * std::fabs(x[red_offset(g, o, j)]);
            }
        V first;
        for (int run = 0; run < 2; ++run) {
            V parts((size_t)c.splits * n_out, NAN), y(n_out, NAN);
            if (c.by_block)
                launch({(unsigned)n_out, (unsigned)c.splits, 1}, 256, [&] { reduce_sum_block_f32(x.data(), parts.data(), n_out, n_red, g, 0.5f, chunk); });
            else
                launch_serial({(unsigned)((n_out + 255) / 256), (unsigned)c.splits, 1}, 256,
                              [&] { reduce_sum_thread_f32(x.data(), parts.data(), n_out, n_red, g, 0.5f, chunk); });
            launch_serial({(unsigned)((n_out + 255) / 256), 1, 1}, 256, [&] { sum_splits_f32(parts.data(), y.data(), c.splits, n_out); });
            const double e = err(y, want, mag);
            printf("reduce %s (%d %d %d %d) in %d splits: max error %.2e\n", c.by_block ? "block " : "thread", c.dims[0], c.dims[1], c.dims[2], c.dims[3], c.splits, e);
            ok = ok && e <= 1e-6;
            if (run == 0) first = y;
            else if (!same_bits(first, y)) {
                printf("  a second run gave other bits\n");
                ok = false;
            }
        }
    }
    return ok;
}

int main() {
    const bool a = check_resize(), b = check_reduce();
    printf("%s\n", a && b ? "ALL OK" : "FAILED");
    return a && b ? 0 : 1;
}
