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


def test_successive_halving_and_hyperband_start_after_the_warmup() -> None:
    for kind in ("successive_halving", "hyperband"):
        pruner = make_pruner(PrunerSpec(type=kind, warmup_epochs=1, reduction_factor=2), max_epochs=3)
        at = _pruned_at(pruner, [0.5, 0.5, 0.5])
        assert at is None or at >= 2, kind
    assert isinstance(make_pruner(PrunerSpec(type="none"), 3), optuna.pruners.NopPruner)
