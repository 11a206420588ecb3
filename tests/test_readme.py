"""The README and the guide cannot drift from the code: their examples run, their commands parse.

Every ``hpo ...`` line of the README's code blocks (and every concrete one of the docs) is parsed by
the real command line, and a spec its ``--study``/``--set`` options build is built, so an option,
a study or a spec key that no longer exists fails here. CI runs the README's own set-up commands
(``.ci/run``), and the README links only to pages that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from hpo.cli import main
from hpo.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
DOCS = ROOT / "docs"


def _block_after(path: Path, heading: str) -> str:
    text = path.read_text()
    section = text[text.index(heading):]
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", section)
    assert match, f"no code block after {heading!r} in {path.name}"
    return "\n".join(line[4:] for line in match.group(1).splitlines())


def _code_lines(path: Path) -> list[str]:
    """The lines of every literal block (after ``::``) of an .rst file, comments cut off."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.rstrip().endswith("::"):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            inside = False
        if inside and line.strip():
            lines.append(line.split("  #")[0].strip())
    return lines


def _inline_commands(path: Path) -> list[str]:
    """Every ``hpo ... --option`` inline literal of an .rst file, its line breaks undone (a bare
    ``hpo report`` names a command; it is not one to run)."""
    found = [" ".join(m.split()) for m in re.findall(r"``(hpo [^`]+)``", path.read_text())]
    return [command for command in found if " --" in command]


def _hpo_commands(path: Path, concrete_only: bool) -> list[list[str]]:
    commands = []
    for line in _code_lines(path) + (_inline_commands(path) if concrete_only else []):
        if not line.startswith("hpo ") or (concrete_only and re.search(r"\[|\.\.\.|\b[A-Z]+\b", line)):
            continue
        commands.append(shlex.split(line))
    return commands


def _accepts(argv: list[str]) -> click.Context:
    """The context of ``hpo ARGS`` as the real command line parses it (a UsageError if it would not)."""
    assert argv[0] == "hpo" and argv[1] in main.commands, f"no command `hpo {argv[1]}`"
    command = main.commands[argv[1]]
    return command.make_context(argv[1], argv[2:])


def _check_spec(ctx: click.Context) -> None:
    """A command that builds a spec (optimize, pretrain, lr-find) builds it from its options."""
    if "overrides" in ctx.params and "study" in ctx.params:
        load_spec(ctx.params["study"], ctx.params["overrides"])


def test_every_readme_command_parses_and_builds_its_spec() -> None:
    commands = _hpo_commands(README, concrete_only=False)
    names = {argv[1] for argv in commands}
    assert {"optimize", "report", "dashboard"} <= names  # the user's three commands
    for argv in commands:
        _check_spec(_accepts(argv))


def test_the_quick_look_is_a_small_run_of_the_default_study() -> None:
    """Its options are valid for the CLI, and they do shrink the study (a quick look, not a real one)."""
    text = README.read_text()
    block = _block_after(README, "A quick look")
    (line,) = [line for line in block.splitlines() if line.startswith("hpo optimize")]
    ctx = _accepts(shlex.split(line))
    spec = load_spec(ctx.params["study"], ctx.params["overrides"])
    default = load_spec(ctx.params["study"])
    assert spec.data.max_train and spec.train.max_epochs < default.train.max_epochs and ctx.params["trials"] <= 5
    assert "real" in text[text.index("A quick look"):text.index("Your three commands")]  # the time `time` printed


def test_every_concrete_docs_command_parses() -> None:
    """Lines with placeholders (``[--storage URL]``, ``NAME``, ``...``) are synopses, not commands."""
    pages = sorted(DOCS.rglob("*.rst"))
    commands = [argv for page in pages for argv in _hpo_commands(page, concrete_only=True)]
    assert len(commands) >= 12  # code blocks and inline ``hpo ...`` literals alike
    for argv in commands:
        _check_spec(_accepts(argv))


def test_an_unknown_option_or_spec_key_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        _accepts(["hpo", "optimize", "--study", "imdb", "--trials", "3", "--no-such-option"])
    from hpo.errors import HpoError

    with pytest.raises(HpoError):
        _check_spec(_accepts(["hpo", "optimize", "--study", "imdb", "--trials", "3", "--set", "data.max_trian=2000"]))


def test_ci_runs_the_readme_install_and_test_commands_as_written() -> None:
    lines = _code_lines(README)
    install = next(line for line in lines if line.startswith("pip install '."))
    test = next(line for line in lines if re.fullmatch(r"pytest( -\w+)*", line))
    e2e = next((line for line in lines if re.fullmatch(r"pytest( -\w+)* -m e2e", line)), None)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert install in ci and test in ci
    assert e2e in ci and ci.index(e2e) > ci.index(test)  # the e2e step as well, after the default run
    assert not any(re.search(r"pip install .*(-e|--editable)\b", line) for line in ci)  # a normal install
    assert not any("python -m pytest" in line for line in ci + lines)  # that imports the source folder
    build = re.search(r"``(sphinx-build [^`]+)``", README.read_text()).group(1)
    assert build in ci and "-W" in build.split()


def test_the_readme_links_only_to_pages_that_exist() -> None:
    links = re.findall(r"<(docs/[^>]+)>`_", README.read_text())
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link


def test_the_default_run_leaves_out_the_e2e_tests_and_says_what_they_are(pytestconfig: pytest.Config) -> None:
    """``pytest`` on a laptop leaves out the end-to-end runs; ``pytest -m e2e`` (CI) runs them."""
    addopts = pytestconfig.getini("addopts")
    assert "-m" in addopts and addopts[addopts.index("-m") + 1] == "not e2e"  # a command line's own -m replaces it
    assert any(marker.startswith("e2e: ") for marker in pytestconfig.getini("markers"))


def test_the_divergence_rules_in_your_own_study_example_runs_and_prunes_the_jumps(capsys) -> None:
    namespace: dict = {}
    code = _block_after(DOCS / "guide" / "divergence.rst", "Use the divergence rules in your own study")
    exec(compile(code, "docs/guide/divergence.rst", "exec"), namespace)
    study = namespace["study"]
    high = [t for t in study.trials if t.params["lr"] > 0.1]
    low = [t for t in study.trials if t.params["lr"] <= 0.1]
    assert high and low
    assert all(t.state.name == "PRUNED" and t.last_step == 6 for t in high)  # at the jump, not before
    assert any(t.state.name == "COMPLETE" for t in low)
    assert "pruned at epoch [6]" in capsys.readouterr().out


def test_the_python_api_example_runs_a_study_and_reports_it(tmp_path, monkeypatch, data_cache_dir, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", data_cache_dir)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    code = _block_after(DOCS / "guide" / "python.rst", "``hpo.optimize``\n")
    namespace: dict = {}
    exec(compile(code, "docs/guide/python.rst", "exec"), namespace)
    outcome = namespace["outcome"]
    assert outcome.finished == 2 and outcome.ran == 2 and outcome.study == "imdb-python"
    out = capsys.readouterr().out
    assert f"storage: sqlite:///{tmp_path / 'hpo-python.db'} (--storage)" in out  # the command's own lines, printed
    assert out.count("{'lr_embedding': ") == 2  # each trial's record, with its groups' rates
    assert "lr_head (accuracy" in out  # the report's table, per learning rate
    assert (tmp_path / "hpo-python.db").is_file()
