"""A study written by an earlier hpo still loads, reports and resumes (tests/data/study-v1/README.txt).

The fixture was made before the package moved into layer folders: finished trials, a FAILed trial
with its epoch-1 checkpoint, and the WAITING re-run of it. Resuming must pick up that re-run from
the checkpoint, with the same checkpoint key, and keep the epoch row the first run wrote.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import main
from hpo.record import TrialRecord

FIXTURE = Path(__file__).parent / "data" / "study-v1"
SETS = [
    "data.max_train=6000", "data.max_valid=300", "data.max_test=300", "data.max_len=400", "data.max_size=1000",
    "model.embedding_dim=8", "model.hidden_size=8", "train.max_epochs=3", "sampler.n_startup_trials=2",
    "pruner.n_startup_trials=2", "train.precision=fp32", "train.threads=1",
]


@pytest.fixture
def old_study(tmp_path: Path) -> str:
    """A copy of the fixture whose artifact folder is this test's (a study moved to another machine)."""
    db = tmp_path / "study.db"
    shutil.copy(FIXTURE / "study.sqlitedb", db)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for f in (FIXTURE / "artifacts").iterdir():
        shutil.copy(f, artifacts / f.name.removesuffix(".fixture"))
    with sqlite3.connect(db) as conn:
        changed = conn.execute("UPDATE study_user_attributes SET value_json = ? WHERE key = 'artifact_dir'",
                               (json.dumps(str(artifacts)),)).rowcount
    assert changed == 1
    return f"sqlite:///{db}"


def test_an_old_study_reports_what_optuna_stored(old_study: str) -> None:
    study = optuna.load_study(study_name="imdb", storage=old_study)
    best = study.best_trial
    result = CliRunner().invoke(main, ["report", "--study", "imdb", "--storage", old_study, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["best"]["number"] == best.number
    assert report["best"]["val_accuracy"] == pytest.approx(best.value)
    states = [t.state.name for t in study.get_trials()]
    assert report["states"]["complete"] == states.count("COMPLETE")
    assert report["states"]["failed"] == states.count("FAIL") == 1
    assert report["states"]["waiting"] == states.count("WAITING") == 1


def test_an_old_study_resumes_its_interrupted_trial_from_the_checkpoint(old_study: str, data_cache_dir: str) -> None:
    before = optuna.load_study(study_name="imdb", storage=old_study)
    failed = next(t for t in before.get_trials() if t.state.name == "FAIL")
    waiting = next(t for t in before.get_trials() if t.state.name == "WAITING")
    sets = [a for s in [*SETS, f"data.cache_dir={data_cache_dir!r}"] for a in ("--set", s)]
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in before.get_trials())
    result = CliRunner().invoke(main, ["optimize", "--study", "imdb", "--trials", str(finished + 1), "--jobs", "1",
                                       "--storage", old_study, *sets])
    assert result.exit_code == 0, result.output
    assert f"trial {waiting.number}: re-run of interrupted trial {failed.number}, same parameters; resumes at epoch 2" \
        in result.output
    rerun = TrialRecord.from_trial(optuna.load_study(study_name="imdb", storage=old_study).trials[waiting.number])
    first = TrialRecord.from_trial(failed)
    assert rerun.finished
    assert rerun.epochs[0] == first.epochs[0]  # the epoch the first run finished is kept, not redone
    assert [e.epoch for e in rerun.epochs] == list(range(1, len(rerun.epochs) + 1))
