// kernels/batchnorm.cu's two training-statistics kernels under emu.h, launched as
// src/ops/norm/cuda.rs launches them (256 threads, one block per channel up to a grid cap, so
// the grid-stride loop over channels runs): bn_stats_f32 over an NCHW tensor, and
// bn_stats_partials_f32 over the partial statistics a convolution's epilogue writes (per channel
// P slot sums, then per channel P sums of squared deviations from each slot's mean). Mean, variance and the running update against f64;
// the partials made from the tensor in slots of 32 values, as the epilogue makes them, with a mean
// about 9 standard deviations from 0 (where E[x^2] - mean^2 would lose the variance's low digits).
// Outputs start as NaN.
#include "emu.h"
#include <cstdio>
#include <random>
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
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
    printf("max relative error %.2e\n%s\n", worst, ok ? "ALL OK" : "FAILED");
    return ok ? 0 : 1;
}
