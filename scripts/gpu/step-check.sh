#!/usr/bin/env bash
# One device call for the host-free, captured training step (issue 13) and the attention kernels
# (issue 15), over binaries staged with (101 MiB raw, 12 MiB as the tarball this unpacks)
#   PACK_ONLY='gpu|csa|danet|autograd|gradcheck|op_edge|nn_model|bin-coseg' scripts/gpu/stage-xz.sh
# Steps, each bounded and logged under $OUT: the GPU tests (and the test_device! files' CUDA
# variants); the step bench (eager and graph side by side, host waits per step); the attention
# bench; a short paper-model run with the graph, and its per-op profile.
# Usage: bash scripts/gpu/step-check.sh [steps], steps any of "tests step csa run profile".
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${1:-tests step csa run}
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader || true
if [ -f .gpu/bin.tar.xz ]; then  # staged by scripts/gpu/stage-xz.sh
  python3 -c "import tarfile; tarfile.open('.gpu/bin.tar.xz').extractall('.gpu')" && echo "unpacked $(ls .gpu/bin | wc -l) binaries"
fi
cudnn=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null)
[ -n "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn:${LD_LIBRARY_PATH:-}"
for s in $steps; do
  t0=$(date +%s)
  case $s in
    tests)
      export REQUIRE_CUDA=1
      for t in .gpu/bin/test-*; do
        timeout 200 "$t" > "$OUT/$(basename "$t").log" 2>&1; rc=$?
        echo "$(basename "$t"): rc $rc, $(grep -E '^test result' "$OUT/$(basename "$t").log" | tail -1)"
        [ $rc -eq 0 ] || grep -E "panicked|FAILED|error" "$OUT/$(basename "$t").log" | head -8
      done;;
    step)
      timeout 240 .gpu/bin/bench-step_gpu --bench 'gpu_train_step|gpu_sgd_step' > "$OUT/step_gpu.log" 2>&1; echo "step_gpu rc $?"
      grep -E "^gpu_|time:|train step" "$OUT/step_gpu.log" | head -40;;
    csa)
      timeout 150 .gpu/bin/bench-csa_gpu --bench > "$OUT/csa_gpu.log" 2>&1; echo "csa_gpu rc $?"
      grep -vE "^(Benchmarking|Warming|Collecting|Analyzing|Found|  [0-9]+ \(|$)" "$OUT/csa_gpu.log" | head -60;;
    run)
      d=/tmp/run; rm -rf "$d"
      timeout 200 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 300 --out "$d" > "$OUT/run.log" 2>&1
      echo "run rc $?"; grep -E "cuda graph|captured|ms per step|steps/s|network - pseudo" "$OUT/run.log" | head; tail -3 "$OUT/run.log";;
    profile)
      d=/tmp/prof; rm -rf "$d"
      COSEG_PROFILE=1 timeout 200 .gpu/bin/bin-coseg demo --paper --lesions 240 --iterations 40 --out "$d" > "$OUT/profile.log" 2>&1
      echo "profile rc $?"; column -s, -t < "$d/train/profile.csv" | head -40; cp "$d/train/profile.csv" "$OUT/";;
  esac
  echo "== step $s took $(( $(date +%s) - t0 )) s"
done
