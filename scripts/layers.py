#!/usr/bin/env python3
"""Shoal's layers, and the check that keeps imports one-way.

    python3 scripts/layers.py            # the graph between rooms, wrong-way imports, cycles
    python3 scripts/layers.py --check    # exit 1 naming each wrong-way import and the rule it breaks

A room is a top-level module or package of `shoal` (`shoal.manager.raft` is a room of its own). Rooms sit in
layers, lowest first; a module may import its own room and the rooms of lower layers, never a higher layer's,
and rooms of one layer marked independent never import each other. Every import counts, also one inside a
function or under `if TYPE_CHECKING:` (a late import hides a loop, it does not remove it).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Lowest first: (layer name, rooms, whether the rooms of this layer are independent of each other).
LAYERS: list[tuple[str, tuple[str, ...], bool]] = [
    ("helpers", ("shoal", "shoal.errors", "shoal.clock", "shoal.ids", "shoal.names", "shoal.tasks",
                 "shoal.gctune", "shoal.threadprio", "shoal.procmem", "shoal.logring", "shoal.model", "shoal.ca",
                 "shoal.host"), False),
    ("raft", ("shoal.manager.raft",), False),
    ("contracts", ("shoal.api",), False),
    ("store", ("shoal.store",), False),
    ("sides", ("shoal.manager", "shoal.agent", "shoal.net"), True),
    # The daemon's Prometheus metrics read the store, Raft and the membership (sides) at scrape time; the Engine
    # API server (http) only hands them a request observer, and the wiring starts them.
    ("metrics", ("shoal.metrics",), False),
    ("rpc", ("shoal.rpc",), False),
    ("http", ("shoal.engineapi",), False),
    # The web view reaches the cluster only through the Engine API's socket, as the docker CLI does; it imports
    # nothing of the sides or the HTTP layer, and the entry point starts it.
    ("web", ("shoal.web",), False),
    ("wiring", ("shoal.node", "shoal.demo", "shoal.testing"), False),
    # The CLI's client side (shoal.ctl) reaches daemons over the Engine API only: see ONLY.
    ("entry", ("shoal.cli", "shoal.ctl"), False),
]
# Rooms that may use only some of the layers below them.
ONLY: dict[str, tuple[str, ...]] = {
    # Raft's core and shell know nothing of the model, the store or the rest of the manager.
    "shoal.manager.raft": ("shoal", "shoal.errors", "shoal.clock", "shoal.ids", "shoal.tasks"),
    # The `shoal` subcommands that talk to a daemon import none of the daemon's code: they start fast and work
    # against any daemon serving the Engine API.
    "shoal.ctl": ("shoal",),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module
    line: int
    late: bool  # inside a function or under TYPE_CHECKING


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[:3] == ["shoal", "manager", "raft"]:
        return "shoal.manager.raft"
    return ".".join(parts[:2])


def _modules(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted((root / "shoal").rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(root: Path) -> list[Import]:
    """Every import of a `shoal` module by a `shoal` module under `root`."""
    mods = _modules(root)
    found: list[Import] = []

    def resolve(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, late: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                child_late = late or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                    isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        pkg = pkg[:len(pkg) - child.level + 1]
                        base = ".".join(pkg + ([child.module] if child.module else []))
                    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in child.names]
                for n in names:
                    if n == "shoal" or n.startswith("shoal."):
                        found.append(Import(mod, resolve(n), child.lineno, late))
                visit(child, child_late)

        visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _rank() -> dict[str, tuple[int, str, bool]]:
    return {room: (i, name, indep) for i, (name, rooms, indep) in enumerate(LAYERS) for room in rooms}


def violations(found: list[Import]) -> list[str]:
    """One line per import that breaks a rule, naming the rule."""
    rank = _rank()
    out: list[str] = []
    for imp in found:
        a, b = room_of(imp.module), room_of(imp.target)
        if a == b:
            continue
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        if a not in rank or b not in rank:
            out.append(f"{where}: room {a if a not in rank else b} is in no layer (scripts/layers.py LAYERS)")
            continue
        (ra, la, indep), (rb, lb, _) = rank[a], rank[b]
        if rb > ra:
            out.append(f"{where}: layer '{la}' may not import the higher layer '{lb}'")
        elif rb == ra and indep:
            out.append(f"{where}: {a} and {b} are independent rooms of layer '{la}'")
        elif a in ONLY and b not in ONLY[a]:
            out.append(f"{where}: {a} may import only {', '.join(ONLY[a])}")
    return out


def room_graph(found: list[Import]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        a, b = room_of(imp.module), room_of(imp.target)
        if a != b:
            g[a].add(b)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 on a wrong-way import or a cycle")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args(argv)
    found = imports(args.root)
    bad = violations(found)
    loops = cycles(room_graph(found))
    if not args.check:
        late = sum(1 for i in found if i.late and room_of(i.module) != room_of(i.target))
        print(f"{len(found)} imports between shoal modules, {late} late ones across rooms")
        for a, bs in sorted(room_graph(found).items()):
            print(f"  {a} -> {', '.join(sorted(bs))}")
        print(f"{len(bad)} wrong-way imports, {len(loops)} cycles between rooms")
    for line in bad:
        print(line)
    for loop in loops:
        print("cycle: " + " <-> ".join(loop))
    return 1 if args.check and (bad or loops) else 0


if __name__ == "__main__":
    sys.exit(main())
