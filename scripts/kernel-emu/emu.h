// Emulates a CUDA block with std::threads (one per CUDA thread), for checking kernels' indexing on
// a machine without a GPU. Blocks run one after another, so `static` = __shared__.
// With EMU_FIBERS (scripts/cuda-emu, the CUDA driver on the CPU) every CUDA thread is a fiber
// on the calling OS thread instead (emu_fiber.h): the same interface, about ten times faster on
// the tensor-core checks, and cooperative launches run all blocks at once.
// Only 1-D blocks (every launch checked here uses them). Shuffles wait on a barrier per warp, not
// per block, so a warp-uniform branch that only some warps take (attention.cu's warp_sum under
// `if (ch < C)`) works as on a GPU; __syncthreads waits on the whole block.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include "emu_race.h"
#if defined(EMU_RACE) && !defined(EMU_FIBERS)
#error "race detection (-fsanitize=thread) needs the fiber emulator (-DEMU_FIBERS)"
#endif
struct dim3 { unsigned x = 1, y = 1, z = 1; };
#ifdef EMU_FIBERS
struct EmuBarrier;  // emu_fiber.h
#else
using EmuBarrier = std::barrier<>;
#endif
inline EmuBarrier* g_bar;                        // null in launch_serial: no barriers there
inline std::vector<std::unique_ptr<EmuBarrier>> g_warp_bar;
// Called on each CUDA thread when its kernel body returns (emu_async.h checks that thread's
// cp.async copies were all waited for).
inline void (*g_after_thread)() = nullptr;
// Called before each block's threads start, when set (emu_tc.h's dynamic shared memory poisons
// its buffer there; checks set it and reset it around their launches).
inline std::function<void()> g_before_block;
#ifdef EMU_FIBERS
#include "emu_fiber.h"
#else
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;
#endif
// `used`: scripts/cuda-emu finds the kernels by it in the preprocessed source.
#define __global__ __attribute__((used))
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
// The barrier of warp w of the running block.
inline EmuBarrier& emu_warp_barrier(int w) {
#ifdef EMU_FIBERS
    if (g_fiber_blocks_concurrent) emu_fiber_no_warp_collectives();
#endif
    return *g_warp_bar[w];
}
inline void __syncwarp(unsigned = 0xffffffffu) { if (!g_bar) emu_no_barrier(); emu_warp_barrier(threadIdx.x >> 5).arrive_and_wait(); }
// A warp collective's wait for its lanes (shuffles, votes; emu_tc.h's mma and ldmatrix): unlike
// __syncwarp it orders no memory for the race detector (emu_race.h), as PTX promises none.
inline void emu_warp_converge(int w) {
#ifdef EMU_FIBERS
    emu_warp_barrier(w).arrive_and_wait(false);
#else
    emu_warp_barrier(w).arrive_and_wait();
#endif
}
inline double g_xch[1024];  // doubles, so float and double shuffles share it
// Every lane of the warp must call it (as the kernels' full masks promise); src = lane to read.
// The exchange area is the emulator's, not the kernel's: not checked for races (EMU_NOT_RACED).
template <class T, class F> EMU_NOT_RACED inline T warp_exchange(T v, F src) {
    if (!g_bar) emu_no_barrier();
    int t = threadIdx.x;
    g_xch[t] = (double)v;  // exact for float and double
    emu_warp_converge(t >> 5);
    T r = (T)g_xch[(t & ~31) | src(t & 31)];
    emu_warp_converge(t >> 5);
    return r;
}
template <class T> inline T __shfl_xor_sync(unsigned, T v, int m) { return warp_exchange(v, [m](int l) { return l ^ m; }); }
// Past the warp's last lane a lane reads its own value, as on a GPU.
template <class T> inline T __shfl_down_sync(unsigned, T v, unsigned d) { return warp_exchange(v, [d](int l) { return l + (int)d < 32 ? l + (int)d : l; }); }
template <class T> inline T __shfl_sync(unsigned, T v, int s) { return warp_exchange(v, [s](int) { return s & 31; }); }
// Every lane's v, by lane; every lane of the warp must call it. Returns the lanes the warp has
// (fewer in a block's last, partial warp). For the vote and match intrinsics.
inline unsigned long long g_xch64[1024];
template <class T> EMU_NOT_RACED inline unsigned warp_gather(T v, unsigned long long (&out)[32]) {
    if (!g_bar) emu_no_barrier();
    int t = threadIdx.x;
    unsigned long long u = 0;
    std::memcpy(&u, &v, sizeof(T) < 8 ? sizeof(T) : 8);
    g_xch64[t] = u;
    emu_warp_converge(t >> 5);
    unsigned lanes = 0;
    for (int l = 0; l < 32; ++l) {
        unsigned s = (unsigned)(t & ~31) + (unsigned)l;
        out[l] = s < blockDim.x ? g_xch64[s] : 0;
        lanes += s < blockDim.x;
    }
    emu_warp_converge(t >> 5);
    return lanes;
}
// The lanes of the warp whose predicate is nonzero (mask: all lanes call it, as the kernels' full masks promise).
inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned long long all[32];
    const unsigned lanes = warp_gather(pred != 0 ? 1 : 0, all);
    unsigned r = 0;
    for (unsigned l = 0; l < lanes; ++l) r |= (all[l] ? 1u : 0u) << l;
    return r & mask;
}
// The lanes of the warp holding the same value as this one.
template <class T> inline unsigned __match_any_sync(unsigned mask, T v) {
    unsigned long long all[32];
    const unsigned lanes = warp_gather(v, all);
    unsigned long long mine = all[threadIdx.x & 31];
    unsigned r = 0;
    for (unsigned l = 0; l < lanes; ++l) r |= (all[l] == mine ? 1u : 0u) << l;
    return r & mask;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
// One OS thread runs the CUDA threads (fibers) or std::atomic_ref makes them atomic (threads).
// For the race detector (emu_race.h), which models no standalone fence: every __threadfence
// acquires and releases one token, so a fence is ordered after every fence that ran before it.
// That is more than the GPU promises (there a reader's fence orders it after a writer's only
// once it has seen the writer's flag), so a fence-based race can be missed, never invented.
inline char g_fence_token;
inline void __threadfence() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    emu_race_acquire(&g_fence_token);
    emu_race_release(&g_fence_token);
}
template <class T> inline T __ldcg(const T* p) { return *p; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).exchange(v); }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
template <class T> inline T emu_atomic_max(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_max(p, v); }
inline int atomicMax(int* p, int v) { return emu_atomic_max(p, v); }
// An empty spin loop's body (emu_ptx.py --spin-yield puts it there): lets the other CUDA threads
// run, as a GPU's other warps would while this one spins.
inline void emu_spin_yield() {
#ifdef EMU_FIBERS
    emu_fiber_spin_yield();
#else
    std::this_thread::yield();
#endif
}
#ifdef EMU_FIBERS
inline void launch(dim3 grid, unsigned threads, std::function<void()> body) { emu_fiber_launch(grid, threads, body, false); }
// Every block at once (a cooperative launch: blocks may wait for each other).
inline void launch_cooperative(dim3 grid, unsigned threads, std::function<void()> body) { emu_fiber_launch(grid, threads, body, true); }
#else
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
                    ts.emplace_back([t, &body] {
                        threadIdx = {t, 0, 0};
                        body();
                        if (g_after_thread) g_after_thread();
                    });
                for (auto& th : ts) th.join();
            }
    g_bar = nullptr;
}
#endif
// For kernels without barriers or shuffles (element-wise, grid-stride): the block's threads run
// one after another on the calling thread, thousands of times faster than a thread each. A kernel
// that does synchronise aborts here rather than pass.
// Under EMU_RACE each thread runs in its own ThreadSanitizer context, as a fiber's would: the
// threads of a block are not ordered among themselves (two writing one element are reported),
// blocks are ordered one after another.
EMU_NOT_RACED inline void launch_serial(dim3 grid, unsigned threads, std::function<void()> body) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    g_bar = nullptr;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                if (g_before_block) g_before_block();
#ifdef EMU_RACE
                void* host = __tsan_get_current_fiber();
                std::vector<void*> ctx(threads);
                for (unsigned t = 0; t < threads; ++t) ctx[t] = emu_race_fiber(t);
#endif
                for (unsigned t = 0; t < threads; ++t) {
                    threadIdx = {t, 0, 0};
#ifdef EMU_RACE
                    __tsan_switch_to_fiber(ctx[t], __tsan_switch_to_fiber_no_sync);
#endif
                    body();
                    if (g_after_thread) g_after_thread();
#ifdef EMU_RACE
                    __tsan_switch_to_fiber(host, 0);  // the thread is done: ordered before the host
#endif
                }
            }
}
