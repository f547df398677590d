#!/usr/bin/env python3
"""Import graph of a crate's src/: one node per file, an edge A -> B when A names a path into
B's module (`crate::`, `super::`, `self::`, or a child module by name), in `use` items and in
code alike. Comments, generated code (`quote!` bodies, and `macro_rules!` bodies, which expand in
the caller's crate) and `#[cfg(test)] mod tests` are left out. Prints the edges and fails on a cycle,
between files or between top-level folders (lib.rs and tests.rs files left out of the latter)."""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = {}  # module path tuple -> file
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith('.rs'):
            continue
        p = os.path.join(root, f)
        rel = os.path.relpath(p, src)[:-3].split(os.sep)
        if rel[-1] in ('mod', 'lib'):
            rel = rel[:-1]
        if rel == ['main']:
            continue
        mods[tuple(rel)] = p

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'pub\(in [^)]*\)', 'pub', text)  # visibility, not an import
    text = re.sub(r"'(\\.|[^'\\])'", "' '", text)  # char literals, not lifetimes
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text, flags=re.S)
    out, i = [], 0
    while True:
        m = re.search(r'quote(_spanned)?!\s*[\{\(]|macro_rules!\s*\w+\s*\{|#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', text[i:])
        if not m:
            out.append(text[i:]); break
        start = i + m.start(); j = i + m.end() - 1
        out.append(text[i:start])
        depth = 0
        for k in range(j, len(text)):
            if text[k] in '{(': depth += 1
            elif text[k] in '})':
                depth -= 1
                if depth == 0: break
        i = k + 1
    return ''.join(out)

def expand(tree):
    """`a::{b, c::{d}}` -> ['a::b', 'a::c::d']"""
    tree = tree.strip()
    m = re.match(r'^(.*?)::\{(.*)\}$', tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
            continue
        depth += ch == '{'; depth -= ch == '}'
        cur += ch
    parts.append(cur)
    return [prefix + '::' + q for p in parts if p.strip() for q in expand(p)]

def resolve(path, here):
    segs = [s.strip() for s in path.split('::')]
    segs = [re.sub(r'\s+as\s+\w+$', '', s) for s in segs]
    if segs[0] == 'crate': base, rest = (), segs[1:]
    elif segs[0] == 'self': base, rest = here, segs[1:]
    elif segs[0] == 'super':
        base, rest = here, segs
        while rest and rest[0] == 'super':
            base, rest = base[:-1], rest[1:]
    elif here + (segs[0],) in mods: base, rest = here, segs
    else: return None
    target = base
    for s in rest:
        if target + (s,) in mods: target = target + (s,)
        else: break
    return target

edges = {}
for here, f in mods.items():
    text = strip(open(f).read())
    paths = []
    for m in re.finditer(r'\buse\s+([^;]+);', text):
        paths += expand(m.group(1))
    text_wo_use = re.sub(r'\buse\s+[^;]+;', '', text)
    paths += re.findall(r'\b(?:crate|super|self|[a-z_]\w*)(?:\s*::\s*\w+)+', text_wo_use)
    for p in paths:
        t = resolve(p, here)
        if t is not None and t != here and t in mods:
            edges.setdefault(f, set()).add(mods[t])

name = lambda p: os.path.relpath(p, src)
for a in sorted(edges):
    print(f'{name(a):32} -> ' + ', '.join(sorted(name(b) for b in edges[a])))
# cycle check (DFS)
state, stack, cycles = {}, [], []
def dfs(n):
    state[n] = 1; stack.append(n)
    for m in sorted(edges.get(n, ())):
        if state.get(m) == 1: cycles.append(stack[stack.index(m):] + [m])
        elif not state.get(m): dfs(m)
    stack.pop(); state[n] = 2
for n in sorted(mods.values()):
    if not state.get(n): dfs(n)
for c in cycles:
    print('CYCLE: ' + ' -> '.join(name(x) for x in c))
# The same check between folders: a file stands for its top-level folder (or for itself at the
# top). The crate root (lib.rs, whose re-exports name every layer) and test files stay out.
def folder(p):
    parts = name(p).split(os.sep)
    return parts[0] if len(parts) > 1 else parts[0][:-3]
fedges = {}
for a, bs in edges.items():
    if name(a) == 'lib.rs' or os.path.basename(a) == 'tests.rs':
        continue
    for b in bs:
        if name(b) != 'lib.rs' and folder(a) != folder(b):
            fedges.setdefault(folder(a), set()).add(folder(b))
for a in sorted(fedges):
    print(f'folder {a:25} -> ' + ', '.join(sorted(fedges[a])))
fstate, fstack = {}, []
def fdfs(n):
    fstate[n] = 1; fstack.append(n)
    for m in sorted(fedges.get(n, ())):
        if fstate.get(m) == 1: cycles.append(fstack[fstack.index(m):] + [m]); print('CYCLE (folders): ' + ' -> '.join(fstack[fstack.index(m):] + [m]))
        elif not fstate.get(m): fdfs(m)
    fstack.pop(); fstate[n] = 2
for n in sorted(fedges):
    if not fstate.get(n): fdfs(n)
big = [(name(p), n) for p in mods.values() if (n := sum(1 for _ in open(p))) > 600]
for p, n in big: print(f'LONG: {p} {n} lines')
sys.exit(1 if cycles else 0)
