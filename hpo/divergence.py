"""When is a training run diverged? Pure rules over a run's history, shared by training and pruning.

Three failure modes, each with its own ``reason``:

``nan``
    a train or validation loss is NaN or infinite (checked from the first epoch on, warm-up or not;
    Optuna's ThresholdPruner skips NaN during warm-up, we do not).
``jump``
    after ``warmup_epochs``, the validation loss rises more than ``threshold`` (relative) above the
    run's own best so far, and the train loss rose too, by more than ``train_rise`` times the
    chance loss above its own best (0.1: 0.07; ``train_rise = 0`` drops this condition). An
    absolute rise, because an overfit model's train loss doubles from 0.03 to 0.06 at a warm
    restart without anything diverging. The default 0.5 tolerates the 6.5% and 11%
    bumps that SGDR warm restarts cause and catches the 0.315 -> 0.759 (2.4x) jump that this
    project exists for, where train and validation loss jumped together. A validation loss that climbs while the train loss keeps
    falling is overfitting, not divergence: the best epoch is kept and the wrapped pruner judges
    it. Inside an epoch, :class:`StepGuard` catches a train loss that explodes.
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
    best = best_train = math.inf
    for e, val in enumerate(val_loss):
        epoch = e + 1
        train = train_loss[e] if e < len(train_loss) else 0.0
        if not (_finite(val) and _finite(train)):
            return Verdict("nan", epoch)
        if (
            e >= rules.warmup_epochs
            and val > best * (1 + rules.threshold)
            and (rules.train_rise <= 0 or train > best_train + rules.train_rise * CHANCE_LOSS)
        ):
            return Verdict("jump", epoch, val / best)
        best, best_train = min(best, val), min(best_train, train)
        if (
            rules.no_progress_epochs
            and epoch >= rules.no_progress_epochs
            and best >= CHANCE_LOSS * (1 - rules.chance_margin)
            and max(grad_norm_max[: e + 1], default=0.0) > rules.grad_norm_limit
        ):
            return Verdict("no_progress", epoch)
    return None


class StepGuard:
    """Watches per-step train losses and says when they explode, so an epoch can stop early.

    A NaN/inf loss is an explosion at once. Otherwise, after ``warmup_steps``, the loss of the
    last few steps (a fast moving average) must be both worse than chance (``cap``, ln 2) and more
    than ``factor`` times the smaller of the long running mean and ``cap``. Why each part:

    * a fast average, not one step: a well-trained, confident model has the odd batch at 8-9x
      its running mean (seen in real studies at a running mean of 0.11); one batch is noise;
    * worse than chance: a model that still beats guessing has not blown up;
    * the cap on the reference: when the very first steps blow up, the running mean is huge
      itself, yet no healthy classifier sits at several times the chance loss.

    Example::

        guard = StepGuard(factor=5.0, warmup_steps=20)
        for loss in losses:
            hit = guard.update(loss)      # None, ("nan", None) or ("jump", ratio)
            if hit: break
    """

    def __init__(self, factor: float, warmup_steps: int, cap: float = CHANCE_LOSS, beta: float = 0.98, fast_beta: float = 0.7) -> None:
        self.factor = factor
        self.cap = cap
        self.warmup_steps = warmup_steps
        self.beta = beta
        self.fast_beta = fast_beta
        self._ema = 0.0
        self._fast = math.nan
        self._steps = 0

    @property
    def running_mean(self) -> float:
        return self._ema / (1 - self.beta**self._steps) if self._steps else math.nan

    def update(self, loss: float) -> tuple[str, float | None] | None:
        if not math.isfinite(loss):
            return ("nan", None)
        fast = loss if math.isnan(self._fast) else self.fast_beta * self._fast + (1 - self.fast_beta) * loss
        if self._steps >= self.warmup_steps:
            reference = min(self.running_mean, self.cap)
            if fast > self.cap and fast > self.factor * reference:
                return ("jump", fast / reference)
        self._fast = fast
        self._ema = self.beta * self._ema + (1 - self.beta) * loss
        self._steps += 1
        return None
