// kernels/optim.cu under emu.h, launched as src/backend/cuda/optim.rs launches it: one table of
// (param, grad, state1, state2) pointers (host pointers here), CHUNK = 16384 elements a block,
// grid = chunks (at most 32 per SM), 256 threads; train_monitor_f32 on one block of 32.
// sgd_fwd_f32 and adam_fwd_f32 against f64 loops over 3 steps, with the hyper-parameters from the
// host (hyper = nullptr) and from the StepScalars train_monitor_f32 writes; the monitor's state
// words, loss ring and scalars against a host model; a non-finite loss freezes every buffer.
#include "emu.h"
#ifndef OPTIM_KERNELS  // mutants.sh points this at a broken copy
#define OPTIM_KERNELS "../../kernels/optim.cu"
#endif
#include OPTIM_KERNELS
#include "check.h"
#include <cstdint>

constexpr int CHUNK = 16384;
constexpr unsigned THREADS = 256, H200_SMS = 132;
// One longer than a chunk, three chunks with a short last one, and lengths below a block.
const std::vector<size_t> LENS = {1, 37, CHUNK + 1, 40000, 255};

struct Set {  // the parameter set: every tensor's param, grad, state1, state2
    std::vector<V> p, g, s1, s2;
    std::vector<unsigned long long> ptrs;
    std::vector<long long> lens;
    std::vector<Chunk> chunks;
    void table() {  // ParamTable::build
        ptrs.clear(), lens.clear(), chunks.clear();
        for (size_t t = 0; t < p.size(); ++t) {
            for (V* b : {&p[t], &g[t], &s1[t], &s2[t]}) ptrs.push_back((unsigned long long)(uintptr_t)b->data());
            lens.push_back((long long)p[t].size());
            for (size_t st = 0; st < p[t].size(); st += CHUNK) chunks.push_back({(int)t, (long long)st});
        }
    }
    unsigned grid() const { return std::clamp<unsigned>(chunks.size(), 1, H200_SMS * 32); }  // launch_cfg
    std::vector<V> snapshot() const { std::vector<V> r = p; r.insert(r.end(), s1.begin(), s1.end()); r.insert(r.end(), s2.begin(), s2.end()); return r; }
};
struct Hyper { float mom, wd, b1, b2, eps; };
struct Ref { std::vector<D> p, s1, s2; };

static void sgd(Set& s, const StepScalars* hy, float lr, const Hyper& h, unsigned grid) {
    launch_serial({grid}, THREADS, [&] { sgd_fwd_f32(s.ptrs.data(), s.lens.data(), s.chunks.data(), s.chunks.size(), CHUNK, hy, lr, h.mom, h.wd); });
}
static void adam(Set& s, const StepScalars* hy, float lr, float bc1, float bc2, const Hyper& h, unsigned grid) {
    launch_serial({grid}, THREADS, [&] {
        adam_fwd_f32(s.ptrs.data(), s.lens.data(), s.chunks.data(), s.chunks.size(), CHUNK, hy, lr, h.b1, h.b2, h.eps, h.wd, bc1, bc2);
    });
}
// One step of the f64 model; t is Adam's 1-based step.
static void ref_step(bool is_adam, Ref& r, const Set& s, double lr, int t, const Hyper& h) {
    for (size_t k = 0; k < r.p.size(); ++k)
        for (size_t i = 0; i < r.p[k].size(); ++i) {
            double& p = r.p[k][i];
            double g = s.g[k][i] + (double)h.wd * p;
            if (!is_adam) {
                r.s1[k][i] = h.mom * r.s1[k][i] + g;
                p -= lr * r.s1[k][i];
            } else {
                double m = r.s1[k][i] = h.b1 * r.s1[k][i] + (1.0 - h.b1) * g;
                double v = r.s2[k][i] = h.b2 * r.s2[k][i] + (1.0 - h.b2) * g * g;
                p -= lr * (m / (1.0 - std::pow((double)h.b1, t))) / (std::sqrt(v / (1.0 - std::pow((double)h.b2, t))) + h.eps);
            }
        }
}
static double compare(bool is_adam, const Set& s, const Ref& r) {
    double e = 0;
    for (size_t k = 0; k < s.p.size(); ++k) {
        // A whole-set RMS floor: a 1-element tensor's own RMS is its value.
        e = std::max({e, err_rms(s.p[k], r.p[k]), err_rms(s.s1[k], r.s1[k])});
        if (is_adam) e = std::max(e, err_rms(s.s2[k], r.s2[k]));
    }
    return e;
}
static Set make_set(std::mt19937& rng, Ref& r) {
    Set s;
    for (size_t n : LENS) {
        s.p.push_back(rand_vec(rng, n));
        s.g.push_back(rand_vec(rng, n));
        s.s1.push_back(V(n, 0.0f));  // zero before the first step, as the optimisers allocate them
        s.s2.push_back(V(n, 0.0f));
    }
    s.table();
    for (auto& v : s.p) r.p.emplace_back(v.begin(), v.end());
    for (auto& v : s.s1) r.s1.emplace_back(v.size(), 0.0), r.s2.emplace_back(v.size(), 0.0);
    return s;
}
// In place: the table holds the buffers' addresses.
static void new_grads(std::mt19937& rng, Set& s) { for (auto& g : s.g) { V n = rand_vec(rng, g.size()); std::copy(n.begin(), n.end(), g.begin()); } }

static bool ok = true;
static void report(const char* what, double e, bool extra = true) {
    bool pass = e <= 1e-5 && extra;
    printf("%-58s max rel err %.2e%s\n", what, e, pass ? "" : "  FAIL");
    ok = ok && pass;
}

// (1) hyper = nullptr: lr and the bias corrections as kernel arguments (GpuOptimizer, StepHyper::Host).
static void host_steps(bool is_adam, const Hyper& h) {
    std::mt19937 rng(is_adam ? 11 : 7);
    Ref r;
    Set s = make_set(rng, r), s2;
    double e = 0;
    bool same = true;
    for (int t = 1; t <= 3; ++t) {
        float lr = std::uniform_real_distribution<float>(1e-3f, 5e-2f)(rng);
        new_grads(rng, s);
        s2 = s; s2.table();  // a copy stepped on a 2-block grid: the chunk loop's stride
        if (is_adam) {
            float bc1 = (float)(1.0 - std::pow((double)h.b1, t)), bc2 = (float)(1.0 - std::pow((double)h.b2, t));  // adam_step's powi
            adam(s, nullptr, lr, bc1, bc2, h, s.grid());
            adam(s2, nullptr, lr, bc1, bc2, h, 2);
        } else {
            sgd(s, nullptr, lr, h, s.grid());
            sgd(s2, nullptr, lr, h, 2);
        }
        same = same && s.snapshot().size() == s2.snapshot().size();
        auto a = s.snapshot(), b = s2.snapshot();
        for (size_t k = 0; k < a.size(); ++k) same = same && same_bits(a[k], b[k]);
        ref_step(is_adam, r, s, lr, t, h);
        e = std::max(e, compare(is_adam, s, r));
    }
    report(is_adam ? "adam, host lr/bc, 3 steps (2-block grid: same bits)" : "sgd, host lr, 3 steps (2-block grid: same bits)", e, same);
}

// (2) hyper = the StepScalars train_monitor_f32 writes, one monitor launch before each step.
// `losses` are the steps' losses; the table has `n_lr` random rates.
static void device_steps(bool is_adam, const Hyper& h, std::vector<float> losses, int n_lr, int capacity, const char* what) {
    std::mt19937 rng(is_adam ? 13 : 17);
    Ref r;
    Set s = make_set(rng, r);
    V table = rand_vec(rng, n_lr, 1e-3f, 5e-2f);
    unsigned state[3] = {0, 0, 0};
    V ring(capacity, NAN);
    StepScalars sc{NAN, NAN, NAN, NAN};
    double e = 0, emon = 0;
    bool mon = true, frozen = true;
    unsigned first_bad = 0, steps = 0;
    std::vector<V> last_good = s.snapshot();
    for (unsigned it = 0; it < losses.size(); ++it) {
        V loss = {losses[it]};
        launch_serial({1}, 32, [&] { train_monitor_f32(loss.data(), state, ring.data(), capacity, table.data(), n_lr, &sc, h.b1, h.b2); });
        // The host model of the monitor.
        if (!std::isfinite(losses[it]) && first_bad == 0) first_bad = it + 1;
        bool skip = first_bad != 0;
        double t = steps + 1;
        float lr_want = it < (unsigned)n_lr ? table[it] : 0.0f;
        double bc1 = 1.0 - std::pow((double)h.b1, t), bc2 = 1.0 - std::pow((double)h.b2, t);
        mon = mon && state[0] == it + 1 && state[1] == first_bad && state[2] == steps + (skip ? 0 : 1);
        mon = mon && same_bits(V{ring[it % capacity]}, loss) && same_bits(V{sc.lr}, V{lr_want}) && sc.skip == (skip ? 1.0f : 0.0f);
        emon = std::max({emon, std::fabs(sc.bc1 - bc1) / bc1, std::fabs(sc.bc2 - bc2) / bc2});
        new_grads(rng, s);  // a skipped step's gradient is whatever backward left (here random, finite)
        if (is_adam) adam(s, &sc, 0.0f, 1.0f, 1.0f, h, s.grid());  // adam_step passes lr 0, bc 1 with Device
        else sgd(s, &sc, 0.0f, h, s.grid());
        if (skip) {
            auto now = s.snapshot();
            for (size_t k = 0; k < now.size(); ++k) frozen = frozen && same_bits(now[k], last_good[k]);
        } else {
            ++steps;
            ref_step(is_adam, r, s, lr_want, steps, h);
            e = std::max(e, compare(is_adam, s, r));
            last_good = s.snapshot();
        }
    }
    char buf[160];
    snprintf(buf, sizeof buf, "%s %s", is_adam ? "adam," : "sgd, ", what);
    report(buf, e, frozen && mon);
    if (!frozen) printf("  parameters or states changed after a non-finite loss\n");
    if (!mon) printf("  train_monitor_f32's state, loss ring, lr or skip differ from the model\n");
    if (emon > 1e-6) { printf("  bias corrections off by %.2e\n", emon); ok = false; }
}

int main() {
    Hyper h{0.9f, 5e-3f, 0.9f, 0.999f, 1e-8f};
    for (bool a : {false, true}) {
        host_steps(a, h);
        // 4 iterations over a 3-rate table: the 4th has lr 0 (its update leaves params unchanged).
        device_steps(a, h, {0.7f, 0.6f, 0.5f, 0.4f}, 3, 3, "monitor scalars, 3 steps + 1 past the lr table");
        // A NaN loss at step 2, then inf and a finite one: only step 1 updates; ring of 2 wraps.
        device_steps(a, h, {0.7f, NAN, INFINITY, 0.5f}, 5, 2, "monitor, NaN at step 2: later steps frozen");
    }
    printf(ok ? "ALL OK\n" : "FAILED\n");
    return ok ? 0 : 1;
}
