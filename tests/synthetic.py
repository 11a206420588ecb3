"""Studies with a known structure, written directly through Optuna: scaffolding for tests and benchmarks.

In a known study ``lr_head`` alone decides what happens to a trial: above
:data:`DIVERGE_ABOVE` it diverges (epoch 2 above 1e-2, else epoch 3), below
:data:`PRUNE_BELOW` the median pruner stops it at epoch 2, otherwise it completes; its accuracy
peaks at ``lr_head = 2.5e-3`` and depends on nothing else. Every trial carries the same trial
record as a real one (:mod:`hpo.record`: epoch rows with losses, gradient norms and learning
rates, and an outcome), so every analysis stage can read it.

Example::

    study = optuna.create_study(direction="maximize", storage=storage, study_name="known")
    add_known_trials(study, lr_heads=[1e-3, 8e-3])   # one COMPLETE, one diverged at epoch 3
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo import record
from hpo.spec import LAYER_GROUPS as GROUPS
from hpo.record import EpochRecord, Outcome, Verdict
from hpo.training.schedule import sgdr_factor

DIVERGE_ABOVE = 6e-3
PRUNE_BELOW = 2e-4
BEST_LR = 2.5e-3
DISTRIBUTIONS = {
    "lr_embedding": FloatDistribution(1e-4, 3e-2, log=True),
    "lr_encoder": FloatDistribution(1e-4, 3e-2, log=True),
    "lr_head": FloatDistribution(1e-4, 3e-2, log=True),
    "clip_norm": FloatDistribution(0.1, 10.0, log=True),
    "cycle_len": IntDistribution(1, 3),
    "dropout": FloatDistribution(0.0, 0.5),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
}


def known_accuracy(lr_head: float) -> float:
    """Final validation accuracy of a stable trial: a parabola in log10(lr_head) peaking at 0.92."""
    return 0.92 - 0.08 * (math.log10(lr_head) - math.log10(BEST_LR)) ** 2


def diverged_epoch(lr_head: float) -> int | None:
    if lr_head <= DIVERGE_ABOVE:
        return None
    return 2 if lr_head > 1e-2 else 3


def random_lr_heads(n: int, seed: int = 0) -> list[float]:
    """``n`` log-uniform rates over the spec's lr_head range."""
    rng = random.Random(seed)
    d = DISTRIBUTIONS["lr_head"]
    return [10 ** rng.uniform(math.log10(d.low), math.log10(d.high)) for _ in range(n)]


def add_known_trials(study: optuna.Study, lr_heads: Sequence[float], seed: int = 0, max_epochs: int = 6) -> None:
    """Add one finished trial per ``lr_heads`` value; the other parameters are random noise."""
    rng = random.Random(seed)
    study.add_trials([_trial(lr, rng, max_epochs) for lr in lr_heads])


def _trial(lr_head: float, rng: random.Random, max_epochs: int) -> optuna.trial.FrozenTrial:
    params: dict[str, Any] = {}
    for name, dist in DISTRIBUTIONS.items():
        if name == "lr_head":
            params[name] = lr_head
        elif isinstance(dist, IntDistribution):
            params[name] = rng.randint(dist.low, dist.high)
        elif dist.log:
            params[name] = 10 ** rng.uniform(math.log10(dist.low), math.log10(dist.high))
        else:
            params[name] = rng.uniform(dist.low, dist.high)
    final = known_accuracy(lr_head)
    div_epoch = diverged_epoch(lr_head)
    if div_epoch is not None:
        epochs, state = div_epoch, TrialState.PRUNED
    elif lr_head < PRUNE_BELOW:
        epochs, state = 2, TrialState.PRUNED
    else:
        epochs, state = max_epochs, TrialState.COMPLETE
    acc = [final - 0.02 * (max_epochs - e) for e in range(1, epochs + 1)]
    val_loss = [0.6 - 0.3 * (a - 0.5) / 0.45 for a in acc]
    grad = [{g: 0.5 + 0.1 * e for g in GROUPS} for e in range(1, epochs + 1)]
    if div_epoch is not None:
        acc[-1], val_loss[-1] = 0.5, val_loss[-2] * 2.4
        grad[-1] = {**grad[-1], "head": 40.0}  # the head's gradients blow up as the loss jumps
    lr_groups = {"embedding": params["lr_embedding"], "encoder": params["lr_encoder"], "head": lr_head}
    cycle = params["cycle_len"]
    rows = [
        EpochRecord(
            epoch=e + 1, train_loss=val_loss[e] - 0.05, val_loss=val_loss[e], val_accuracy=acc[e],
            grad_norm_mean=grad[e], grad_norm_max={g: 2 * v for g, v in grad[e].items()}, clipped_fraction=0.1,
            lr={g: r * sgdr_factor(e % cycle, cycle, min_ratio=0.01) for g, r in lr_groups.items()}, seconds=1.0,
        )
        for e in range(epochs)
    ]
    outcome = Outcome(
        verdict=Verdict("jump", div_epoch, 2.4) if div_epoch else None,
        best_epoch=max(range(epochs), key=lambda i: acc[i]) + 1,
        epochs_run=epochs,
        steps_per_epoch=10,
        precision="fp32",
        test_accuracy=round(max(acc) - 0.005, 6),
        pruned_epoch=epochs if state == TrialState.PRUNED and not div_epoch else None,
    )
    attrs = {
        record.LR_GROUPS: lr_groups,
        record.EPOCHS: [r.to_attr() for r in rows],
        record.OUTCOME: outcome.to_attr(),
    }
    return optuna.trial.create_trial(
        state=state,
        value=acc[-1] if state == TrialState.COMPLETE else None,
        params=params,
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        intermediate_values={e + 1: a for e, a in enumerate(acc)},
    )
