#!/usr/bin/env python3
"""Writes the C++ translation unit of one kernel module for the emulated CUDA driver.

usage: gen_module.py KERNELS_DIR EMU_DIR MODULE OUT_DIR

kernels/MODULE.cu goes through kernel-emu's emu_ptx.py (inline PTX -> emulations, local headers
inlined, empty spin loops yielding), is preprocessed once to list its kernels (emu.h marks
__global__ functions `__attribute__((used))`), and OUT_DIR/MODULE.cpp includes the rewritten
source inside a namespace of its own (modules define helpers of the same name) followed by the
module's registry.
"""
import os
import re
import subprocess
import sys

kdir, emu, module, out = sys.argv[1:]
src = os.path.join(kdir, module + '.cu')
rewritten = os.path.join(out, module + '_emu.cu')
subprocess.run([sys.executable, os.path.join(emu, 'emu_ptx.py'), '--spin-yield', '-I', kdir, src, rewritten],
               check=True, stderr=subprocess.DEVNULL)
prelude = f'''#include "emu_tc.h"
#include "registry.h"
#include <math.h>
#include <stdint.h>
'''
probe = os.path.join(out, module + '_probe.cpp')
with open(probe, 'w') as f:
    f.write(prelude + f'namespace emu_module_{module} {{\n#include "{rewritten}"\n}}\n')
pre = subprocess.run(['g++', '-std=c++20', '-E', '-P', '-DEMU_FIBERS', '-I', emu, '-I', os.path.dirname(os.path.abspath(__file__)), probe],
                     check=True, capture_output=True, text=True).stdout
body = pre[pre.index(f'namespace emu_module_{module}'):]
names = re.findall(r'extern\s+"C"\s+__attribute__\s*\(\(\s*used\s*\)\)\s+void\s+(\w+)\s*\(', body)
if not names:
    sys.exit(f'gen_module: no kernels found in {src}')
with open(os.path.join(out, module + '.cpp'), 'w') as f:
    f.write(prelude)
    f.write(f'namespace emu_module_{module} {{\n#include "{rewritten}"\n')
    f.write('const EmuKernel kernels[] = {\n')
    for n in names:
        f.write(f'    emu_kernel("{n}", &{n}),\n')
    f.write('};\n')
    f.write(f'const EmuModuleRegistrar registrar("{module}", kernels, sizeof(kernels) / sizeof(kernels[0]));\n}}\n')
os.remove(probe)
print(f'{module}: {len(names)} kernels')
