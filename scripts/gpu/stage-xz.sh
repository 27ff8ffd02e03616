#!/usr/bin/env bash
# Stages more binaries than one device call carries raw (64 MiB with the working tree): pack stages
# them (its size check fails, the files stay), then they travel as one xz tarball (about 9x
# smaller) that scripts/gpu/check.sh unpacks on the device machine.
#   PACK_ONLY='regex' scripts/gpu/stage-xz.sh      then carry [".gpu"]
set -uo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/gpu/pack "$@" || true
[ -d .gpu/bin ] && [ -n "$(ls .gpu/bin)" ] || { echo "stage-xz: nothing staged" >&2; exit 1; }
tar -C .gpu -cf - bin | xz -T2 -6 > .gpu/bin.tar.xz && rm -rf .gpu/bin
echo "stage-xz: .gpu is $(du -sm .gpu | cut -f1) MiB"
