#!/usr/bin/env bash
# One device call for the tensor-core convolutions (issue 12), over binaries staged with
#   PACK_ONLY='gpu|bin-coseg' ../shared/gpu/pack
# Steps, each bounded and logged under $OUT: the GPU tests; the conv bench against cuDNN; the
# paper's training step at each precision; the same short paper-model training run at each
# precision (loss and validation curves). Usage: bash scripts/gpu/conv-tc-check.sh [steps]
# where steps is any of "tests conv step curves profile" (default: all but profile).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${1:-tests conv step curves}
cudnn=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null)
[ -n "$cudnn" ] && export LD_LIBRARY_PATH="$cudnn:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
for s in $steps; do
  t0=$(date +%s)
  case $s in
    tests)
      export REQUIRE_CUDA=1
      for t in .gpu/bin/test-gpu_*; do
        timeout 150 "$t" > "$OUT/$(basename "$t").log" 2>&1; rc=$?
        echo "$(basename "$t"): rc $rc, $(grep -E '^test result' "$OUT/$(basename "$t").log" | tail -1)"
        [ $rc -eq 0 ] || grep -E "panicked|FAILED|error" "$OUT/$(basename "$t").log" | head -8
      done;;
    conv)
      timeout 200 .gpu/bin/bench-conv_gpu --bench > "$OUT/conv_gpu.log" 2>&1; echo "conv_gpu rc $?"
      sed -n '/conv_gpu summary/,$p' "$OUT/conv_gpu.log";;
    step)
      timeout 120 .gpu/bin/bench-step_gpu --bench > "$OUT/step_gpu.log" 2>&1; echo "step_gpu rc $?"
      grep -E "^gpu_|time:" "$OUT/step_gpu.log" | paste - - | awk '{print $1, $3, $4, $5, $6, $7, $8}';;
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
      timeout 240 bash .gpu/profile.sh 4000 .gpu/bin/bench-step_gpu --bench 'gpu_sgd_step/.*bf16' --profile-time 1 2>&1 | head -40
      gzip -f "$OUT/ncu.csv";;
  esac
  echo "== step $s took $(( $(date +%s) - t0 )) s"
done
