// Asynchronous copies (cp.async) and dynamic shared memory, for kernels/conv2d_tcp.cu; included by
// emu_tc.h. emu_ptx.py rewrites the PTX into these calls.
//  - cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_size (`emu_cp_async`): queued on
//    the issuing CUDA thread (its queue by thread index) as an open copy; commit_group closes the open copies
//    into a group; wait_group N performs, in order, every committed group but the N most recent:
//    src_size bytes copied, the rest of `bytes` zero-filled. Checked as a GPU would fault or the
//    ISA forbids: bytes in {4, 8, 16}, dst and (when src_size > 0) src aligned to bytes,
//    src_size <= bytes, dst inside the dynamic shared buffer.
//    Default: the copies land late (at the wait), so a stage read before its wait reads the NaN
//    poison or the previous tile. EMU_CP_ASYNC=early: they land at issue, so a stage overwritten
//    while other threads may still read it (a missing or misplaced barrier) shows when the
//    threads interleave badly. A copy still open or committed but not waited for when its thread
//    ends aborts (the kernel must wait_group 0 before it exits, or its smem may be written after).
//  - Dynamic shared memory (`extern __shared__ T name[]` -> emu_dynamic_smem(align)): one heap
//    buffer of exactly the launch's size (emu_set_dynamic_smem, set by the check before a launch;
//    ASan sees an overrun), refilled with NaN (0x7fc07fc0: NaN as an f32 and as both bf16 halves) before each block starts (emu.h's g_before_block).
//    %dynamic_smem_size reads its size in bytes; trap prints and aborts.
#pragma once
#include "emu.h"
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <vector>

[[noreturn]] inline void emu_trap() {
    std::fprintf(stderr, "emu: trap (block %u,%u,%u thread %u)\n", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
    std::abort();
}

// Dynamic shared memory.
inline std::unique_ptr<float[]> g_dyn_smem;
inline size_t g_dyn_smem_bytes;
inline float emu_poison_word() {
    const unsigned u = 0x7fc07fc0u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// The next launches' dynamic shared memory (bytes, a multiple of 4), NaN before each block.
inline void emu_set_dynamic_smem(size_t bytes) {
    if (bytes % 4) { std::fprintf(stderr, "emu: dynamic shared memory of %zu bytes (not whole words)\n", bytes); std::abort(); }
    g_dyn_smem.reset(bytes ? new float[bytes / 4] : nullptr);  // exactly this size: ASan sees an overrun
    g_dyn_smem_bytes = bytes;
    // 0x7fc07fc0: a NaN as one f32 and as each of two bf16 halves (bf16 tiles read NaN too).
    g_before_block = [] { std::fill_n(g_dyn_smem.get(), g_dyn_smem_bytes / 4, emu_poison_word()); };
}
inline void emu_clear_dynamic_smem() {
    g_dyn_smem.reset();
    g_dyn_smem_bytes = 0;
    g_before_block = nullptr;
}
inline void* emu_dynamic_smem(size_t align) {
    if (!g_dyn_smem) { std::fprintf(stderr, "emu: a kernel uses dynamic shared memory, none set (emu_set_dynamic_smem)\n"); std::abort(); }
    if ((uintptr_t)g_dyn_smem.get() % align) { std::fprintf(stderr, "emu: dynamic shared memory not %zu-byte aligned\n", align); std::abort(); }
    return g_dyn_smem.get();
}
inline unsigned emu_dynamic_smem_size() { return (unsigned)g_dyn_smem_bytes; }

// cp.async
struct EmuCpAsync {
    void* dst;
    const void* src;
    unsigned bytes, src_size;
    bool done;  // landed already (early mode)
};
inline bool emu_cp_async_early() {
    static const bool early = [] {
        const char* m = std::getenv("EMU_CP_ASYNC");
        if (m && std::strcmp(m, "early") && std::strcmp(m, "late")) {
            std::fprintf(stderr, "emu: EMU_CP_ASYNC=%s (early or late)\n", m);
            std::abort();
        }
        return m && !std::strcmp(m, "early");
    }();
    return early;
}
inline void emu_cp_async_land(EmuCpAsync& c) {
    if (c.done) return;
    std::memcpy(c.dst, c.src, c.src_size);
    std::memset((char*)c.dst + c.src_size, 0, c.bytes - c.src_size);
    c.done = true;
}
// A CUDA thread's queue (blocks run one after another: one per thread index). When the thread's
// kernel body returns (emu.h's g_after_thread) it must be empty.
struct EmuCpAsyncQueue {
    std::vector<EmuCpAsync> open;
    std::deque<std::vector<EmuCpAsync>> groups;
};
inline EmuCpAsyncQueue g_cp_async_queues[1024];
inline EmuCpAsyncQueue& emu_cp_async_queue() { return g_cp_async_queues[threadIdx.x]; }
inline void emu_cp_async_check_done() {
    EmuCpAsyncQueue& q = emu_cp_async_queue();
    size_t pending = q.open.size();
    for (auto& g : q.groups) pending += g.size();
    if (pending) {
        std::fprintf(stderr, "emu: thread %u of block %u,%u,%u ended with %zu cp.async copies not waited for (%zu uncommitted, %zu groups)\n",
                     threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z, pending, q.open.size(), q.groups.size());
        std::abort();
    }
}
inline const bool g_cp_async_hooked = (g_after_thread = emu_cp_async_check_done, true);
[[noreturn]] inline void emu_bad_cp_async(const char* why, const void* dst, const void* src, unsigned bytes, unsigned src_size) {
    std::fprintf(stderr, "emu: cp.async %s: dst %p src %p bytes %u src-size %u (block %u,%u,%u thread %u)\n", why, dst, src,
                 bytes, src_size, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
    std::abort();
}
inline void emu_cp_async(void* dst, const void* src, unsigned bytes, unsigned src_size) {
    if (bytes != 4 && bytes != 8 && bytes != 16) emu_bad_cp_async("size not 4, 8 or 16", dst, src, bytes, src_size);
    if (src_size > bytes) emu_bad_cp_async("src-size above the copy size", dst, src, bytes, src_size);
    if ((uintptr_t)dst % bytes) emu_bad_cp_async("misaligned shared address", dst, src, bytes, src_size);
    if (src_size > 0 && (uintptr_t)src % bytes) emu_bad_cp_async("misaligned global address", dst, src, bytes, src_size);
    if (!src) emu_bad_cp_async("null global address", dst, src, bytes, src_size);
    const char* d = (const char*)dst;
    const char* s0 = (const char*)g_dyn_smem.get();
    if (!s0 || d < s0 || d + bytes > s0 + g_dyn_smem_bytes) emu_bad_cp_async("destination outside the dynamic shared memory", dst, src, bytes, src_size);
    EmuCpAsyncQueue& q = emu_cp_async_queue();
    q.open.push_back({dst, src, bytes, src_size, false});
    emu_race_written(dst, bytes);  // it may land from now on (emu_race.h)
    if (emu_cp_async_early()) emu_cp_async_land(q.open.back());
}
inline void emu_cp_async_commit() {
    EmuCpAsyncQueue& q = emu_cp_async_queue();
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}
// Every committed group but the n most recent has landed on return.
inline void emu_cp_async_wait(int n) {
    auto& q = emu_cp_async_queue().groups;
    while (q.size() > (size_t)std::max(n, 0)) {
        for (auto& c : q.front()) emu_cp_async_land(c);
        q.pop_front();
    }
}
