"""When is a training run diverged? Pure rules over a run's history, shared by training and pruning.

Three failure modes, each with its own ``reason``:

``nan``
    a train or validation loss is NaN or infinite (checked from the first epoch on, warm-up or not;
    Optuna's ThresholdPruner skips NaN during warm-up, we do not).
``jump``
    after ``warmup_epochs``, the validation loss rises more than ``threshold`` (relative) above the
    run's own best so far. The default 0.5 tolerates the 6.5% and 11% bumps that SGDR warm restarts
    cause and catches the 0.315 -> 0.759 (2.4x) jump that this project exists for. Inside an
    epoch, :class:`StepGuard` catches a train loss that explodes far above its running mean.
``no_progress``
    the run never got below chance (``ln 2`` for two balanced classes) by ``no_progress_epochs``
    while its pre-clip gradient norm blew past ``grad_norm_limit``: a learning rate so high that
    clipping keeps the loss finite but the model never learns.

Example::

    check_divergence([0.40, 0.33, 0.79], [0.5, 0.35, 0.8], [2.0, 2.1, 40.0], DivergenceSpec())
    # Verdict(reason='jump', epoch=3, ratio=2.39...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from hpo.spec import DivergenceSpec

CHANCE_LOSS = math.log(2)  # binary cross-entropy of a balanced coin


@dataclass(frozen=True)
class Verdict:
    reason: str  # "jump" | "nan" | "no_progress"
    epoch: int  # 1-based epoch where it was detected
    ratio: float | None = None  # jump: loss / best before it; None for the other reasons

    def describe(self) -> str:
        if self.reason == "jump":
            return f"loss jumped {self.ratio:.2f}x above its best at epoch {self.epoch}"
        if self.reason == "nan":
            return f"loss became NaN/inf at epoch {self.epoch}"
        return f"no progress past chance by epoch {self.epoch} while gradients exploded"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def check_divergence(
    val_loss: Sequence[float],
    train_loss: Sequence[float],
    grad_norm_max: Sequence[float],
    rules: DivergenceSpec,
) -> Verdict | None:
    """The first epoch at which the history shows divergence, or None for a stable run.

    ``grad_norm_max[e]`` is the largest pre-clip gradient norm of any layer group in epoch ``e``.
    """
    best = math.inf
    for e, val in enumerate(val_loss):
        epoch = e + 1
        train = train_loss[e] if e < len(train_loss) else 0.0
        if not (_finite(val) and _finite(train)):
            return Verdict("nan", epoch)
        if e >= rules.warmup_epochs and val > best * (1 + rules.threshold):
            return Verdict("jump", epoch, val / best)
        best = min(best, val)
        if (
            rules.no_progress_epochs
            and epoch >= rules.no_progress_epochs
            and best >= CHANCE_LOSS * (1 - rules.chance_margin)
            and max(grad_norm_max[: e + 1], default=0.0) > rules.grad_norm_limit
        ):
            return Verdict("no_progress", epoch)
    return None


class StepGuard:
    """Watches per-step train losses and says when one explodes, so an epoch can stop early.

    A loss that is NaN/inf, or (after ``warmup_steps`` steps) more than ``factor`` times the
    smaller of the running mean of earlier steps and ``cap`` (the chance loss), is an explosion.
    The cap matters when the very first steps already blow up: the running mean is then huge
    itself, but no healthy classifier sits at several times the chance loss.

    Example::

        guard = StepGuard(factor=5.0, warmup_steps=20)
        for loss in losses:
            hit = guard.update(loss)      # None, ("nan", None) or ("jump", ratio)
            if hit: break
    """

    def __init__(self, factor: float, warmup_steps: int, cap: float = CHANCE_LOSS, beta: float = 0.98) -> None:
        self.factor = factor
        self.cap = cap
        self.warmup_steps = warmup_steps
        self.beta = beta
        self._ema = 0.0
        self._steps = 0

    @property
    def running_mean(self) -> float:
        return self._ema / (1 - self.beta**self._steps) if self._steps else math.nan

    def update(self, loss: float) -> tuple[str, float | None] | None:
        if not math.isfinite(loss):
            return ("nan", None)
        if self._steps >= self.warmup_steps:
            reference = min(self.running_mean, self.cap)
            if loss > self.factor * reference:
                return ("jump", loss / reference)
        self._ema = self.beta * self._ema + (1 - self.beta) * loss
        self._steps += 1
        return None
