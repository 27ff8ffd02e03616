#!/usr/bin/env bash
# Checks that the checks can fail: each mutant is a copy of a kernel file with one
# deliberate bug (sed), and the check built against it must exit nonzero (conv_tc_check and
# conv_tcp_check, built from the copy through emu_ptx.py, stop at their first failure). Prints
# each mutant's verdict; exits nonzero if a mutant survives. Not part of run.sh (about 40 minutes
# on 2 cores for all 107; conv_tc_check's 10 about 4, conv_tcp_check's 21 about 10, conv_nhwc_check's 27 about 25, beside other work; then the
# barrier sweep's 23, about 7 minutes alone). A mutant of a
# header (conv_tc.cuh) is made in a copy of kernels/, so it reaches the kernel that includes it.
# ONLY=conv_tc_check ./mutants.sh runs one check's mutants.
set -uo pipefail
cd "$(dirname "$0")"
out=${EMU_OUT:-/tmp/kernel-emu}/mutants
mkdir -p "$out"
# san, race_san (sanitizers.sh): the flags; a mutant whose environment says EMU_RACE=1 (the barrier
# sweep below) is built with race_san.
. ./sanitizers.sh
survived=0
# check, kernel file (or a header it includes), define, sed expression, what it breaks[,
# environment of the run[, arguments of the check]]. The mutant is made in a copy of kernels/, so a header's mutant reaches
# the kernel file that includes it. conv_tcp_check is conv_tc_check.cpp built with
# -DCONV_TCP_KERNELS.
mutant() {
    local check=$1 src=$2 def=$3 expr=$4 what=$5 env=${6:-} args=${7:-} flags=$san
    case " ${6:-} " in *" EMU_RACE=1 "*) flags=$race_san ;; esac
    if [ -n "${ONLY:-}" ] && [ "$check" != "$ONLY" ] && ! [ "$ONLY:${sweeping:-}" = barriers:1 ]; then return; fi
    local dir="$out/kernels"
    rm -rf "$dir" && cp -r ../../kernels "$dir"
    sed "$expr" "../../kernels/$src" > "$dir/$src"
    if cmp -s "$dir/$src" "../../kernels/$src"; then echo "BAD MUTANT (sed matched nothing): $what"; survived=1; return; fi
    local copy="$dir/$src" cpp=$check.cpp
    # conv2d_tc.cu's and conv2d_tcp.cu's inline PTX (theirs and conv_tc.cuh's, inlined):
    # rewritten into emu_tc.h's emulations, as run.sh does
    case $check in
        conv_tc_check) copy="$dir/conv2d_tc.cu" ;;
        conv_tcp_check) copy="$dir/conv2d_tcp.cu" cpp=conv_tc_check.cpp ;;
        conv_nhwc_check) copy="$dir/nhwc_both.cu"; printf '#include "conv2d_tcp.cu"\n#include "conv2d_nhwc.cu"\n#include "conv2d_wgmma.cu"\n' > "$copy" ;;
        danet_check) copy="$dir/danet_both.cu"; printf '#include "danet.cu"\n#include "danet_tc.cu"\n' > "$copy" ;;
        bn_check) copy="$dir/batchnorm.cu" ;;  # also for a mutant of block_reduce.cuh, which it includes
        gather_check) [ "$src" = block_reduce.cuh ] && copy="$dir/reduce.cu" ;;  # likewise
    esac
    if [ "$cpp" = conv_tc_check.cpp ] || [ "$check" = conv_nhwc_check ] || [ "$check" = danet_check ]; then python3 emu_ptx.py "$copy" "$copy.emu.cu" 2>/dev/null || { echo "BAD MUTANT (emu_ptx): $what"; survived=1; return; }; copy="$copy.emu.cu"; fi
    g++ $flags -std=c++20 -w -pthread -D$def="\"$copy\"" -I. -o "$out/bin" "$cpp" || { echo "BAD MUTANT (no build): $what"; survived=1; return; }
    if (env EMU_FAIL_FAST=1 $env "$out/bin" $args) > "$out/log" 2>&1; then echo "SURVIVED: $what${env:+ ($env)}"; survived=1; else echo "caught: $what${env:+ ($env)} ($(grep -m1 -o 'FAIL.*\|ERROR: [A-Za-z]*Sanitizer: [a-z-]*\|WARNING: ThreadSanitizer: [a-z ]*\|runtime error: [a-z ]*\|emu: .*' "$out/log" | head -1))"; fi
}
A=attention.cu O=optim.cu T=conv2d_tc.cu P=conv2d_tcp.cu H=conv_tc.cuh C=cp_async.cuh N=conv2d_nhwc.cu K=nhwc_copy.cuh W=conv2d_wgmma.cu
mutant danet_check danet.cu DANET_KERNELS 's/return v + __shfl_xor_sync(0xffffffffu, v, 4);/return v;/' "danet row sums miss the 4-lane shuffle" DANET_ONLY=fp32
# danet_tc.cu (TF32 mma.sync): the W-as-A permutation, X's columns, a B fragment's k, the online
# softmax's rescale and column mask, the quad max, dv's per-column lse, dk's per-column delta,
# the 16-byte copies' column mask, dP's chunks of C.
D=danet_tc.cu
mutant danet_check $D DANET_KERNELS 's/__float_as_uint(w\[j\]\[2\]), __float_as_uint(w\[j\]\[1\])/__float_as_uint(w[j][1]), __float_as_uint(w[j][2])/' "danet_tc W's accumulator lanes read as A unpermuted" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/swz<PT_BCOL>(8 \* i + g, 8 \* j + 2 \* t)/swz<PT_BCOL>(8 * i + g, 8 * j + t)/' "danet_tc X's B fragment at columns t, not 2t" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/tf32_bits(bs\[swz<PT_BCOL>(k + 4, 8 \* j + g)\])/tf32_bits(bs[swz<PT_BCOL>(k + 1, 8 * j + g)])/' "danet_tc scores' B fragment b1 at k = t+1" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/            acc\[i\]\[2 \* h\] \*= alpha;//' "danet_tc online softmax skips a rescale" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/if (c0 + 8 \* j + 2 \* t + e >= L) w\[j\]\[2 \* h + e\] = -INFINITY;//' "danet_tc forward without the column mask" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));/return v;/' "danet_tc quad max misses the 2-lane shuffle" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/lse_row\[v >> 1\] : stats\[cl\]/lse_row[v >> 1] : stats[0]/' "danet_tc dv and dk use one column's lse" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/stats\[PT_BCOL + 8 \* j + 2 \* t + (v \& 1)\]/stats[PT_BCOL + 8 * j + 2 * t]/' "danet_tc dk's delta of the wrong column" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS '0,/const bool in = row < K \&\& pos < L;/s//const bool in = row < K;/' "danet_tc 16-byte copies past L" DANET_ONLY=tf32
mutant danet_check $D DANET_KERNELS 's/a2, C, k0, PT_KC, L, r0/a2, C, 0, PT_KC, L, r0/' "danet_tc dP reads C's first chunk only" DANET_ONLY=tf32
mutant csa_check $A CSA_KERNELS 's/for (int o = 16; o > 0; o >>= 1)/for (int o = 8; o > 0; o >>= 1)/' "warp_sum skips the 16-lane step"
mutant csa_check $A CSA_KERNELS 's/for (int w = 0; w < CSA_WARPS; ++w) s += sums\[w\]\[t\]/for (int w = 1; w < CSA_WARPS; ++w) s += sums[w][t]/' "pixel partials drop warp 0"
mutant csa_check $A CSA_KERNELS 's/float v = p < hw ? row\[p\] : 0.0f;/float v = p <= hw ? row[p] : 0.0f;/' "pool reads one pixel past the row"
mutant csa_check $A CSA_KERNELS 's/chunk(gridDim.y - 1 - blockIdx.y)/chunk(gridDim.y - 1)/' "pool and gate backward (walking from the end) visit one channel chunk"
mutant csa_check $A CSA_KERNELS '0,/__syncthreads();/s//\/\/ no barrier/' "no barrier before the pixel partials are read"
mutant csa_check $A CSA_KERNELS 's/for (int t = 0; t < ptiles; ++t) acc += src\[t\]/for (int t = 1; t < ptiles; ++t) acc += src[t]/' "finish drops the first pixel tile"
mutant csa_check $A CSA_KERNELS 's/pix\[j\] += __fmul_rn(g, __fmul_rn(x, cv));/pix[j] += __fmul_rn(g, x);/' "ds misses the channel gate"
mutant csa_check $A CSA_KERNELS 's/const int e = i << 2, p = e % hw, nc = e \/ hw, n = nc \/ C;/const int e = i << 2, p = e % hw, nc = e \/ hw, n = nc % C;/' "gate_fwd's 4-wide path: image index"
mutant csa_check $A CSA_KERNELS 's/dx\[i\] = __fadd_rn(__fmul_rn(gn\[ch\], inv_hw), __fmul_rn(gn\[C + p\], inv_c));/dx[i] = __fadd_rn(__fmul_rn(gn[ch], inv_hw), __fmul_rn(gn[C + p - 1], inv_c));/' "pool_bwd's scalar path: pixel off by one"
mutant csa_check $A CSA_KERNELS 's/float4\* dx4 = reinterpret_cast<float4\*>(dx);/float4* dx4 = reinterpret_cast<float4*>(dx + 1);/' "pool_bwd's 4-wide stores misaligned"
mutant csa_check $A CSA_KERNELS 's/            dz\[b\] = dbv;/            dz[b] = da;/' "se: image b's gradient takes image a's"
mutant csa_check $A CSA_KERNELS 's/for (int i = 0; i < 2 \* N; ++i) acc += dz1\[(long long)i \* HD + j\] \* se_row/for (int i = 0; i < N; ++i) acc += dz1[(long long)i * HD + j] * se_row/' "se: dw1 sums image a's rows only"
mutant csa_check $A CSA_KERNELS 's/dz1\[(long long)i \* HD + j\] = hid\[(long long)i \* HD + j\] > 0.0f ? s : 0.0f;/dz1[(long long)i * HD + j] = s;/' "se: the hidden gradient misses ReLU's mask"
mutant optim_check $O OPTIM_KERNELS 's/p\[i\] -= lr \* v;/p[i] += lr * v;/' "sgd's sign"
mutant optim_check $O OPTIM_KERNELS 's/long long end = min(lens\[ch.tensor\], ch.start + (long long)chunk);/long long end = min(lens[ch.tensor], ch.start + (long long)chunk - 1);/g' "chunks one element short"
mutant optim_check $O OPTIM_KERNELS 's/if (hyper->skip != 0.0f) return;/if (hyper->skip > 1.0f) return;/' "optimisers ignore skip"
mutant optim_check $O OPTIM_KERNELS 's/double t = (double)state\[2\] + 1.0;/double t = (double)state[0] + 1.0;/' "bias corrections count iterations, not steps"
mutant optim_check $O OPTIM_KERNELS 's/if (!isfinite(l) \&\& state\[1\] == 0u) state\[1\] = it + 1u;/if (!isfinite(l)) state[1] = it + 1u;/' "first bad iteration overwritten"
mutant optim_check $O OPTIM_KERNELS 's/bc1 = hyper->bc1;/bc1 = hyper->bc2;/' "adam reads bc2 for bc1"
mutant optim_check $O OPTIM_KERNELS 's/s.lr = it < (unsigned)n_lr ? lr_table\[it\] : 0.0f;/s.lr = it <= (unsigned)n_lr ? lr_table[it] : 0.0f;/' "lr table read one past its end"
mutant conv_tc_check $T CONV_TC_KERNELS 's/af\[i\]\[1\] = As\[cur\]\[r + 8\]\[ks + bt.t4\];/af[i][1] = As[cur][r][ks + bt.t4];/' "A fragment register 1 reads row g, not g + 8"
mutant conv_tc_check $T CONV_TC_KERNELS 's/bf\[j\]\[1\] = Bs\[cur\]\[c\]\[ks + bt.t4 + 4\];/bf[j][1] = Bs[cur][c][ks + bt.t4];/' "B fragment register 1 reads k = t, not t + 4"
mutant conv_tc_check $H CONV_TC_KERNELS 's/const int m = m0 + wm \* (BM \/ 2) + i \* 16 + g8 + up \* 8;/const int m = m0 + wm * (BM \/ 2) + i * 16 + g8 + up * 4;/' "epilogue: accumulators 2 and 3 stored at row g + 4"
mutant conv_tc_check $T CONV_TC_KERNELS 's/if (k + 3 < bt.RED) v.w = __ldg(src + 3);/if (k + 3 <= bt.RED) v.w = __ldg(src + 3);/' "A's scalar tail loads one element past the reduction"
mutant conv_tc_check $T CONV_TC_KERNELS 's/return (ok \&\& c < g.c \&\& /return (ok \&\& /' "gather misses the channel tail mask"
mutant conv_tc_check $T CONV_TC_KERNELS 's/hit = th % g.stride == 0 \&\& tw % g.stride == 0;/hit = th % g.stride == 0;/' "strided input gradient misses the column holes"
mutant conv_tc_check $H CONV_TC_KERNELS 's/: "f"(hi), "f"(lo));/: "f"(lo), "f"(hi));/' "bf16 pairs packed high/low swapped"
mutant conv_tc_check $T CONV_TC_KERNELS 's/if (more) store(cur ^ 1);/if (more) store(cur);/' "next tile stored into the buffer being read"
mutant conv_tc_check $H CONV_TC_KERNELS 's/red_begin = blockIdx.z \* red_chunk;/red_begin = 0;/' "every weight-gradient split sums the first chunk"
mutant conv_tc_check $H CONV_TC_KERNELS 's/if constexpr (PASS == BWD_WEIGHT) out += (long long)blockIdx.z \* M \* N;/\/\/ every split into slice 0/' "every weight-gradient split written to slice 0"
# conv2d_tcp.cu (cp.async pipeline): copies land at the wait unless the 6th argument says early.
mutant conv_tcp_check $C CONV_TCP_KERNELS 's/cp_async_wait<STAGES - 2>();/cp_async_wait<STAGES - 1>();/' "pipe: waits for one group too few (reads a stage not yet landed)"
mutant conv_tcp_check $C CONV_TCP_KERNELS '/cp_async_wait<STAGES - 2>();/{n;n;s/__syncthreads();/\/\/ no barrier/}' "pipe: no barrier in the main loop"
mutant conv_tcp_check $C CONV_TCP_KERNELS '/cp_async_wait<STAGES - 2>();/{n;n;s/__syncthreads();//};/if (next < tiles) issue/{n;s/cp_async_commit();/cp_async_commit(); __syncthreads();/}' "pipe: barrier after the next tile's issue (overwrites the stage being read)" EMU_CP_ASYNC=early
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/const bool ok = k_ok \&\& (a_rows_in >> p \& 1);/const bool ok = (a_rows_in >> p \& 1);/' "pipe: A's 16-byte quads past the reduction not masked"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/a_rows_in |= (unsigned)(bt.m0 + a_row0 + 32 \* p < bt.M) << p;/a_rows_in |= 1u << p;/' "pipe: A rows past M copied"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/        cur.ch += KT;/        cur.ch += KT \/ 2;/' "pipe: the B cursor steps half a tile"
mutant conv_tcp_check $P CONV_TCP_KERNELS '/} while (cur.ch >= CH);/{n;s/cur.at = .*/\/\/ the tap kept/}' "pipe: the B cursor keeps the old tap's pixel"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/        aq.at += KT;/        aq.at += KT \/ 2;/' "pipe: the weight gradient's dy cursor steps half a tile"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/            if (++bq.oh == g.oh) {/            if (bq.oh + 1 == g.oh) {/' "pipe: the weight gradient's x cursor never moves to the next row"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/else return Bf16::pair(p\[0\], p\[next\]);/else return Bf16::pair(p[0], p[0]);/' "pipe: BF16 B pairs (k-rows) read row k for k + 1"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/static constexpr int SB = BN + (P::K_STEP == 8 ? 8 : 4);/static constexpr int SB = BN - 4;/' "pipe: B rows of SB = BN - 4 words (rows overlap)"
mutant conv_tcp_check $C CONV_TCP_KERNELS 's/"r"(valid ? 4 : 0)/"r"(4)/' "pipe: 4-byte copies never zero-fill (src-size always 4)"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/(OHW \& 3) == 0 : (bt.RED \& 3) == 0;/(OHW \& 1) == 0 : (bt.RED \& 3) == 0;/' "pipe: 16-byte dy copies when OH*OW is only even (misaligned)"
mutant conv_tcp_check $P CONV_TCP_KERNELS 's/return bm \* bn > 8192 ? 4 : 3;/return bm * bn > 8192 ? 5 : 3;/' "pipe: 5 stages in the kernel, 4 in the launch (trap)"
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/red_begin = blockIdx.z \* red_chunk;/red_begin = 0;/' "pipe: every weight-gradient split sums the first chunk"
# conv_tc.cuh (shared with conv2d_tc.cu): the epilogue, through the pipe. (Not the bf16 halves
# swapped: the pipe packs A and B with the same Bf16::pair, so swapping both pairs the same
# elements in each product and the mutant is equivalent; it matters for conv2d_tc.cu only.)
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/const int m = m0 + wm \* (BM \/ 2) + i \* 16 + g8 + up \* 8;/const int m = m0 + wm * (BM \/ 2) + i * 16 + g8 + up * 4;/' "pipe: epilogue stores accumulators 2 and 3 at row g + 4"
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/    out += (long long)blockIdx.z \* M \* N;  \/\/ this split.s slice.*$/    \/\/ every split into slice 0/' "pipe: every weight-gradient split written to slice 0"
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/const int inside = min(BN \/ 4, max(0, N - slot \* (BN \/ 4)));/const int inside = BN \/ 4;/' "bn statistics: a tail slot centred as if full"
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/const int P = gridDim.x \* 4, slot = blockIdx.x \* 4 + wn;/const int P = gridDim.x * 4, slot = blockIdx.x * 4;/' "bn statistics: the four warp columns write one slot"
mutant conv_tcp_check $H CONV_TCP_KERNELS 's/q += __shfl_xor_sync(0xffffffffu, q, 2);/\/\/ two lanes short/' "bn statistics: centred squares miss two lanes"
# conv2d_nhwc.cu (bf16 channels-last copies, ldmatrix), checked against f64 and conv2d_tcp.cu's bits.
mutant conv_nhwc_check $N CONV_KERNELS 's/const int a_lds = (bt.wm \* (BM \/ 2) + (lane \& 15)) \* ROW/const int a_lds = (bt.wm * (BM \/ 2) + (lane \& 7)) * ROW/' "nhwc: A's ldmatrix reads rows 0-7 for a1 and a3"
mutant conv_nhwc_check $N CONV_KERNELS 's/ROW + ((lane >> 3) \& 1) \* 8;/ROW;/' "nhwc: B's ldmatrix reads k 0-7 for b[j][1]"
mutant conv_nhwc_check $N CONV_KERNELS 's/Bf16::pair(tile\[2 \* lane\]\[i\], tile\[2 \* lane + 1\]\[i\])/Bf16::pair(tile[2 * lane + 1][i], tile[2 * lane][i])/' "nhwc copy: the two channels of a word swapped"
mutant conv_nhwc_check $N CONV_KERNELS 's/tile\[i\]\[lane\] = ch < c \&\& p < hw/tile[i][lane] = p < hw/' "nhwc copy: reads channels past c"
mutant conv_nhwc_check $K CONV_KERNELS 's/        cur.ch += KT;/        cur.ch += KT \/ 2;/' "nhwc: the chunk cursor steps half a tile"
mutant conv_nhwc_check $K CONV_KERNELS 's/const bool k_ok = k0 + 8 \* chunk < red_end;/const bool k_ok = k0 < red_end;/' "nhwc: chunks past the reduction's tail copied"
mutant conv_nhwc_check $K CONV_KERNELS 's/b_img\[j\] + (long long)at \* CH + ch/b_img[j] + (long long)at * CH/' "nhwc: every chunk of a tap reads channels 0-7"
mutant conv_nhwc_check $C CONV_KERNELS 's/cp_async_wait<STAGES - 2>();/cp_async_wait<STAGES - 1>();/' "nhwc: waits for one group too few"
mutant conv_nhwc_check $C CONV_KERNELS '/cp_async_wait<STAGES - 2>();/{n;n;s/__syncthreads();//};/if (next < tiles) issue/{n;s/cp_async_commit();/cp_async_commit(); __syncthreads();/}' "nhwc: barrier after the next tile's issue (overwrites the stage being read)" EMU_CP_ASYNC=early
# The same two with the copies landing late (the default), where the values come out right:
# the race detector sees the issue's write against the other warps' reads of the stage.
mutant conv_tcp_check $C CONV_TCP_KERNELS '/cp_async_wait<STAGES - 2>();/{n;n;s/__syncthreads();//};/if (next < tiles) issue/{n;s/cp_async_commit();/cp_async_commit(); __syncthreads();/}' "pipe: barrier after the next tile's issue, late copies" EMU_RACE=1 "0 6"
mutant conv_nhwc_check $C CONV_KERNELS '/cp_async_wait<STAGES - 2>();/{n;n;s/__syncthreads();//};/if (next < tiles) issue/{n;s/cp_async_commit();/cp_async_commit(); __syncthreads();/}' "nhwc: barrier after the next tile's issue, late copies" EMU_RACE=1 "0 2"
mutant conv_nhwc_check $N CONV_KERNELS 's/const int a_lds = (((lane >> 4) \& 1) \* 8 + (lane \& 7)) \* AROW/const int a_lds = (lane \& 7) * AROW/' "nhwc wgrad: A's ldmatrix.trans reads k 0-7 for a2 and a3"
mutant conv_nhwc_check $N CONV_KERNELS 's/            bq\[p\].ow += KT;/            bq[p].ow += KT \/ 2;/' "nhwc wgrad: the x cursor steps half a tile"
mutant csa_check $A CSA_KERNELS 's/const int src = c - j + pad;/const int src = c + j - pad;/' "eca backward: the input gradient's taps not mirrored"
mutant csa_check $A CSA_KERNELS 's/return g\[(long long)n \* C + c\] \* gates\[(long long)other \* C + c\]/return g[(long long)n * C + c] * gates[(long long)i * C + c]/' "eca backward: the product's gradient takes the image's own gate"
mutant csa_check $A CSA_KERNELS 's/for (int e = lane; e < 2 \* N \* C; e += 32)/for (int e = lane; e < N * C; e += 32)/' "eca backward: dw sums image a only"
mutant conv_nhwc_check $N CONV_KERNELS 's/const int dh = r \* g.dil - g.pad,/const int dh = r - g.pad,/' "nhwc wgrad: the tap's row ignores the dilation"
mutant conv_nhwc_check $N CONV_KERNELS 's/const bool ok = a_col_ok \&\& q < bt.red_end;/const bool ok = a_col_ok;/' "nhwc wgrad: dy rows past the split's end copied"
# Split-K of the forward and input gradient (tuning's candidates), through the shared epilogue.
mutant conv_nhwc_check $H CONV_KERNELS 's/    if (blockIdx.z != 0) bias = nullptr;/    \/\/ the bias in every split/' "split forward: every slice adds the bias"
mutant conv_nhwc_check $H CONV_KERNELS 's/    out += (long long)blockIdx.z \* M \* N;  \/\/ this split.s slice.*$/    if constexpr (PASS == BWD_WEIGHT) out += (long long)blockIdx.z * M * N;/' "split forward and input gradient: every split written to slice 0"
mutant gather_check pool.cu POOL_KERNELS 's/lo = max(0, (int)floorf((src - 0.5f) \/ scale - 0.5f) - 1);/lo = max(0, (int)floorf((src - 0.5f) \/ scale - 0.5f) + 2);/' "resize gather: the reach starts three rows late (past the first reading row)"
mutant gather_check pool.cu POOL_KERNELS 's/hi = min(out - 1, (int)ceilf((src + 1.5f) \/ scale - 0.5f) + 1);/hi = min(out - 1, (int)ceilf((src + 1.5f) \/ scale - 0.5f) - 2);/' "resize gather: the reach ends three rows early"
mutant gather_check pool.cu POOL_KERNELS 's/return (i0 == src ? 1.0f - l1 : 0.0f) + (i1 == src ? l1 : 0.0f);/return i0 == src ? 1.0f - l1 : (i1 == src ? l1 : 0.0f);/' "resize gather: a border row counted once, not twice"
mutant gather_check reduce.cu REDUCE_KERNELS 's/for (int z = 1; z < splits; ++z)/for (int z = 2; z < splits; ++z)/' "sum_splits skips the second split"
mutant gather_check reduce.cu REDUCE_KERNELS 's/y\[(long long)blockIdx.y \* n_out + o\] = acc \* scale;/y[o] = acc * scale;/g' "split sums all written to slice 0"
mutant gather_check reduce.cu REDUCE_KERNELS 's/for (int k = threadIdx.x; k < dim; k += blockDim.x) s += expf(xr\[k\] - m);/for (int k = threadIdx.x; k < dim; k += blockDim.x) s += expf(xr[k]);/' "softmax rows: the sum without the max subtracted"
mutant gather_check reduce.cu REDUCE_KERNELS 's/        dot = block_sum(dot);//' "softmax rows backward: each thread's own part of the dot"
mutant gather_check reduce.cu REDUCE_KERNELS 's/dx\[i\] = y\[i\] \* (dy\[i\] - dot);/dx[i] = y[i] * dy[i];/' "softmax over an axis, backward without the dot"
mutant bn_check batchnorm.cu BN_KERNELS 's/const int n = min(width, count - j \* width);/const int n = width;/' "partial statistics: the last slot counted as full"
mutant bn_check batchnorm.cu BN_KERNELS 's/q += (double)m2\[j\] + n \* d \* d;/q += (double)m2[j];/' "partial statistics: slot means not combined"
mutant bn_check batchnorm.cu BN_KERNELS 's/bn_value(x\[i\], mean\[c\], var\[c\], m.gamma\[c\], m.beta\[c\], eps) > 0.0f/bn_value(x[i], mean[c], var[c], m.gamma[c], 0.0f, eps) > 0.0f/' "the ReLU mask recomputed from the input ignores beta"
mutant conv_nhwc_check $N CONV_KERNELS 's/return relu_value(bn_value(v, mean\[ch\], var\[ch\], gamma\[ch\], beta\[ch\], eps));/return relu_value(bn_value(v, mean[ch], var[ch], gamma[ch], beta[0], eps));/' "nhwc prologue: every channel shifted by channel 0's beta"
# conv2d_wgmma.cu (wgmma emulated from its descriptors, operands read at the wait): the copies'
# swizzle, the k-step's advance, the warpgroup's rows, the stride between 8-row groups, the
# epilogue's warp rows, the wait before the stage is reused (caught when copies land at issue).
mutant conv_nhwc_check $W CONV_KERNELS 's/((copy.chunk ^ (copy.row0 \& 7)) << 4)/(copy.chunk << 4)/' "wgmma: tiles copied unswizzled"
mutant conv_nhwc_check $W CONV_KERNELS 's/wgmma_desc(a + 32 \* ks)/wgmma_desc(a + 16 * ks)/' "wgmma: A's k-steps advance 8 elements"
mutant conv_nhwc_check $W CONV_KERNELS 's/st \* STAGE_BYTES + wg \* 64 \* 128,/st * STAGE_BYTES,/' "wgmma: both warpgroups read A's first 64 rows"
mutant conv_nhwc_check $W CONV_KERNELS 's/((unsigned long long)(1024 >> 4) << 32)/((unsigned long long)(512 >> 4) << 32)/' "wgmma: 8-row groups 512 bytes apart"
mutant conv_nhwc_check $W CONV_KERNELS 's/64 \* wg + 16 \* ((bt.t >> 5) \& 3), 0,/64 * wg + 16 * ((bt.t >> 5) \& 1), 0,/' "wgmma: the epilogue's warps 2 and 3 write warps 0 and 1's rows"
mutant conv_nhwc_check $W CONV_KERNELS 's/        wgmma_wait<0>();/        wgmma_wait<1>();/;s/    store_tile_at</    wgmma_wait<0>();\n    store_tile_at</' "wgmma: a stage's wgmma waited for one tile late" EMU_CP_ASYNC=early
# the weight gradient (MN-major operands): read as K-major, the k-step's 16 pixel rows, B's second
# 64-column block, warpgroup 1's channels.
mutant conv_nhwc_check $W CONV_KERNELS 's/wgmma_m64n128k16_bf16<true>/wgmma_m64n128k16_bf16<false>/' "wgmma wgrad: MN-major tiles read as K-major"
mutant conv_nhwc_check $W CONV_KERNELS 's/wgmma_desc(a + 2048 \* ks, BLOCK)/wgmma_desc(a + 1024 * ks, BLOCK)/' "wgmma wgrad: A's k-steps advance 8 pixels"
mutant conv_nhwc_check $W CONV_KERNELS 's/wgmma_desc(b + 2048 \* ks, BLOCK)/wgmma_desc(b + 2048 * ks, 16)/' "wgmma wgrad: B's 64-column blocks 16 bytes apart"
mutant conv_nhwc_check $W CONV_KERNELS 's/st \* STAGE_BYTES + wg \* BLOCK,/st * STAGE_BYTES,/' "wgmma wgrad: both warpgroups read dy's first 64 channels"
mutant bn_check batchnorm.cu BN_KERNELS 's/if (residual != nullptr) v = v + residual\[i\];/;/; s/y\[i\] = relu ? relu_value(v) : v;/y[i] = (relu ? relu_value(v) : v) + (residual != nullptr ? residual[i] : 0.0f);/' "residual added after the ReLU"
mutant bn_check batchnorm.cu BN_KERNELS 's/if (g_out != nullptr) g_out\[i\] = g;/if (g_out != nullptr) g_out[i] = dy[i];/' "the residual's gradient not masked by the ReLU"
# nd.cu's tiled transpose: the tile read back unswapped, the read's column bound dropped.
mutant nd_check nd.cu ND_KERNELS 's/y\[(long long)c \* R + r\] = tile\[tx\]\[i\];/y[(long long)c * R + r] = tile[i][tx];/' "transpose writes the tile unswapped"
mutant nd_check nd.cu ND_KERNELS 's/if (r < R \&\& c < C) tile\[i\]\[tx\]/if (r < R) tile[i][tx]/' "transpose reads past a row's end"
# The barrier sweep: every __syncthreads and __syncwarp of the kernels the checks cover, removed
# one at a time, built with the race detector (EMU_RACE=1): each must be reported (a race, or
# wrong values). The value checks alone miss some (a missing barrier the emulator's schedule
# happens to survive); one that no check misses would be a barrier the kernel does not need.
# A header's barrier is swept through each check whose kernels use it. Shapes are cut to two
# per convolution check (a caught mutant stops at its first report). BARRIERS=0 skips it;
# ONLY=barriers runs it alone; SWEEP_VALUES=1 builds the sweep's mutants with AddressSanitizer
# instead, to see which missing barriers the value checks alone catch.
# An optional sixth argument names a function of the file whose barriers are not swept (no check
# here runs it).
barrier_sweep() {
    local check=$1 src=$2 def=$3 env=${4:-} args=${5:-} skip=${6:-} line sweeping=1 race=EMU_RACE=1
    [ "${SWEEP_VALUES:-0}" = 1 ] && race=EMU_SWEEP=values
    while IFS=: read -r line _; do
        if [ -n "$skip" ] && awk -v at="$line" -v fn="$skip" '$0 ~ "^__device__.* " fn "\\(" { inside = 1 } inside && NR == at { hit = 1 } inside && /^}/ { inside = 0 } END { exit !hit }' "../../kernels/$src"; then
            continue
        fi
        mutant "$check" "$src" "$def" "${line}s/__sync\(threads\|warp\)();/\/\/ no barrier/" "$src:$line: barrier removed" "$race${env:+ $env}" "$args"
    done < <(grep -n '__syncthreads();\|__syncwarp();' "../../kernels/$src")
}
if [ "${BARRIERS:-1}" = 1 ]; then
    barrier_sweep csa_check attention.cu CSA_KERNELS
    barrier_sweep danet_check danet.cu DANET_KERNELS DANET_ONLY=fp32
    barrier_sweep danet_check cp_async.cuh DANET_KERNELS DANET_ONLY=tf32
    barrier_sweep nd_check nd.cu ND_KERNELS
    # block_max: bn_check does not run it; gather_check does (softmax, and two calls in a row)
    barrier_sweep bn_check block_reduce.cuh BN_KERNELS "" "" block_max
    barrier_sweep gather_check block_reduce.cuh REDUCE_KERNELS
    barrier_sweep conv_tc_check conv2d_tc.cu CONV_TC_KERNELS "" "0 2"
    barrier_sweep conv_tcp_check cp_async.cuh CONV_TCP_KERNELS "" "0 6"
    barrier_sweep conv_nhwc_check conv2d_nhwc.cu CONV_KERNELS "" "0 2"
    barrier_sweep conv_nhwc_check cp_async.cuh CONV_KERNELS "" "0 2"
fi
exit $survived
