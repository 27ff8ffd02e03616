# Sourced by scripts/kernel-emu/run.sh and scripts/cuda-emu/test.sh, which both need g++ and
# python3: where something is missing, they say so and exit 0, or 1 under CUDA_EMU_REQUIRED=1 (CI).
#   emu_missing WHO WHY           says "WHO: WHY" and exits
#   emu_require_tools WHO WHAT    emu_missing unless g++ and python3 are here (WHAT: what was not run)
emu_missing() {
    echo "$1: $2" >&2
    [ "${CUDA_EMU_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
}
emu_require_tools() {
    local tool
    for tool in g++ python3; do
        command -v "$tool" > /dev/null || emu_missing "$1" "no $tool on this machine: $2"
    done
}
