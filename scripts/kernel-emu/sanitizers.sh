# The compiler flags of the checks, shared by run.sh and mutants.sh (sourced from this folder):
#  - san: AddressSanitizer and UBSan (an out-of-bounds access, a misaligned vector access or an
#    int overflow aborts); with EMU_FIBERS=1 the CUDA threads run as fibers on one OS thread
#    (emu_fiber.h; AddressSanitizer follows the stack switches), many times faster than a
#    std::thread each;
#  - race_san: ThreadSanitizer and UBSan on the fibers (emu_race.h): a data race in a kernel (shared
#    or global memory, two threads that no barrier orders) stops the check; with EMU_RACE=1 san is
#    this one.
san="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all"
[ "${EMU_FIBERS:-0}" = 1 ] && san="$san -DEMU_FIBERS"
race_san="-O1 -g -fsanitize=thread,undefined -fno-sanitize-recover=all -DEMU_FIBERS"
[ "${EMU_RACE:-0}" = 1 ] && san=$race_san
export TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tsan.supp ${TSAN_OPTIONS:-}"
