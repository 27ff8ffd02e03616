#!/usr/bin/env bash
# Runs kernels/danet.cu's three kernels on the CPU, one std::thread per CUDA thread (emu.h), on odd
# shapes (L = 1, 33x33, tails of every tile, one with scores up to +-40), against f64 loops;
# outputs start as NaN. For checking
# a kernel's indexing, masking and barriers on a machine without a GPU; it says nothing about
# speed, and a race that needs real warps to show may pass here. About a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
g++ -O2 -std=c++20 -w -pthread -o /tmp/danet_check danet_check.cpp
/tmp/danet_check
