"""The package's import graph, read from the source with ``ast``: every ``import`` and ``from ... import``
of an ``hpo`` module, at the top of a module or inside a function, and what it says about the layers.

The layers, bottom to top (a module may import from its own layer and the layers below it)::

    errors < spec < record < divergence < pruning
      < storage (optuna_private < database < artifacts < proxy) < data < training < analysis
      < search < export < cli < hpo (the package's public API)

It prints the number of modules per folder, every edge that points upward, and every cycle (any
strongly connected set of modules), and exits 1 when there is either. tests/test_layers.py runs it.

Usage::

    python benchmarks/import_graph.py            # the summary
    python benchmarks/import_graph.py --edges    # ... and every edge
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hpo"
LAYERS = (
    "hpo.errors", "hpo.spec", "hpo.record", "hpo.divergence", "hpo.pruning",
    "hpo.storage.optuna_private", "hpo.storage", "hpo.storage.database", "hpo.storage.artifacts",
    "hpo.storage.proxy", "hpo.data", "hpo.training", "hpo.analysis", "hpo.search", "hpo.export", "hpo.cli", "hpo",
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` as the package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def edges(known: dict[str, Path]) -> set[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import of an hpo module."""
    out = set()
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # "from hpo import record" imports the module hpo.record; "from hpo.spec import Spec" the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                while target and target not in known and target.startswith("hpo"):
                    target = target.rpartition(".")[0]
                if target in known and target != name:
                    out.add((name, target, node.lineno, id(node) in nested))
    return out


def rank(module: str) -> int:
    """The module's layer: the longest layer prefix it falls under."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def upward(graph: set[tuple[str, str, int, bool]]) -> list[tuple[str, str, int, bool]]:
    return sorted(e for e in graph if rank(e[1]) > rank(e[0]) and not e[0].startswith(e[1] + "."))


def cycles(graph: set[tuple[str, str, int, bool]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), smallest names first."""
    succ: dict[str, set[str]] = {}
    for a, b, _, _ in graph:
        succ.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
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
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(succ):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge too")
    args = parser.parse_args()
    known = modules()
    graph = edges(known)
    per_folder = Counter(str(p.parent.relative_to(ROOT.parent)) for p in known.values())
    print(f"{len(known)} modules, {len(graph)} import edges "
          f"({sum(1 for e in graph if e[3])} inside functions)")
    for folder, n in sorted(per_folder.items()):
        print(f"  {folder + '/':<24} {n} modules")
    if args.edges:
        for a, b, line, inner in sorted(graph):
            print(f"  {a} -> {b}  (line {line}{', in a function' if inner else ''})")
    up, loops = upward(graph), cycles(graph)
    print(f"upward imports: {len(up)}")
    for a, b, line, inner in up:
        print(f"  {a} -> {b}  (line {line}{', in a function' if inner else ''})")
    print(f"cycles: {len(loops)}")
    for group in loops:
        print("  " + " <-> ".join(group))
    return 1 if up or loops else 0


if __name__ == "__main__":
    sys.exit(main())
