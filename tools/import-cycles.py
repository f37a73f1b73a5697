#!/usr/bin/env python3
"""List import cycles between the crate's top-level modules.

Scans src/**/*.rs, maps each file to its top-level module (src/foo.rs and src/foo/** -> foo),
records an edge foo -> bar for every `use crate::bar`, `use crate::{bar, ...}` and `crate::bar::`
path in foo's files (super:: paths stay inside a module and are not edges), then prints the
strongly connected components with more than one module: the import cycles.

Usage: tools/import-cycles.py [--fail] [--edges] [SRC_DIR]
  --fail   exit 1 when there is a cycle (default: always exit 0)
  --edges  also print every module's outgoing edges
Standard library only.
"""

import os
import re
import sys

# Files that are the crate root, not a module: their `pub mod` lines are not imports.
ROOTS = {"lib.rs", "main.rs"}

# Leftmost-first: raw strings, strings, char literals and comments, so that `//` inside a URL or
# a `"` char literal does not hide code, and `crate::` in a string or comment is not an edge.
NOISE = re.compile(
    r'r(#*)".*?"\1|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'|//[^\n]*|/\*.*?\*/', re.S
)
# `crate::name` anywhere (use lines and inline paths), and `crate::{a, b::c, ...}` groups.
CRATE_PATH = re.compile(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)")
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src).replace(os.sep, "/")
    if rel in ROOTS:
        return None
    head = rel.split("/", 1)[0]
    return head[:-3] if head.endswith(".rs") else head


def strip(text):
    return NOISE.sub(lambda m: "" if m.group(0).startswith("/") else '""', text)


def edges_of(text):
    found = set(CRATE_PATH.findall(text))
    for group in CRATE_GROUP.findall(text):
        # Only the first segment of each top-level item names a module; nested groups such as
        # `a::{b, c}` are inside `a`. Drop nested braces before splitting.
        depth, flat = 0, []
        for ch in group:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif depth == 0:
                flat.append(ch)
        for item in "".join(flat).split(","):
            m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", item)
            if m and m.group(1) != "self":
                found.add(m.group(1))
    return found


def scan(src):
    graph = {}
    for dirpath, _dirs, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            mod = module_of(src, path)
            if mod is None:
                continue
            with open(path, encoding="utf-8") as fh:
                text = strip(fh.read())
            targets = graph.setdefault(mod, set())
            for t in edges_of(text):
                if t != mod:
                    targets.add(t)
    known = set(graph)
    # Keep only edges to modules that exist as files (drops e.g. `crate::Foo` re-exports).
    return {m: {t for t in ts if t in known} for m, ts in graph.items()}


def sccs(graph):
    """Tarjan's algorithm, iterative so deep graphs do not hit the recursion limit."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(sorted(comp))
    return out


def main(argv):
    fail = "--fail" in argv
    show_edges = "--edges" in argv
    rest = [a for a in argv if not a.startswith("--")]
    src = rest[0] if rest else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    src = os.path.normpath(src)
    graph = scan(src)
    if show_edges:
        for m in sorted(graph):
            print(f"{m} -> {', '.join(sorted(graph[m])) or '(none)'}")
        print()
    cycles = sorted((c for c in sccs(graph) if len(c) > 1), key=lambda c: (-len(c), c))
    if not cycles:
        print(f"no import cycles among {len(graph)} modules")
    else:
        print(f"{len(cycles)} import cycle(s) among {len(graph)} modules:")
        for c in cycles:
            inner = {m: sorted(t for t in graph[m] if t in c) for m in c}
            print(f"  [{len(c)}] {', '.join(c)}")
            for m in c:
                print(f"      {m} -> {', '.join(inner[m])}")
    return 1 if fail and cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
