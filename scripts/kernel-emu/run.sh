#!/usr/bin/env bash
# Runs kernels on the CPU, one std::thread per CUDA thread (emu.h), against f64 loops, with outputs
# and partial sums starting as NaN; each check exits nonzero on a failure, and so does this script.
#  - danet_check: kernels/danet.cu's three kernels and danet_tc.cu's two (TF32 mma.sync,
#    cp.async, dynamic shared memory; through emu_ptx.py) on odd shapes (L = 1, 33x33, tails of
#    every tile, one with scores up to +-40), the TF32 ones against f64 on TF32-rounded inputs,
#    and again with the copies landing at issue (EMU_CP_ASYNC=early);
#  - csa_check: kernels/attention.cu (CSA pool and gate, forward and backward, and the finishing
#    launch) as src/ops/attention/cuda.rs launches them, C = 1..2048, H*W = 1..33x33, N = 1 and 3;
#    and SE's pair gate (se_*_f32, forward and backward) against f64, HD = 2..33;
#  - optim_check: kernels/optim.cu (SGD, Adam, train_monitor) as src/backend/cuda/optim.rs
#    launches them, with host and device (StepScalars) hyper-parameters and a NaN loss;
#  - bn_check: kernels/batchnorm.cu's training statistics, bn_stats_f32 and bn_stats_partials_f32
#    (from a convolution epilogue's per-slot sums and centred squares), mean far from 0; the
#    forward with a residual and ReLU and the backward that writes the masked gradient;
#  - nd_check: nd.cu's tiled transpose_f32 (the copies that transpose a matrix or a batch of
#    them) on shapes off its 32 x 32 tiles with base offsets, bit for bit against the host;
#  - conv_tc_check: kernels/conv2d_tc.cu (tensor-core convolution: forward, input and weight
#    gradient, TF32 and BF16 mma.sync, all three tiles, split and unsplit weight gradient) as
#    src/ops/conv/cuda.rs launches it, on 7 small odd shapes, against f64 loops on the same
#    rounded operands. Its inline PTX is rewritten by emu_ptx.py into emu_tc.h's emulations
#    (TF32/BF16 rounding, warp-collective mma.sync from the PTX fragment layouts) in a copy.
#  - conv_tcp_check: kernels/conv2d_tcp.cu (the cp.async-pipelined variant, conv2d_pipe_*), the
#    same check built from conv_tc_check.cpp with -DCONV_TCP_KERNELS: weights reordered as cuda.rs
#    hands them over, dynamic shared memory (NaN before each block), cp.async queued per thread
#    and landing at the wait (emu_async.h), 4 more shapes, and the forward's batch-norm partial
#    statistics (every slot's sum and centred squares against the output it wrote); then again on shapes 6 and 9 with the
#    copies landing at issue (EMU_CP_ASYNC=early).
#  - gather_check: the passes that replaced atomics (the same bits every run): pool.cu's bilinear
#    resize backward as a gather per input cell against an f64 scatter (8x up, odd ratios, down,
#    one-row planes), and reduce.cu's split sums written per split and added in order by
#    sum_splits_f32 (which also sums the convolutions' split weight gradients), run twice;
#    reduce.cu's softmax over rows and over an axis, forward and backward, against f64; and
#    block_reduce.cuh's block_max and block_sum called twice in a row.
#  - conv_nhwc_check: kernels/conv2d_nhwc.cu (the three bf16 passes from channels-last bf16
#    copies; ldmatrix, 32-bit shared addresses): its nchw_to_nhwc_bf16 copies bit for bit against
#    the host, the convolutions (four tiles, every pass unsplit and split in three) against f64
#    loops and bit for bit against conv2d_tcp.cu's bf16 kernels (built from one emu_ptx.py rewrite
#    of both files; the 64 x 64 tile has no twin there); and kernels/conv2d_wgmma.cu's three passes
#    (wgmma emulated from its descriptors) against f64 and bit for bit against the channels-last
#    128 x 128 kernels (the same rewrite); again on shapes 0 and 2 with early copies.
# All nine are built with AddressSanitizer and UBSan: an out-of-bounds read or write (global or
# shared memory), a misaligned float2/float4 access or an int overflow aborts the run.
# For checking a kernel's indexing, masking, barriers and reduction order on a machine without a
# GPU; it says nothing about speed, and a race that needs real warps to show may pass here.
# About 20 minutes on 2 cores, either way. ./mutants.sh checks that the checks fail on broken kernels.
# Needs g++ (C++20, with the sanitizers' runtimes) and python3; where one is missing it says so
# and exits 0, unless CUDA_EMU_REQUIRED=1 (the switch scripts/cuda-emu reads; CI sets it).
# The README's test command runs it with EMU_RACE=1.
set -euo pipefail
cd "$(dirname "$0")"
out=${EMU_OUT:-/tmp/kernel-emu}
mkdir -p "$out"
. ./sanitizers.sh  # san: the flags (EMU_FIBERS=1: fibers; EMU_RACE=1: the race detector)
. ./tools.sh
emu_require_tools kernel-emu "the kernel checks were not run"
# The sanitizers' runtimes come apart from g++ on some systems: a program that does nothing, built
# and run with the checks' flags, says whether they are here.
printf 'int main() { return 0; }\n' > "$out/probe.cpp"
{ g++ $san -o "$out/probe" "$out/probe.cpp" && "$out/probe"; } > "$out/probe.log" 2>&1 ||
    emu_missing kernel-emu "g++ cannot build or run a program with '$san' ($(head -c 300 "$out/probe.log")): the kernel checks were not run"
g++ $san -std=c++20 -w -pthread -o "$out/csa_check" csa_check.cpp
g++ $san -std=c++20 -w -pthread -o "$out/optim_check" optim_check.cpp
g++ $san -std=c++20 -w -pthread -o "$out/bn_check" bn_check.cpp
g++ $san -std=c++20 -w -pthread -o "$out/gather_check" gather_check.cpp
g++ $san -std=c++20 -w -pthread -o "$out/nd_check" nd_check.cpp
python3 emu_ptx.py ../../kernels/conv2d_tc.cu "$out/conv2d_tc_emu.cu"
g++ $san -std=c++20 -w -pthread -I. -DCONV_TC_KERNELS="\"$out/conv2d_tc_emu.cu\"" -o "$out/conv_tc_check" conv_tc_check.cpp
python3 emu_ptx.py ../../kernels/conv2d_tcp.cu "$out/conv2d_tcp_emu.cu"
g++ $san -std=c++20 -w -pthread -I. -DCONV_TCP_KERNELS="\"$out/conv2d_tcp_emu.cu\"" -o "$out/conv_tcp_check" conv_tc_check.cpp
printf '#include "danet.cu"\n#include "danet_tc.cu"\n' > "$out/danet_both.cu"  # fp32 and TF32 kernels, one rewrite
python3 emu_ptx.py -I ../../kernels "$out/danet_both.cu" "$out/danet_emu.cu"
g++ $san -std=c++20 -w -pthread -I. -DDANET_KERNELS="\"$out/danet_emu.cu\"" -o "$out/danet_check" danet_check.cpp
printf '#include "conv2d_tcp.cu"\n#include "conv2d_nhwc.cu"\n#include "conv2d_wgmma.cu"\n' > "$out/nhwc_both.cu"  # one rewrite: shared headers once
python3 emu_ptx.py -I ../../kernels "$out/nhwc_both.cu" "$out/conv2d_nhwc_emu.cu"
g++ $san -std=c++20 -w -pthread -I. -DCONV_KERNELS="\"$out/conv2d_nhwc_emu.cu\"" -o "$out/conv_nhwc_check" conv_nhwc_check.cpp
status=0
for c in danet_check csa_check optim_check bn_check gather_check nd_check conv_tc_check conv_tcp_check conv_nhwc_check; do
    echo "== $c"
    "$out/$c" || { echo "$c FAILED"; status=1; }
done
echo "== danet_check, TF32 kernels (EMU_CP_ASYNC=early)"
EMU_CP_ASYNC=early DANET_ONLY=tf32 "$out/danet_check" || { echo "danet_check (early) FAILED"; status=1; }
echo "== conv_tcp_check 6 9 (EMU_CP_ASYNC=early)"
EMU_CP_ASYNC=early "$out/conv_tcp_check" 6 9 || { echo "conv_tcp_check (early) FAILED"; status=1; }
echo "== conv_nhwc_check 0 2 (EMU_CP_ASYNC=early)"
EMU_CP_ASYNC=early "$out/conv_nhwc_check" 0 2 || { echo "conv_nhwc_check (early) FAILED"; status=1; }
exit $status
