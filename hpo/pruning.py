"""Pruners: the study's wrapped pruner, and the divergence rules as a pruner for your own objectives.

In an ``hpo`` study divergence is decided where training happens (the objective's
:class:`~hpo.divergence.DivergenceMonitor`), so the study's pruner is the wrapped one alone
(median by default): it judges underperforming trials from the reported validation accuracy.
:func:`make_pruner` builds it from the spec; a step is an epoch, reported 1-based, and
``warmup_epochs`` epochs pass before it may prune.

:class:`DivergencePruner` is the adapter for people who use the divergence rules in their own
Optuna objectives: the objective appends each epoch's losses with :func:`record_epoch` (the
trial record's ``epochs`` attribute), reports as usual, and the pruner prunes a diverged trial
or else asks the pruner it wraps.

Example::

    study = optuna.create_study(direction="maximize",
                                pruner=DivergencePruner(optuna.pruners.MedianPruner(), DivergenceSpec()))

    def objective(trial):
        for epoch in range(1, 11):
            train_loss, val_loss, accuracy = ...      # one epoch of your training
            record_epoch(trial, epoch, train_loss, val_loss, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy
"""

from __future__ import annotations

import math
from typing import Mapping

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from hpo import record
from hpo.divergence import check_divergence
from hpo.record import EpochRecord, Verdict
from hpo.spec.schema import DivergenceSpec, PrunerSpec


def record_epoch(
    trial: optuna.Trial,
    epoch: int,
    train_loss: float,
    val_loss: float,
    val_accuracy: float = math.nan,
    grad_norm_max: Mapping[str, float] | None = None,
) -> None:
    """Append one epoch to ``trial``'s record, where :class:`DivergencePruner` reads it.

    ``grad_norm_max`` (the largest pre-clip gradient norm per layer group) feeds the
    ``no_progress`` rule; without it that rule never fires.
    """
    rows = record.epochs_of(trial)
    norms = dict(grad_norm_max or {})
    rows.append(EpochRecord(epoch, float(train_loss), float(val_loss), float(val_accuracy), norms, norms, 0.0, {}, 0.0))
    record.write_epochs(trial, rows)


def verdict_of(trial: FrozenTrial, rules: DivergenceSpec, num_classes: int = 2) -> Verdict | None:
    """The divergence verdict for a trial's recorded epochs (chance: ln ``num_classes``)."""
    rows = record.epochs_of(trial)
    return check_divergence([r.val_loss for r in rows], [r.train_loss for r in rows],
                            [r.max_grad_norm for r in rows], rules, num_classes)


class DivergencePruner(BasePruner):
    """Prune a trial whose recorded losses diverged; otherwise ask the wrapped pruner.

    A trial is diverged (see :mod:`hpo.divergence`) when its validation loss rises more than
    ``rules.threshold`` above its own best after ``rules.warmup_epochs`` while its train loss
    rose too, when any loss is NaN/inf, or when it never beat chance while its gradients
    exploded. Underperforming but stable trials are the wrapped pruner's business.

    It reads the epochs that :func:`record_epoch` appended, so it works on every storage and in
    every worker. (Inside ``hpo`` the objective's monitor decides instead, during training.)
    """

    def __init__(self, wrapped: BasePruner | None = None, rules: DivergenceSpec | None = None,
                 num_classes: int = 2) -> None:
        self.wrapped = wrapped
        self.rules = rules or DivergenceSpec()
        self.num_classes = num_classes  # the chance loss the rules measure against is ln K

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if verdict_of(trial, self.rules, self.num_classes) is not None:
            return True
        return self.wrapped is not None and self.wrapped.prune(study, trial)


def make_pruner(spec: PrunerSpec, max_epochs: int) -> BasePruner:
    """The spec's wrapped pruner, with epochs as 1-based steps.

    Optuna's pruners may act at step ``s`` once ``s >= n_warmup_steps`` (or ``min_resource``),
    so ``warmup_epochs`` = k lets them first act after epoch k + 1.
    """
    first = spec.warmup_epochs + 1
    if spec.type == "median":
        return optuna.pruners.MedianPruner(spec.n_startup_trials, first)
    if spec.type == "percentile":
        return optuna.pruners.PercentilePruner(spec.percentile, spec.n_startup_trials, first)
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=spec.reduction_factor)
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(max_epochs, first),
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()
