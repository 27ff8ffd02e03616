#!/usr/bin/env bash
# The GPU tests on the CPU: builds the emulated CUDA driver (build.sh), then runs every test
# binary that has GPU tests with it on the loader path and REQUIRE_CUDA=1, so a GPU test that
# would skip here fails instead. Arguments narrow the list (test target names).
#   bash scripts/cuda-emu/test.sh                 # all of them
#   bash scripts/cuda-emu/test.sh gpu_crf csa_fused
# What it checks: the host code around every kernel (argument order, launch configuration,
# dynamic shared memory opt-in, buffer sizes, graph capture and replay, host waits), and the
# kernels' results against the CPU at the tests' tolerances. What it cannot: speed, races that
# need real warps, and the GPU's own rounding (FMA contraction, fast math); see README.md.
# Needs g++ (C++20: <barrier>, std::atomic_ref) and python3; where either is missing it says so
# and exits 0, unless CUDA_EMU_REQUIRED=1 (CI sets it), where that is a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
out=${CUDA_EMU_OUT:-/tmp/cuda-emu}
. "$here/../kernel-emu/tools.sh"
emu_require_tools cuda-emu "the GPU tests were not run on the emulated driver"
bash "$here/build.sh"
targets=("$@")
# End-to-end targets that reach the GPU through `device = "auto"` (the default) rather than by
# name: `coseg train`, `eval` and `segment` as a user runs them (the training loop's feed, graph
# and log intervals, resume, a NaN run's stop, the captured evaluation). On the CPU they would
# pass without checking anything here, so their log must say that training ran on cuda:0.
auto_device=(train_pipeline cli_outputs cli_segment)
if [ ${#targets[@]} -eq 0 ]; then
    # the library's unit tests, every test target that can reach a CUDA device, and the above
    targets=(lib $(grep -l -E 'test_gpu!|test_device!|Device::Cuda|CudaDevice|cuda:0' tests/*.rs | xargs -n1 basename | sed 's/\.rs$//') "${auto_device[@]}")
fi
# CUDA_EMU_ASAN=1: the driver built with AddressSanitizer, preloaded into the test binaries
# (leaks not reported: graphs and the tests' buffers live to the end on purpose).
# (cargo's runner: the test binaries get it, not cargo and rustc)
preload=(env)
runner="CARGO_TARGET_$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER"
if [ "${CUDA_EMU_ASAN:-0}" = 1 ]; then
    preload=(env "$runner=env LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0")
fi
# CUDA_EMU_TSAN=1: the driver built with ThreadSanitizer (build.sh), preloaded; the first race
# a kernel makes stops its test binary with the report.
if [ "${CUDA_EMU_TSAN:-0}" = 1 ]; then
    # A smaller device (CUDA_EMU_SM_COUNT, default 12 here): a cooperative grid runs all its
    # threads at once, each a TSan thread, and TSan follows at most 8128. gpu_crf's cooperative
    # blur needed 4 on this 23 GB machine. The shortest history per thread, for memory too; a
    # failed allocation returns null (gpu_runtime asks for more than the device has). Test threads
    # get 256 MB stacks: autograd's deep chain overflowed the default under TSan.
    preload=(env "$runner=env LD_PRELOAD=$(g++ -print-file-name=libtsan.so) TSAN_OPTIONS=halt_on_error=1:ignore_noninstrumented_modules=1:history_size=0:allocator_may_return_null=1:suppressions=$here/../kernel-emu/tsan.supp CUDA_EMU_SM_COUNT=${CUDA_EMU_SM_COUNT:-12} RUST_MIN_STACK=${RUST_MIN_STACK:-268435456}")
fi
status=0
for t in "${targets[@]}"; do
    start=$(date +%s)
    which=(--test "$t")
    [ "$t" = lib ] && which=(--lib)
    auto=0
    [[ " ${auto_device[*]} " == *" $t "* ]] && auto=1 which+=(-- --nocapture)
    if LD_LIBRARY_PATH="$out/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" REQUIRE_CUDA=1 "${preload[@]}" cargo test --release "${which[@]}" > "$out/$t.log" 2>&1 &&
        { [ $auto = 0 ] || grep -q "training on cuda:0" "$out/$t.log" || { echo "cuda-emu: $t trained on the CPU, not the emulated GPU" >> "$out/$t.log"; false; }; }; then
        echo "cuda-emu: $t ok ($(grep -E "^test result" "$out/$t.log" | grep -oE "[0-9]+ passed" | tail -1), $(( $(date +%s) - start )) s)"
    else
        status=1
        echo "cuda-emu: $t FAILED ($(( $(date +%s) - start )) s; log $out/$t.log)"
        grep -E "^test .* FAILED|panicked|relative error|emu:|cuda-emu:" "$out/$t.log" | head -20 || true
    fi
done
exit $status
