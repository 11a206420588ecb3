"""The analysis commands through the CLI: every storage, and every way a study can be unusable."""

import json

import optuna
import pytest
from click.testing import CliRunner

import synthetic
from hpo.analysis.dashboard import plan_dashboard
from hpo.cli import main
from hpo.record import TrialRecord
from analysis_helpers import known_study, server_url

COMMANDS = {
    "report": ["report"],
    "importance": ["importance"],
    "importance-divergence": ["importance", "--target", "divergence"],
    "plot": ["plot", "--out", "figs"],
}


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def _run(*args):
    return CliRunner().invoke(main, list(args))


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["missing", "empty", "only-failed"])
def test_unusable_studies_get_one_line(sqlite_url, command, case):
    storage = optuna.storages.RDBStorage(sqlite_url)
    if case != "missing":
        known_study(storage, [], name="s", failed=2 if case == "only-failed" else 0)
    name = "typo" if case == "missing" else "s"
    result = _run(*COMMANDS[command], "--study", name, "--storage", sqlite_url)
    words = {"missing": ["no study named 'typo'"], "empty": ["'s' has no trials yet"],
             "only-failed": ["no finished", "2 FAIL"]}[case]
    _one_line_error(result, *words)


@pytest.mark.parametrize("command", [*COMMANDS, "dashboard"])
def test_read_only_commands_create_nothing_and_name_the_storage(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    args = COMMANDS.get(command, [command])
    _one_line_error(_run(*args, "--study", "imdb"), f"no study database at sqlite:///{tmp_path / 'hpo.db'}",
                    "--storage", "$HPO_STORAGE")
    assert list(tmp_path.iterdir()) == []  # no hpo.db, no hpo.db.lock


def test_dashboard_refuses_missing_studies_and_explains_empty_ones(sqlite_url):
    storage = optuna.storages.RDBStorage(sqlite_url)
    _one_line_error(_run("dashboard", "--study", "typo", "--storage", sqlite_url),
                    f"no study named 'typo' in storage {sqlite_url}", "--storage")
    known_study(storage, [], name="s", failed=1)
    plan = plan_dashboard("s", sqlite_url, port=8123)
    assert plan.host == "127.0.0.1" and plan.url.startswith("http://127.0.0.1:8123/dashboard/studies/")
    assert "1 FAIL" in plan.note and "as they finish" in plan.note


def test_bad_storage_is_one_line(tmp_path):
    _one_line_error(_run("report", "--study", "s", "--storage", "nonsense://x"), "nonsense")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_report_and_importance_read_any_storage(sqlite_url, backend):
    url = sqlite_url if backend == "sqlite" else server_url(backend)
    storage = optuna.storages.RDBStorage(url)
    study = known_study(storage, synthetic.random_lr_heads(30, seed=5), failed=1)
    try:
        result = _run("report", "--study", study.study_name, "--storage", url, "--format", "json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        n_div = sum(1 for t in study.trials if TrialRecord.from_trial(t).diverged)
        assert report["states"]["diverged"] == n_div and report["states"]["failed"] == 1
        head = next(t for t in report["rate_tables"] if t["param"] == "lr_head")
        assert sum(b["trials"] for b in head["bins"]) == 30
        for target in ("accuracy", "divergence"):
            result = _run("importance", "--study", study.study_name, "--storage", url, "--target", target)
            assert result.exit_code == 0, result.output
            first_row = result.output.splitlines()[3].split()
            assert first_row[0] == "lr_head", result.output
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage)


def test_plot_writes_every_figure(sqlite_url, tmp_path):
    storage = optuna.storages.RDBStorage(sqlite_url)
    known_study(storage, synthetic.random_lr_heads(20, seed=1), name="s")
    result = _run("plot", "--study", "s", "--storage", sqlite_url, "--out", str(tmp_path / "figs"))
    assert result.exit_code == 0, result.output
    written = sorted(p.split("/")[-1] for p in result.output.split())
    assert written == sorted(["val_loss.png", "grad_norms.png", "lr_vs_accuracy.png", "lr_schedule.png",
                              "importance.html", "parallel_coordinate.html", "slice.html", "contour.html"])
    for name in written:
        data = (tmp_path / "figs" / name).read_bytes()
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG")
        else:  # offline: plotly.js from the file beside the page, written once, nothing from a CDN
            assert b'src="plotly.min.js"' in data and b'src="http' not in data
            assert len(data) < 200_000
    assert (tmp_path / "figs" / "plotly.min.js").stat().st_size > 1_000_000
    assert b"lr_head" in (tmp_path / "figs" / "importance.html").read_bytes()
    assert "unique value length" not in result.output + result.stderr  # no Optuna warning per fixed param


@pytest.mark.parametrize("name", ["imdb", "mine"])
def test_an_empty_study_suggests_an_optimize_command_that_opens_it(sqlite_url, name):
    """`hpo report --study mine` used to suggest `hpo optimize --study mine`, an unknown spec."""
    import re
    import shlex

    from hpo.spec import load_spec

    known_study(optuna.storages.RDBStorage(sqlite_url), [], name=name)
    result = _run("report", "--study", name, "--storage", sqlite_url)
    _one_line_error(result, "has no trials yet")
    suggested = shlex.split(re.search(r"`(hpo optimize [^`]*)`", result.stderr).group(1).replace("--trials N", "--trials 5"))
    ctx = main.commands["optimize"].make_context("optimize", suggested[2:])  # click accepts it as written
    assert load_spec(ctx.params["study"], ctx.params["overrides"]).name == name  # and it opens this study


def test_the_dashboard_names_a_sqlite_file_by_its_absolute_path(tmp_path, monkeypatch):
    """As optimize does: `sqlite:///hpo.db` says nothing about which folder's hpo.db is served."""
    from hpo.analysis import dashboard

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    known_study(optuna.storages.RDBStorage("sqlite:///hpo.db"), [1e-3], name="s")
    monkeypatch.setattr(dashboard, "serve", lambda plan: None)
    result = _run("dashboard", "--study", "s")
    assert result.exit_code == 0, result.output
    assert f"storage: sqlite:///{tmp_path / 'hpo.db'} (default)" in result.output
