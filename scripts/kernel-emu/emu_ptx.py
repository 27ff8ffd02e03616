#!/usr/bin/env python3
"""Rewrites the inline PTX of a kernel file into calls to emu_tc.h's emulations, so g++ can build it.

usage: emu_ptx.py [--spin-yield] [-I DIR]... IN.cu OUT.cu

Local headers (`#include "x.cuh"`, looked up next to the including file, then in each -I DIR) are
inlined and rewritten too (once each: the kernels' headers are `#pragma once`), as build.rs
inlines them for NVRTC. Each `asm(...)` / `asm volatile(...)` statement is replaced by a call
chosen by its instruction:
  cvt.rna.tf32.f32 %0, %1          ->  (out = emu_cvt_rna_tf32_f32(in))
  cvt.rn.bf16x2.f32 %0, %1, %2     ->  (out = emu_cvt_rn_bf16x2_f32(hi, lo))
  mma.sync.aligned.<shape> {d}, {a}, {b}, {c}  ->  emu_mma_sync("<template>", d.., a.., b..)
  { .reg .u64 sa; cvta.to.shared.u64 sa, %0; cp.async.{ca,cg}.shared.global [sa], [%1], B, %2; }
                                   ->  emu_cp_async(dst, src, B, src_size)
  { .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }
                                   ->  (out = emu_smem_u32(ptr))   (a 32-bit shared address)
  cp.async.{ca,cg}.shared.global [%0], [%1], B, %2   (%0 such an address)
                                   ->  emu_cp_async(emu_smem_ptr(dst), src, B, src_size)
  ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 {%0,..,%3}, [%4]   (%4 such an address)
                                   ->  emu_ldmatrix_x4(emu_smem_ptr(row), r0, r1, r2, r3, trans)
  cp.async.commit_group            ->  emu_cp_async_commit()
  cp.async.wait_group %0 / N       ->  emu_cp_async_wait(n)    (cp.async.wait_all: wait(0))
  mov.u32 %0, %%dynamic_smem_size  ->  (out = emu_dynamic_smem_size())
  trap                             ->  emu_trap()
  { .reg .pred p; setp.ne.b32 p, %S, 0; wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16
    {%0, .., %(N/2-1)}, %A, %B, p, 1, 1, TA, TB; }   (TA, TB: 0/1 or "n" operands)
                                   ->  emu_wgmma_bf16<N>(a_desc, b_desc, scale_d, ta, tb, d0, .., d(N/2-1))
  wgmma.fence / commit_group / wait_group N (.sync.aligned)
                                   ->  emu_wgmma_fence() / emu_wgmma_commit() / emu_wgmma_wait(n)
  fence.proxy.async.shared::cta    ->  emu_fence_proxy_async()
  "" with "+" operands only        ->  (void)0  (a compiler barrier on those registers)
(the mma's template may be built from a macro argument, as conv2d_tc.cu's MMA_SYNC_F32 does, so
its shape and types are read at run time). Any other instruction is an error: add a case here and
an emulation to emu_tc.h. The declaration of dynamic shared
memory, `extern __shared__ [__align__(A)] T name[];`, becomes `T* const name = (T*)
emu_dynamic_smem(A);` (emu_tc.h's per-launch buffer).
With --spin-yield, an empty spin loop (`while (COND) {}`, crf.cu's grid barrier) gets a call to
emu.h's emu_spin_yield in its body, so the emulated threads that it waits for get to run.
#line directives keep compiler errors and sanitizer reports pointing at the original file.
"""
import os
import re
import sys


def split_top(s, sep):
    """Splits s at top-level occurrences of sep (outside parentheses, brackets and strings)."""
    out, depth, cur, i, instr = [], 0, [], 0, False
    while i < len(s):
        ch = s[i]
        if instr:
            cur.append(ch)
            if ch == '\\':
                cur.append(s[i + 1]); i += 1
            elif ch == '"':
                instr = False
        elif ch == '"':
            instr = True; cur.append(ch)
        elif ch in '([{':
            depth += 1; cur.append(ch)
        elif ch in ')]}':
            depth -= 1; cur.append(ch)
        elif ch == sep and depth == 0:
            out.append(''.join(cur)); cur = []
        else:
            cur.append(ch)
        i += 1
    out.append(''.join(cur))
    return out


def operand_expr(op):
    """'"+f"(d[0])' -> 'd[0]'."""
    m = re.match(r'\s*"[=+&]*\w+"\s*\((.*)\)\s*$', op, re.S)
    if not m:
        raise SystemExit(f"emu_ptx: cannot parse asm operand {op!r}")
    return m.group(1).strip()


def rewrite(body, where):
    parts = split_top(body, ':')
    template = parts[0].strip()
    outs = [operand_expr(o) for o in split_top(parts[1], ',')] if len(parts) > 1 and parts[1].strip() else []
    ins = [operand_expr(o) for o in split_top(parts[2], ',')] if len(parts) > 2 and parts[2].strip() else []
    text = ''.join(re.findall(r'"((?:[^"\\]|\\.)*)"', template))
    flat = ' '.join(text.replace('\\n', ' ').replace('\\t', ' ').split())  # escapes and runs of blanks -> one space
    m = re.fullmatch(r'\{ ?\.reg \.u64 (\w+) ?; ?cvta\.to\.shared\.u64 \1 ?, ?%0 ?; ?'
                     r'cp\.async\.c[ag]\.shared\.global \[\1\] ?, ?\[%1\] ?, ?(\d+) ?, ?%2 ?; ?\}', flat)
    if m and not outs and len(ins) == 3:
        return f'emu_cp_async({ins[0]}, {ins[1]}, {m.group(2)}, {ins[2]})'
    m = re.fullmatch(r'ldmatrix\.sync\.aligned\.m8n8\.x4(\.trans)?\.shared\.b16 \{ ?%0 ?, ?%1 ?, ?%2 ?, ?%3 ?\} ?, ?\[%4\] ?;?', flat)
    if m and len(outs) == 4 and len(ins) == 1:
        return f'emu_ldmatrix_x4(emu_smem_ptr({ins[0]}), {", ".join(outs)}, {"true" if m.group(1) else "false"})'
    m = re.fullmatch(r'cp\.async\.c[ag]\.shared\.global \[%0\] ?, ?\[%1\] ?, ?(\d+) ?, ?%2 ?;?', flat)
    if m and not outs and len(ins) == 3:
        return f'emu_cp_async(emu_smem_ptr({ins[0]}), {ins[1]}, {m.group(1)}, {ins[2]})'
    if re.fullmatch(r'\{ ?\.reg \.u64 (\w+) ?; ?cvta\.to\.shared\.u64 \1 ?, ?%1 ?; ?cvt\.u32\.u64 %0 ?, ?\1 ?; ?\}', flat) \
            and len(outs) == 1 and len(ins) == 1:
        return f'({outs[0]} = emu_smem_u32({ins[0]}))'
    if re.fullmatch(r'cp\.async\.commit_group ?;?', flat) and not outs and not ins:
        return 'emu_cp_async_commit()'
    m = re.fullmatch(r'cp\.async\.wait_group (%0|\d+) ?;?', flat)
    if m and not outs and len(ins) == (1 if m.group(1) == '%0' else 0):
        return f'emu_cp_async_wait({ins[0] if ins else m.group(1)})'
    if re.fullmatch(r'cp\.async\.wait_all ?;?', flat) and not outs and not ins:
        return 'emu_cp_async_wait(0)'
    if re.fullmatch(r'mov\.u32 %0 ?, ?%%dynamic_smem_size ?;?', flat) and len(outs) == 1 and not ins:
        return f'({outs[0]} = emu_dynamic_smem_size())'
    if re.fullmatch(r'trap ?;?', flat) and not outs and not ins:
        return 'emu_trap()'
    if text.startswith('cvt.rna.tf32.f32') and len(outs) == 1 and len(ins) == 1:
        return f'({outs[0]} = emu_cvt_rna_tf32_f32({ins[0]}))'
    if text.startswith('cvt.rn.bf16x2.f32') and len(outs) == 1 and len(ins) == 2:
        return f'({outs[0]} = emu_cvt_rn_bf16x2_f32({ins[0]}, {ins[1]}))'
    m = re.fullmatch(r'\{ ?\.reg \.pred (\w+) ?; ?setp\.ne\.b32 \1 ?, ?%(\d+) ?, ?0 ?; ?'
                     r'wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.bf16\.bf16 \{([^}]*)\} ?, ?%(\d+) ?, ?%(\d+) ?, ?'
                     r'\1 ?, ?1 ?, ?1 ?, ?(%\d+|[01]) ?, ?(%\d+|[01]) ?; ?\}', flat)
    if m:
        n, regs = int(m.group(3)), [r.strip() for r in m.group(4).split(',')]
        if regs != [f'%{i}' for i in range(n // 2)] or len(outs) != n // 2 or len(ins) not in (3, 4, 5) or \
                [int(m.group(i)) - n // 2 for i in (5, 6, 2)] != [0, 1, 2]:
            raise SystemExit(f"emu_ptx: {where}: wgmma operands not d = %0..%{n // 2 - 1}, a, b, scale-d in order")
        # imm-trans-a, imm-trans-b: literal 0/1 or "n" operands after scale-d
        trans = [ins[int(t[1:]) - n // 2] if t.startswith('%') else t for t in (m.group(7), m.group(8))]
        return f'emu_wgmma_bf16<{n}>({ins[0]}, {ins[1]}, {ins[2]}, {trans[0]}, {trans[1]}, {", ".join(outs)})'
    if re.fullmatch(r'wgmma\.fence\.sync\.aligned ?;?', flat) and not outs and not ins:
        return 'emu_wgmma_fence()'
    if re.fullmatch(r'wgmma\.commit_group\.sync\.aligned ?;?', flat) and not outs and not ins:
        return 'emu_wgmma_commit()'
    m = re.fullmatch(r'wgmma\.wait_group\.sync\.aligned (%0|\d+) ?;?', flat)
    if m and not outs and len(ins) == (1 if m.group(1) == '%0' else 0):
        return f'emu_wgmma_wait({ins[0] if ins else m.group(1)})'
    if flat == '' and outs and not ins and all(re.match(r'\s*"\+', o) for o in split_top(parts[1], ',')):
        return '(void)0'  # an empty asm that pins registers (a compiler barrier): nothing to emulate
    if re.fullmatch(r'fence\.proxy\.async\.shared::cta ?;?', flat) and not outs and not ins:
        return 'emu_fence_proxy_async()'
    if text.startswith('mma.sync.aligned.') and len(outs) == 4 and len(ins) == 6:
        return f'emu_mma_sync({template}, {", ".join(outs + ins)})'
    raise SystemExit(f"emu_ptx: {where}: no emulation for asm {text!r} ({len(outs)} outputs, {len(ins)} inputs)")


SMEM_DECL = re.compile(r'\bextern\s+__shared__\s+(?:__align__\s*\(\s*(\d+)\s*\)\s+)?((?:\w+\s+)*?\w+)\s*'
                       r'(?:__align__\s*\(\s*(\d+)\s*\)\s*)?(\w+)\s*\[\s*\]\s*;')


def smem_decl(m):
    """extern __shared__ __align__(16) float smem[];  ->  float* const smem = (float*)emu_dynamic_smem(16);"""
    align = m.group(1) or m.group(3) or '4'
    decl = f'{m.group(2)}* const {m.group(4)} = reinterpret_cast<{m.group(2)}*>(emu_dynamic_smem({align}));'
    return decl + '\n' * m.group(0).count('\n')  # same line count


SPIN = re.compile(r'(\bwhile\s*\((?:[^;{}()]|\([^;{}()]*\))*\)\s*\{)(\s*\})')
SPIN_YIELD = [False]


def convert(src_path, incdirs, done, counts):
    """The rewritten text of src_path (starting with #line), its local headers inlined."""
    src = SMEM_DECL.sub(smem_decl, open(src_path).read())
    if SPIN_YIELD[0]:
        src = SPIN.sub(lambda m: m.group(1) + ' emu_spin_yield();' + m.group(2), src)
    counts[1] += len(SMEM_DECL.findall(open(src_path).read()))
    out, pos = [], 0
    for m in re.finditer(r'\basm\s*(?:volatile\s*)?\(', src):
        if m.start() < pos:
            continue
        # the balanced parenthesis that closes the asm statement
        i, depth, instr = m.end(), 1, False
        while depth:
            ch = src[i]
            if instr:
                if ch == '\\': i += 1
                elif ch == '"': instr = False
            elif ch == '"': instr = True
            elif ch == '(': depth += 1
            elif ch == ')': depth -= 1
            i += 1
        body = src[m.end():i - 1]
        line = src.count('\n', 0, m.start()) + 1
        flat = body.replace('\\\n', ' ')  # inside a #define: keep one logical line
        repl = rewrite(flat, f'{src_path}:{line}')
        # keep the line count (and #define continuations) so #line stays right
        nl = body.count('\n')
        cont = '\\\n' if '\\\n' in body else '\n'
        out.append(src[pos:m.start()] + repl + (' ' + cont) * nl)
        pos, counts[0] = i, counts[0] + 1
    out.append(src[pos:])
    text = ''.join(out)
    # local headers: inlined (rewritten), each once; #line back to this file after each
    lines, res = text.split('\n'), [f'#line 1 "{src_path}"']
    for n, l in enumerate(lines):
        m = re.match(r'\s*#\s*include\s*"([^"]+)"', l)
        hit = m and next((os.path.join(d, m.group(1)) for d in [os.path.dirname(src_path) or '.'] + incdirs
                          if os.path.isfile(os.path.join(d, m.group(1)))), None)
        if hit:
            key = os.path.realpath(hit)
            if key not in done:
                done.add(key)
                res.append(convert(hit, incdirs, done, counts))
            res.append(f'#line {n + 2} "{src_path}"')
        elif re.match(r'\s*#\s*pragma\s+once\b', l):
            res.append('')  # inlined once already (a #pragma once in the main file warns)
        else:
            res.append(l)
    return '\n'.join(res)


def main():
    args, incdirs = sys.argv[1:], []
    if args and args[0] == '--spin-yield':
        SPIN_YIELD[0] = True
        args = args[1:]
    while args and args[0].startswith('-I'):
        if args[0] == '-I':
            incdirs.append(args[1]); args = args[2:]
        else:
            incdirs.append(args[0][2:]); args = args[1:]
    src_path, dst_path = args
    counts = [0, 0]
    text = convert(src_path, incdirs, {os.path.realpath(src_path)}, counts)
    with open(dst_path, 'w') as f:
        f.write(text)
    print(f"emu_ptx: {src_path}: {counts[0]} asm statements emulated, {counts[1]} dynamic shared memory "
          f"declarations -> {dst_path}", file=sys.stderr)


main()
