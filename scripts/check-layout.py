#!/usr/bin/env python3
"""Layout checks for src/ (stdlib only; run by scripts/test.sh).

1. No import cycle between the library's modules, at two granularities:
   - top-level modules (`room`, `shard`, `protocol`, ...): edges between different ones;
   - file modules (`protocol::envelope`, `room`, ...): every edge except a child's edge to its
     own parent (`a::b` -> `a`, which is how shared types and re-exports work).
   The graph comes from `crate::` paths (in `use` trees and inline in code), and from `super::`,
   `self::` and child-module paths (`use close::X;` in protocol/mod.rs). src/main.rs is skipped
   (it uses `shardcast::`). Comments, doc comments and string literals are ignored.
   Edges are taken from test code too; an edge that only test code creates is marked as such.
2. No `crate::` path at all in src/protocol/ (sans-io, self-contained, extractable as a crate;
   within protocol/ use `super::`).
3. No function over 80 lines (from the `fn` line to the closing brace line) outside test code
   (`#[cfg(test)]` items, `#[test]` functions, `mod tests { ... }`), except those listed in
   scripts/long-fns.allow (`module::fn_name  # reason`).

Usage:
  python3 scripts/check-layout.py              run the checks (exit 1 on any failure)
  python3 scripts/check-layout.py --graph      print the top-level module graph (a -> b, c)
  python3 scripts/check-layout.py --self-test  check the checker on small fake src/ trees
  --root DIR                                   repository root (default: this script's ../)
"""

import argparse
import os
import re
import sys
import tempfile
import textwrap

MAX_FN_LINES = 80
ALLOW_FILE = os.path.join("scripts", "long-fns.allow")

IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"
IDENT_RE = re.compile(IDENT)


# --------------------------------------------------------------------------------------------
# Lexing: blank out comments, string and char literals (keeping newlines and offsets).
# --------------------------------------------------------------------------------------------

def _is_ident_char(c):
    return c.isalnum() or c == "_"


def blank(src):
    """Return src with every comment and string/char literal replaced by spaces (newlines kept),
    so that offsets and line numbers stay valid and braces/paths inside them vanish."""
    out = list(src)
    n = len(src)
    i = 0

    def wipe(a, b):
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        nxt = src[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
            continue
        if c == "/" and nxt == "*":  # block comments nest in Rust
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth += 1
                    j += 2
                elif src.startswith("*/", j):
                    depth -= 1
                    j += 2
                else:
                    j += 1
            wipe(i, j)
            i = j
            continue
        prev = src[i - 1] if i > 0 else ""
        # raw strings: r"..", r#".."#, br#".."#, cr#".."# (not raw identifiers r#name)
        if c in "bcr" and not _is_ident_char(prev):
            j = i
            if c in "bc" and nxt == "r":
                j += 1
            if src[j] == "r":
                k = j + 1
                while k < n and src[k] == "#":
                    k += 1
                if k < n and src[k] == '"':
                    hashes = k - (j + 1)
                    end = src.find('"' + "#" * hashes, k + 1)
                    end = n if end < 0 else end + 1 + hashes
                    wipe(i, end)
                    i = end
                    continue
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
            continue
        if c == "'":
            # char literal ('x', '\n', '\'', '\u{7B}') or lifetime/label ('a, 'static)
            if nxt == "\\":
                j = i + 3
                while j < n and src[j] != "'" and src[j] != "\n":
                    j += 1
                wipe(i, j + 1)
                i = j + 1
                continue
            if i + 2 < n and src[i + 2] == "'" and nxt != "\n":
                wipe(i, i + 3)
                i += 3
                continue
            i += 1
            continue
        if _is_ident_char(c):  # skip whole identifiers so `br` inside `abr"` isn't a prefix
            j = i + 1
            while j < n and _is_ident_char(src[j]):
                j += 1
            i = j
            continue
        i += 1
    return "".join(out)


class Source:
    """One .rs file: its text with comments/literals blanked, line lookup, brace matching,
    test-code ranges and inline-module ranges."""

    def __init__(self, rel, module, text):
        self.rel = rel            # "src/room.rs"
        self.module = module      # ("room",); () for the crate root
        self.text = blank(text)
        self.line_starts = [0]
        for m in re.finditer("\n", self.text):
            self.line_starts.append(m.end())
        self.test_ranges = []
        self.inline_mods = []     # (start, end, name)
        self._find_inline_mods()
        self._find_test_ranges()

    def line(self, pos):
        lo, hi = 0, len(self.line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def match_brace(self, open_pos):
        """Offset of the `}` matching the `{` at open_pos (or end of text)."""
        depth = 0
        t = self.text
        for k in range(open_pos, len(t)):
            ch = t[k]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return k
        return len(t) - 1

    def item_end(self, start):
        """End of the item starting at `start`: its matching `}` if a `{` comes first at
        paren/bracket depth 0, else its `;`. Returns (end, brace_open or None)."""
        t = self.text
        depth = 0
        for k in range(start, len(t)):
            ch = t[k]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth <= 0 and ch == ";":
                return k, None
            elif depth <= 0 and ch == "{":
                return self.match_brace(k), k
            elif depth <= 0 and ch == "}":  # ran out of the enclosing block
                return k, None
        return len(t) - 1, None

    def _find_inline_mods(self):
        for m in re.finditer(r"(?<![\w#])mod\s+(" + IDENT + r")\s*\{", self.text):
            open_pos = m.end() - 1
            self.inline_mods.append((m.start(), self.match_brace(open_pos), m.group(1)))

    def _find_test_ranges(self):
        t = self.text
        if re.match(r"\s*#!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", t):
            self.test_ranges.append((0, len(t)))
        for m in re.finditer(r"#\s*\[", t):
            close = self._match_bracket(m.end() - 1)
            body = t[m.end():close].strip()
            if not _is_test_attr(body):
                continue
            k = close + 1
            while True:  # skip further attributes on the same item
                mm = re.compile(r"\s*#\s*\[").match(t, k)
                if not mm:
                    break
                k = self._match_bracket(mm.end() - 1) + 1
            end, _ = self.item_end(k)
            self.test_ranges.append((m.start(), end))
        for start, end, name in self.inline_mods:
            if name == "tests":
                self.test_ranges.append((start, end))

    def _match_bracket(self, open_pos):
        depth = 0
        t = self.text
        for k in range(open_pos, len(t)):
            if t[k] == "[":
                depth += 1
            elif t[k] == "]":
                depth -= 1
                if depth == 0:
                    return k
        return len(t) - 1

    def in_test(self, pos):
        return any(a <= pos <= b for a, b in self.test_ranges)

    def module_at(self, pos):
        """Full module path at pos, inline modules included (for super:: / self::)."""
        path = list(self.module)
        for start, end, name in sorted(self.inline_mods):
            if start < pos <= end:
                path.append(name)
        return tuple(path)


def _is_test_attr(body):
    body = re.sub(r"\s+", "", body)
    if re.fullmatch(r"(?:[A-Za-z_]\w*::)*test(?:\(.*\))?", body):  # #[test], #[monoio::test]
        return True
    return bool(re.fullmatch(r"cfg\(test\)", body) or re.match(r"cfg\(all\((.*,)?test[,)]", body))


# --------------------------------------------------------------------------------------------
# The tree: files -> modules
# --------------------------------------------------------------------------------------------

def file_module(rel):
    """src/lib.rs -> (), src/a.rs and src/a/mod.rs -> ("a",), src/a/b.rs -> ("a", "b");
    None for src/main.rs (the binary) and src/bin/."""
    parts = rel.split("/")[1:]
    if parts == ["lib.rs"]:
        return ()
    if parts == ["main.rs"] or parts[0] == "bin":
        return None
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def load_tree(root):
    """[(rel, module or None, Source)] for every .rs file under root/src, sorted."""
    out = []
    src_dir = os.path.join(root, "src")
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(".rs"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            mod = file_module(rel)
            out.append((rel, mod, Source(rel, mod if mod is not None else ("main",), text)))
    out.sort(key=lambda e: e[0])
    return out


def mod_name(m):
    return "::".join(m) if m else "crate"


# --------------------------------------------------------------------------------------------
# Paths: `use` trees and inline paths
# --------------------------------------------------------------------------------------------

TOKEN_RE = re.compile(r"\s*(::|" + IDENT + r"|[{},*;])")


def parse_use(text, pos):
    """Parse the use tree starting at pos (just after `use`). Returns ([(segments, offset)],
    end offset). Each leaf path is fully expanded: `a::{b, c::{d, self}}` gives a::b, a::c::d,
    a::c (offset = that of its last segment)."""
    toks = []
    k = pos
    while True:
        m = TOKEN_RE.match(text, k)
        if not m:
            break
        toks.append((m.group(1), m.start(1)))
        k = m.end()
        if m.group(1) == ";":
            break
    paths = []
    idx = [0]

    def peek():
        return toks[idx[0]][0] if idx[0] < len(toks) else None

    def take():
        t = toks[idx[0]]
        idx[0] += 1
        return t

    def tree(prefix, prefix_off):
        segs, last_off = list(prefix), prefix_off
        if peek() == "::":  # leading `::` (2015-style extern path): not ours
            take()
            segs.append("::")
        while True:
            t = peek()
            if t is None:
                return
            if t == "{":
                take()
                while peek() not in (None, "}"):
                    tree(segs, last_off)
                    if peek() == ",":
                        take()
                if peek() == "}":
                    take()
                return
            if t == "*":
                take()
                paths.append((segs, last_off))
                return
            if IDENT_RE.fullmatch(t):
                tok, off = take()
                if tok == "self" and segs and prefix and len(segs) == len(prefix):
                    paths.append((segs, off))  # `{self, ..}` names the prefix itself
                else:
                    segs = segs + [tok]
                    last_off = off
                    if peek() == "::":
                        take()
                        continue
                    paths.append((segs, off))
                if peek() == "as":
                    take()
                    if peek() is not None and IDENT_RE.fullmatch(peek()):
                        take()
                return
            return  # unexpected token: stop this branch

    tree([], pos)
    return paths, k


INLINE_RE = re.compile(r"(?<![\w:#])(\$?crate|super|self)(\s*::\s*" + IDENT + r")+")


def resolve(segs, here, modules, in_use):
    """Absolute module path (tuple) that segs refers to from module `here` (a tuple, inline
    modules included), as the longest prefix that is a module file; None if not ours."""
    segs = [s[2:] if s.startswith("r#") else s for s in segs]
    if not segs or segs[0] == "::":
        return None
    first = segs[0]
    if first in ("crate", "$crate"):
        abs_path = segs[1:]
    elif first in ("super", "self"):
        cur = list(here)
        k = 0
        while k < len(segs) and segs[k] in ("super", "self"):
            if segs[k] == "super":
                if not cur:
                    return None
                cur.pop()
            k += 1
        abs_path = cur + segs[k:]
    elif in_use and tuple(here) + (first,) in modules:  # `use close::X;` in protocol/mod.rs
        abs_path = list(here) + segs
    else:
        return None
    for k in range(len(abs_path), 0, -1):
        if tuple(abs_path[:k]) in modules:
            return tuple(abs_path[:k])
    return ()


def collect_refs(tree):
    """[(from_module, to_module, rel, line, in_test, raw)] for every reference in library code."""
    modules = {m for _, m, _ in tree if m is not None}
    refs = []
    for rel, mod, s in tree:
        if mod is None:
            continue
        t = s.text
        use_spans = []
        for m in re.finditer(r"(?<![\w#$])use\s", t):
            paths, end = parse_use(t, m.end())
            use_spans.append((m.start(), end))
            here = s.module_at(m.start())
            for segs, off in paths:
                target = resolve(segs, here, modules, in_use=True)
                if target is not None:
                    refs.append((mod, target, rel, s.line(off), s.in_test(off), "::".join(segs)))
        for m in INLINE_RE.finditer(t):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            segs = [x.strip() for x in m.group(0).split("::")]
            target = resolve(segs, s.module_at(m.start()), modules, in_use=False)
            if target is not None:
                refs.append((mod, target, rel, s.line(m.start()), s.in_test(m.start()),
                             "::".join(segs)))
    return refs


# --------------------------------------------------------------------------------------------
# Graphs and cycles
# --------------------------------------------------------------------------------------------

def build_graphs(refs):
    """Two graphs {node: {node: [(rel, line, in_test)]}}: top-level and file-level."""
    top, files = {}, {}
    for frm, to, rel, line, in_test, _ in refs:
        if frm == to:
            continue
        # file granularity: every edge but a child's edge to its parent
        if not (len(frm) == len(to) + 1 and frm[:-1] == to):
            files.setdefault(mod_name(frm), {}).setdefault(mod_name(to), []).append(
                (rel, line, in_test))
        # top level: between two different top-level modules (the crate root is not one)
        if frm and to and frm[0] != to[0]:
            top.setdefault(frm[0], {}).setdefault(to[0], []).append((rel, line, in_test))
    return top, files


def sccs(graph):
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    nodes = sorted(set(graph) | {v for e in graph.values() for v in e})
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def cycles(graph):
    """For each SCC, a short list of cycles that together use every edge of the SCC: take the
    edges in order and, for each one no listed cycle uses yet, list the shortest cycle through
    it. So every edge that takes part in a cycle is shown (with its file:line), and the list stays
    short however dense the component is."""
    result = []
    for comp in sccs(graph):
        members = set(comp)
        found, covered = [], set()
        for a in comp:
            for b in sorted(graph.get(a, {})):
                if b not in members or (a, b) in covered:
                    continue
                # shortest path b -> a inside the component (BFS), closed by the edge a -> b
                prev = {b: None}
                queue = [b]
                while queue and a not in prev:
                    nq = []
                    for v in queue:
                        for w in sorted(graph.get(v, {})):
                            if w in members and w not in prev:
                                prev[w] = v
                                nq.append(w)
                    queue = nq
                path, v = [], a
                while v is not None:
                    path.append(v)
                    v = prev[v]
                cyc = path[::-1][:-1]  # b ... (without the final a)
                cyc = [a] + cyc
                k = cyc.index(min(cyc))
                cyc = tuple(cyc[k:] + cyc[:k])
                for i, x in enumerate(cyc):
                    covered.add((x, cyc[(i + 1) % len(cyc)]))
                if cyc not in found:
                    found.append(cyc)
        found.sort(key=lambda c: (len(c), c))
        result.append((comp, found))
    return result


def edge_evidence(graph, a, b):
    ev = graph[a][b]
    prod = [e for e in ev if not e[2]]
    rel, line, _ = (prod or ev)[0]
    return "%s:%d%s" % (rel, line, "" if prod else " (test code only)")


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------

FN_RE = re.compile(r"(?<![\w#])fn\s+(" + IDENT + r")")


def functions(s):
    """[(name, fn_line, lines, in_test)] for every fn with a body in Source s."""
    out = []
    for m in FN_RE.finditer(s.text):
        end, open_pos = s.item_end(m.end())
        if open_pos is None:
            continue  # declaration without a body
        start_line = s.line(m.start())
        out.append((m.group(1).replace("r#", ""), start_line, s.line(end) - start_line + 1,
                    s.in_test(m.start())))
    return out


def fn_key(mod, name):
    return "%s::%s" % (mod_name(mod), name)


def read_allow(root):
    """{key: line_no} from scripts/long-fns.allow; a key is `module::fn` (or `src/x.rs::fn`)."""
    path = os.path.join(root, ALLOW_FILE)
    entries = {}
    if not os.path.exists(path):
        return entries, []
    bad = []
    with open(path, encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "#" not in raw:
                bad.append("%s:%d: entry without a `# reason`: %s" % (ALLOW_FILE, no, line))
            m = re.fullmatch(r"(src/[\w/]+\.rs)::(\w+)", line)
            if m:  # file-path form -> module form
                mod = file_module(m.group(1))
                line = fn_key(mod if mod is not None else ("main",), m.group(2))
            entries[line] = no
    return entries, bad


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------

def check(root, out=print):
    """Run all checks on root; returns a dict of findings and prints a report."""
    tree = load_tree(root)
    lib_files = [e for e in tree if e[1] is not None]
    refs = collect_refs(tree)
    top, files = build_graphs(refs)
    res = {"top_cycles": cycles(top), "file_cycles": cycles(files), "protocol": [],
           "long": [], "stale": [], "allow_errors": []}
    failed = False

    out("check-layout: %d library files in src/ (src/main.rs not in the module graph)"
        % len(lib_files))
    by_mod = {}
    for rel, mod, _ in lib_files:
        by_mod.setdefault(mod, []).append(rel)
    for mod, rels in sorted(by_mod.items()):
        if len(rels) > 1:
            out("warn %s: both are module `%s` (rustc refuses that); checked together"
                % (" and ".join(rels), mod_name(mod)))

    # 1. cycles
    for label, graph, key in (("top-level modules", top, "top_cycles"),
                              ("file modules", files, "file_cycles")):
        comps = res[key]
        if not comps:
            out("ok   no import cycle between %s" % label)
            continue
        failed = True
        ncyc = sum(len(c) for _, c in comps)
        out("FAIL import cycles between %s: %d strongly connected group(s), %d cycle(s) "
            "(together they use every edge of the group)" % (label, len(comps), ncyc))
        for comp, cycs in comps:
            out("  group of %d: %s" % (len(comp), ", ".join(comp)))
            for cyc in cycs:
                out("    " + " -> ".join(cyc + (cyc[0],)))
                for i, a in enumerate(cyc):
                    b = cyc[(i + 1) % len(cyc)]
                    out("        %s -> %s: %s" % (a, b, edge_evidence(graph, a, b)))

    # 2. protocol/ is self-contained
    for rel, mod, s in tree:
        if not rel.startswith("src/protocol/"):
            continue
        for m in re.finditer(r"(?<![\w:#])\$?crate\s*::", s.text):
            line = s.line(m.start())
            path = re.match(r"\$?crate(\s*::\s*(" + IDENT + r"|\{))*", s.text[m.start():])
            res["protocol"].append((rel, line, re.sub(r"\s+", "", path.group(0)),
                                    s.in_test(m.start())))
    if res["protocol"]:
        failed = True
        out("FAIL %d `crate::` path(s) in src/protocol/ (it must stay sans-io and "
            "self-contained; inside protocol/ use `super::`):" % len(res["protocol"]))
        for rel, line, path, in_test in res["protocol"]:
            out("  %s:%d %s%s" % (rel, line, path, " (test code)" if in_test else ""))
    else:
        out("ok   no `crate::` path in src/protocol/")

    # 3. long functions
    allow, res["allow_errors"] = read_allow(root)
    used = set()
    for rel, mod, s in tree:
        for name, line, n, in_test in functions(s):
            if in_test or n <= MAX_FN_LINES:
                continue
            key = fn_key(s.module, name)
            if key in allow:
                used.add(key)
                continue
            res["long"].append((rel, line, name, n, key))
    res["stale"] = sorted(k for k in allow if k not in used)
    for e in res["allow_errors"]:
        out("FAIL " + e)
        failed = True
    if res["long"]:
        failed = True
        out("FAIL %d function(s) over %d lines outside test code (split them, or list "
            "`module::fn  # reason` in %s):" % (len(res["long"]), MAX_FN_LINES, ALLOW_FILE))
        for rel, line, name, n, key in res["long"]:
            out("  %s:%d fn %s: %d lines" % (rel, line, name, n))
    else:
        out("ok   no function over %d lines outside test code (%d allowlisted)"
            % (MAX_FN_LINES, len(used)))
    for k in res["stale"]:
        out("warn %s:%d: `%s` matches no function over %d lines any more; remove the entry"
            % (ALLOW_FILE, allow[k], k, MAX_FN_LINES))

    summary = "check-layout: %s (cycles: %d top-level, %d file-level; crate:: in protocol/: " \
              "%d; functions over %d lines: %d)" % (
                  "FAIL" if failed else "OK",
                  sum(len(c) for _, c in res["top_cycles"]),
                  sum(len(c) for _, c in res["file_cycles"]),
                  len(res["protocol"]), MAX_FN_LINES, len(res["long"]))
    out(summary)
    res["failed"] = failed
    res["top"], res["files"] = top, files
    return res


def print_graph(root):
    tree = load_tree(root)
    top, _ = build_graphs(collect_refs(tree))
    names = sorted({m[0] for _, m, _ in tree if m})
    for a in names:
        deps = sorted(top.get(a, {}))
        print("%s -> %s" % (a, ", ".join(deps) if deps else "(none)"))


# --------------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------------

def _write_tree(base, files):
    for rel, text in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text).lstrip("\n"))


def _long_fn(name, body_lines, indent=""):
    """A fn of exactly body_lines + 2 lines whose body holds braces in a char, a string, a raw
    string, a byte char and comments (none of which may count)."""
    lines = ["%sfn %s<'a>(x: &'a str) -> usize {" % (indent, name)]
    tricky = [
        "let open = '{';",
        "let s = \"{ not a brace {{\";",
        "// a comment with a brace {",
        "/* a block comment { with /* a nested { */ one } */",
        "let r = r#\"raw { \"string\" {\"#;",
        "let b = b'{';",
        "let q = '\\'';",
        "let e = \"escaped \\\" { quote\";",
    ]
    for k in range(body_lines):
        lines.append(indent + "    " + (tricky[k] if k < len(tricky) else "let _v%d = x.len();" % k))
    lines.append(indent + "}")
    return "\n".join(lines) + "\n"


def self_test():
    failures = []

    def expect(cond, what, detail=""):
        print("  %s %s" % ("ok  " if cond else "FAIL", what))
        if not cond:
            failures.append(what)
            if detail:
                print(textwrap.indent(detail, "       | "))

    def run(name, files, allow=None):
        d = os.path.join(tmp, name)
        _write_tree(d, files)
        if allow is not None:
            _write_tree(d, {ALLOW_FILE: allow})
        lines = []
        print("[%s]" % name)
        res = check(d, out=lines.append)
        return res, "\n".join(lines)

    lib = "pub mod a;\npub mod b;\npub mod c;\npub mod protocol;\n"
    with tempfile.TemporaryDirectory(prefix="check-layout-") as tmp:
        # 1. cycle through a grouped use; comments and strings must not add edges
        res, txt = run("grouped-use-cycle", {
            "src/lib.rs": lib,
            "src/main.rs": "use demo::a::X;\nfn main() {}\n",
            "src/a.rs": """
                use crate::{b::{Y, self}, c::Z};
                pub struct X;
                """,
            "src/b.rs": "pub(crate) use crate::a::X;\npub struct Y;\n",
            "src/c.rs": """
                //! Docs mention [`crate::a::X`].
                // use crate::a::X;
                /* crate::b::Y */
                pub struct Z;
                pub const S: &str = "crate::a::X";
                pub const R: &str = r#"crate::b::Y"#;
                """,
            "src/protocol/mod.rs": "pub mod frame;\nuse frame::F;\n",
            "src/protocol/frame.rs": "use crate::c::Z;\nuse super::F as G;\npub struct F;\n",
        })
        expect(res["failed"], "grouped use: the check fails")
        expect([c for _, c in res["top_cycles"]] == [[("a", "b")]],
               "grouped use: top-level cycle a -> b -> a, nothing else: %s"
               % [c for _, c in res["top_cycles"]])
        expect("c" not in res["top"] or set(res["top"]["c"]) == set(),
               "grouped use: comments and string literals in c.rs add no edge")
        expect("a -> b: src/a.rs:1" in txt and "b -> a: src/b.rs:1" in txt,
               "grouped use: each edge printed with its file:line")
        expect("protocol::frame" in res["files"].get("protocol", {}),
               "grouped use: `use frame::F;` in protocol/mod.rs is an edge to protocol::frame")
        expect([(p[0], p[1]) for p in res["protocol"]] == [("src/protocol/frame.rs", 1)],
               "grouped use: protocol/ crate:: path reported at src/protocol/frame.rs:1")

        # 2. cycle through inline paths (a call and a type), with super:: in a use
        res, txt = run("inline-path-cycle", {
            "src/lib.rs": "pub mod x;\npub mod z;\n",
            "src/x/mod.rs": "pub mod y;\npub use self::y::Thing;\npub struct Shared;\n",
            "src/x/y.rs": """
                use super::Shared;
                pub struct Thing;
                pub fn f() -> usize {
                    crate::z::g(Shared)
                }
                """,
            "src/z.rs": """
                pub fn g(_s: crate::x::Shared) -> usize { 0 }
                pub fn h() { let _t: super::x::y::Thing; }
                """,
        })
        tc = [c for _, c in res["top_cycles"]]
        fc = [c for _, c in res["file_cycles"]]
        expect(res["failed"], "inline path: the check fails")
        expect(tc == [[("x", "z")]], "inline path: top-level cycle x -> z -> x: %s" % tc)
        expect(fc == [[("x::y", "z"), ("x", "x::y", "z")]],
               "inline path: file-level cycles x::y -> z -> x::y and x -> x::y -> z -> x "
               "(z -> x::y through an inline super:: path): %s" % fc)
        expect("x" not in res["files"].get("x::y", {}) and "x::y" in res["files"].get("x", {}),
               "inline path: the child -> parent edge x::y -> x is dropped, x -> x::y is kept")

        # 3. acyclic tree: child -> parent, re-exports, tests importing super::*, bare child use
        res, txt = run("acyclic", {
            "src/lib.rs": "pub mod room;\npub mod shard;\npub mod protocol;\n",
            "src/room/mod.rs": "pub mod fanout;\npub use self::fanout::deliver;\npub struct Room;\n",
            "src/room/fanout.rs": """
                use super::Room;
                use crate::protocol::frame::F;
                pub fn deliver(_r: &Room, _f: F) {}
                #[cfg(test)]
                mod tests {
                    use super::*;
                }
                """,
            "src/shard.rs": "use crate::room::{fanout::deliver, Room};\npub fn run() {}\n",
            "src/protocol/mod.rs": "pub mod frame;\nuse frame::F;\n",
            "src/protocol/frame.rs": "use super::F as _G;\npub struct F;\n",
        })
        expect(not res["failed"], "acyclic: the check passes", txt)

        # 4. a 90-line fn with braces in a char, strings, a raw string and comments
        body = "pub mod a;\n"
        long_a = "pub struct S;\n" + _long_fn("long_one", 88) + "\nfn short() {\n    let _c = '}';\n}\n"
        res, txt = run("long-fn", {"src/lib.rs": body, "src/a.rs": long_a})
        expect(res["failed"], "long fn: the check fails")
        got = [(r, l, name, n) for r, l, name, n, _ in res["long"]]
        expect(got == [("src/a.rs", 2, "long_one", 90)],
               "long fn: reported exactly as src/a.rs:2 fn long_one: 90 lines: %s" % got)
        expect("src/a.rs:2 fn long_one: 90 lines" in txt, "long fn: printed as file:line fn name")
        res, txt = run("long-fn-allowed", {"src/lib.rs": body, "src/a.rs": long_a},
                       allow="# header\n\na::long_one  # parses in one pass\n"
                             "a::gone  # no longer exists\n")
        expect(not res["failed"] and res["stale"] == ["a::gone"] and "warn" in txt,
               "long fn: an allowlist entry exempts it; a stale entry is only a warning")
        res, txt = run("long-fn-exactly-80", {"src/lib.rs": body,
                                              "src/a.rs": _long_fn("eighty", 78)})
        expect(not res["failed"], "long fn: exactly 80 lines passes")

        # 5. long fns in test code are skipped
        tests_mod = "pub fn f() {}\n\nmod tests {\n" + _long_fn("long_test", 100, "    ") + "}\n"
        cfg_mod = ("pub fn g() {}\n\n#[cfg(test)]\nmod checks {\n    use super::*;\n\n"
                   "    #[test]\n" + _long_fn("long_check", 100, "    ") + "}\n"
                   "#[cfg(test)]\n" + _long_fn("helper", 95))
        res, txt = run("long-fn-in-tests", {"src/lib.rs": "pub mod a;\npub mod b;\n",
                                            "src/a.rs": tests_mod, "src/b.rs": cfg_mod})
        expect(not res["failed"] and not res["long"],
               "tests: long fns in `mod tests`, `#[cfg(test)]` modules and items are skipped", txt)

    if failures:
        print("check-layout self-test: FAIL (%d of the checks above)" % len(failures))
        return 1
    print("check-layout self-test: OK")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="repository root (holds src/ and scripts/)")
    ap.add_argument("--graph", action="store_true",
                    help="print the top-level module graph as `a -> b, c` lines and exit")
    ap.add_argument("--self-test", action="store_true",
                    help="run the checker on small fake src/ trees and check its verdicts")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not os.path.isdir(os.path.join(args.root, "src")):
        print("check-layout: no src/ under %s" % args.root, file=sys.stderr)
        return 2
    if args.graph:
        print_graph(args.root)
        return 0
    return 1 if check(args.root)["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
