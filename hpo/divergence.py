"""When is a training run diverged? Pure rules over a run's history, and the one monitor that applies them.

Three failure modes, each with its own ``reason``:

``nan``
    a train or validation loss is NaN or infinite (checked from the first epoch on, warm-up or not;
    Optuna's ThresholdPruner skips NaN during warm-up, we do not).
``jump``
    after ``warmup_epochs``, the validation loss rises more than ``threshold`` (relative) above the
    run's own best so far, and the train loss rose too, by more than ``train_rise`` times the
    chance loss above its own best (0.1: 0.07 for two classes; ``train_rise = 0`` drops this condition). An
    absolute rise, because an overfit model's train loss doubles from 0.03 to 0.06 at a warm
    restart without anything diverging. The default 0.5 tolerates the bumps that SGDR warm
    restarts cause (6-11%) and catches a jump such as 0.315 -> 0.759 (2.4x), where train and
    validation loss rise together. A validation loss that climbs while the train loss keeps
    falling is overfitting, not divergence: the best epoch is kept and the wrapped pruner judges it. Inside an epoch, :class:`StepGuard` catches a train loss that explodes.
``no_progress``
    the run never got below chance (``ln K`` for K balanced classes, ``ln 2`` for two) by ``no_progress_epochs``
    while its pre-clip gradient norm blew past ``grad_norm_limit``: a learning rate so high that
    clipping keeps the loss finite but the model never learns.

Divergence is decided once, in the process that trains: a :class:`DivergenceMonitor` combines
the :class:`StepGuard` (inside an epoch) and :func:`check_divergence` (after each epoch) and
yields one :class:`~hpo.record.Verdict`; the training loop stops on it. For people who use the
rules in their own Optuna objectives, :class:`hpo.pruning.DivergencePruner` applies the same
rules from a study's stored record.

Example::

    check_divergence([0.40, 0.33, 0.79], [0.5, 0.35, 0.8], [2.0, 2.1, 40.0], DivergenceSpec())
    # Verdict(reason='jump', epoch=3, ratio=2.39...)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from hpo.record import Verdict
from hpo.spec.schema import DivergenceSpec

CHANCE_LOSS = math.log(2)  # binary cross-entropy of a balanced coin


def chance_loss(num_classes: int = 2) -> float:
    """The cross-entropy of guessing evenly among ``num_classes`` classes: ln K (ln 2 = 0.693 for two).

    What a model that has learnt nothing scores; the rules measure "no progress" and a loss rise
    against it, so they judge a 4-class run (ln 4 = 1.386) as they judge a binary one.
    """
    return math.log(max(num_classes, 2))


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def check_divergence(
    val_loss: Sequence[float],
    train_loss: Sequence[float],
    grad_norm_max: Sequence[float],
    rules: DivergenceSpec,
    num_classes: int = 2,
) -> Verdict | None:
    """The first epoch at which the history shows divergence, or None for a stable run.

    ``num_classes`` sets the chance loss (:func:`chance_loss`) the rules measure against.

    ``grad_norm_max[e]`` is the largest pre-clip gradient norm of any layer group in epoch ``e``.
    With ``rules.confirm_epochs = k`` a jump is returned (with its own epoch) only once the
    validation loss is still above the threshold k epochs later; one that comes back first was a
    bump, and the run's best moves on as if it had not happened.
    """
    chance = chance_loss(num_classes)
    best = best_train = math.inf
    pending: tuple[int, float, float] | None = None  # a jump waiting for confirmation: (epoch, ratio, best before it)
    for e, val in enumerate(val_loss):
        epoch = e + 1
        train = train_loss[e] if e < len(train_loss) else 0.0
        if not (_finite(val) and _finite(train)):
            return Verdict("nan", epoch)
        if pending is not None:
            jumped, ratio, before = pending
            if val <= before * (1 + rules.threshold):
                pending = None  # back within the threshold: a bump
            elif epoch - jumped >= rules.confirm_epochs:
                return Verdict("jump", jumped, ratio)
        elif (
            e >= rules.warmup_epochs
            and val > best * (1 + rules.threshold)
            and (rules.train_rise <= 0 or train > best_train + rules.train_rise * chance)
        ):
            if not rules.confirm_epochs:
                return Verdict("jump", epoch, val / best)
            pending = (epoch, val / best, best)
        best, best_train = min(best, val), min(best_train, train)
        if (
            rules.no_progress_epochs
            and epoch >= rules.no_progress_epochs
            and best >= chance * (1 - rules.chance_margin)
            and max(grad_norm_max[: e + 1], default=0.0) > rules.grad_norm_limit
        ):
            return Verdict("no_progress", epoch)
    return None


def recovered(val_loss: Sequence[float | None], cut_epoch: int, verdict: Verdict, rules: DivergenceSpec,
              num_classes: int = 2) -> bool | None:
    """Whether a curve judged diverged at ``cut_epoch`` (1-based) came back later; None: it ends there.

    ``jump`` / ``nan``: its last validation loss is finite and within the threshold of its best.
    ``no_progress``: it got below chance after all (a flat curve at chance is dead, not back).
    """
    if len(val_loss) <= cut_epoch:
        return None
    finite = [x for x in val_loss if x is not None and math.isfinite(x)]
    if not finite:
        return False
    if verdict.reason == "no_progress":
        return min(finite) < chance_loss(num_classes) * (1 - rules.chance_margin)
    last = val_loss[-1]
    return last is not None and math.isfinite(last) and last <= min(finite) * (1 + rules.threshold)


class StepGuard:
    """Watches per-step train losses and says when they explode, so an epoch can stop early.

    A NaN/inf loss is an explosion at once. Otherwise, after ``warmup_steps``, the loss of the
    last few steps (a fast moving average) must be both worse than chance (``cap``, ln K) and more
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


class DivergenceMonitor:
    """Decides, during training, whether a run has diverged: the step guard and the epoch rules.

    The training loop calls :meth:`on_step` with train losses inside an epoch (the guard judges
    only after the first epoch, NaN/inf at once) and :meth:`on_epoch` after each epoch. Either
    returns a :class:`~hpo.record.Verdict` the first time the run diverges; the loop stops there.
    The monitor's state travels in checkpoints, so a resumed run judges as the uninterrupted one.

    ``sample_every``: the guard sees every n-th step (reading a loss on CUDA forces a sync), and
    its warm-up counts the samples it sees.

    Example::

        monitor = DivergenceMonitor(DivergenceSpec(), steps_per_epoch=312)
        verdict = monitor.on_step(epoch=2, step=17, loss=4.1)           # None, or Verdict(..., step=17)
        verdict = monitor.on_epoch(epoch=2, train_loss=0.4, val_loss=0.9, max_grad_norm=3.0)
    """

    def __init__(self, rules: DivergenceSpec, steps_per_epoch: int, sample_every: int = 1, num_classes: int = 2) -> None:
        self.rules = rules
        self.num_classes = num_classes  # chance is ln K
        self.sample_every = sample_every
        self.verdict: Verdict | None = None  # the first one; later ones are not news
        # The guard judges explosions only after the first epoch (NaN/inf at once): a high head
        # rate can spike the loss to 3x chance in the first steps and still recover
        # (search_efficiency: lr_head 0.26, stopped at epoch 1, reached 0.816 re-run without it).
        warmup = max(rules.step_warmup, math.ceil(steps_per_epoch / sample_every))
        self.guard = StepGuard(rules.step_explosion, warmup, cap=chance_loss(num_classes))
        self.val_loss: list[float] = []
        self.train_loss: list[float] = []
        self.max_grad_norm: list[float] = []

    def wants(self, step: int) -> bool:
        """Whether :meth:`on_step` wants this step's loss (so the loop reads it only then)."""
        return step % self.sample_every == 0

    def on_step(self, epoch: int, step: int, loss: float) -> Verdict | None:
        hit = self.guard.update(loss)
        return self._first(Verdict(hit[0], epoch, hit[1], step) if hit else None)

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float, max_grad_norm: float) -> Verdict | None:
        self.val_loss.append(val_loss)
        self.train_loss.append(train_loss)
        self.max_grad_norm.append(max_grad_norm)
        # A confirmed jump carries the epoch it jumped at, up to confirm_epochs before this one.
        verdict = check_divergence(self.val_loss, self.train_loss, self.max_grad_norm, self.rules, self.num_classes)
        return self._first(verdict)

    def stops(self, verdict: Verdict) -> bool:
        """Whether training stops on ``verdict``: always for NaN, else unless the rules only record."""
        return self.rules.action == "stop" or verdict.reason == "nan"

    def _first(self, verdict: Verdict | None) -> Verdict | None:
        if verdict is None or self.verdict is not None:
            return None
        self.verdict = verdict
        return verdict

    def state_dict(self) -> dict[str, Any]:
        return {"guard": dict(vars(self.guard)), "val_loss": list(self.val_loss),
                "train_loss": list(self.train_loss), "max_grad_norm": list(self.max_grad_norm),
                "verdict": dataclasses.asdict(self.verdict) if self.verdict else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self.guard).update(state["guard"])
        self.val_loss, self.train_loss = list(state["val_loss"]), list(state["train_loss"])
        self.max_grad_norm = list(state["max_grad_norm"])
        self.verdict = Verdict(**state["verdict"]) if state.get("verdict") else None
