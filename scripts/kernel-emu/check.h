// Helpers shared by the checks: random buffers, and the error of a float result against an f64
// reference, per element, relative to max(|ref|, floor) where floor is what fp32 rounding error
// scales with (a sum's sum of |terms|; a tensor's RMS).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
using V = std::vector<float>;
using D = std::vector<double>;
inline V rand_vec(std::mt19937& rng, size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> u(lo, hi);
    V v(n);
    for (auto& x : v) x = u(rng);
    return v;
}
// Max over elements of |a - ref| / max(|ref|, floor); inf if any element is not finite (a NaN
// poison left unwritten) or the sizes differ.
inline double err(const V& a, const D& ref, const D& floor) {
    if (a.size() != ref.size()) return INFINITY;
    double e = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        e = std::max(e, std::fabs(a[i] - ref[i]) / std::max({std::fabs(ref[i]), floor[i], 1e-30}));
    }
    return e;
}
inline double err(const V& a, const D& ref) { return err(a, ref, D(ref.size(), 0.0)); }
// The tensor's RMS as every element's floor (for values that pass near zero, like parameters).
inline double err_rms(const V& a, const D& ref) {
    double s = 0;
    for (double x : ref) s += x * x;
    return err(a, ref, D(ref.size(), std::sqrt(s / std::max<size_t>(ref.size(), 1))));
}
inline bool same_bits(const V& a, const V& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
        return std::memcmp(&x, &y, 4) == 0;
    });
}
