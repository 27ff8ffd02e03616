// The deterministic passes that replaced atomics (issue 13: a step gives the same bits every run),
// under emu.h, launched as src/ops/resize/cuda.rs and src/ops/reduce/cuda.rs launch them:
//  - pool.cu's resize_bilinear_bwd_f32, a gather per input cell, against an f64 scatter of the
//    forward's taps (the same float source-index rule), on the decoder's 8x upsampling, odd and
//    non-integer ratios, downsampling, one-row and one-column planes and the identity; dx starts
//    as NaN, so an unwritten cell fails;
//  - reduce.cu's reduce_sum_block_f32 and reduce_sum_thread_f32 split over gridDim.y, each split
//    into its slice, then sum_splits_f32, against f64 sums; twice, with the same bits;
//  - and reduce.cu's softmax, forward and backward, against f64: over rows (a block per row:
//    block_reduce.cuh's block_max and block_sum, the one check that runs block_max) and over the
//    middle axis of an (outer, dim, inner) view (a thread per (outer, inner)), scores to +-40 so
//    an unsubtracted max overflows; fewer blocks than rows, so the grid-stride loop turns;
//  - block_reduce.cuh's contract, that a block may call block_max (block_sum) twice in a row:
//    no kernel does yet (softmax's block_sum orders its block_max's reads before the next row's
//    writes), so a kernel here does, and the race detector sees a missing first barrier.
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

// Softmax of x over `dim` (stride `inner`) in f64, and the backward from the kernel's y:
// dx = y (dy - sum_k dy_k y_k), each with its sum of |terms| as the error's floor.
static void softmax_ref(const V& x, const V& y, const V& dy, int outer, int dim, int inner, D& want_y, D& want_dx, D& mag_dx) {
    for (int o = 0; o < outer; ++o)
        for (int i = 0; i < inner; ++i) {
            const size_t base = (size_t)o * dim * inner + i;
            double m = -INFINITY, s = 0, dot = 0, dot_mag = 0;
            for (int k = 0; k < dim; ++k) m = std::max(m, (double)x[base + (size_t)k * inner]);
            for (int k = 0; k < dim; ++k) s += std::exp(x[base + (size_t)k * inner] - m);
            for (int k = 0; k < dim; ++k) {
                const size_t at = base + (size_t)k * inner;
                want_y[at] = std::exp(x[at] - m) / s;
                dot += (double)dy[at] * y[at];
                dot_mag += std::fabs((double)dy[at] * y[at]);
            }
            for (int k = 0; k < dim; ++k) {
                const size_t at = base + (size_t)k * inner;
                want_dx[at] = y[at] * (dy[at] - dot);
                mag_dx[at] = std::fabs(y[at]) * (std::fabs(dy[at]) + dot_mag);
            }
        }
}

static bool check_softmax() {
    // outer, dim, inner (inner 1: softmax_rows_*; a block per row, up to `blocks` of them)
    const int shapes[][3] = {{7, 37, 1}, {5, 1, 1}, {3, 256, 1}, {9, 1000, 1}, {2, 4099, 1}, {3, 5, 17}, {2, 33, 7}, {4, 1, 9}};
    bool ok = true;
    for (auto& sh : shapes) {
        const int outer = sh[0], dim = sh[1], inner = sh[2];
        const size_t n = (size_t)outer * dim * inner;
        std::mt19937 rng(outer * 1000 + dim * 10 + inner);
        const V x = rand_vec(rng, n, -40.0f, 40.0f), dy = rand_vec(rng, n);
        V y(n, NAN), dx(n, NAN);
        if (inner == 1) {
            const unsigned blocks = (unsigned)std::min(outer, 3);
            launch({blocks, 1, 1}, 256, [&] { softmax_rows_fwd_f32(x.data(), y.data(), outer, dim); });
            launch({blocks, 1, 1}, 256, [&] { softmax_rows_bwd_f32(y.data(), dy.data(), dx.data(), outer, dim); });
        } else {
            const unsigned blocks = (unsigned)std::max(1, std::min((outer * inner + 255) / 256, 2));
            launch_serial({blocks, 1, 1}, 256, [&] { softmax_fwd_f32(x.data(), y.data(), outer, dim, inner); });
            launch_serial({blocks, 1, 1}, 256, [&] { softmax_bwd_f32(y.data(), dy.data(), dx.data(), outer, dim, inner); });
        }
        D want_y(n), want_dx(n), mag_dx(n);
        softmax_ref(x, y, dy, outer, dim, inner, want_y, want_dx, mag_dx);
        const double ey = err(y, want_y), edx = err(dx, want_dx, mag_dx);
        printf("softmax %s (%d, %d, %d): forward %.2e, backward %.2e (to the sum of |terms|)\n", inner == 1 ? "rows" : "axis", outer, dim, inner, ey, edx);
        ok = ok && ey <= 1e-5 && edx <= 1e-5;
    }
    return ok;
}

// Two block maxima and two block sums back to back, no barrier between the calls but the helpers'
// own: each thread contributes a[t] and b[t] (t < n).
__global__ void block_reductions_back_to_back(const float* a, const float* b, float* out, int n) {
    const int t = threadIdx.x;
    const float va = t < n ? a[t] : NEG_INF, vb = t < n ? b[t] : NEG_INF;
    const float ma = block_max(va), mb = block_max(vb);
    const float sa = block_sum(t < n ? a[t] : 0.0f), sb = block_sum(t < n ? b[t] : 0.0f);
    if (t == 0) out[0] = ma, out[1] = mb, out[2] = sa, out[3] = sb;
}

static bool check_block_reductions() {
    bool ok = true;
    for (int n : {1, 37, 256}) {
        std::mt19937 rng(n);
        const V a = rand_vec(rng, n), b = rand_vec(rng, n, -3.0f, 3.0f);
        V out(4, NAN);
        launch({1, 1, 1}, 256, [&] { block_reductions_back_to_back(a.data(), b.data(), out.data(), n); });
        D want(4), mag(4);
        want[0] = *std::max_element(a.begin(), a.end());
        want[1] = *std::max_element(b.begin(), b.end());
        for (int i = 0; i < n; ++i) want[2] += a[i], want[3] += b[i], mag[2] += std::fabs(a[i]), mag[3] += std::fabs(b[i]);
        const double e = err(out, want, mag);
        printf("block_max and block_sum twice in a row, %d values: max error %.2e\n", n, e);
        ok = ok && e <= 1e-6;
    }
    return ok;
}

int main() {
    const bool a = check_resize(), b = check_reduce(), c = check_softmax(), d = check_block_reductions();
    printf("%s\n", a && b && c && d ? "ALL OK" : "FAILED");
    return a && b && c && d ? 0 : 1;
}
