// The check scripts/kernel-emu/run.sh builds: kernels/danet.cu under emu.h against f64 loops.
#include "emu.h"
#ifndef DANET_KERNELS  // mutants.sh points this at a broken copy
#define DANET_KERNELS "../../kernels/danet.cu"
#endif
#include DANET_KERNELS
#include <cstdio>
#include <random>
#include <algorithm>
using V = std::vector<float>;
static double rel(const V& a, const std::vector<double>& b) {
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i) { if (!std::isfinite(a[i])) return INFINITY; d += (a[i]-b[i])*(a[i]-b[i]); n += b[i]*b[i]; }
    return std::sqrt(d / std::max(n, 1e-30));
}
int main(int argc, char** argv) {
    // N, D, C, L, and the scores' scale: the last shape's scores reach +-40 (a near one-hot
    // softmax, the running max moving between tiles).
    int shapes[][5] = {{1, 8, 37, 1, 2}, {2, 5, 45, 33 * 33, 2}, {1, 3, 7, 35, 2}, {2, 70, 200, 135, 2}, {1, 64, 130, 256, 2}, {2, 16, 40, 200, 12}};
    bool ok = true;
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
        // reference in double
        std::vector<double> out(N * C * L), lse(N * L), dq(N * D * L), dk(N * D * L), dv(N * C * L);
        for (int n = 0; n < N; ++n) {
            std::vector<double> P(L * (size_t)L), dP(L * (size_t)L);
            for (int i = 0; i < L; ++i) {
                double m = -INFINITY;
                for (int j = 0; j < L; ++j) { double a = 0; for (int d = 0; d < D; ++d) a += (double)q[(n*D+d)*L+i] * k[(n*D+d)*L+j]; P[(size_t)i*L+j] = a; m = std::max(m, a); }
                double sum = 0; for (int j = 0; j < L; ++j) sum += std::exp(P[(size_t)i*L+j] - m);
                lse[n*L+i] = m + std::log(sum);
                for (int j = 0; j < L; ++j) P[(size_t)i*L+j] = std::exp(P[(size_t)i*L+j] - lse[n*L+i]);
            }
            for (int c = 0; c < C; ++c) for (int i = 0; i < L; ++i) { double a = 0; for (int j = 0; j < L; ++j) a += P[(size_t)i*L+j] * v[(n*C+c)*L+j]; out[(n*C+c)*L+i] = a; }
            for (int i = 0; i < L; ++i) { double delta = 0;
                for (int j = 0; j < L; ++j) { double a = 0; for (int c = 0; c < C; ++c) a += (double)g[(n*C+c)*L+i] * v[(n*C+c)*L+j]; dP[(size_t)i*L+j] = a; delta += a * P[(size_t)i*L+j]; }
                for (int j = 0; j < L; ++j) dP[(size_t)i*L+j] = P[(size_t)i*L+j] * (dP[(size_t)i*L+j] - delta); }
            for (int d = 0; d < D; ++d) for (int i = 0; i < L; ++i) { double a = 0, b = 0; for (int j = 0; j < L; ++j) { a += dP[(size_t)i*L+j] * k[(n*D+d)*L+j]; b += dP[(size_t)j*L+i] * q[(n*D+d)*L+j]; } dq[(n*D+d)*L+i] = a; dk[(n*D+d)*L+i] = b; }
            for (int c = 0; c < C; ++c) for (int j = 0; j < L; ++j) { double a = 0; for (int i = 0; i < L; ++i) a += (double)g[(n*C+c)*L+i] * P[(size_t)i*L+j]; dv[(n*C+c)*L+j] = a; }
        }
        V o(N * C * L, NAN), ls(N * L, NAN), gq(N * D * L, NAN), gk(N * D * L, NAN), gv(N * C * L, NAN), de(N * L, NAN);
        auto cdiv = [](int a, int b) { return (unsigned)((a + b - 1) / b); };
        launch({cdiv(L, 64), cdiv(C, 128), (unsigned)N}, 256, [&] { pam_fwd_f32(q.data(), k.data(), v.data(), o.data(), ls.data(), D, C, L); });
        launch({cdiv(L, 32), (unsigned)N, 1}, 256, [&] { pam_bwd_delta_f32(g.data(), o.data(), de.data(), C, L); });
        unsigned chunks = 2 * cdiv(D, 64) + cdiv(C, 128);
        launch({cdiv(L, 64), chunks, (unsigned)N}, 256, [&] { pam_bwd_f32(q.data(), k.data(), v.data(), g.data(), ls.data(), de.data(), gq.data(), gk.data(), gv.data(), D, C, L); });
        double e[5] = {rel(o, out), rel(ls, lse), rel(gq, dq), rel(gk, dk), rel(gv, dv)};
        printf("N=%d D=%d C=%d L=%d: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", N, D, C, L, e[0], e[1], e[2], e[3], e[4]);
        for (double x : e) ok = ok && x < 1e-5;
    }
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
