"""The model example runs as its docstring says: your own model tuned from Python and from the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

import hpo
from hpo.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "text_cnn.py"
SMALL = {"data.max_train": 300, "data.max_valid": 100, "data.max_test": 100, "data.max_len": 120}


@pytest.fixture
def text_cnn(monkeypatch, data_cache_dir):
    monkeypatch.setenv("HPO_CACHE_DIR", data_cache_dir)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    spec = importlib.util.spec_from_file_location("text_cnn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cnn_example_is_tuned_from_python_on_a_4_class_csv_with_its_groups_rates(text_cnn, tmp_path, capsys):
    text_cnn.main(tmp_path, per_class=60, trials=2, epochs=1)
    out = capsys.readouterr().out
    assert "lr_conv" in out and "lr_embedding" in out  # the report names each group's rate
    assert "Classes (4" in out and "rt-positive" in out  # the CSV's four classes, per class
    records = hpo.load_study_records("text-cnn", f"sqlite:///{tmp_path / 'text-cnn.db'}")
    assert len(records) == 2 and all(r.finished for r in records)
    for r in records:
        assert set(r.lrs) == {"lr_embedding", "lr_conv", "lr_head"}
        assert set(r.epochs[0].grad_norm_mean) == {"embedding", "conv", "head"}  # telemetry per group
        assert all(v > 0 for v in r.epochs[0].grad_norm_mean.values())
    best = max((r for r in records if r.state == "COMPLETE"), key=lambda r: r.accuracy, default=None)
    if best is not None:
        assert f"best trial {best.number}: val accuracy {best.accuracy:.4f}" in out


def test_the_cnn_example_spec_runs_from_the_command_line_by_the_factory_s_name(text_cnn, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # where the example's docstring runs it: examples.text_cnn is found from here
    storage = f"sqlite:///{tmp_path / 'cli.db'}"
    sets = [a for key, value in {**SMALL, "train.max_epochs": 1}.items() for a in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, ["optimize", "--study", "examples/text_cnn.toml", "--trials", "1", "--jobs", "1",
                                       "--seed", "0", "--storage", storage, *sets])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    assert "study 'text-cnn': 1 finished trials (1 run now)" in result.output
    report = CliRunner().invoke(main, ["report", "--study", "text-cnn", "--storage", storage])
    assert report.exit_code == 0 and "lr_conv" in report.output  # the best trial's rates, by group
    (record,) = hpo.load_study_records("text-cnn", storage)
    assert set(record.epochs[0].grad_norm_mean) == {"embedding", "conv", "head"}


def test_a_factory_other_processes_cannot_import_is_one_line_for_several_jobs(text_cnn, tmp_path):
    """The example's module was loaded by path, as a notebook's function would be: spawned workers
    cannot import its factory, so two jobs are refused before a study exists (one job runs it)."""
    import optuna

    csv = text_cnn.write_reviews_csv(tmp_path / "r.csv", per_class=60)
    storage = f"sqlite:///{tmp_path / 'jobs.db'}"
    overrides = {**SMALL, "data.path": str(csv), "data.text_column": "review_body", "data.label_column": "category",
                 "model.factory": text_cnn.cnn, "train.max_epochs": 1}
    with pytest.raises(hpo.HpoError, match=r"^jobs = 2: worker processes cannot import the model factory "
                                           r"'text_cnn_example:cnn'.*or run with jobs=1$"):
        hpo.optimize(str(EXAMPLE.with_suffix(".toml")), trials=1, storage=storage, jobs=2, overrides=overrides)
    assert optuna.study.get_all_study_names(storage) == []
