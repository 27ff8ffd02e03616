// kernels/attention.cu (the fused CSA ops) under emu.h, launched as src/ops/attention/cuda.rs
// launches them (grids, 256 threads, the tiled first stage then csa_finish_f32), against f64
// loops, on shapes where C and H*W are not multiples of the tiles (32 channels x 128 pixels).
// Every output and partial-sum buffer starts as NaN, so an element no thread writes fails.
#include "emu.h"
#ifndef CSA_KERNELS  // mutants.sh points this at a broken copy
#define CSA_KERNELS "../../kernels/attention.cu"
#endif
#include CSA_KERNELS
#include "check.h"
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
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
