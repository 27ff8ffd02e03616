#!/usr/bin/env bash
# One device call for the GPU work (build here, run there), over binaries staged with
#   PACK_ONLY='gpu|csa|danet|autograd|gradcheck|op_edge|nn_model|bin-coseg' scripts/gpu/stage-xz.sh
# (then carry [".gpu"]; the tarball is unpacked here). Each step is bounded and logged under $OUT:
#   tests    every staged test binary with REQUIRE_CUDA=1 (GPU tests fail rather than skip)
#   conv     benches/conv_gpu.rs: the tensor-core variants (staged, pipelined; nhwc and wgmma in bf16)
#            against cuDNN at fp32, tf32 and bf16; prints its summary table
#   step     benches/step_gpu.rs: the paper's training step per precision and variant, eager and
#            captured, host waits per step (COSEG_WAIT_TRACE=1: and where they come from)
#   attention  benches/step_gpu.rs gpu_attention_step: the bf16 captured step with each attention
#            of the paper's Table 3, composed (before the attention kernels) and fused (after)
#   tune     benches/conv_gpu.rs with COSEG_CONV_TUNE (bf16 unless CONV_GPU_PRECISIONS): our columns on
#            the plans chosen by timing, and the tuner's table (the model's plan against the chosen
#            one per pass; $OUT/conv-tune.json holds every candidate's time). `step` times the
#            tuned training step too (rows `bf16_tuned`, `bf16_nhwc_tuned`, `bf16_wgmma_tuned`)
#   infer    benches/step_gpu.rs gpu_inference: evaluation forward of 10 and 40 pairs in bf16,
#            eager and replayed from a CUDA graph, pairs per second
#   csa      benches/csa_gpu.rs: the attention kernels against the composed ops
#   run      a short paper-model training run with the CUDA graph
#   runstaged  the same run on the staged tensor-core kernels without batch-norm statistics from
#            the epilogue (COSEG_CONV_TC=staged COSEG_FUSE_BN_STATS=0), to set beside `run`
#   curves   the same 200-iteration run at fp32, tf32 and bf16 (loss and validation curves)
#   profile  per-op and per-model-part tables of a short run (coseg's own profiler)
#   ncustep  Nsight Compute: per-kernel time of one bf16 training step
#   convprof Nsight Compute sections (speed of light, occupancy, warp stalls, memory, instructions)
#            of the pipelined bf16 kernels on 3x3 c512 16x16 d4: one forward, input and weight
#            gradient (CONV_PROF_CASE picks another conv_gpu case; CONV_PROF_FAMILY=nhwc or wgmma the
#            channels-last kernels instead)
# STEP_FILTER narrows the step benches (criterion's filter; default 'gpu_train_step|gpu_sgd_step').
# Usage: bash scripts/gpu/check.sh [steps]   (default "tests conv step csa run")
# One device call may run 600 s: split the default in two calls, e.g. "tests conv" and
# "step csa run runstaged".
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${1:-tests conv step csa run}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
if [ -f .gpu/bin.tar.xz ]; then  # staged by scripts/gpu/stage-xz.sh
  python3 -c "import tarfile; tarfile.open('.gpu/bin.tar.xz').extractall('.gpu')" && echo "unpacked $(ls .gpu/bin | wc -l) binaries"
fi
cudnn=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null)
[ -n "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn:${LD_LIBRARY_PATH:-}"
for s in $steps; do
  t0=$(date +%s)
  case $s in
    tests)
      for t in .gpu/bin/test-*; do
        REQUIRE_CUDA=1 timeout 200 "$t" > "$OUT/$(basename "$t").log" 2>&1; rc=$?
        echo "$(basename "$t"): rc $rc, $(grep -E '^test result' "$OUT/$(basename "$t").log" | tail -1)"
        [ $rc -eq 0 ] || grep -A1 -E "panicked|^test .*FAILED" "$OUT/$(basename "$t").log" | head -16
      done
      # One file: the reply carries only a few.
      tar -C "$OUT" -czf "$OUT/test-logs.tar.gz" $(cd "$OUT" && ls test-*.log) && rm -f "$OUT"/test-*.log;;
    conv)
      timeout 300 .gpu/bin/bench-conv_gpu --bench > "$OUT/conv_gpu.log" 2>&1; echo "conv_gpu rc $?"
      grep -E '^\||summary' "$OUT/conv_gpu.log";;
    step)
      timeout 300 .gpu/bin/bench-step_gpu --bench "${STEP_FILTER:-gpu_train_step|gpu_sgd_step}" > "$OUT/step_gpu.log" 2>&1; echo "step_gpu rc $?"
      grep -E "^gpu_|time:|train step|peak device|^conv tune:" "$OUT/step_gpu.log" | head -60
      # COSEG_WAIT_TRACE=1: where the steady-state steps wait (the first few traces)
      grep -A8 -E "^host wait" "$OUT/step_gpu.log" | head -40;;
    attention)
      timeout 300 .gpu/bin/bench-step_gpu --bench gpu_attention_step > "$OUT/attention_step.log" 2>&1; echo "attention step rc $?"
      grep -E "^\||Table 3|not captured" "$OUT/attention_step.log";;
    tune)
      COSEG_CONV_TUNE=$OUT/conv-tune.json CONV_GPU_PRECISIONS=${CONV_GPU_PRECISIONS:-bf16} timeout 300 .gpu/bin/bench-conv_gpu --bench > "$OUT/conv_gpu_tuned.log" 2>&1
      echo "conv_gpu tuned rc $?"; grep -E '^\||summary|tuned by timing|^conv tune:' "$OUT/conv_gpu_tuned.log";;
    infer)
      timeout 200 .gpu/bin/bench-step_gpu --bench gpu_inference > "$OUT/infer_gpu.log" 2>&1; echo "infer rc $?"
      grep -E "^inference|time:" "$OUT/infer_gpu.log";;
    csa)
      timeout 150 .gpu/bin/bench-csa_gpu --bench > "$OUT/csa_gpu.log" 2>&1; echo "csa_gpu rc $?"
      grep -vE "^(Benchmarking|Warming|Collecting|Analyzing|Found|  [0-9]+ \(|$)" "$OUT/csa_gpu.log" | head -60;;
    run)
      d=/tmp/run; rm -rf "$d"
      timeout 200 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 300 --out "$d" > "$OUT/run.log" 2>&1
      echo "run rc $?"; grep -E "training on|cuda graph|captured|ms per step|steps/s|network - pseudo" "$OUT/run.log" | head; tail -3 "$OUT/run.log";;
    runstaged)
      d=/tmp/runstaged; rm -rf "$d"
      COSEG_CONV_TC=staged COSEG_FUSE_BN_STATS=0 timeout 200 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 300 --out "$d" > "$OUT/runstaged.log" 2>&1
      echo "runstaged rc $?"; grep -E "training on|cuda graph|captured|ms per step|steps/s|network - pseudo" "$OUT/runstaged.log" | head; tail -3 "$OUT/runstaged.log";;
    curves)
      for p in fp32 tf32 bf16; do
        d=/tmp/curves/$p; rm -rf "$d"
        timeout 150 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 200 --precision $p --out "$d" > "$OUT/curves_$p.log" 2>&1
        echo "curves $p rc $?: $(grep -E 'ms per step|network - pseudo' "$OUT/curves_$p.log" | tr '\n' ' ' | cut -c1-300)"
        mkdir -p /tmp/curves_out/$p; cp "$d"/train/log.jsonl "$d"/train/*.png "$d"/report.md "$d"/report.json /tmp/curves_out/$p/ 2>/dev/null
        tail -3 "$OUT/curves_$p.log"
      done
      tar -C /tmp/curves_out -czf "$OUT/curves.tar.gz" .;;  # one file: the reply carries few
    profile)
      d=/tmp/prof; rm -rf "$d"
      COSEG_PROFILE=1 timeout 200 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 40 --out "$d" > "$OUT/profile.log" 2>&1
      echo "profile rc $?"; column -s, -t < "$d/train/profile.csv" | head -40; column -s, -t < "$d/train/profile-parts.csv"
      cp "$d/train/profile.csv" "$d/train/profile-parts.csv" "$OUT/";;
    ncustep)
      timeout 240 bash .gpu/profile.sh 4000 .gpu/bin/bench-step_gpu --bench 'gpu_sgd_step/.*bf16$' --profile-time 1 2>&1 | head -40
      [ -f "$OUT/ncu.csv" ] && gzip -f "$OUT/ncu.csv";;
    convprof)
      ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      sections="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats --section InstructionStats"
      fam=${CONV_PROF_FAMILY:-pipe}
      for k in "conv2d_${fam}_fwd 1" "conv2d_${fam}_bwd 2"; do
        set -- $k
        CONV_GPU_CASES=${CONV_PROF_CASE:-3x3_c512_16x16_d4} CONV_GPU_PRECISIONS=bf16 timeout 150 "$ncu" --clock-control none -k "regex:$1" --launch-count $2 $sections \
          .gpu/bin/bench-conv_gpu --bench > "$OUT/convprof_$1.txt" 2>&1; echo "convprof $1 rc $?"
        grep -E "conv2d_$fam|Duration|Compute \(SM\) Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issued Ipc|Stall|No Eligible|Executed Ipc A" "$OUT/convprof_$1.txt" | head -60
      done;;
    *) echo "unknown step '$s' (tests conv tune step infer csa run runstaged curves profile ncustep convprof)";;
  esac
  echo "== step $s took $(( $(date +%s) - t0 )) s"
done
