// The mma.sync wrappers of the two tensor-core precisions (TF32 and BF16 operands, f32
// accumulators), shared by the tensor-core convolutions (conv_tc.cuh) and DANet's position
// attention (danet_tc.cu).
#pragma once

// d += a * b by one `mma.sync` of the given shape and types with 4 f32 accumulators, 4 A words
// and 2 B words (m16n8k8 TF32 and m16n8k16 BF16 alike). A macro: asm text must be a literal.
#define MMA_SYNC_F32(shape_types, d, a, b)                                                                     \
    asm volatile("mma.sync.aligned." shape_types " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"       \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

// TF32: one element per 32-bit word, m16n8k8.
struct Tf32 {
    static constexpr int E = 16;       // elements in 16 words (conv2d_tc.cu's tile row)
    static constexpr int K_STEP = 8;   // reduction elements per mma
    __device__ static __forceinline__ unsigned word(float v) {
        unsigned r;
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
        return r;
    }
    __device__ static __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        MMA_SYNC_F32("m16n8k8.row.col.f32.tf32.tf32.f32", d, a, b);
    }
};

// BF16: two elements per word (the lower reduction index in the low half), m16n8k16. The fragment
// words of m16n8k16 sit where m16n8k8's TF32 words do, so both kernels' fragment loads serve both precisions.
struct Bf16 {
    static constexpr int E = 32;
    static constexpr int K_STEP = 16;
    __device__ static __forceinline__ unsigned pair(float lo, float hi) {
        unsigned r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    __device__ static __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        MMA_SYNC_F32("m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b);
    }
};
