// Emulates a CUDA block with std::threads (one per CUDA thread), for checking kernels' indexing on
// a machine without a GPU. Blocks run one after another, so `static` = __shared__.
#pragma once
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
#include <functional>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;
inline std::barrier<>* g_bar;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline void __syncthreads() { g_bar->arrive_and_wait(); }
inline float g_xch[1024];
inline float __shfl_xor_sync(unsigned, float v, int m) {
    int t = threadIdx.x;
    g_xch[t] = v;
    g_bar->arrive_and_wait();
    float r = g_xch[(t & ~31) | ((t & 31) ^ m)];
    g_bar->arrive_and_wait();
    return r;
}
inline void launch(dim3 grid, unsigned threads, std::function<void()> body) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                std::barrier<> bar(threads);
                g_bar = &bar;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([t, &body] { threadIdx = {t, 0, 0}; body(); });
                for (auto& th : ts) th.join();
            }
}
