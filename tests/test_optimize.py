"""hpo.optimize: the study the CLI runs, from Python, with its outcome; a mistake leaves no study behind."""

from __future__ import annotations

import optuna
import pytest

import hpo
from hpo.spec import apply_overrides, spec_from_dict
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.studies import study_names
from conftest import SMALL


@pytest.fixture
def bag_spec(data_cache_dir, monkeypatch, tmp_path):
    """The default study's small subset with the bag-of-embeddings model of tests/model_factories.py."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    raw = hpo.load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}"]).to_dict()
    raw["space"] = {k: v for k, v in raw["space"].items() if not k.startswith("lr_")}
    raw["space"].update(lr_words={"type": "float", "low": 1e-3, "high": 1.0, "log": True}, lr_out=0.01)
    return spec_from_dict(apply_overrides(raw, ["model.factory=model_factories:bag", "name=bag"]))


def test_optimize_runs_a_spec_and_returns_what_the_study_has(bag_spec, tmp_path):
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    said: list[str] = []
    outcome = hpo.optimize(bag_spec, trials=3, storage=storage, overrides={"train.max_epochs": 1, "model.options.dim": 4},
                           jobs=1, seed=0, log=said.append)
    records = hpo.load_study_records("bag", storage)
    assert len(records) == outcome.finished == outcome.ran == 3 and outcome.failed == 0
    assert outcome.complete + outcome.diverged + outcome.pruned == 3
    assert outcome.complete == sum(r.state == "COMPLETE" for r in records)
    assert outcome.storage == storage and outcome.study == "bag"
    if outcome.best_trial is not None:
        best = records[outcome.best_trial]
        assert outcome.accuracy == best.accuracy == max(r.accuracy for r in records if r.state == "COMPLETE")
        assert outcome.params == best.params and set(best.params) >= {"lr_words", "clip_norm"}
    assert all(set(r.epochs[0].grad_norm_mean) == {"words", "out"} for r in records)
    assert said[0] == f"storage: {storage} (--storage)" and any("finished" in line for line in said)
    # the overrides reached the study: one epoch each, the stored spec says so
    stored = optuna.load_study(study_name="bag", storage=storage).user_attrs
    assert all(r.epochs_run == 1 for r in records) and '"max_epochs": 1' in str(stored).replace("'", '"')
    again = hpo.optimize(bag_spec, trials=3, storage=storage, overrides={"train.max_epochs": 1, "model.options.dim": 4},
                         jobs=1)
    assert again.ran == 0 and again.finished == 3  # the same call continues the study: nothing left to run


@pytest.mark.parametrize("overrides, words", [
    ({"space.lr_out": None, "space.lr_oops": 0.01}, ["groups without a knob: out", "knobs without a group: space.lr_oops"]),
    ({"model.factory": "model_factories:nope"}, ["has no 'nope'"]),
])
def test_a_model_that_does_not_fit_its_knobs_fails_before_the_study_exists(bag_spec, tmp_path, overrides, words):
    raw = apply_overrides(bag_spec.to_dict(), {k: v for k, v in overrides.items() if v is not None})
    for key in [k for k, v in overrides.items() if v is None]:
        del raw["space"][key.split(".")[1]]
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    with pytest.raises(hpo.HpoError) as info:
        hpo.optimize(spec_from_dict(raw), trials=1, storage=storage, jobs=1)
    for word in words:
        assert word in str(info.value)
    assert study_names(open_storage(storage)) == []  # nothing to clean up, nothing that refuses the fixed spec


def test_bad_arguments_are_one_line_errors(bag_spec):
    with pytest.raises(hpo.HpoError, match="jobs = 0 is neither 'auto' nor a whole number >= 1"):
        hpo.optimize(bag_spec, trials=1, jobs=0)
    with pytest.raises(hpo.HpoError, match="trials = 0"):
        hpo.optimize(bag_spec, trials=0)
    with pytest.raises(hpo.HpoError, match="unknown study 'imbd'"):
        hpo.optimize("imbd", trials=1)
