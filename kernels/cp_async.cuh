// Asynchronous global -> shared copies (sm_80 cp.async) and the launch's dynamic shared memory
// size, shared by the pipelined convolutions (conv2d_tcp.cu: f32 tiles; conv2d_nhwc.cu: bf16).
#pragma once

// `valid` false copies nothing and zero-fills the destination (src-size 0); `src` must still be a
// mapped address, so callers pass the tensor's base then. The shared address is converted inside
// the asm so the operand is a plain pointer.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    asm volatile(
        "{\n .reg .u64 sa;\n cvta.to.shared.u64 sa, %0;\n cp.async.ca.shared.global [sa], [%1], 4, %2;\n}\n" ::"l"(dst),
        "l"(src), "r"(valid ? 4 : 0)
        : "memory");
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile(
        "{\n .reg .u64 sa;\n cvta.to.shared.u64 sa, %0;\n cp.async.cg.shared.global [sa], [%1], 16, %2;\n}\n" ::"l"(dst),
        "l"(src), "r"(valid ? 16 : 0)
        : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

// The same copy to a 32-bit shared-memory address (`smem_u32`): a kernel that keeps its stage
// addresses as u32 offsets adds to them in 32 bits instead of rebuilding a 64-bit generic
// address (and its window base) per copy.
__device__ __forceinline__ void cp_async16_u32(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned r;
    asm("{\n .reg .u64 a;\n cvta.to.shared.u64 a, %1;\n cvt.u32.u64 %0, a;\n}\n" : "=r"(r) : "l"(p));
    return r;
}

// The pipeline of the cp.async kernels (conv2d_tcp.cu, conv2d_nhwc.cu), one barrier per tile: the
// reduction [begin, end) in tiles
// of KT, STAGES deep. Tiles 0 .. STAGES-2 are issued first, one commit group each; at tile kt a
// thread waits until its group kt has landed (wait_group STAGES-2), the barrier makes every
// thread's copies visible and says that stage (kt-1) % STAGES, read in the last iteration, is
// free; tile kt + STAGES - 1 is issued into it, and tile kt multiplied. Empty groups are
// committed past the end so the count stays right. issue(stage, k0) copies a tile;
// multiply(stage) reads one. PROXY_FENCE: multiply hands the stage to the tensor cores' async
// proxy (wgmma reads shared memory through it), so each thread fences its landed copies
// (fence.proxy.async) before the barrier that publishes them.
template <int STAGES, int KT, bool PROXY_FENCE = false, class Issue, class Multiply>
__device__ __forceinline__ void cp_async_pipeline(int begin, int end, Issue&& issue, Multiply&& multiply) {
    const int tiles = end > begin ? (end - begin + KT - 1) / KT : 0;
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < tiles) issue(st, begin + st * KT);
        cp_async_commit();
    }
    for (int kt = 0; kt < tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        if constexpr (PROXY_FENCE) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < tiles) issue(next % STAGES, begin + next * KT);
        cp_async_commit();
        multiply(kt % STAGES);
    }
    cp_async_wait<0>();
}
