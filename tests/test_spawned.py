"""The race tests' ``spawn`` children import only what their race needs.

A spawned child imports the module that defines its target function. A storage race (a study
created once, a trial claimed once, tables created once) defined in a test module made each of its
4-10 children import that module's whole ``hpo`` and torch first: seconds of start-up per child,
before the race it is there for. This reads every ``Process(target=...)`` and pool ``map`` of the
test modules and imports each target's module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Children that train or run the worker loop: torch is part of what they race.
NEEDS_TORCH = {
    ("test_pretrain", "_ensure"): "pretrains an encoder",
    ("test_data", "_build_in_process"): "builds the tensor cache",
    ("test_workers_shared", "_synthetic_worker"): "runs hpo.search.workers.work, which imports the objective",
}


def _spawn_targets(path: Path) -> set[tuple[str, str]]:
    """(module, function) of every ``X.Process(target=F)`` and ``pool.map(F, ...)`` in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr == "Process":
            target = next((k.value for k in node.keywords if k.arg == "target"), None)
        elif node.func.attr == "map" and isinstance(node.func.value, ast.Name) and node.func.value.id == "pool":
            target = node.args[0]
        else:
            continue
        if isinstance(target, ast.Name):
            found.add((path.stem, target.id))
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            found.add((target.value.id, target.attr))
    return found


def _imports_torch(module: str) -> bool:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_the_storage_races_children_import_no_torch() -> None:
    targets = {t for path in sorted(TESTS.glob("test_*.py")) for t in _spawn_targets(path)}
    assert ("spawned", "join_all") in targets  # the scan sees the races it guards
    assert set(NEEDS_TORCH) <= targets, set(NEEDS_TORCH) - targets  # an allowance nobody uses goes
    light = {module for module, function in targets if (module, function) not in NEEDS_TORCH}
    heavy = sorted(module for module in light if _imports_torch(module))
    assert heavy == [], f"spawned children import torch through {heavy}: move their targets to tests/spawned.py"
