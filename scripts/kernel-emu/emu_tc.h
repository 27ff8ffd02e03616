// emu.h plus what the tensor-core kernels (kernels/conv2d_tc.cu) need: uint2/uint4, __ldg,
// atomicAdd, and the PTX that emu_ptx.py rewrites their inline asm into:
//  - cvt.rna.tf32.f32: f32 -> TF32 (10-bit mantissa), round to nearest, ties away from zero; the
//    low 13 bits of the word are zero.
//  - cvt.rn.bf16x2.f32 d, hi, lo: two bf16 (round to nearest even), hi in the upper half.
//  - mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 and m16n8k16.row.col.f32.bf16.bf16.f32:
//    warp-collective. Every lane writes its A (4 words), B (2 words) and C (4 floats) fragments
//    to its warp's exchange area, waits on the warp barrier (emu.h's, as the shuffles do), then
//    rebuilds the 16xK A, Kx8 B and its own 4 elements of C from the PTX ISA fragment layouts
//    ("Matrix Fragments for mma.m16n8k8" .tf32, "for mma.m16n8k16" .bf16; groupID = lane >> 2,
//    threadID_in_group = lane % 4) and computes its own 4 elements of D = A*B + C: the K products
//    (exact in f64) and C summed in f64, rounded to f32 once. (The hardware's internal order and
//    precision are unspecified; this is the most exact one, so a check against an f64 reference
//    measures the kernel's f32 accumulation across k-steps.) The exchange area is double-buffered
//    per warp, so one barrier per mma suffices: a lane can only rewrite buffer b after every lane
//    of its warp has arrived at the next mma's barrier, that is after it finished reading b.
//  Every lane of the warp must execute the mma (`.aligned`), as on a GPU; all lanes of a warp
//  must make the same sequence of mma calls.
//  - 32-bit shared addresses (cvta.to.shared + cvt.u32.u64, `emu_smem_u32`): the offset into the
//    dynamic shared memory plus 1024 (a window base that is not 0, so code that takes an address
//    for an offset shows); `emu_smem_ptr` maps one back and aborts outside the buffer.
//  - ldmatrix.sync.aligned.m8n8.x4.shared.b16 (kernels/conv2d_nhwc.cu): warp-collective too. Every
//    lane writes its row address to its warp's exchange area (double-buffered like the mma's),
//    waits on the warp barrier, then reads its word i from row lane / 4 of matrix i, whose
//    address lane 8i + lane / 4 gave: bytes 4 (lane % 4) .. +3; with .trans, the bf16 at column
//    lane / 4 of rows 2 (lane % 4) (low half) and 2 (lane % 4) + 1 (high half), from the addresses
//    lanes 8i + 2 (lane % 4) and + 1 gave. A row address not 16-byte aligned
//    or a row outside the dynamic shared memory aborts (the hardware requires the alignment).
// cp.async, dynamic shared memory and trap (kernels/conv2d_tcp.cu): emu_async.h.
#pragma once
#include "emu.h"
#include "emu_async.h"
#include <atomic>
#include <cstdint>
#include <cstring>
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
template <class T> inline T __ldg(const T* p) { return *p; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

inline unsigned emu_f2u(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float emu_u2f(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
// f32 -> TF32 bits, round to nearest, ties away from zero (adding half an ulp of the 10-bit
// mantissa to the magnitude, then truncating; a carry into the exponent is right, up to inf).
inline unsigned emu_cvt_rna_tf32_f32(float v) {
    unsigned u = emu_f2u(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x7fffffffu) > 0x7f800000u ? 0x7fffffffu : u;  // NaN (canonical), inf
    return (u + 0x1000u) & 0xffffe000u;
}
// f32 -> bf16 bits, round to nearest even.
inline unsigned emu_bf16_rn(float v) {
    unsigned u = emu_f2u(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN (canonical)
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline unsigned emu_cvt_rn_bf16x2_f32(float hi, float lo) { return emu_bf16_rn(hi) << 16 | emu_bf16_rn(lo); }
// The value of a TF32 word / of a bf16 half.
inline double emu_tf32_val(unsigned w) { return emu_u2f(w & 0xffffe000u); }
inline double emu_bf16_val(unsigned h) { return emu_u2f((h & 0xffffu) << 16); }

struct EmuMmaLane { unsigned a[4], b[2]; float c[4]; };
inline EmuMmaLane g_mma_xch[32][2][32];  // [warp][buffer][lane]
inline unsigned g_mma_count[1024];  // each CUDA thread's mma calls (its buffer parity)

[[noreturn]] inline void emu_bad_mma(const char* t) {
    std::fprintf(stderr, "emu: no emulation for mma \"%s\"\n", t);
    std::abort();
}
// The exchange area is the emulator's: not checked for races (EMU_NOT_RACED); an mma reads no memory.
EMU_NOT_RACED inline void emu_mma_sync(const char* tmpl, float& d0, float& d1, float& d2, float& d3, unsigned a0, unsigned a1,
                         unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    if (!g_bar) emu_no_barrier();
    const bool tf32 = std::strstr(tmpl, "m16n8k8.row.col.f32.tf32.tf32.f32") != nullptr;
    const bool bf16 = std::strstr(tmpl, "m16n8k16.row.col.f32.bf16.bf16.f32") != nullptr;
    if (!tf32 && !bf16) emu_bad_mma(tmpl);
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31, buf = g_mma_count[t]++ & 1;
    EmuMmaLane (&x)[32] = g_mma_xch[warp][buf];
    x[lane] = {{a0, a1, a2, a3}, {b0, b1}, {d0, d1, d2, d3}};
    emu_warp_converge(warp);
    // A[row][k], B[k][col] from the fragments of every lane, per the PTX ISA layouts.
    auto A = [&](int row, int k) -> double {
        if (tf32) {  // a0: (g, t), a1: (g+8, t), a2: (g, t+4), a3: (g+8, t+4)
            int g = row & 7, tq = k & 3, reg = (row >> 3) | ((k >> 2) << 1);
            return emu_tf32_val(x[g * 4 + tq].a[reg]);
        }
        // bf16: a0,a1: (g, 2t+i); a2,a3: (g+8, 2t+i); a4,a5: (g, 2t+8+i); a6,a7: (g+8, 2t+8+i);
        // element 2j+i in register j, its low half for i = 0.
        int g = row & 7, kk = k & 7, tq = kk >> 1, reg = (row >> 3) | ((k >> 3) << 1);
        return emu_bf16_val(x[g * 4 + tq].a[reg] >> (16 * (kk & 1)));
    };
    auto B = [&](int k, int col) -> double {
        if (tf32) {  // b0: (k = t, n = g), b1: (k = t+4, n = g)
            return emu_tf32_val(x[col * 4 + (k & 3)].b[k >> 2]);
        }
        // bf16: b0,b1: (k = 2t+i, n = g); b2,b3: (k = 2t+8+i, n = g)
        int kk = k & 7;
        return emu_bf16_val(x[col * 4 + (kk >> 1)].b[k >> 3] >> (16 * (kk & 1)));
    };
    // C/D: c0, c1: (g, 2t + i); c2, c3: (g + 8, 2t + i - 2).
    const int K = tf32 ? 8 : 16, g = lane >> 2, tq = lane & 3;
    float* d[4] = {&d0, &d1, &d2, &d3};
    float r[4];
    for (int v = 0; v < 4; ++v) {
        int row = g + 8 * (v >> 1), col = 2 * tq + (v & 1);
        int src = (row & 7) * 4 + (col >> 1);  // the lane holding C(row, col) (this lane)
        double s = x[src].c[v];
        for (int k = 0; k < K; ++k) s += A(row, k) * B(k, col);
        r[v] = (float)s;
    }
    for (int v = 0; v < 4; ++v) *d[v] = r[v];
}

inline unsigned emu_smem_u32(const void* p) {
    const char* s0 = (const char*)g_dyn_smem.get();
    const char* c = (const char*)p;
    if (!s0 || c < s0 || c > s0 + g_dyn_smem_bytes) {
        std::fprintf(stderr, "emu: a shared address of %p, outside the dynamic shared memory\n", p);
        std::abort();
    }
    return (unsigned)(c - s0) + 1024u;
}
inline void* emu_smem_ptr(unsigned a) {
    if (!g_dyn_smem || a < 1024u || a - 1024u >= g_dyn_smem_bytes) {
        std::fprintf(stderr, "emu: shared address %u outside the dynamic shared memory (block %u,%u,%u thread %u)\n", a,
                     blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
        std::abort();
    }
    return (char*)g_dyn_smem.get() + (a - 1024u);
}
inline const void* g_ldsm_xch[32][2][32];  // [warp][buffer][lane]: the row addresses
inline unsigned g_ldsm_count[1024];
// Not instrumented (the address exchange is the emulator's): each shared-memory read is reported
// to the race detector explicitly, as this lane's.
EMU_NOT_RACED inline void emu_ldmatrix_x4(const void* row, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, bool trans) {
    if (!g_bar) emu_no_barrier();
    const char* s0 = (const char*)g_dyn_smem.get();
    const char* p = (const char*)row;
    if ((uintptr_t)p % 16 || !s0 || p < s0 || p + 16 > s0 + g_dyn_smem_bytes) {
        std::fprintf(stderr, "emu: ldmatrix row %p misaligned or outside the dynamic shared memory (block %u,%u,%u thread %u)\n",
                     row, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
        std::abort();
    }
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31, buf = g_ldsm_count[t]++ & 1;
    const void* (&x)[32] = g_ldsm_xch[warp][buf];
    x[lane] = row;
    emu_warp_converge(warp);
    unsigned* r[4] = {&r0, &r1, &r2, &r3};
    for (int i = 0; i < 4; ++i) {
        if (!trans) {  // (row lane / 4, elements 2 (lane % 4), +1): 4 bytes of that row
            const char* a = (const char*)x[8 * i + (lane >> 2)] + 4 * (lane & 3);
            emu_race_read(a, 4);
            std::memcpy(r[i], a, 4);
        } else {  // (rows 2 (lane % 4), +1; column lane / 4): the lower row in the low half
            unsigned short lo, hi;
            const char* a = (const char*)x[8 * i + 2 * (lane & 3)] + 2 * (lane >> 2);
            const char* b = (const char*)x[8 * i + 2 * (lane & 3) + 1] + 2 * (lane >> 2);
            emu_race_read(a, 2);
            emu_race_read(b, 2);
            std::memcpy(&lo, a, 2);
            std::memcpy(&hi, b, 2);
            *r[i] = (unsigned)hi << 16 | lo;
        }
    }
}
