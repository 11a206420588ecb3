"""The package's layers hold: no module imports from a layer above it, no import cycle, no hidden import.

The graph is read from the source with ``ast`` (benchmarks/import_graph.py), counting imports inside
functions too, so a cycle cannot hide behind a lazy import.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"


@pytest.fixture(scope="module")
def graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_upward_import_no_cycle_and_every_hpo_import_at_the_top(graph_module) -> None:
    known = graph_module.modules()
    graph = graph_module.edges(known)
    assert len(known) > 40 and len(graph) > 150  # the real package was read
    assert graph_module.upward(graph) == []
    assert graph_module.cycles(graph) == []
    assert sorted((a, b, line) for a, b, line, inner in graph if inner) == []


def test_the_checker_finds_an_upward_import_a_cycle_and_an_import_in_a_function(graph_module, tmp_path: Path) -> None:
    package = tmp_path / "hpo"
    (package / "spec").mkdir(parents=True)
    (package / "training").mkdir()
    (package / "__init__.py").write_text("")
    (package / "spec" / "__init__.py").write_text("")
    (package / "training" / "__init__.py").write_text("")
    # spec (bottom) reaches up into training, from inside a function; training and spec import each other
    (package / "spec" / "schema.py").write_text("def f():\n    from hpo.training import loop\n")
    (package / "training" / "loop.py").write_text("from hpo.spec import schema\n")
    known = graph_module.modules(package)
    graph = graph_module.edges(known)
    assert [(a, b, inner) for a, b, _, inner in graph_module.upward(graph)] == [("hpo.spec.schema", "hpo.training.loop", True)]
    assert graph_module.cycles(graph) == [["hpo.spec.schema", "hpo.training.loop"]]


def test_the_script_prints_the_graph_and_exits_zero() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upward imports: 0" in result.stdout and "cycles: 0" in result.stdout
    assert "hpo/training/" in result.stdout  # modules per folder
