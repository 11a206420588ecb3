"""The start-up calibration: measured once per machine and model shape, cached, and overridden by explicit settings."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
import torch
from click.testing import CliRunner

from hpo.training.calibrate import Calibration, cache_file, calibration_key, candidates, ensure_calibration
from hpo.cli import main
from hpo.data import load_dataset
from hpo.record import TrialRecord
from hpo.training.device import native_bf16 as _native_bf16, available_cores
from conftest import SMALL


def test_it_measures_once_then_reads_the_cache(small_spec, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_CALIBRATION_FILE", str(tmp_path / "calibration.json"))
    spec = small_spec("data.max_train=200")
    data = load_dataset(spec.data)
    first = ensure_calibration(spec, data, torch.device("cpu"), load=lambda: 0.0)  # a quiet machine, whatever runs beside
    assert not first.cached and first.seconds > 0 and first.tokens_per_second > 0
    assert first.precision in ("fp32", "bf16") and first.jobs >= 1
    # every candidate was measured (and, on several cores, the best one in one process per core)
    assert len(first.measured) >= len(candidates(torch.device("cpu"), 1))
    assert first.tokens_per_second == max(first.measured.values())
    stored = json.loads(cache_file(spec).read_text())
    assert calibration_key(spec, torch.device("cpu")) in stored
    second = ensure_calibration(spec, data, torch.device("cpu"), load=lambda: 99.0)  # cached: the load is not read
    assert second.cached and dataclasses.replace(second, cached=False) == first
    # another model shape is another calibration
    other = dataclasses.replace(spec, model=dataclasses.replace(spec.model, hidden_size=40))
    assert calibration_key(other, torch.device("cpu")) != calibration_key(spec, torch.device("cpu"))


def test_a_busy_cpu_runs_the_defaults_uncached_and_says_why(small_spec, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_CALIBRATION_FILE", str(tmp_path / "calibration.json"))
    spec = small_spec("data.max_train=200")
    cores = available_cores()
    busy = ensure_calibration(spec, load_dataset(spec.data), torch.device("cpu"), load=lambda: 0.8 * cores + 0.5)
    assert busy.busy == pytest.approx(0.8 * cores + 0.5) and busy.measured == {} and busy.seconds == 0
    assert busy.mkldnn and busy.precision == ("bf16" if _native_bf16("cpu") else "fp32")
    assert busy.jobs == cores and busy.threads == 1
    assert "not measured: other work keeps the cores busy (load average" in busy.describe()
    assert not cache_file(spec).exists()  # nothing cached: a later quiet start measures


def _plant(spec, precision: str, mkldnn: bool = True) -> None:
    """A cached calibration that says ``precision``, whatever this machine would measure."""
    key = calibration_key(spec, torch.device("cpu"))
    planted = Calibration(key, precision, mkldnn, 1, 2, 1000.0, {"planted": 1000.0}, 0.1, "2026-01-01T00:00:00+00:00")
    cache_file(spec).parent.mkdir(parents=True, exist_ok=True)
    cache_file(spec).write_text(json.dumps({key: dataclasses.asdict(planted)}))


def _optimize(tmp_path, monkeypatch, cache_dir: str, *sets: str):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    args = ["optimize", "--study", "imdb", "--trials", "1", "--jobs", "1"]
    # a smaller subset than SMALL (the calibration key is the model's shape, not the subset): these
    # tests read which setting the worker used, not what it learned
    for item in [*SMALL, f"data.cache_dir={cache_dir!r}", "train.max_epochs=1", "data.max_train=128",
                 "data.max_valid=64", *sets]:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


def test_the_cached_choice_is_used_and_an_explicit_precision_wins(small_spec, data_cache_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_CALIBRATION_FILE", str(tmp_path / "calibration.json"))
    spec = small_spec("train.max_epochs=1")
    _plant(spec, "bf16")
    auto = _optimize(tmp_path, monkeypatch, data_cache_dir, "name=auto")
    assert auto.exit_code == 0, auto.output
    assert "calibration: bf16, 1 process x 2 threads: 1k tokens/s (planted 1k; cached from 2026-01-01" in auto.output
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    trial = optuna.load_study(study_name="auto", storage=storage).trials[0]
    # a CPU without bf16 instructions never calibrates to bf16; a planted choice runs as fp32 there
    assert TrialRecord.from_trial(trial).outcome.precision == ("bf16" if _native_bf16("cpu") else "fp32")
    explicit = _optimize(tmp_path, monkeypatch, data_cache_dir, "name=explicit", "train.precision=fp32")
    assert explicit.exit_code == 0, explicit.output
    assert "calibration:" not in explicit.output  # both settings explicit: nothing to measure or read
    trial = optuna.load_study(study_name="explicit", storage=storage).trials[0]
    assert TrialRecord.from_trial(trial).outcome.precision == "fp32"


def test_the_calibrated_onednn_choice_reaches_the_worker(small_spec, data_cache_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_CALIBRATION_FILE", str(tmp_path / "calibration.json"))
    _plant(small_spec("train.max_epochs=1"), "fp32", mkldnn=False)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)  # restored after the test: the flag is process-wide
    result = _optimize(tmp_path, monkeypatch, data_cache_dir, "name=nodnn")
    assert result.exit_code == 0, result.output
    assert "calibration: fp32 without oneDNN" in result.output
    assert torch.backends.mkldnn.enabled is False  # the worker (this process, --jobs 1) trained without it
