#!/usr/bin/env bash
# Builds the CUDA driver on the CPU (driver.cpp + every kernels/*.cu through kernel-emu) into
# $CUDA_EMU_OUT/lib (default /tmp/cuda-emu/lib): libcoseg_cuda_emu.so, linked as libcuda.so,
# libcublas.so and libnvrtc.so. Needs g++ (C++20) and python3; about a minute on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${CUDA_EMU_OUT:-/tmp/cuda-emu}
mkdir -p "$out/src" "$out/obj" "$out/lib"
flags="-std=c++20 -O2 -g -fPIC -w -DEMU_FIBERS -I $root/scripts/kernel-emu -I $here ${CUDA_EMU_CXXFLAGS:-}"
# CUDA_EMU_ASAN=1: AddressSanitizer on the kernels and the driver (test.sh then preloads libasan):
# a kernel's access past the end of a device buffer, or outside its shared memory, is reported.
asan=""
[ "${CUDA_EMU_ASAN:-0}" = 1 ] && asan="-fsanitize=address -fno-omit-frame-pointer"
# CUDA_EMU_TSAN=1: ThreadSanitizer instead, with kernel-emu's race detection (emu_race.h): two
# CUDA threads of a block that touch one address, one writing, with no barrier between, are
# reported (test.sh then preloads libtsan and stops a test binary at the first report).
[ "${CUDA_EMU_TSAN:-0}" = 1 ] && asan="-fsanitize=thread"
flags="$flags $asan"
modules=$(cd "$root/kernels" && ls *.cu | sed 's/\.cu$//')
for m in $modules; do
    python3 "$here/gen_module.py" "$root/kernels" "$root/scripts/kernel-emu" "$m" "$out/src"
done
jobs=$(nproc 2>/dev/null || echo 2)
# shellcheck disable=SC2086
printf '%s\n' $modules | xargs -P "$jobs" -I{} sh -c "g++ $flags -c '$out/src/{}.cpp' -o '$out/obj/{}.o'"
g++ $flags -c "$here/driver.cpp" -o "$out/obj/driver.o"
g++ -shared $asan -o "$out/lib/libcoseg_cuda_emu.so" "$out"/obj/*.o -lpthread ${CUDA_EMU_LDFLAGS:-}
for name in libcuda.so libcublas.so libnvrtc.so; do ln -sf libcoseg_cuda_emu.so "$out/lib/$name"; done
echo "cuda-emu: $out/lib (LD_LIBRARY_PATH=$out/lib)"
