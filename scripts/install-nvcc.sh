#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, cicc/nvvm, ptxas, crt headers, runtime headers) from
# PyPI into .cache/nvcc, so that build.rs compiles every kernels/*.cu to PTX.
#
# The versions are pinned on purpose: an unpinned nvidia-nvvm pulls 13.5, whose PTX the CUDA 13.0
# driver on the lent H100 refuses (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). Idempotent: a second run
# with the same pins only prints the path. Prints the nvcc path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
pins="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96"
dest=.cache/nvcc
nvcc="$dest/nvidia/cu13/bin/nvcc"
stamp="$dest/.pins"
if [ -x "$nvcc" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pins" ]; then
  echo "install-nvcc: already installed" >&2
else
  rm -rf "$dest"
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --no-deps --root-user-action=ignore --disable-pip-version-check --target "$dest" $pins
  echo "$pins" > "$stamp"
fi
# The wheels lay out a CUDA tree under nvidia/cu13 (bin/nvcc, bin/nvcc.profile, nvvm/bin/cicc,
# include/ with crt/): nvcc.profile finds cicc and the headers relative to itself. Check it works.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'extern "C" __global__ void probe_fwd_f32(float* y) { y[threadIdx.x] = expf(1.0f); }' > "$probe/probe.cu"
"$nvcc" -ptx -arch=compute_90 "$probe/probe.cu" -o "$probe/probe.ptx"
grep -q '^\.version 9\.0' "$probe/probe.ptx" || {
  echo "install-nvcc: $nvcc does not emit PTX 9.0 (the CUDA 13.0 driver's version)" >&2
  exit 1
}
realpath "$nvcc"
