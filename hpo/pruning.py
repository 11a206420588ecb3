"""DivergencePruner: prune trials that diverge, and defer everything else to a wrapped pruner.

Optuna's pruners see one series per trial, the reported objective (here validation accuracy).
Divergence is about losses and gradients, so this pruner reads the per-epoch lists that the
objective stores as user attributes before it reports: ``val_loss``, ``train_loss`` and
``grad_norm_max`` (the largest pre-clip norm of any layer group). Because it reads them from the
trial, it works the same on every storage and in every worker.

Build pruners from a spec with :func:`make_pruner`.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from hpo.divergence import Verdict, check_divergence
from hpo.spec import DivergenceSpec, PrunerSpec


def verdict_from_attrs(attrs: dict[str, Any], rules: DivergenceSpec) -> Verdict | None:
    """The divergence verdict for a trial's stored per-epoch history."""
    grad_max = [max(epoch.values(), default=0.0) for epoch in attrs.get("grad_norm_max", [])]
    return check_divergence(attrs.get("val_loss", []), attrs.get("train_loss", []), grad_max, rules)


class DivergencePruner(BasePruner):
    """Prune a trial whose losses diverged; otherwise ask the wrapped pruner.

    A trial is diverged (see :mod:`hpo.divergence`) when its validation loss rises more than
    ``rules.threshold`` above its own best after ``rules.warmup_epochs``, when any loss is
    NaN/inf (even during warm-up), or when it never beat chance while its gradients exploded.
    Underperforming but stable trials are the wrapped pruner's business (Median, Hyperband...).

    Example::

        pruner = DivergencePruner(optuna.pruners.MedianPruner(n_startup_trials=5),
                                  DivergenceSpec(threshold=0.5, warmup_epochs=1))
        study = optuna.create_study(direction="maximize", pruner=pruner)
        # in the objective, per epoch:
        #   trial.set_user_attr("val_loss", val_losses)   # and train_loss, grad_norm_max
        #   trial.report(val_accuracy, epoch)
        #   if trial.should_prune(): raise optuna.TrialPruned()
    """

    def __init__(self, wrapped: BasePruner | None = None, rules: DivergenceSpec | None = None) -> None:
        self.wrapped = wrapped
        self.rules = rules or DivergenceSpec()

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if verdict_from_attrs(trial.user_attrs, self.rules) is not None:
            return True
        return self.wrapped is not None and self.wrapped.prune(study, trial)


def make_pruner(pruner: PrunerSpec, divergence: DivergenceSpec, max_epochs: int) -> DivergencePruner:
    """The spec's wrapped pruner inside a :class:`DivergencePruner`."""
    wrapped: BasePruner | None
    if pruner.type == "median":
        wrapped = optuna.pruners.MedianPruner(pruner.n_startup_trials, pruner.n_warmup_steps)
    elif pruner.type == "percentile":
        wrapped = optuna.pruners.PercentilePruner(pruner.percentile, pruner.n_startup_trials, pruner.n_warmup_steps)
    elif pruner.type == "hyperband":
        wrapped = optuna.pruners.HyperbandPruner(
            min_resource=max(1, pruner.n_warmup_steps), max_resource=max_epochs,
            reduction_factor=pruner.reduction_factor,
        )
    else:
        wrapped = None
    return DivergencePruner(wrapped, divergence)
