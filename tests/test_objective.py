"""The objective on a real (small) study: what ends COMPLETE, what ends PRUNED, and what is recorded."""

from __future__ import annotations

import optuna
import pytest
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from hpo.data import load_dataset
from hpo.search.objective import Objective
from hpo.record import TrialRecord
from hpo.spec import load_spec
from conftest import SMALL

STABLE = [
    "space.lr_embedding=0.002", "space.lr_encoder=0.002", "space.lr_head=0.002", "space.clip_norm=1.0",
    "space.cycle_len=1", "space.dropout=0.1", "space.weight_decay=0.0001", "train.max_epochs=3",
]


class _PruneFromEpoch(BasePruner):
    """Says "prune" for every report from ``epoch`` on: a wrapped pruner at its most aggressive."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.epoch


def _run_one(small_spec, tmp_path, pruner: BasePruner) -> FrozenTrial:
    spec = small_spec(*STABLE)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.set_user_attr("artifact_dir", str(tmp_path))
    study.optimize(Objective(spec, load_dataset(spec.data)), n_trials=1)
    return study.trials[0]


def test_a_trial_that_ran_every_epoch_completes_even_below_the_median(small_spec, tmp_path) -> None:
    trial = _run_one(small_spec, tmp_path, _PruneFromEpoch(3))  # would prune only after the last epoch
    assert trial.state == TrialState.COMPLETE
    r = TrialRecord.from_trial(trial)
    assert r.epochs_run == 3 and [e.epoch for e in r.epochs] == [1, 2, 3]
    assert trial.value == max(r.series("val_accuracy"))
    assert 0.0 <= r.test_accuracy <= 1.0  # the study's best so far: evaluated on test


@pytest.fixture(scope="module")
def pruned_after_epoch_2(data_cache_dir, tmp_path_factory):
    """One trial pruned after epoch 2 of 3: (its study, the folder store it wrote to); two tests read it."""
    folder = tmp_path_factory.mktemp("pruned")
    spec = load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", *STABLE])
    study = optuna.create_study(direction="maximize", pruner=_PruneFromEpoch(2))
    study.set_user_attr("artifact_dir", str(folder))
    study.optimize(Objective(spec, load_dataset(spec.data)), n_trials=1)
    return study, folder


def test_a_pruned_trial_stops_at_the_epoch_it_was_pruned(pruned_after_epoch_2) -> None:
    study, _ = pruned_after_epoch_2
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    r = TrialRecord.from_trial(trial)
    assert r.epochs_run == 2 and len(r.epochs) == 2 and r.outcome.pruned_epoch == 2
    assert not r.diverged
    assert r.test_accuracy is None  # it can never be the reported best
    if hasattr(trial, "constraints"):  # Optuna 5: pruned as underperforming is still feasible
        assert trial.constraints == {"diverged": 0.0}


def test_a_trial_stores_its_step_telemetry_as_one_artifact(pruned_after_epoch_2) -> None:
    from hpo.storage.artifacts.stores import FolderStore
    from hpo.analysis.steps import load_telemetry

    study, folder = pruned_after_epoch_2  # pruned after epoch 2 of 3
    trial = study.trials[0]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert [m.filename for m in metas] == ["trial-0-steps.npz"]
    t = load_telemetry(trial, study._storage, FolderStore(folder))
    assert t.groups == ("embedding", "encoder", "head") and set(t.epoch.tolist()) == {1, 2}
    assert t.meta["lrs"]["head"] == 0.002 and (folder / metas[0].artifact_id).stat().st_size < 20_000
