// Emulates a CUDA block with std::threads (one per CUDA thread), for checking kernels' indexing on
// a machine without a GPU. Blocks run one after another, so `static` = __shared__.
// Only 1-D blocks (every launch checked here uses them). Shuffles wait on a barrier per warp, not
// per block, so a warp-uniform branch that only some warps take (attention.cu's warp_sum under
// `if (ch < C)`) works as on a GPU; __syncthreads waits on the whole block.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;
inline std::barrier<>* g_bar;                        // null in launch_serial: no barriers there
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bar;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
// CUDA's alignment, so a misaligned vector access through a cast pointer is UB that
// -fsanitize=alignment reports (a GPU would fault).
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
// -std=c++20 (ISO mode) does not contract a*b+c into an fma, so these round like CUDA's.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
// The GPU's rsqrtf is approximate (MUFU); here exact. Checks compare kernels that share one call.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
using std::isfinite;
[[noreturn]] inline void emu_no_barrier() {
    std::fprintf(stderr, "emu: a barrier or shuffle in a kernel launched with launch_serial\n");
    std::abort();
}
inline void __syncthreads() { if (!g_bar) emu_no_barrier(); g_bar->arrive_and_wait(); }
// The warp's barrier (every lane of the warp must call it, as the full mask promises).
inline void __syncwarp(unsigned = 0xffffffffu) { if (!g_bar) emu_no_barrier(); g_warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }
inline double g_xch[1024];  // doubles, so float and double shuffles share it
// Every lane of the warp must call it (as the kernels' full masks promise); src = lane to read.
template <class T, class F> inline T warp_exchange(T v, F src) {
    if (!g_bar) emu_no_barrier();
    int t = threadIdx.x;
    std::barrier<>& wb = *g_warp_bar[t >> 5];
    g_xch[t] = (double)v;  // exact for float and double
    wb.arrive_and_wait();
    T r = (T)g_xch[(t & ~31) | src(t & 31)];
    wb.arrive_and_wait();
    return r;
}
template <class T> inline T __shfl_xor_sync(unsigned, T v, int m) { return warp_exchange(v, [m](int l) { return l ^ m; }); }
// Past the warp's last lane a lane reads its own value, as on a GPU.
template <class T> inline T __shfl_down_sync(unsigned, T v, unsigned d) { return warp_exchange(v, [d](int l) { return l + (int)d < 32 ? l + (int)d : l; }); }
template <class T> inline T __shfl_sync(unsigned, T v, int s) { return warp_exchange(v, [s](int) { return s & 31; }); }
// Called before each block's threads start, when set (emu_tc.h's dynamic shared memory poisons
// its buffer there; checks set it and reset it around their launches).
inline std::function<void()> g_before_block;
inline void launch(dim3 grid, unsigned threads, std::function<void()> body) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    g_warp_bar.clear();
    for (unsigned w = 0; w * 32 < threads; ++w) g_warp_bar.emplace_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                if (g_before_block) g_before_block();
                std::barrier<> bar(threads);
                g_bar = &bar;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([t, &body] { threadIdx = {t, 0, 0}; body(); });
                for (auto& th : ts) th.join();
            }
    g_bar = nullptr;
}
// For kernels without barriers or shuffles (element-wise, grid-stride): the block's threads run
// one after another on the calling thread, thousands of times faster than a thread each. A kernel
// that does synchronise aborts here rather than pass.
inline void launch_serial(dim3 grid, unsigned threads, std::function<void()> body) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    g_bar = nullptr;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                if (g_before_block) g_before_block();
                for (unsigned t = 0; t < threads; ++t) { threadIdx = {t, 0, 0}; body(); }
            }
}
