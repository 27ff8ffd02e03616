// The tile copies of the forward and input gradient from channels-last bf16 operands, shared by
// conv2d_nhwc.cu (mma.sync, 32-deep tiles of padded rows) and conv2d_wgmma.cu (wgmma, 64-deep
// tiles of 128-byte swizzled rows): the same gather, into the caller's tile layout.
//
// A stage holds a KT-deep slice of the reduction, in (r, s, c) order: A = BM rows of the row-major
// [M][RED] weights, B = BN pixels' gathered elements. Every copy is one 16-byte cp.async of 8
// reduction elements (8 channels of one tap: CH, the gathered tensor's channels, is a multiple of
// 8). Thread t moves chunk t % (KT / 8) of tile rows t / (KT / 8) + ROWS_APART p.
#pragma once
#include "conv_tc.cuh"
#include "cp_async.cuh"

template <int BM, int BN, int PASS, int KT>
struct NhwcTileCopy {
    static_assert(PASS != BWD_WEIGHT, "the weight gradient gathers by pixel (conv2d_nhwc.cu conv_nhwc_wgrad)");
    static constexpr int CHUNKS = KT / 8, ROWS_APART = TC_THREADS / CHUNKS;
    static constexpr int A_ROWS = BM / ROWS_APART, B_PIX = BN / ROWS_APART;  // rows / pixels per thread
    const unsigned short* a_src;
    const unsigned short* b_src;
    int chunk, row0, CH, red_end;
    // A: this thread's first row of the weights; which of its rows are inside M (bit p).
    const unsigned short* a_row;
    long long a_row_step;
    unsigned a_rows_in;
    // B: the output pixels (forward) or input pixels (input gradient) this thread gathers for.
    TapGather<PASS> tap[B_PIX];
    const unsigned short* b_img[B_PIX];
    bool pix_ok[B_PIX];
    // The chunk's reduction element idx = (r * S + s) * CH + ch, as a cursor stepped by KT per
    // tile (tiles are issued in order; no division in the loop). CH % 8 == 0 keeps a chunk in one tap.
    struct {
        int ch, r, s;
    } cur;

    __device__ __forceinline__ NhwcTileCopy(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                                            const BlockTile<BM, BN, PASS>& bt, const ConvGeom& g) {
        a_src = a;
        b_src = b;
        chunk = bt.t % CHUNKS;
        row0 = bt.t / CHUNKS;
        CH = PASS == FWD ? g.c : g.k;
        red_end = bt.red_end;
        const int plane = PASS == FWD ? g.h * g.w : g.oh * g.ow;
        a_row = a + (long long)(bt.m0 + row0) * bt.RED + 8 * chunk;
        a_row_step = (long long)ROWS_APART * bt.RED;
        a_rows_in = 0;
#pragma unroll
        for (int p = 0; p < A_ROWS; ++p) a_rows_in |= (unsigned)(bt.m0 + row0 + ROWS_APART * p < bt.M) << p;
#pragma unroll
        for (int j = 0; j < B_PIX; ++j) {
            const int p = bt.n0 + row0 + ROWS_APART * j;
            const int pplane = PASS == FWD ? g.oh * g.ow : g.h * g.w, pw = PASS == FWD ? g.ow : g.w;
            pix_ok[j] = p < bt.N;
            const int pn = pix_ok[j] ? p / pplane : 0, pr = pix_ok[j] ? p - pn * pplane : 0;
            if constexpr (PASS == FWD) tap[j] = {(pr / pw) * g.stride - g.pad, (pr % pw) * g.stride - g.pad};
            else tap[j] = {pr / pw + g.pad, pr % pw + g.pad};
            b_img[j] = b + (long long)pn * plane * CH;
        }
        const int idx0 = bt.red_begin + 8 * chunk, rs = idx0 / CH;
        cur.ch = idx0 - rs * CH;
        cur.r = rs / g.s;
        cur.s = rs - cur.r * g.s;
    }

    // Copies the tile at reduction offset k0 (tiles in order): this thread's A chunks to a_dst,
    // a_dst + A_STEP, ... and its B chunks to b_dst, b_dst + B_STEP, ... (32-bit shared addresses
    // of its rows ROWS_APART apart in the caller's layout). Rows past M, pixels past N, padding,
    // holes and the reduction's tail are zero-filled.
    template <int A_STEP, int B_STEP>
    __device__ __forceinline__ void issue(unsigned a_dst, unsigned b_dst, int k0, const ConvGeom& g) {
        const bool k_ok = k0 + 8 * chunk < red_end;  // RED and red_chunk are multiples of 8
#pragma unroll
        for (int p = 0; p < A_ROWS; ++p) {
            const bool ok = k_ok && (a_rows_in >> p & 1);
            cp_async16_u32(a_dst + p * A_STEP, ok ? a_row + p * a_row_step + k0 : a_src, ok);
        }
        const int ch = cur.ch, r = cur.r, s = cur.s;
        cur.ch += KT;
        while (cur.ch >= CH) {
            cur.ch -= CH;
            if (++cur.s == g.s) {
                cur.s = 0;
                ++cur.r;
            }
        }
#pragma unroll
        for (int j = 0; j < B_PIX; ++j) {
            const int at = k_ok && pix_ok[j] && r < g.r ? tap[j].at(g, r, s) : -1;
            const bool ok = at >= 0;
            cp_async16_u32(b_dst + j * B_STEP, ok ? b_img[j] + (long long)at * CH + ch : b_src, ok);
        }
    }
};

// The weight gradient's tile copies (conv2d_nhwc.cu conv_nhwc_wgrad: mma.sync, ldmatrix.trans;
// conv2d_wgmma.cu: wgmma with MN-major operands): dw[k][(r, s, c)] = sum over output pixels q of
// dy[q][k] x[q at tap (r, s)][c], from dy as (N, OH, OW, K) and x as (N, H, W, C) in bf16 (K and
// C multiples of 8). A stage holds KT pixels: A = their BM channels of dy, B = their BN columns
// (8 channels of one tap per chunk). Thread t moves chunk t % (BM / 8) of A rows t / (BM / 8) +
// A_STEP p and chunk t % (BN / 8) of B rows t / (BN / 8) + B_STEP p (rows = pixels).
template <int BM, int BN, int KT>
struct NhwcWgradCopy {
    static constexpr int A_CH = BM / 8, B_CH = BN / 8, A_STEP = TC_THREADS / A_CH, B_STEP = TC_THREADS / B_CH;
    static constexpr int A_PASSES = KT / A_STEP, B_PASSES = KT / B_STEP;
    const unsigned short* dy;
    const unsigned short* x;
    int a_ch, a_row, b_ch, b_row, red_end, dh, dw, c;
    bool a_col_ok, b_col_ok;
    const unsigned short* a_src;
    // Where each of this thread's B rows is: pixel q = k0 + b_row + p * B_STEP as (image, oh, ow),
    // a cursor stepped by KT per tile (tiles are issued in order; no division in the loop).
    struct {
        int n, oh, ow;
    } bq[B_PASSES];

    __device__ __forceinline__ NhwcWgradCopy(const unsigned short* __restrict__ dy_, const unsigned short* __restrict__ x_,
                                             const BlockTile<BM, BN, BWD_WEIGHT>& bt, const ConvGeom& g) {
        dy = dy_;
        x = x_;
        red_end = bt.red_end;
        // A: dy's channels m0 + 8 a_ch .. + 7 of pixel q are at dy + q * K + m0 + 8 a_ch (q
        // flattens (N, OH, OW) as the channels-last copy does).
        a_ch = bt.t % A_CH;
        a_row = bt.t / A_CH;
        a_col_ok = bt.m0 + 8 * a_ch < bt.M;
        a_src = dy + bt.m0 + 8 * a_ch;
        // B: this thread's 8 columns n0 + 8 b_ch .. + 7 are channels c .. c + 7 of tap (r, s).
        b_ch = bt.t % B_CH;
        b_row = bt.t / B_CH;
        const int col = bt.n0 + 8 * b_ch;
        b_col_ok = col < bt.N;
        int r, s;
        {
            const int rs = b_col_ok ? col / g.c : 0;
            c = b_col_ok ? col - rs * g.c : 0;
            r = rs / g.s;
            s = rs - r * g.s;
        }
        dh = r * g.dil - g.pad;  // input pixel = (oh, ow) * stride + (dh, dw)
        dw = s * g.dil - g.pad;
#pragma unroll
        for (int p = 0; p < B_PASSES; ++p) {
            const int q = bt.red_begin + b_row + p * B_STEP, ohw = g.oh * g.ow;
            bq[p].n = q / ohw;
            bq[p].oh = (q - bq[p].n * ohw) / g.ow;
            bq[p].ow = q - bq[p].n * ohw - bq[p].oh * g.ow;
        }
    }

    // Copies the tile of pixels from k0 (tiles in order): A chunks to a_dst + p * A_STEP_BYTES, B
    // chunks to b_dst + p * B_STEP_BYTES (this thread's rows in the caller's layout). Pixels past
    // the split's end, channels past K or C, and taps in the padding are zero-filled.
    template <int A_STEP_BYTES, int B_STEP_BYTES>
    __device__ __forceinline__ void issue(unsigned a_dst, unsigned b_dst, int k0, const ConvGeom& g) {
#pragma unroll
        for (int p = 0; p < A_PASSES; ++p) {
            const int q = k0 + a_row + p * A_STEP;
            const bool ok = a_col_ok && q < red_end;
            cp_async16_u32(a_dst + p * A_STEP_BYTES, ok ? a_src + (long long)q * g.k : dy, ok);
        }
#pragma unroll
        for (int p = 0; p < B_PASSES; ++p) {
            const int q = k0 + b_row + p * B_STEP;
            const int ih = bq[p].oh * g.stride + dh, iw = bq[p].ow * g.stride + dw;
            const bool ok = b_col_ok && q < red_end && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
            const long long at = ((long long)bq[p].n * g.h + ih) * g.w + iw;
            cp_async16_u32(b_dst + p * B_STEP_BYTES, ok ? x + at * g.c + c : x, ok);
            bq[p].ow += KT;
            while (bq[p].ow >= g.ow) {
                bq[p].ow -= g.ow;
                if (++bq[p].oh == g.oh) {
                    bq[p].oh = 0;
                    ++bq[p].n;
                }
            }
        }
    }
};
