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
// wgmma (kernels/conv2d_wgmma.cu): at the end of this file.
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

// wgmma (kernels/conv2d_wgmma.cu, sm_90a), the SS form: both operands K-major bf16 in shared
// memory, given by matrix descriptors, f32 accumulators in the thread's registers.
//  - wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 d, a-desc, b-desc, scale-d, 1, 1,
//    imm-trans-a, imm-trans-b (`emu_wgmma_bf16<N>`; a transpose flag of 1: that operand
//    MN-major, else K-major): queued on the issuing thread with pointers to its N / 2 accumulators;
//    wgmma.commit_group closes the queued ones into a group; wgmma.wait_group n performs every
//    committed group but the n most recent, in order. So the operands are read from shared
//    memory when the warpgroup waits, not at issue: a stage overwritten before the wait reads the
//    new tile (or the NaN poison), as the asynchronous hardware may. Each thread computes its own
//    accumulators, D (64 x N) = A (64 x 16) B (16 x N) + (scale-d ? D : 0), the 16 products exact
//    in f64 and summed with D, rounded once (as emu_mma_sync: a k-step of 16 is one rounding, so
//    the result is the same bits as m16n8k16 mma.sync k-steps in the same order). The thread's
//    elements (the PTX ISA's "wgmma .m64nNk16 register fragment layout for D"): warp w of the
//    warpgroup (threadIdx.x / 32 % 4), lane l: d[4 j + v] = D(16 w + l / 4 + 8 (v / 2), 8 j +
//    2 (l % 4) + v % 2).
//  - The descriptors: start address (bits 0-13, >> 4), stride byte offset between 8-row groups
//    (bits 32-45, >> 4), base offset (bits 49-51), swizzle (bits 62-63). Only the 128-byte swizzle
//    (mode 1) with base offset 0 and an 8-row group starting on 1024 bytes (start address bits
//    7-9 zero; a K-major k-step adds 32 bytes, an MN-major one 2048) is emulated; anything else
//    aborts. Element addresses: emu_wgmma_elem, then the swizzle: bits 4-6 of the address XOR
//    bits 7-9 (the 16-byte chunk index XOR the row within the group).
//  - wgmma.fence is required before a thread's first wgmma (a thread with none aborts); its role
//    of ordering register accesses has nothing to check here. fence.proxy.async is a no-op: the
//    emulator has one proxy, so a missing fence (a GPU could read stale shared memory) is not
//    caught. A thread that ends with wgmma not waited for aborts.
struct EmuWgmma {
    unsigned long long da, db;
    bool scale_d, mn_a, mn_b;
    int n;
    float* d[256];
};
struct EmuWgmmaQueue {
    bool fenced = false;
    std::vector<EmuWgmma> open;
    std::deque<std::vector<EmuWgmma>> groups;
};
inline EmuWgmmaQueue g_wgmma_queues[1024];
[[noreturn]] inline void emu_bad_wgmma(const char* why, unsigned long long desc) {
    std::fprintf(stderr, "emu: wgmma %s (descriptor %016llx; block %u,%u,%u thread %u)\n", why, desc, blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x);
    std::abort();
}
// The shared memory of element (mn, k) of a bf16 operand (A: mn = m, B: mn = n) in the
// 128-byte swizzle, from the PTX ISA's canonical layouts (T = 8 elements of 16 bytes):
// K-major ((8,m),(T,2k)):((8T,SBO),(1,T)): start + (mn / 8) SBO + (mn % 8) 128 + 2 k;
// MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): start + (mn / 64) LBO + (k / 8) SBO + (k % 8) 128 + 2 (mn % 64).
inline const unsigned short* emu_wgmma_elem(unsigned long long desc, bool mn_major, int mn, int k) {
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4, lbo = (unsigned)((desc >> 16) & 0x3FFF) << 4,
                   sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4;
    if ((desc >> 62) != 1) emu_bad_wgmma("swizzle mode other than 128 bytes", desc);
    if ((desc >> 49) & 7) emu_bad_wgmma("base offset other than 0", desc);
    if (start & 0x380) emu_bad_wgmma("8-row group not on 1024 bytes", desc);
    const unsigned lin = mn_major ? start + (unsigned)(mn / 64) * lbo + (unsigned)(k / 8) * sbo + (unsigned)(k % 8) * 128 + 2 * (mn % 64)
                                  : start + (unsigned)(mn / 8) * sbo + (unsigned)(mn % 8) * 128 + 2 * k;
    const unsigned phys = lin ^ (((lin >> 7) & 7) << 4);
    const unsigned short* p = (const unsigned short*)emu_smem_ptr(phys);
    emu_race_read(p, 2);
    return p;
}
EMU_NOT_RACED inline void emu_wgmma_run(const EmuWgmma& w) {
    const int wq = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    for (int j = 0; j < w.n / 8; ++j)
        for (int v = 0; v < 4; ++v) {
            const int row = 16 * wq + (lane >> 2) + 8 * (v >> 1), col = 8 * j + 2 * (lane & 3) + (v & 1);
            double s = w.scale_d ? (double)*w.d[4 * j + v] : 0.0;
            for (int k = 0; k < 16; ++k)
                s += emu_bf16_val(*emu_wgmma_elem(w.da, w.mn_a, row, k)) * emu_bf16_val(*emu_wgmma_elem(w.db, w.mn_b, col, k));
            *w.d[4 * j + v] = (float)s;
        }
}
template <int N, class... F>
inline void emu_wgmma_bf16(unsigned long long da, unsigned long long db, int scale_d, int trans_a, int trans_b, F&... d) {
    static_assert(sizeof...(F) == N / 2 && N % 8 == 0 && N <= 256, "m64nNk16: N / 2 accumulators a thread");
    EmuWgmmaQueue& q = g_wgmma_queues[threadIdx.x];
    if (!q.fenced) emu_bad_wgmma("without a wgmma.fence before the thread's first wgmma", da);
    if ((trans_a != 0 && trans_a != 1) || (trans_b != 0 && trans_b != 1)) emu_bad_wgmma("imm-trans not 0 or 1", da);
    EmuWgmma w{da, db, scale_d != 0, trans_a == 1, trans_b == 1, N, {&d...}};
    q.open.push_back(w);
}
inline void emu_wgmma_fence() { g_wgmma_queues[threadIdx.x].fenced = true; }
inline void emu_wgmma_commit() {
    EmuWgmmaQueue& q = g_wgmma_queues[threadIdx.x];
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}
inline void emu_wgmma_wait(int n) {
    auto& g = g_wgmma_queues[threadIdx.x].groups;
    while (g.size() > (size_t)std::max(n, 0)) {
        for (auto& w : g.front()) emu_wgmma_run(w);
        g.pop_front();
    }
}
inline void emu_fence_proxy_async() {}
// At a thread's end: no cp.async copy (emu_async.h) or wgmma left unwaited; the fence flag reset
// for the next block's thread of this index.
inline void emu_tc_thread_done() {
    emu_cp_async_check_done();
    EmuWgmmaQueue& q = g_wgmma_queues[threadIdx.x];
    size_t pending = q.open.size();
    for (auto& g : q.groups) pending += g.size();
    if (pending) {
        std::fprintf(stderr, "emu: thread %u of block %u,%u,%u ended with %zu wgmma not waited for\n", threadIdx.x, blockIdx.x,
                     blockIdx.y, blockIdx.z, pending);
        std::abort();
    }
    q.fenced = false;
}
inline const bool g_tc_hooked = (g_cp_async_hooked, g_after_thread = emu_tc_thread_done, true);
