#!/usr/bin/env python3
"""Checks that the modules under src/ import each other without a circle.

Reads every `crate::...` path in each file (in `use` lists, nested braces
included, and in expressions), maps the file and the path to their
top-level modules (`src/broker/kafka/ledger.rs` is `broker`), and fails
naming the circle when the top-level graph is not a DAG. With `--inner` it
also checks each top-level module's own sub-modules (paths through `crate::`
or `super::` within one module). `--print` prints the edges.

Run by scripts/test.sh; exit 0 when there is no circle.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    """src/a/b.rs -> ['a', 'b']; src/a/mod.rs -> ['a']; src/lib.rs -> []."""
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def brace_group(text, start):
    """The text inside the brace that opens at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return ""


def split_top(group):
    """Top-level comma-separated items of a use-list."""
    items, depth, cur = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def paths_in(text, root):
    """Every module path that follows `root::` (crate or super)."""
    out = []
    for m in re.finditer(r"\b" + root + r"::", text):
        rest = text[m.end() :]
        if rest.startswith("{"):
            for item in split_top(brace_group(rest, 0)):
                head = re.match(r"(\w+)(::\{?)?", item)
                if not head:
                    continue
                if head.group(2) == "::{":
                    for sub in split_top(brace_group(item, item.index("{"))):
                        w = re.match(r"\w+", sub)
                        out.append([head.group(1)] + ([w.group(0)] if w else []))
                else:
                    out.append(re.findall(r"\w+", item.split(" as ")[0]))
        else:
            out.append(re.findall(r"\w+", re.match(r"[\w:]*", rest).group(0)))
    return out


def edges(inner):
    found = {}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            mod = module_of(path)
            if not mod:
                continue
            text = strip_comments(open(path, encoding="utf-8").read())
            targets = [p for p in paths_in(text, "crate") if p]
            if inner:
                # super:: from a file resolves against its parent module.
                parent = mod[:-1]
                targets += [parent + p for p in paths_in(text, "super") if p]
            for t in targets:
                if inner:
                    if len(mod) < 2 or len(t) < 2 or t[0] != mod[0] or t[1] == mod[1]:
                        continue
                    # Items of the parent's mod.rs are not a sibling module.
                    sub = os.path.join(SRC, t[0], t[1])
                    if not (os.path.exists(sub + ".rs") or os.path.exists(os.path.join(sub, "mod.rs"))):
                        continue
                    a, b = f"{mod[0]}::{mod[1]}", f"{t[0]}::{t[1]}"
                else:
                    if t[0] == mod[0]:
                        continue
                    a, b = mod[0], t[0]
                found.setdefault(a, {}).setdefault(b, set()).add(os.path.relpath(path, SRC))
    return found


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, {})):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def main():
    inner = "--inner" in sys.argv
    graph = edges(inner)
    if "--print" in sys.argv:
        for a in sorted(graph):
            print(f"{a} -> {', '.join(sorted(graph[a]))}")
    cycle = find_cycle(graph)
    what = "sub-modules" if inner else "top-level modules"
    if cycle:
        print(f"module-dag: import circle between {what}: {' -> '.join(cycle)}")
        for a, b in zip(cycle, cycle[1:]):
            print(f"  {a} -> {b} in {', '.join(sorted(graph[a][b]))}")
        return 1
    n = sum(len(v) for v in graph.values())
    print(f"module-dag: {len(graph)} {what} import each other along {n} edges, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
