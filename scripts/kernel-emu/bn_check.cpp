// kernels/batchnorm.cu's two training-statistics kernels under emu.h, launched as
// src/ops/norm/cuda.rs launches them (256 threads, one block per channel up to a grid cap, so
// the grid-stride loop over channels runs): bn_stats_f32 over an NCHW tensor, and
// bn_stats_partials_f32 over the partial statistics a convolution's epilogue writes (per channel
// P slot sums, then per channel P sums of squared deviations from each slot's mean). Mean, variance and the running update against f64;
// the partials made from the tensor in slots of 32 values, as the epilogue makes them, with a mean
// about 9 standard deviations from 0 (where E[x^2] - mean^2 would lose the variance's low digits).
// Outputs start as NaN. Then the forward with a residual and the backward that writes the masked
// gradient (a ResNet block's end, Tensor::batch_norm_add).
#include "emu.h"
#include <cstdio>
#include <random>
#ifndef BN_KERNELS  // mutants.sh points this at a broken copy
#define BN_KERNELS "../../kernels/batchnorm.cu"
#endif
#include BN_KERNELS
#include "check.h"

int main() {
    // (N, C, HW, grid cap): HW * N not a multiple of 32 or 256; a cap below C.
    const int shapes[][4] = {{2, 37, 45, 16}, {3, 5, 100, 8}, {1, 130, 7, 64}, {4, 3, 1000, 2}};
    const float momentum = 0.1f;
    bool ok = true;
    double worst = 0;
    for (auto& s : shapes) {
        const int N = s[0], C = s[1], HW = s[2], cap = s[3], count = N * HW;
        std::mt19937 rng(N * 1000 + C * 10 + HW);
        // Values with a mean far from 0 (a mean/std ratio of about 5): E[x^2] - mean^2 cancels.
        V x = rand_vec(rng, (size_t)N * C * HW, 4.0f, 6.0f), rm = rand_vec(rng, C), rv = rand_vec(rng, C, 0.5f, 1.5f);
        D mean(C, 0), var(C, 0);
        for (int c = 0; c < C; ++c) {
            for (int n = 0; n < N; ++n)
                for (int j = 0; j < HW; ++j) mean[c] += x[((size_t)n * C + c) * HW + j];
            mean[c] /= count;
            for (int n = 0; n < N; ++n)
                for (int j = 0; j < HW; ++j) {
                    double d = x[((size_t)n * C + c) * HW + j] - mean[c];
                    var[c] += d * d;
                }
            var[c] /= count;
        }
        D want_rm(C), want_rv(C);
        for (int c = 0; c < C; ++c) {
            want_rm[c] = 0.9 * rm[c] + 0.1 * mean[c];
            want_rv[c] = 0.9 * rv[c] + 0.1 * var[c] * count / (count - 1);
        }
        // Partial statistics in slots of 32 consecutive values of a channel, in f32 as the
        // epilogue makes them: the slot's sum, then its squared deviations from the slot's mean.
        const int W = 32, P = (count + W - 1) / W;
        V partials(2 * (size_t)C * P, 0.0f);
        auto at = [&](int c, int i) { return x[((size_t)(i / HW) * C + c) * HW + i % HW]; };
        for (int c = 0; c < C; ++c)
            for (int j = 0; j < P; ++j) {
                const int lo = j * W, hi = std::min(count, lo + W);
                float s = 0.0f, q = 0.0f;
                for (int i = lo; i < hi; ++i) s += at(c, i);
                const float mu = s / (float)(hi - lo);
                for (int i = lo; i < hi; ++i) q += (at(c, i) - mu) * (at(c, i) - mu);
                partials[(size_t)c * P + j] = s;
                partials[(size_t)(C + c) * P + j] = q;
            }
        for (int kind = 0; kind < 2; ++kind) {
            V m(C, NAN), v(C, NAN), r_m = rm, r_v = rv;
            launch({(unsigned)std::min(C, cap), 1, 1}, 256, [&] {
                if (kind == 0) bn_stats_f32(x.data(), m.data(), v.data(), r_m.data(), r_v.data(), N, C, HW, momentum);
                else bn_stats_partials_f32(partials.data(), P, W, m.data(), v.data(), r_m.data(), r_v.data(), C, count, momentum);
            });
            // The variance's error relative to the variance itself (what normalisation divides by).
            const double e[4] = {err(m, mean), err(v, var), err(r_m, want_rm), err(r_v, want_rv)};
            const double bound = 1e-5;
            printf("N=%d C=%d HW=%d grid %d %-22s mean %.1e var %.1e running %.1e %.1e\n", N, C, HW, std::min(C, cap),
                   kind == 0 ? "bn_stats_f32" : "bn_stats_partials_f32", e[0], e[1], e[2], e[3]);
            for (double x : e) {
                worst = std::max(worst, x);
                ok = ok && x <= bound;
            }
        }
    }
    // The residual block's end: bn_fwd_f32 with a residual (and with and without the ReLU)
    // against bn_fwd_f32 alone then the add and the ReLU in f32 (the same bits) and f64; the
    // backward's reduce writing the masked gradient (the residual's: dy where the output is > 0,
    // bit for bit) and its sums, and bn_bwd_dx_f32 reading that gradient unmasked, against f64.
    for (auto& s : shapes) {
        const int N = s[0], C = s[1], HW = s[2], cap = s[3], M = N * HW, n = N * C * HW;
        std::mt19937 rng(N * 7 + C * 3 + HW);
        V x = rand_vec(rng, n, -2.0f, 3.0f), res = rand_vec(rng, n, -1.5f, 1.0f), dy = rand_vec(rng, n);
        V mean = rand_vec(rng, C, 0.0f, 1.0f), var = rand_vec(rng, C, 0.5f, 2.0f);
        V gamma = rand_vec(rng, C, 0.5f, 1.5f), beta = rand_vec(rng, C, -0.5f, 0.5f);
        const float eps = 1e-5f;
        for (int relu = 0; relu < 2; ++relu) {
            V y(n, NAN), plain(n, NAN), g(n, NAN), dsum(C, NAN), dxhat(C, NAN), dx(n, NAN);
            launch({(unsigned)std::min(n / 256 + 1, 64), 1, 1}, 256, [&] {
                bn_fwd_f32(x.data(), mean.data(), var.data(), gamma.data(), beta.data(), res.data(), y.data(), n, C, HW, eps, relu);
            });
            launch({(unsigned)std::min(n / 256 + 1, 64), 1, 1}, 256, [&] {
                bn_fwd_f32(x.data(), mean.data(), var.data(), gamma.data(), beta.data(), nullptr, plain.data(), n, C, HW, eps, 0);
            });
            V composed(n);
            for (int i = 0; i < n; ++i) {
                const float v = plain[i] + res[i];
                composed[i] = relu && v <= 0.0f ? 0.0f : v;
            }
            launch({(unsigned)std::min(C, cap), 1, 1}, 256, [&] {
                bn_bwd_reduce_f32(x.data(), dy.data(), ReluMask{relu ? y.data() : nullptr, nullptr, nullptr}, mean.data(), var.data(),
                                  dsum.data(), dxhat.data(), g.data(), N, C, HW, eps);
            });
            launch({(unsigned)std::min(n / 256 + 1, 64), 1, 1}, 256, [&] {
                bn_bwd_dx_f32(x.data(), g.data(), ReluMask{}, mean.data(), var.data(), gamma.data(), dsum.data(), dxhat.data(),
                              dx.data(), n, C, HW, M, eps, 1);
            });
            D want_y(n), want_g(n), want_sum(C, 0), want_xhat(C, 0), sum_floor(C, 0), want_dx(n);
            V masked(n);
            auto xhat = [&](int i, int c) { return ((double)x[i] - mean[c]) / std::sqrt((double)var[c] + eps); };
            for (int i = 0; i < n; ++i) {
                const int c = (i / HW) % C;
                const double v = xhat(i, c) * gamma[c] + beta[c] + res[i];
                want_y[i] = relu ? std::max(v, 0.0) : v;
                // The mask is the op's: where the kernel's own output is > 0.
                masked[i] = relu && !(y[i] > 0.0f) ? 0.0f : dy[i];
                want_g[i] = masked[i];
                want_sum[c] += masked[i];
                want_xhat[c] += masked[i] * xhat(i, c);
                sum_floor[c] += std::fabs(masked[i]) * (1 + std::fabs(xhat(i, c)));
            }
            for (int i = 0; i < n; ++i) {
                const int c = (i / HW) % C;
                const double inv = 1 / std::sqrt((double)var[c] + eps);
                want_dx[i] = gamma[c] * inv / M * (M * (double)masked[i] - want_sum[c] - xhat(i, c) * want_xhat[c]);
            }
            const bool bits = same_bits(y, composed) && same_bits(g, masked);
            const double e[4] = {err_rms(y, want_y), err(dsum, want_sum, sum_floor), err(dxhat, want_xhat, sum_floor), err_rms(dx, want_dx)};
            printf("N=%d C=%d HW=%d relu %d residual: y %.1e dsum %.1e dxhat %.1e dx %.1e, y and masked dy %s\n", N, C, HW, relu, e[0], e[1],
                   e[2], e[3], bits ? "the composed bits" : "NOT the composed bits");
            ok = ok && bits;
            for (double v : e) {
                worst = std::max(worst, v);
                ok = ok && v <= 1e-5;
            }
        }
    }
    // The ReLU's mask recomputed from the input (a convolution applied batch norm and the ReLU as
    // its prologue and kept no output): the backward's sums, masked gradient and dx the same bits
    // as with the mask read from the forward's output, in training and eval.
    for (auto& s : shapes) {
        const int N = s[0], C = s[1], HW = s[2], cap = s[3], M = N * HW, n = N * C * HW;
        std::mt19937 rng(N * 11 + C * 5 + HW);
        V x = rand_vec(rng, n, -2.0f, 3.0f), dy = rand_vec(rng, n);
        V mean = rand_vec(rng, C, 0.0f, 1.0f), var = rand_vec(rng, C, 0.5f, 2.0f);
        V gamma = rand_vec(rng, C, 0.5f, 1.5f), beta = rand_vec(rng, C, -0.5f, 0.5f);
        const float eps = 1e-5f;
        V out(n, NAN);
        const unsigned blocks = (unsigned)std::min(n / 256 + 1, 64);
        launch({blocks, 1, 1}, 256, [&] {
            bn_fwd_f32(x.data(), mean.data(), var.data(), gamma.data(), beta.data(), nullptr, out.data(), n, C, HW, eps, 1);
        });
        int clipped = 0;
        for (float v : out) clipped += v == 0.0f;
        for (int training = 0; training < 2; ++training) {
            V got[2][4];
            for (int from_x = 0; from_x < 2; ++from_x) {
                const ReluMask mask = from_x ? ReluMask{nullptr, gamma.data(), beta.data()} : ReluMask{out.data(), nullptr, nullptr};
                V dsum(C, NAN), dxhat(C, NAN), g(n, NAN), dx(n, NAN);
                launch({(unsigned)std::min(C, cap), 1, 1}, 256, [&] {
                    bn_bwd_reduce_f32(x.data(), dy.data(), mask, mean.data(), var.data(), dsum.data(), dxhat.data(), g.data(), N, C, HW, eps);
                });
                launch({blocks, 1, 1}, 256, [&] {
                    bn_bwd_dx_f32(x.data(), dy.data(), mask, mean.data(), var.data(), gamma.data(), dsum.data(), dxhat.data(), dx.data(), n,
                                  C, HW, M, eps, training);
                });
                got[from_x][0] = dsum, got[from_x][1] = dxhat, got[from_x][2] = g, got[from_x][3] = dx;
            }
            bool same = clipped > 0 && clipped < n;
            for (int i = 0; i < 4; ++i) same = same && same_bits(got[0][i], got[1][i]) && std::all_of(got[1][i].begin(), got[1][i].end(), [](float v) { return std::isfinite(v); });
            printf("N=%d C=%d HW=%d training %d: mask from the input (%d of %d clipped) %s\n", N, C, HW, training, clipped, n,
                   same ? "the bits of the mask from the output" : "NOT the bits of the mask from the output");
            ok = ok && same;
        }
    }
    printf("max relative error %.2e\n%s\n", worst, ok ? "ALL OK" : "FAILED");
    return ok ? 0 : 1;
}
