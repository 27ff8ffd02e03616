// Race detection for the fiber emulator (emu_fiber.h), on when the check is built with
// -fsanitize=thread (run.sh and mutants.sh with EMU_RACE=1): ThreadSanitizer sees every load and
// store of a kernel, and this header tells it what orders them, as a GPU's memory model does.
//  - Each CUDA thread is a TSan fiber; the scheduler switches to it and back without ordering
//    anything (`__tsan_switch_to_fiber_no_sync`), so two threads' accesses are ordered only by:
//  - a barrier (__syncthreads, __syncwarp): each arrival releases, each departure acquires, on the
//    generation's own token, so a thread that has already run on to the next generation cannot
//    order the stragglers. A warp collective (shuffle, vote, mma, ldmatrix) waits for its lanes
//    but orders no memory, as PTX promises none: a lane's store read by another lane after only
//    a shuffle is reported;
//  - an atomic (std::atomic_ref: TSan knows those);
//  - the end of a block: a thread that returns orders itself before the scheduler, and blocks run
//    one after another (static __shared__ is one array for every block), so accesses of two blocks
//    are never reported against each other (a cooperative launch runs its blocks at once: there
//    they are).
//  - cp.async: the copy may land any time between its issue and its wait, so its destination is
//    marked written at the issue too (emu_async.h), and a read of that stage by another thread
//    that no barrier orders after the wait, or before the issue, is reported.
// The emulator's own bookkeeping (threadIdx set by the scheduler, barrier counters) is written in
// functions TSan does not instrument (EMU_NOT_RACED), so only the kernels' memory is checked.
// A report is a data race in the kernel (or a missing barrier the emulator's schedule happened
// to survive); halt_on_error (run.sh's TSAN_OPTIONS) makes it fail the check.
#pragma once
#include <cstddef>
#if defined(__SANITIZE_THREAD__)
#define EMU_RACE 1
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_write_range(void* addr, unsigned long size);
extern "C" void __tsan_read_range(void* addr, unsigned long size);
#define EMU_NOT_RACED __attribute__((no_sanitize_thread, noinline))
inline void emu_race_release(const void* token) { __tsan_release(const_cast<void*>(token)); }
inline void emu_race_acquire(const void* token) { __tsan_acquire(const_cast<void*>(token)); }
inline void emu_race_written(void* p, size_t bytes) { __tsan_write_range(p, bytes); }
inline void emu_race_read(const void* p, size_t bytes) { __tsan_read_range(const_cast<void*>(p), bytes); }
#else
#define EMU_NOT_RACED
inline void emu_race_release(const void*) {}
inline void emu_race_acquire(const void*) {}
inline void emu_race_written(void*, size_t) {}
inline void emu_race_read(const void*, size_t) {}
#endif
