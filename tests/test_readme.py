"""The README's code runs as it is written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.rst"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", section)
    assert match, f"no code block after {heading!r}"
    return "\n".join(line[4:] for line in match.group(1).splitlines())


def test_the_divergence_rules_in_your_own_study_example_runs_and_prunes_the_jumps(capsys) -> None:
    namespace: dict = {}
    exec(compile(_block_after("Use the divergence rules in your own study"), "README.rst", "exec"), namespace)
    study = namespace["study"]
    high = [t for t in study.trials if t.params["lr"] > 0.1]
    low = [t for t in study.trials if t.params["lr"] <= 0.1]
    assert high and low
    assert all(t.state.name == "PRUNED" and t.last_step == 6 for t in high)  # at the jump, not before
    assert any(t.state.name == "COMPLETE" for t in low)
    assert "pruned at epoch [6]" in capsys.readouterr().out
