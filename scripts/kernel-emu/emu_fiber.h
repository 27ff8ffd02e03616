// Fibers for emu.h (built with EMU_FIBERS): every CUDA thread is a fiber on the calling OS thread,
// switched by a 14-instruction context switch (x86-64 System V: the callee-saved registers and
// the stack pointer), so a __syncthreads costs two switches per thread instead of an OS thread
// waking. Each warp runs as far as it can before the next (see emu_fiber_run). One block at a time (`launch`, as emu.h's threads) or every block of the grid at once
// (`launch_cooperative`: a kernel's grid barrier spins with emu_spin_yield until the other
// blocks arrive). Barriers count the threads still running: a thread that has returned no longer
// holds a barrier up (as on sm_70 and later). A round of the scheduler in which every thread
// waits and none arrives, leaves or is released is a deadlock: it aborts naming the block.
#pragma once
#include "emu_race.h"
#include <sys/mman.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

inline dim3 threadIdx, blockIdx, gridDim, blockDim;

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
// Weak: every translation unit that includes this defines it; the linker keeps one.
asm(R"(
    .text
    .p2align 4
    .weak emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
)");

struct EmuFiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest usable byte
    unsigned thread = 0, block = 0;
    dim3 block_idx;
    void* tsan = nullptr;  // its ThreadSanitizer fiber (EMU_RACE)
    bool done = false, blocked = false;
};
constexpr unsigned long long EMU_STACK_CANARY = 0x5eed5eed5eed5eedull;
inline EmuFiber* g_fiber_cur;
inline void* g_fiber_sched_sp;
inline const std::function<void()>* g_fiber_body;
inline std::vector<std::unique_ptr<EmuBarrier>>* g_fiber_blocks;  // each running block's barrier
inline unsigned long long g_fiber_progress;  // arrivals, releases and exits
inline bool g_fiber_blocks_concurrent;
inline void* g_sched_tsan;  // the scheduler's ThreadSanitizer context (EMU_RACE)

[[noreturn]] inline void emu_fiber_no_warp_collectives() {
    std::fprintf(stderr, "emu: a shuffle, vote, mma or ldmatrix in a cooperative launch (blocks run at once; the emulator keeps one warp exchange area)\n");
    std::abort();
}

// Under AddressSanitizer (scripts/cuda-emu's CUDA_EMU_ASAN=1) every switch tells it which stack
// runs next, so it follows the fibers' stacks.
inline const void* g_sched_stack_bottom;
inline size_t g_sched_stack_size;
// From a fiber to the scheduler; `dying`: the fiber never runs again.
EMU_NOT_RACED inline void emu_to_scheduler(bool dying) {
#ifdef EMU_RACE
    // A returning thread is ordered before the scheduler (so before the next block's threads);
    // a thread that only waits is not.
    __tsan_switch_to_fiber(g_sched_tsan, dying ? 0 : __tsan_switch_to_fiber_no_sync);
#endif
#ifdef EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, g_sched_stack_bottom, g_sched_stack_size);
    emu_ctx_switch(&g_fiber_cur->sp, g_fiber_sched_sp);
    __sanitizer_finish_switch_fiber(fake, &g_sched_stack_bottom, &g_sched_stack_size);
#else
    (void)dying;
    emu_ctx_switch(&g_fiber_cur->sp, g_fiber_sched_sp);
#endif
}
inline void emu_fiber_yield() { emu_to_scheduler(false); }

// A block's or a warp's barrier: `expected` threads still running. Under EMU_RACE a barrier that
// orders memory (`fence`: __syncthreads, __syncwarp) has each arrival release and each departure
// acquire the generation's token (two, alternating: a thread can only arrive at generation g + 2
// after every thread has left generation g); a warp collective's (a shuffle, vote, mma or
// ldmatrix: the lanes converge, but PTX promises no memory ordering) orders nothing.
struct EmuBarrier {
    unsigned expected, arrived = 0, gen = 0;
    char token[2];
    explicit EmuBarrier(unsigned n) : expected(n) {}
    EMU_NOT_RACED void release() {
        arrived = 0;
        ++gen;
        ++g_fiber_progress;
    }
    EMU_NOT_RACED void arrive_and_wait(bool fence = true) {
        ++g_fiber_progress;
        const unsigned g = gen;
        if (fence) emu_race_release(&token[g & 1]);
        if (++arrived >= expected) {
            release();
            if (fence) emu_race_acquire(&token[g & 1]);
            return;
        }
        g_fiber_cur->blocked = true;
        while (gen == g) emu_fiber_yield();
        g_fiber_cur->blocked = false;
        if (fence) emu_race_acquire(&token[g & 1]);
    }
    // A participant returned from the kernel.
    EMU_NOT_RACED void drop() {
        --expected;
        if (arrived && arrived >= expected) release();
    }
};

EMU_NOT_RACED inline void emu_fiber_spin_yield() {
    g_fiber_cur->blocked = true;
    emu_fiber_yield();
    g_fiber_cur->blocked = false;
}

extern "C" [[noreturn]] EMU_NOT_RACED inline void emu_fiber_entry() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
    (*g_fiber_body)();
    if (g_after_thread) g_after_thread();
    EmuFiber* f = g_fiber_cur;
    if (std::memcmp(f->stack, &EMU_STACK_CANARY, 8)) {
        std::fprintf(stderr, "emu: thread %u of block %u,%u,%u overflowed its fiber stack (EMU_FIBER_STACK_KB)\n", f->thread,
                     f->block_idx.x, f->block_idx.y, f->block_idx.z);
        std::abort();
    }
    f->done = true;
    ++g_fiber_progress;
    (*g_fiber_blocks)[f->block]->drop();
    if (!g_fiber_blocks_concurrent) g_warp_bar[f->thread / 32]->drop();
    emu_to_scheduler(true);
    std::abort();  // never resumed
}

// Stack bytes per fiber: EMU_FIBER_STACK_KB (default 256) when a block runs alone, 32 KB when a
// cooperative grid runs all its blocks at once (tens of thousands of fibers).
inline size_t emu_fiber_stack_bytes(bool cooperative) {
    static const size_t alone = [] {
        const char* e = std::getenv("EMU_FIBER_STACK_KB");
        size_t kb = e ? std::strtoul(e, nullptr, 10) : 256;
        return (kb < 16 ? 16 : kb) * 1024;
    }();
    return cooperative ? 32 * 1024 : alone;
}
// Stacks, kept for the next launches, mapped 256 at a time (lazily committed; one mapping each
// would run into the kernel's limit on mappings). A canary at each stack's bottom is checked when
// its fiber ends: an overflow aborts.
inline std::vector<char*> g_fiber_stacks[2];
inline char* emu_fiber_stack(size_t i, bool cooperative) {
    const size_t bytes = emu_fiber_stack_bytes(cooperative), chunk = 256;
    auto& pool = g_fiber_stacks[cooperative];
    while (pool.size() <= i) {
        void* m = mmap(nullptr, bytes * chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            std::fprintf(stderr, "emu: cannot map %zu fiber stacks of %zu KB\n", chunk, bytes >> 10);
            std::abort();
        }
        for (size_t k = 0; k < chunk; ++k) pool.push_back((char*)m + k * bytes);
    }
    return pool[i];
}

#ifdef EMU_RACE
// ThreadSanitizer contexts, one per fiber slot, kept for every later launch (making and dropping
// one costs about 0.4 ms: a new set per block took 81 s for 800 small blocks, reused ones 1.9 s).
// Before a launch's threads run, each context is ordered after the scheduler (a switch there and
// back, nothing run between): after the host's work and every thread of the blocks before (each
// ordered itself before the scheduler as it returned), and after nothing of this launch. The same
// context for thread i of every block orders nothing more than that.
inline std::vector<void*> g_race_fibers;
EMU_NOT_RACED inline void* emu_race_fiber(size_t i) {
    while (g_race_fibers.size() <= i) g_race_fibers.push_back(__tsan_create_fiber(0));
    void* f = g_race_fibers[i];
    void* sched = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(f, 0);
    __tsan_switch_to_fiber(sched, __tsan_switch_to_fiber_no_sync);
    return f;
}
#endif
EMU_NOT_RACED inline void emu_fiber_switch_to(EmuFiber& f) {
    g_fiber_cur = &f;
    threadIdx = {f.thread, 0, 0};
    blockIdx = f.block_idx;
    g_bar = (*g_fiber_blocks)[f.block].get();
#ifdef EMU_RACE
    __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, emu_fiber_stack_bytes(g_fiber_blocks_concurrent));
    emu_ctx_switch(&g_fiber_sched_sp, f.sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    emu_ctx_switch(&g_fiber_sched_sp, f.sp);
#endif
}

// Runs `threads` threads of each of `blocks` (block indices), all at once.
EMU_NOT_RACED inline void emu_fiber_run(const std::vector<dim3>& blocks, unsigned threads, const std::function<void()>& body, bool cooperative) {
    const size_t n = blocks.size() * threads, bytes = emu_fiber_stack_bytes(cooperative);
    std::vector<EmuFiber> fibers(n);
    std::vector<std::unique_ptr<EmuBarrier>> bl;
    for (size_t b = 0; b < blocks.size(); ++b) bl.push_back(std::make_unique<EmuBarrier>(threads));
    for (size_t i = 0; i < n; ++i) {
        EmuFiber& f = fibers[i];
        f.block = (unsigned)(i / threads);
        f.thread = (unsigned)(i % threads);
        f.block_idx = blocks[f.block];
        f.stack = emu_fiber_stack(i, cooperative);
        std::memcpy(f.stack, &EMU_STACK_CANARY, 8);
        // The first switch pops six zero registers, then returns into emu_fiber_entry with the
        // stack as a call would leave it (16-byte aligned below a fake return address).
        uintptr_t top = ((uintptr_t)f.stack + bytes) & ~(uintptr_t)15;
        void** sp = (void**)top;
        *--sp = nullptr;                      // emu_fiber_entry's return address (never used)
        *--sp = (void*)&emu_fiber_entry;      // where emu_ctx_switch returns to
        for (int r = 0; r < 6; ++r) *--sp = nullptr;
        f.sp = sp;
#ifdef EMU_RACE
        f.tsan = emu_race_fiber(i);
#endif
    }
#ifdef EMU_RACE
    g_sched_tsan = __tsan_get_current_fiber();
#endif
    g_fiber_body = &body;
    g_fiber_blocks = &bl;
    size_t alive = n;
    int idle = 0;
    // A warp runs as long as it makes progress (until its threads wait at the block's barrier,
    // spin, or are done), then the next warp: warps drift as far apart as the barriers let them,
    // so a missing barrier shows (one thread after another in a lockstep round would hide it).
    while (alive) {
        const unsigned long long before = g_fiber_progress;
        for (size_t i = 0, end; i < n; i = end) {
            const unsigned b = fibers[i].block, w = fibers[i].thread / 32;
            for (end = i; end < n && fibers[end].block == b && fibers[end].thread / 32 == w; ++end) {
            }
            for (;;) {
                const unsigned long long p0 = g_fiber_progress;
                bool any = false;
                for (size_t j = i; j < end; ++j) {
                    EmuFiber& f = fibers[j];
                    if (f.done) continue;
                    any = true;
                    emu_fiber_switch_to(f);
                    if (f.done) --alive;
                }
                if (!any || g_fiber_progress == p0) break;
            }
        }
        if (alive && g_fiber_progress == before && ++idle > 2) {
            for (EmuFiber& f : fibers)
                if (!f.done) {
                    std::fprintf(stderr, "emu: deadlock: every thread waits (first: block %u,%u,%u thread %u), none arrives or leaves\n",
                                 f.block_idx.x, f.block_idx.y, f.block_idx.z, f.thread);
                    break;
                }
            std::abort();
        }
        if (g_fiber_progress != before) idle = 0;
    }
    g_fiber_cur = nullptr;
}

// emu.h's launch (one block at a time, or all at once when `cooperative`).
inline void emu_fiber_launch(dim3 grid, unsigned threads, const std::function<void()>& body, bool cooperative) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    std::vector<dim3> all;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) all.push_back({x, y, z});
    g_fiber_blocks_concurrent = cooperative;
    if (cooperative) {
        g_warp_bar.clear();
        if (g_before_block) g_before_block();
        emu_fiber_run(all, threads, body, true);
    } else {
        for (const dim3& b : all) {
            g_warp_bar.clear();
            for (unsigned w = 0; w * 32 < threads; ++w) g_warp_bar.emplace_back(std::make_unique<EmuBarrier>(std::min(32u, threads - 32 * w)));
            blockIdx = b;
            if (g_before_block) g_before_block();
            emu_fiber_run({b}, threads, body, false);
        }
    }
    g_fiber_blocks_concurrent = false;
    g_bar = nullptr;
}
