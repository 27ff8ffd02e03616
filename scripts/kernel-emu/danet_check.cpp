// The check scripts/kernel-emu/run.sh builds: kernels/danet.cu (fp32, SIMT) and danet_tc.cu (TF32
// mma.sync, cp.async, dynamic shared memory) under emu_tc.h, against f64 loops, launched as
// src/ops/danet/cuda.rs launches them. Built from one emu_ptx.py rewrite of both files (run.sh
// writes it). The fp32 kernels against the f64 maths on the inputs as given (relative L2 error at
// most 1e-5); the TF32 kernels against the f64 maths on the TF32-rounded inputs, which leaves
// the kernels' own rounding of P and dS to TF32 and their f32 sums (at most 2e-3; 2e-4 to 8.5e-4
// here). EMU_FAIL_FAST=1 stops at the first failure; DANET_ONLY=fp32 or tf32 runs one family.
#include "emu_tc.h"
#ifndef DANET_KERNELS  // mutants.sh points this at a broken copy
#define DANET_KERNELS "/tmp/kernel-emu/danet_emu.cu"
#endif
#include DANET_KERNELS
#include <cstdio>
#include <random>
#include <algorithm>
#include <cstdlib>
#include <cstring>
using V = std::vector<float>;
using VD = std::vector<double>;
static double rel(const V& a, const VD& b) {
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i) { if (!std::isfinite(a[i])) return INFINITY; d += (a[i]-b[i])*(a[i]-b[i]); n += b[i]*b[i]; }
    return std::sqrt(d / std::max(n, 1e-30));
}
template <class T>
static double norm(const std::vector<T>& a) {
    double n = 0;
    for (T x : a) n += (double)x * x;
    return std::isfinite(n) ? std::sqrt(n) : INFINITY;
}
struct Ref { VD out, lse, dq, dk, dv; };
// The forward and the gradients of sum(out * g), in f64.
static Ref reference(int N, int D, int C, int L, const V& q, const V& k, const V& v, const V& g) {
    Ref r{VD(N * C * L), VD(N * L), VD(N * D * L), VD(N * D * L), VD(N * C * L)};
    for (int n = 0; n < N; ++n) {
        VD P(L * (size_t)L), dP(L * (size_t)L);
        for (int i = 0; i < L; ++i) {
            double m = -INFINITY;
            for (int j = 0; j < L; ++j) { double a = 0; for (int d = 0; d < D; ++d) a += (double)q[(n*D+d)*L+i] * k[(n*D+d)*L+j]; P[(size_t)i*L+j] = a; m = std::max(m, a); }
            double sum = 0; for (int j = 0; j < L; ++j) sum += std::exp(P[(size_t)i*L+j] - m);
            r.lse[n*L+i] = m + std::log(sum);
            for (int j = 0; j < L; ++j) P[(size_t)i*L+j] = std::exp(P[(size_t)i*L+j] - r.lse[n*L+i]);
        }
        for (int c = 0; c < C; ++c) for (int i = 0; i < L; ++i) { double a = 0; for (int j = 0; j < L; ++j) a += P[(size_t)i*L+j] * v[(n*C+c)*L+j]; r.out[(n*C+c)*L+i] = a; }
        for (int i = 0; i < L; ++i) { double delta = 0;
            for (int j = 0; j < L; ++j) { double a = 0; for (int c = 0; c < C; ++c) a += (double)g[(n*C+c)*L+i] * v[(n*C+c)*L+j]; dP[(size_t)i*L+j] = a; delta += a * P[(size_t)i*L+j]; }
            for (int j = 0; j < L; ++j) dP[(size_t)i*L+j] = P[(size_t)i*L+j] * (dP[(size_t)i*L+j] - delta); }
        for (int d = 0; d < D; ++d) for (int i = 0; i < L; ++i) { double a = 0, b = 0; for (int j = 0; j < L; ++j) { a += dP[(size_t)i*L+j] * k[(n*D+d)*L+j]; b += dP[(size_t)j*L+i] * q[(n*D+d)*L+j]; } r.dq[(n*D+d)*L+i] = a; r.dk[(n*D+d)*L+i] = b; }
        for (int c = 0; c < C; ++c) for (int j = 0; j < L; ++j) { double a = 0; for (int i = 0; i < L; ++i) a += (double)g[(n*C+c)*L+i] * P[(size_t)i*L+j]; r.dv[(n*C+c)*L+j] = a; }
    }
    return r;
}
static V tf32(const V& x) {
    V y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = emu_u2f(emu_cvt_rna_tf32_f32(x[i]));
    return y;
}
// danet_tc.cu's dynamic shared memory in floats, as src/ops/danet/cuda.rs `tc_smem_floats` computes it.
static size_t tc_smem_floats(int D, bool backward) {
    const size_t Dp = (D + 7) / 8 * 8, own_x = Dp * 64 + 2 * (Dp * 32 + 128 * 32 + 64);
    const size_t dp = Dp * 64 + 2 * (Dp * 32 + 64) + 3 * (32 * 64 + 32 * 32);
    return backward ? std::max(own_x, dp) : own_x;
}
int main(int argc, char** argv) {
    // N, D, C, L, and the scores' scale: the last shape's scores reach +-40 (a near one-hot
    // softmax, the running max moving between tiles). L = 135 and 33x33 take the TF32 kernels'
    // 4-byte copies, the others their 16-byte ones; D = 70 and 5 are off the 8-wide k-steps.
    // Small shapes first (mutants.sh stops at the first failure), 33x33 last.
    int shapes[][5] = {{1, 3, 7, 35, 2}, {2, 16, 40, 200, 12}, {1, 128, 24, 68, 2}, {1, 8, 37, 1, 2}, {1, 64, 130, 256, 2}, {2, 70, 200, 135, 2}, {2, 5, 45, 33 * 33, 2}};
    bool ok = true;
    const bool fail_fast = std::getenv("EMU_FAIL_FAST") != nullptr;  // mutants.sh: stop at the first failure
    const char* only = std::getenv("DANET_ONLY");                    // "fp32" or "tf32": one kernel family
    auto cdiv = [](int a, int b) { return (unsigned)((a + b - 1) / b); };
    for (auto& s : shapes) {
        int N = s[0], D = s[1], C = s[2], L = s[3];
        std::mt19937 rng(N * 1000 + D * 10 + C + L);
        std::uniform_real_distribution<float> u(-1, 1);
        float sc = s[4] / std::sqrt((float)D);
        V q(N * D * L), k(N * D * L), v(N * C * L), g(N * C * L);
        for (auto& x : q) x = u(rng) * sc;
        for (auto& x : k) x = u(rng) * sc;
        for (auto& x : v) x = u(rng);
        for (auto& x : g) x = u(rng);
        for (int tc = 0; tc < 2; ++tc) {
            if (!tc && D > 100) continue;  // D = 128: the TF32 kernels' largest D only
            if (only && std::strcmp(only, tc ? "tf32" : "fp32")) continue;
            const Ref r = tc ? reference(N, D, C, L, tf32(q), tf32(k), tf32(v), tf32(g)) : reference(N, D, C, L, q, k, v, g);
            V o(N * C * L, NAN), ls(N * L, NAN), gq(N * D * L, NAN), gk(N * D * L, NAN), gv(N * C * L, NAN), de(N * L, NAN);
            if (tc) {
                emu_set_dynamic_smem(4 * tc_smem_floats(D, false));
                launch({cdiv(L, 64), cdiv(C, 128), (unsigned)N}, 128, [&] { pam_fwd_tf32(q.data(), k.data(), v.data(), o.data(), ls.data(), D, C, L); });
                emu_clear_dynamic_smem();
            } else {
                launch({cdiv(L, 64), cdiv(C, 128), (unsigned)N}, 256, [&] { pam_fwd_f32(q.data(), k.data(), v.data(), o.data(), ls.data(), D, C, L); });
            }
            launch({cdiv(L, 32), (unsigned)N, 1}, 256, [&] { pam_bwd_delta_f32(g.data(), o.data(), de.data(), C, L); });
            if (tc) {
                emu_set_dynamic_smem(4 * tc_smem_floats(D, true));
                launch({cdiv(L, 64), (unsigned)N, 2 + cdiv(C, 128)}, 128, [&] { pam_bwd_tf32(q.data(), k.data(), v.data(), g.data(), ls.data(), de.data(), gq.data(), gk.data(), gv.data(), D, C, L); });
                emu_clear_dynamic_smem();
            } else {
                unsigned chunks = 2 * cdiv(D, 64) + cdiv(C, 128);
                launch({cdiv(L, 64), chunks, (unsigned)N}, 256, [&] { pam_bwd_f32(q.data(), k.data(), v.data(), g.data(), ls.data(), de.data(), gq.data(), gk.data(), gv.data(), D, C, L); });
            }
            double e[5] = {rel(o, r.out), rel(ls, r.lse), rel(gq, r.dq), rel(gk, r.dk), rel(gv, r.dv)};
            if (L == 1) {  // every softmax is exactly 1 and dq, dk are 0: round-off, against dv's scale
                const double scale = std::max(norm(r.dv), 1e-30);
                e[2] = norm(gq) / scale;
                e[3] = norm(gk) / scale;
            }
            printf("%s N=%d D=%d C=%d L=%d: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", tc ? "tf32" : "fp32", N, D, C, L, e[0], e[1], e[2], e[3], e[4]);
            for (double x : e) ok = ok && x < (tc ? 2e-3 : 1e-5);
            if (fail_fast && !ok) break;
        }
        if (fail_fast && !ok) break;
    }
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
