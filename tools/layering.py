#!/usr/bin/python3
"""make layering: the include rules of STYLE.md's "shape of the house".

  1. common/ is pure: no file in it includes a proxy/ header
     (#include "x.h" with proxy/x.h existing).
  2. proxy/ modules (module x = x.c + x.h) include each other without a
     cycle, so that each can be built and unit-tested with only what is
     below it.

Only #include "..." lines count (system headers are not ours). Prints every
offence and exits 1; prints nothing and exits 0 when the tree is clean.
Usage: tools/layering.py [ROOT]   (ROOT defaults to the current directory)
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def includes(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return INCLUDE.findall(f.read())


def sources(d):
    return sorted(n for n in os.listdir(d) if n.endswith((".c", ".h")))


def strongly_connected(graph):
    """Tarjan's algorithm: the components of graph, a dict node -> set."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(graph, start, within):
    """The shortest path start -> ... -> start inside the set within (BFS)."""
    prev, todo = {start: None}, [start]
    for v in todo:
        for w in sorted(graph[v] & within):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    common, proxy = os.path.join(root, "common"), os.path.join(root, "proxy")
    proxy_headers = {n for n in sources(proxy) if n.endswith(".h")}
    bad = 0

    for name in sources(common):
        for inc in includes(os.path.join(common, name)):
            if inc in proxy_headers:
                print(f'layering: common/{name} includes "{inc}" (proxy/{inc}): '
                      "common/ must not depend on proxy/")
                bad += 1

    # graph[m] = modules m includes; why[(m, n)] = the files that make the edge
    graph, why = {}, {}
    for name in sources(proxy):
        mod = name[:-2]
        graph.setdefault(mod, set())
        for inc in includes(os.path.join(proxy, name)):
            dep = inc[:-2]
            if inc in proxy_headers and dep != mod:
                graph[mod].add(dep)
                graph.setdefault(dep, set())
                why.setdefault((mod, dep), []).append(name)

    for comp in strongly_connected(graph):
        if len(comp) < 2:
            continue
        bad += 1
        members = set(comp)
        print("layering: proxy/ modules in an include cycle: " + " ".join(comp))
        seen = set()
        for start in comp:
            cyc = shortest_cycle(graph, start, members)
            key = frozenset(zip(cyc, cyc[1:]))
            if key in seen:
                continue
            seen.add(key)
            edges = "; ".join(f'{f} includes "{b}.h"'
                              for a, b in zip(cyc, cyc[1:]) for f in why[(a, b)])
            print(f"  cycle: {' -> '.join(cyc)}  ({edges})")
        shown = set().union(*seen)
        rest = sorted(f'{f} includes "{b}.h"' for (a, b), files in why.items()
                      if {a, b} <= members and (a, b) not in shown for f in files)
        if rest:
            print("  other includes inside it: " + "; ".join(rest))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
