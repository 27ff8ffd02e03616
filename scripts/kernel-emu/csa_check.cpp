// kernels/attention.cu (the fused CSA ops) under emu.h, launched as src/ops/attention/cuda.rs
// launches them (grids, 256 threads, the tiled first stage then csa_finish_f32), against f64
// loops, on shapes where C and H*W are not multiples of the tiles (32 channels x 128 pixels);
// and SE's and ECA's pair gates (se_*_f32, eca_*_f32) forward and backward.
// Every output and partial-sum buffer starts as NaN, so an element no thread writes fails.
#include "emu.h"
#ifndef CSA_KERNELS  // mutants.sh points this at a broken copy
#define CSA_KERNELS "../../kernels/attention.cu"
#endif
#include CSA_KERNELS
#include "check.h"
#include <array>
#include <chrono>

constexpr unsigned THREADS = 256, TC = 32, TP = 128;
static unsigned cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }
// launch.rs grid_1d: enough blocks for n items, at most 16 per SM (132 SMs on the H200).
static unsigned grid_1d(size_t n, unsigned sms) { return std::clamp(cdiv(n, THREADS), 1u, sms * 16); }
// cuda.rs elementwise_items: groups of 4 when a row (H*W) holds whole groups.
static size_t items(int N, int C, int hw) { size_t len = (size_t)N * C * hw; return hw % 4 == 0 ? len / 4 : len; }

struct Out { V a, b, c; };
// The tiled first stage's partial sums (cuda.rs Tiles): (N*C, pixel tiles) and (N, chunks, HW).
struct Parts { unsigned pt, ch; V c, p; };
static Parts parts(int N, int C, int hw) {
    unsigned pt = cdiv(hw, TP), ch = cdiv(C, TC);
    return {pt, ch, V((size_t)N * C * pt, NAN), V((size_t)N * ch * hw, NAN)};
}
// csa_pool_fwd (cuda.rs): the tiled pass, then finish into one packed (N, C + HW) buffer. `sms`
// holds one grid size per finish (launch.rs sizes grids by the SM count); a result for each.
static std::vector<V> pool_fwd(const V& f, int N, int C, int hw, std::vector<unsigned> sms) {
    Parts t = parts(N, C, hw);
    launch({t.pt, t.ch, (unsigned)N}, THREADS, [&] { csa_pool_fwd_f32(f.data(), t.c.data(), t.p.data(), C, hw); });
    int row = C + hw;
    std::vector<V> r;
    for (unsigned m : sms) {
        V out((size_t)N * row, NAN);
        launch_serial({grid_1d(out.size(), m)}, THREADS, [&] {
            csa_finish_f32(t.c.data(), t.p.data(), out.data(), out.data(), N, C, hw, t.pt, t.ch, 0, row, C, row, 1.0f / hw, 1.0f / C);
        });
        r.push_back(out);
    }
    return r;
}
// csa_gate_bwd (cuda.rs): df from the tiled pass, dc and ds from finish (one pair per `sms`).
static Out gate_bwd(const V& dy, const V& f, const V& c, const V& s, int N, int C, int hw, std::vector<unsigned> sms, std::vector<V>* more) {
    Parts t = parts(N, C, hw);
    Out o{V(f.size(), NAN), V((size_t)N * C, NAN), V((size_t)N * hw, NAN)};
    launch({t.pt, t.ch, (unsigned)N}, THREADS, [&] {
        csa_gate_bwd_f32(dy.data(), f.data(), c.data(), s.data(), o.a.data(), t.c.data(), t.p.data(), C, hw);
    });
    for (size_t k = 0; k < sms.size(); ++k) {
        V dc((size_t)N * C, NAN), ds((size_t)N * hw, NAN);
        launch_serial({grid_1d((size_t)N * (C + hw), sms[k])}, THREADS, [&] {
            csa_finish_f32(t.c.data(), t.p.data(), dc.data(), ds.data(), N, C, hw, t.pt, t.ch, 0, C, 0, hw, 1.0f, 1.0f);
        });
        if (k == 0) o.b = dc, o.c = ds; else more->push_back(ds), more->push_back(dc);
    }
    return o;
}
static V pool_bwd(const V& g, int N, int C, int hw, unsigned sms) {
    V df((size_t)N * C * hw, NAN);
    launch_serial({grid_1d(items(N, C, hw), sms)}, THREADS, [&] { csa_pool_bwd_f32(g.data(), df.data(), N, C, hw, 1.0f / hw, 1.0f / C); });
    return df;
}
static V gate_fwd(const V& f, const V& c, const V& s, int N, int C, int hw, unsigned sms) {
    V y(f.size(), NAN);
    launch_serial({grid_1d(items(N, C, hw), sms)}, THREADS, [&] { csa_gate_fwd_f32(f.data(), c.data(), s.data(), y.data(), N, C, hw); });
    return y;
}

// SE's pair gate (se_*_f32) as cuda.rs se_pair_fwd / se_pair_bwd launch it, against f64: the
// forward (hidden, gates, out) and, from the f64 forward, the backward (dpa, dpb, dw1, db1, dw2,
// db2); each sum's error relative to its sum of |terms|, the gradients relative to their RMS.
// Then again with one SM's worth of blocks (the grid-stride loops take several turns): same bits.
struct Se { V hid, gates, out, dpa, dpb, dw1, db1, dw2, db2; };
static Se se_run(const V& pa, const V& pb, const V& w1, const V& b1, const V& w2, const V& b2, const V& g, int N, int C, int HD, unsigned sms) {
    Se r{V(2 * N * HD, NAN), V(2 * N * C, NAN), V(N * C, NAN), V(N * C, NAN), V(N * C, NAN), V(HD * C, NAN), V(HD, NAN), V(C * HD, NAN), V(C, NAN)};
    V dz(2 * N * C, NAN), dz1(2 * N * HD, NAN);
    launch({grid_1d((size_t)32 * 2 * N * HD, sms)}, THREADS, [&] { se_hidden_f32(pa.data(), pb.data(), w1.data(), b1.data(), r.hid.data(), N, C, HD); });
    launch_serial({grid_1d((size_t)N * C, sms)}, THREADS, [&] { se_gate_f32(r.hid.data(), w2.data(), b2.data(), r.gates.data(), r.out.data(), N, C, HD); });
    launch({grid_1d((size_t)32 * C, sms)}, THREADS, [&] { se_bwd_gate_f32(g.data(), r.gates.data(), r.hid.data(), dz.data(), r.dw2.data(), r.db2.data(), N, C, HD); });
    launch({(unsigned)(2 * N)}, THREADS, [&] { se_bwd_hidden_f32(dz.data(), w2.data(), r.hid.data(), dz1.data(), C, HD); });
    launch_serial({grid_1d((size_t)2 * N * C + HD * C + HD, sms)}, THREADS, [&] {
        se_bwd_input_f32(dz1.data(), pa.data(), pb.data(), w1.data(), r.dpa.data(), r.dpb.data(), r.dw1.data(), r.db1.data(), N, C, HD);
    });
    return r;
}
static bool se_check() {
    bool ok = true;
    // (N, C, HD): batch 1, odd widths, HD past one warp (33: two rounds of 32 hidden units), C past 256 threads.
    int shapes[][3] = {{1, 37, 2}, {3, 70, 5}, {2, 45, 33}, {2, 300, 16}};
    for (auto& sh : shapes) {
        const int N = sh[0], C = sh[1], HD = sh[2];
        std::mt19937 rng(7000 + N * 31 + C + HD);
        V pa = rand_vec(rng, N * C), pb = rand_vec(rng, N * C), w1 = rand_vec(rng, HD * C), b1 = rand_vec(rng, HD);
        V w2 = rand_vec(rng, C * HD, -0.3f, 0.3f), b2 = rand_vec(rng, C), g = rand_vec(rng, N * C);
        auto p = [&](int i, int c) -> double { return i < N ? pa[i * C + c] : pb[(i - N) * C + c]; };
        D hid(2 * N * HD), hid_fl(hid.size()), z(2 * N * C), gates(z.size()), out(N * C);
        for (int i = 0; i < 2 * N; ++i)
            for (int j = 0; j < HD; ++j) {
                double a = b1[j], f = std::fabs(b1[j]);
                for (int c = 0; c < C; ++c) a += (double)w1[j * C + c] * p(i, c), f += std::fabs((double)w1[j * C + c] * p(i, c));
                hid[i * HD + j] = a > 0 ? a : 0, hid_fl[i * HD + j] = f;
            }
        for (int i = 0; i < 2 * N; ++i)
            for (int c = 0; c < C; ++c) {
                double a = b2[c];
                for (int j = 0; j < HD; ++j) a += (double)w2[c * HD + j] * hid[i * HD + j];
                z[i * C + c] = a, gates[i * C + c] = 1.0 / (1.0 + std::exp(-a));
            }
        for (int n = 0; n < N; ++n)
            for (int c = 0; c < C; ++c) out[n * C + c] = gates[n * C + c] * gates[(N + n) * C + c];
        // The backward in f64.
        D dz(2 * N * C), dz1(2 * N * HD, 0), dpa(N * C, 0), dpb(N * C, 0), dw1(HD * C, 0), db1(HD, 0), dw2(C * HD, 0), db2(C, 0);
        for (int n = 0; n < N; ++n)
            for (int c = 0; c < C; ++c) {
                const double ga = gates[n * C + c], gb = gates[(N + n) * C + c], go = g[n * C + c];
                dz[n * C + c] = go * gb * ga * (1 - ga), dz[(N + n) * C + c] = go * ga * gb * (1 - gb);
            }
        for (int i = 0; i < 2 * N; ++i)
            for (int c = 0; c < C; ++c) {
                db2[c] += dz[i * C + c];
                for (int j = 0; j < HD; ++j) dw2[c * HD + j] += dz[i * C + c] * hid[i * HD + j], dz1[i * HD + j] += dz[i * C + c] * w2[c * HD + j];
            }
        for (int i = 0; i < 2 * N; ++i)
            for (int j = 0; j < HD; ++j)
                if (hid[i * HD + j] <= 0) dz1[i * HD + j] = 0;
        for (int i = 0; i < 2 * N; ++i)
            for (int j = 0; j < HD; ++j) {
                db1[j] += dz1[i * HD + j];
                for (int c = 0; c < C; ++c) {
                    dw1[j * C + c] += dz1[i * HD + j] * p(i, c);
                    (i < N ? dpa[i * C + c] : dpb[(i - N) * C + c]) += dz1[i * HD + j] * w1[j * C + c];
                }
            }
        const Se r = se_run(pa, pb, w1, b1, w2, b2, g, N, C, HD, 132), one = se_run(pa, pb, w1, b1, w2, b2, g, N, C, HD, 1);
        const double e[9] = {err(r.hid, hid, hid_fl), err(r.gates, gates), err(r.out, out), err_rms(r.dpa, dpa), err_rms(r.dpb, dpb),
                             err_rms(r.dw1, dw1), err_rms(r.db1, db1), err_rms(r.dw2, dw2), err_rms(r.db2, db2)};
        const bool stride = same_bits(one.out, r.out) && same_bits(one.dpa, r.dpa) && same_bits(one.dpb, r.dpb) && same_bits(one.dw1, r.dw1) &&
                            same_bits(one.db1, r.db1) && same_bits(one.dw2, r.dw2) && same_bits(one.db2, r.db2);
        printf("se_pair N=%d C=%d HD=%d: hid %.2e gates %.2e out %.2e; dpa %.2e dpb %.2e dw1 %.2e db1 %.2e dw2 %.2e db2 %.2e; grid-stride same bits: %s\n",
               N, C, HD, e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], stride ? "yes" : "NO");
        for (double x : e) ok = ok && x <= 1e-5;
        ok = ok && stride;
    }
    return ok;
}

// ECA's pair gate (eca_*_f32) as cuda.rs eca_pair_fwd / eca_pair_bwd launch it: against f64
// (forward: each sum relative to its sum of |terms|; gradients relative to their RMS) and bit for
// bit against the composed ops' f32 sequence (conv1d.cu's taps, the map kernels' sigmoid and its
// gradient, the product's gradient) for the gate and the inputs' gradients; one SM's worth of
// blocks gives the same bits. Kernels of 1 to 9 taps, 9 wider than the 7 channels.
static float host_sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + std::exp(-x));
    const float e = std::exp(x);
    return e / (1.0f + e);
}
static bool eca_check() {
    bool ok = true;
    const int shapes[][3] = {{1, 7, 9}, {3, 70, 3}, {2, 300, 5}, {2, 45, 1}, {4, 2048, 5}};
    for (auto& sh : shapes) {
        const int N = sh[0], C = sh[1], K = sh[2], pad = (K - 1) / 2;
        std::mt19937 rng(8000 + N * 31 + C + K);
        const V pa = rand_vec(rng, N * C), pb = rand_vec(rng, N * C), w = rand_vec(rng, K), g = rand_vec(rng, N * C);
        auto p = [&](int i, int c) -> float { return i < N ? pa[i * C + c] : pb[(i - N) * C + c]; };
        auto run = [&](unsigned sms) {
            std::array<V, 5> r = {V(2 * N * C, NAN), V(N * C, NAN), V(N * C, NAN), V(N * C, NAN), V(K, NAN)};
            launch({grid_1d((size_t)N * C, sms)}, THREADS, [&] { eca_gate_f32(pa.data(), pb.data(), w.data(), r[0].data(), r[1].data(), N, C, K); });
            launch({grid_1d((size_t)2 * N * C, sms)}, THREADS, [&] { eca_bwd_input_f32(g.data(), r[0].data(), w.data(), r[2].data(), r[3].data(), N, C, K); });
            launch({grid_1d((size_t)32 * K, sms)}, THREADS, [&] { eca_bwd_weight_f32(g.data(), r[0].data(), pa.data(), pb.data(), r[4].data(), N, C, K); });
            return r;
        };
        const auto r = run(132), one = run(1);
        // f64, and the composed ops' f32 sequence.
        D z(2 * N * C), zf(2 * N * C, 0), gates(2 * N * C), out(N * C), dz(2 * N * C), dpa(N * C, 0), dpb(N * C, 0), dw(K, 0);
        V zc(2 * N * C), gc(2 * N * C), outc(N * C), dzc(2 * N * C), dpc(2 * N * C);
        for (int i = 0; i < 2 * N; ++i)
            for (int c = 0; c < C; ++c) {
                double a = 0;
                float af = 0.0f;
                for (int j = 0; j < K; ++j) {
                    const int src = c + j - pad;
                    if (src < 0 || src >= C) continue;
                    a += (double)w[j] * p(i, src), zf[i * C + c] += std::fabs((double)w[j] * p(i, src));
                    af += w[j] * p(i, src);
                }
                z[i * C + c] = a, gates[i * C + c] = 1 / (1 + std::exp(-a));
                zc[i * C + c] = af, gc[i * C + c] = host_sigmoid(af);
            }
        for (int e = 0; e < N * C; ++e) out[e] = gates[e] * gates[N * C + e], outc[e] = gc[e] * gc[N * C + e];
        for (int i = 0; i < 2 * N; ++i)
            for (int c = 0; c < C; ++c) {
                const int n = i < N ? i : i - N, other = i < N ? i + N : i - N;
                const double y = gates[i * C + c];
                dz[i * C + c] = g[n * C + c] * gates[other * C + c] * y * (1 - y);
                const float d = g[n * C + c] * gc[other * C + c];  // the product's gradient, then the sigmoid's
                dzc[i * C + c] = d * gc[i * C + c] * (1.0f - gc[i * C + c]);
            }
        for (int i = 0; i < 2 * N; ++i)
            for (int c = 0; c < C; ++c) {
                float acc = 0.0f;
                for (int j = 0; j < K; ++j) {
                    const int src = c - j + pad;
                    if (src < 0 || src >= C) continue;
                    (i < N ? dpa[i * C + c] : dpb[(i - N) * C + c]) += (double)w[j] * dz[i * C + src];
                    acc += w[j] * dzc[i * C + src];
                }
                dpc[i * C + c] = acc;
                for (int j = 0; j < K; ++j) {
                    const int src = c + j - pad;
                    if (src >= 0 && src < C) dw[j] += dz[i * C + c] * p(i, src);
                }
            }
        const V dpac(dpc.begin(), dpc.begin() + N * C), dpbc(dpc.begin() + N * C, dpc.end());
        const double e[6] = {err(r[0], gates), err(r[1], out), err_rms(r[2], dpa), err_rms(r[3], dpb), err_rms(r[4], dw),
                             err(V(zc.begin(), zc.end()), z, zf)};
        const bool composed = same_bits(r[0], gc) && same_bits(r[1], outc) && same_bits(r[2], dpac) && same_bits(r[3], dpbc);
        bool stride = true;
        for (int i = 0; i < 5; ++i) stride = stride && same_bits(r[i], one[i]);
        printf("eca_pair N=%d C=%d k=%d: gates %.2e out %.2e dpa %.2e dpb %.2e dw %.2e (z %.2e); composed bits: %s; grid-stride same bits: %s\n", N,
               C, K, e[0], e[1], e[2], e[3], e[4], e[5], composed ? "yes" : "NO", stride ? "yes" : "NO");
        for (double x : e) ok = ok && x <= 1e-5;
        ok = ok && composed && stride;
    }
    return ok;
}

int main() {
    // N, C, H*W. 33*33 and 129 pixels end in a partial pixel tile, 12 and 256 take the kernels'
    // 4-wide path (12 with odd C: unaligned pixel-mean loads), C = 2048 is 64 channel chunks.
    // The 2048-channel shapes are kept to <= 256 pixels: the emulator starts 256 threads a block.
    int shapes[][3] = {{1, 1, 1}, {3, 37, 33 * 33}, {1, 130, 16 * 16}, {3, 37, 12}, {2, 33, 129}, {1, 2048, 16 * 16}, {3, 2048, 1}};
    bool ok = true;
    for (auto& sh : shapes) {
        auto t0 = std::chrono::steady_clock::now();
        int N = sh[0], C = sh[1], hw = sh[2];
        size_t nel = (size_t)N * C * hw;
        std::mt19937 rng(N * 100003 + C * 131 + hw);
        V f = rand_vec(rng, nel), dy = rand_vec(rng, nel), c = rand_vec(rng, (size_t)N * C), s = rand_vec(rng, (size_t)N * hw);
        V g = rand_vec(rng, (size_t)N * (C + hw));
        auto at = [&](int n, int ch, int p) { return (size_t)(n * C + ch) * hw + p; };
        // f64 references, and each sum's sum of |terms| (its rounding error's scale).
        D pool((size_t)N * (C + hw), 0), pool_fl(pool.size(), 0);
        D y(nel), df(nel), dfp(nel), dfp_fl(nel), dc((size_t)N * C, 0), dc_fl(dc.size(), 0), ds((size_t)N * hw, 0), ds_fl(ds.size(), 0);
        V y32(nel), df32(nel), dfp32(nel);  // cpu.rs's f32 roundings, which the kernels match bit for bit
        for (int n = 0; n < N; ++n)
            for (int ch = 0; ch < C; ++ch)
                for (int p = 0; p < hw; ++p) {
                    size_t i = at(n, ch, p);
                    double x = f[i], gd = dy[i], cv = c[n * C + ch], sv = s[n * hw + p];
                    size_t gi = (size_t)n * (C + hw) + ch, mi = (size_t)n * (C + hw) + C + p;
                    pool[gi] += x / hw; pool_fl[gi] += std::fabs(x) / hw;
                    pool[mi] += x / C;  pool_fl[mi] += std::fabs(x) / C;
                    y[i] = x * cv * sv;
                    df[i] = gd * sv * cv;
                    dc[n * C + ch] += gd * sv * x; dc_fl[n * C + ch] += std::fabs(gd * sv * x);
                    ds[n * hw + p] += gd * x * cv;  ds_fl[n * hw + p] += std::fabs(gd * x * cv);
                    dfp[i] = (double)g[gi] / hw + (double)g[mi] / C;
                    dfp_fl[i] = std::fabs((double)g[gi] / hw) + std::fabs((double)g[mi] / C);
                    y32[i] = (f[i] * c[n * C + ch]) * s[n * hw + p];
                    df32[i] = (dy[i] * s[n * hw + p]) * c[n * C + ch];
                    dfp32[i] = g[gi] * (1.0f / hw) + g[mi] * (1.0f / C);
                }
        const unsigned H200 = 132;
        std::vector<V> pos = pool_fwd(f, N, C, hw, {H200, 1}), more;
        const V& po = pos[0];
        V yo = gate_fwd(f, c, s, N, C, hw, H200);
        V pb = pool_bwd(g, N, C, hw, H200);
        Out gb = gate_bwd(dy, f, c, s, N, C, hw, {H200, 1}, &more);
        double e[6] = {err(po, pool, pool_fl), err(yo, y), err(pb, dfp, dfp_fl), err(gb.a, df), err(gb.b, dc, dc_fl), err(gb.c, ds, ds_fl)};
        bool bits = same_bits(yo, y32) && same_bits(gb.a, df32) && same_bits(pb, dfp32);
        // One SM's worth of blocks (16): the grid-stride loops take several turns; same bits.
        bool stride = same_bits(gate_fwd(f, c, s, N, C, hw, 1), yo) && same_bits(pool_bwd(g, N, C, hw, 1), pb) &&
                      same_bits(pos[1], po) && same_bits(more[0], gb.c) && same_bits(more[1], gb.b);
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        printf("N=%d C=%d HW=%d: pool %.2e gate_fwd %.2e pool_bwd %.2e gate_bwd df %.2e dc %.2e ds %.2e; "
               "element-wise = cpu.rs bits: %s; grid-stride same bits: %s (%.1fs)\n",
               N, C, hw, e[0], e[1], e[2], e[3], e[4], e[5], bits ? "yes" : "NO", stride ? "yes" : "NO", secs);
        for (double x : e) ok = ok && x <= 1e-5;
        ok = ok && bits && stride;
    }
    ok = se_check() && ok;
    ok = eca_check() && ok;
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
