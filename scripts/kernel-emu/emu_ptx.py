#!/usr/bin/env python3
"""Rewrites the inline PTX of a kernel file into calls to emu_tc.h's emulations, so g++ can build it.

usage: emu_ptx.py IN.cu OUT.cu

Each `asm(...)` / `asm volatile(...)` statement is replaced by a call chosen by its instruction:
  cvt.rna.tf32.f32 %0, %1          ->  (out = emu_cvt_rna_tf32_f32(in))
  cvt.rn.bf16x2.f32 %0, %1, %2     ->  (out = emu_cvt_rn_bf16x2_f32(hi, lo))
  mma.sync.aligned.<shape> {d}, {a}, {b}, {c}  ->  emu_mma_sync("<template>", d.., a.., b..)
(the mma's template may be built from a macro argument, as conv2d_tc.cu's MMA_SYNC_F32 does, so
its shape and types are read at run time). Any other instruction is an error: add a case here and
an emulation to emu_tc.h (cp.async, ldmatrix, ... for a future variant).
#line directives keep compiler errors and sanitizer reports pointing at the original file.
"""
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
    if text.startswith('cvt.rna.tf32.f32') and len(outs) == 1 and len(ins) == 1:
        return f'({outs[0]} = emu_cvt_rna_tf32_f32({ins[0]}))'
    if text.startswith('cvt.rn.bf16x2.f32') and len(outs) == 1 and len(ins) == 2:
        return f'({outs[0]} = emu_cvt_rn_bf16x2_f32({ins[0]}, {ins[1]}))'
    if text.startswith('mma.sync.aligned.') and len(outs) == 4 and len(ins) == 6:
        return f'emu_mma_sync({template}, {", ".join(outs + ins)})'
    raise SystemExit(f"emu_ptx: {where}: no emulation for asm {text!r} ({len(outs)} outputs, {len(ins)} inputs)")


def main():
    src_path, dst_path = sys.argv[1], sys.argv[2]
    src = open(src_path).read()
    out, pos, count = [], 0, 0
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
        pos, count = i, count + 1
    out.append(src[pos:])
    with open(dst_path, 'w') as f:
        f.write(f'#line 1 "{src_path}"\n' + ''.join(out))
    print(f"emu_ptx: {src_path}: {count} asm statements emulated -> {dst_path}", file=sys.stderr)


main()
