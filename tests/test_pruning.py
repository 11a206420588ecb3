"""The study's wrapped pruner: epochs are 1-based steps, and warm-up counts whole epochs."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from hpo.pruning import make_pruner
from hpo.spec import PrunerSpec


def _pruned_at(pruner: optuna.pruners.BasePruner, curve: list[float]) -> int | None:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(2):  # two good complete trials: the median to beat
        good = study.ask()
        for epoch in (1, 2, 3):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    return _run(study, curve)


def _run(study: optuna.Study, curve: list[float]) -> int | None:
    """The epoch a trial reporting ``curve`` is pruned at; None when it completes."""
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch
    study.tell(trial, max(curve))
    return None


@pytest.mark.parametrize("kind", ["median", "percentile"])
def test_warmup_epochs_delay_pruning_by_whole_epochs(kind: str) -> None:
    bad = [0.5, 0.5, 0.5]
    assert _pruned_at(make_pruner(PrunerSpec(type=kind, n_startup_trials=1, warmup_epochs=0), 3), bad) == 1
    assert _pruned_at(make_pruner(PrunerSpec(type=kind, n_startup_trials=1, warmup_epochs=1), 3), bad) == 2
    assert _pruned_at(make_pruner(PrunerSpec(type=kind, n_startup_trials=1, warmup_epochs=2), 3), bad) == 3


@pytest.mark.parametrize("kind, warmup, first", [("successive_halving", 0, 1), ("successive_halving", 1, 2),
                                                 ("hyperband", 1, 2)])
def test_successive_halving_and_hyperband_prune_a_bad_trial_first_after_the_warmup(kind: str, warmup: int,
                                                                                  first: int) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0),
                                pruner=make_pruner(PrunerSpec(type=kind, warmup_epochs=warmup, reduction_factor=2), 3))
    assert [_run(study, [0.9, 0.9, 0.9]) for _ in range(4)] == [None] * 4  # good trials finish
    assert _run(study, [0.1, 0.1, 0.1]) == first  # a bad one is stopped at the first rung after the warm-up


def test_no_pruner_is_optunas_nop_pruner() -> None:
    assert isinstance(make_pruner(PrunerSpec(type="none"), 3), optuna.pruners.NopPruner)
