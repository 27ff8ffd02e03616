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
