"""The trial record: what one trial leaves in its study, typed, named and versioned in one place.

Every reader and writer of a trial's history goes through this module: the objective writes
it, the analysis, the worker's callbacks and the benchmarks read it. A trial stores

``epochs``
    one :class:`EpochRecord` per finished epoch, written as one user attribute after every
    epoch (one storage write per epoch, however many numbers an epoch has);
``outcome``
    its :class:`Outcome` (divergence verdict, best epoch, epochs run, test accuracy...), written
    once when the trial ends;
``lr_groups``, ``checkpoint``, ``worker``, ``resumed_at_epoch``, ``pretrained_encoder``
    the peak learning rate per layer group, its checkpoint key, who ran it, where a re-run
    resumed, and which pretrained encoder it started from.

The study records :data:`SCHEMA_VERSION` in its user attribute ``hpo_schema``. Studies written
before the record existed (schema 1: eight per-epoch lists and flat outcome keys) still load
read-only through :meth:`TrialRecord.from_trial`; :func:`check_schema` refuses to add trials to
them, and refuses any study written by a newer ``hpo``.

This module imports neither Optuna nor PyTorch: the training loop builds :class:`EpochRecord`
rows without knowing where they go, and trial states are compared by name.

Example::

    rows = [EpochRecord(1, 0.52, 0.41, 0.83, {"head": 1.2}, {"head": 3.4}, 0.1, {"head": 3e-3}, 41.0)]
    trial.set_user_attr(EPOCHS, [r.to_attr() for r in rows])       # what the objective does
    record = TrialRecord.from_trial(frozen_trial)                   # what everyone else does
    record.diverged, record.accuracy, [e.val_loss for e in record.epochs]
    best_trial(records), Tally.of(frozen_trials).finished
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from hpo.errors import HpoError

SCHEMA_VERSION = 2
SCHEMA_ATTR = "hpo_schema"  # study user attribute

# Trial user attributes.
EPOCHS = "epochs"
OUTCOME = "outcome"
LR_GROUPS = "lr_groups"
CHECKPOINT = "checkpoint"
WORKER = "worker"
RESUMED_AT = "resumed_at_epoch"
PRETRAINED = "pretrained_encoder"

# Trial states by name (optuna.trial.TrialState.X.name), so this module needs no Optuna.
COMPLETE, PRUNED, FAIL, RUNNING, WAITING = "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"
FINISHED = (COMPLETE, PRUNED)


def layer_groups(num_layers: int = 1, per_layer: bool = False) -> tuple[str, ...]:
    """Names of the model's layer groups, bottom to top: what gets its own learning rate.

    ``("embedding", "encoder", "head")``; with ``per_layer`` each LSTM layer is a group of its
    own: ``("embedding", "encoder1", "encoder2", "head")``.
    """
    if per_layer and num_layers > 1:
        return ("embedding", *(f"encoder{i}" for i in range(1, num_layers + 1)), "head")
    return ("embedding", "encoder", "head")


LAYER_GROUPS = layer_groups()


def lr_param(group: str) -> str:
    """The knob and report column of a group's learning rate: ``head`` -> ``lr_head``."""
    return f"lr_{group}"


@dataclass(frozen=True)
class Verdict:
    """Why, where and how far a trial diverged.

    ``reason`` is ``jump`` (validation loss far above its best, train loss up too), ``nan``
    (a loss became NaN/inf) or ``no_progress`` (never beat chance while gradients exploded).
    ``step`` is set when the step guard stopped the trial inside ``epoch``.
    """

    reason: str
    epoch: int  # 1-based epoch where it was detected
    ratio: float | None = None  # jump: loss / best before it
    step: int | None = None

    def describe(self) -> str:
        where = f"epoch {self.epoch}" + (f", step {self.step}" if self.step is not None else "")
        if self.reason == "jump":
            return f"loss jumped {self.ratio:.2f}x above its best at {where}"
        if self.reason == "nan":
            return f"loss became NaN/inf at {where}"
        return f"no progress past chance by {where} while gradients exploded"


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch of a trial."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    grad_norm_mean: Mapping[str, float]  # per layer group, before clipping, mean over steps
    grad_norm_max: Mapping[str, float]
    clipped_fraction: float
    lr: Mapping[str, float]  # per group, at the epoch's first step
    seconds: float
    tokens_per_second: float = 0.0

    @property
    def max_grad_norm(self) -> float:
        """The largest pre-clip gradient norm of any group in this epoch (the divergence rules' input)."""
        return max(self.grad_norm_max.values(), default=0.0)

    def to_attr(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["tokens_per_second"] = round(self.tokens_per_second)
        return out

    @classmethod
    def from_attr(cls, data: Mapping[str, Any]) -> "EpochRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, written once when it does."""

    verdict: Verdict | None
    best_epoch: int | None
    epochs_run: int  # counting a partial epoch cut short by the step guard
    steps_per_epoch: int
    precision: str
    test_accuracy: float | None = None  # only for a trial that was the study's best when it ended
    pruned_epoch: int | None = None  # the wrapped pruner stopped it after this epoch

    @property
    def diverged(self) -> bool:
        return self.verdict is not None

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attr(cls, data: Mapping[str, Any]) -> "Outcome":
        verdict = data.get("verdict")
        return cls(
            verdict=Verdict(**verdict) if verdict else None,
            best_epoch=data.get("best_epoch"),
            epochs_run=int(data.get("epochs_run") or 0),
            steps_per_epoch=int(data.get("steps_per_epoch") or 0),
            precision=str(data.get("precision") or ""),
            test_accuracy=data.get("test_accuracy"),
            pruned_epoch=data.get("pruned_epoch"),
        )


def epoch_rows(attrs: Mapping[str, Any]) -> list[EpochRecord]:
    """A trial's epochs from its user attributes, schema 2 or 1."""
    rows = attrs.get(EPOCHS)
    if isinstance(rows, list):
        return [EpochRecord.from_attr(r) for r in rows]
    return _v1_epochs(attrs)


def outcome_of(attrs: Mapping[str, Any], epochs: Sequence[EpochRecord] = ()) -> Outcome | None:
    """A trial's outcome from its user attributes (None while it runs), schema 2 or 1."""
    data = attrs.get(OUTCOME)
    if isinstance(data, Mapping):
        return Outcome.from_attr(data)
    if "diverged" in attrs or "epochs_run" in attrs:
        return _v1_outcome(attrs, epochs)
    return None


@dataclass(frozen=True)
class TrialRecord:
    """One trial as every reader sees it: its state, parameters, epochs and outcome.

    ``accuracy`` is the study's convention for a trial's result: a COMPLETE trial's value, a
    PRUNED trial's best reported validation accuracy (Optuna's own evaluators drop pruned
    trials), None when it never reported. ``lrs`` holds the peak rate of every layer group as
    ``lr_<group>``, whether sampled, fixed or derived from ``lr_div``.
    """

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: Mapping[str, Any]
    distributions: Mapping[str, Any]
    accuracy: float | None
    epochs: tuple[EpochRecord, ...]
    outcome: Outcome | None
    lrs: Mapping[str, float]
    user_attrs: Mapping[str, Any] = field(repr=False, default_factory=dict)
    # hpo.telemetry.StepTelemetry: the sampled steps, when the objective hands the record to its
    # listeners as the trial ends; from_trial leaves it None (it lives in an artifact: load_telemetry)
    steps: Any = field(repr=False, compare=False, default=None)

    @classmethod
    def from_trial(cls, trial: Any) -> "TrialRecord":
        """From an ``optuna.trial.FrozenTrial``."""
        attrs = trial.user_attrs
        state = trial.state.name
        epochs = tuple(epoch_rows(attrs))
        if state == COMPLETE:
            accuracy = trial.value
        else:
            reported = [v for v in trial.intermediate_values.values() if v is not None and math.isfinite(v)]
            accuracy = max(reported) if reported else None
        return cls(
            number=trial.number,
            state=state,
            params=trial.params,
            distributions=trial.distributions,
            accuracy=accuracy,
            epochs=epochs,
            outcome=outcome_of(attrs, epochs),
            lrs=_learning_rates(trial.params, attrs),
            user_attrs=attrs,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def pruned(self) -> bool:
        return self.state == PRUNED

    @property
    def diverged(self) -> bool:
        """The one definition: PRUNED with a divergence verdict."""
        return self.state == PRUNED and self.outcome is not None and self.outcome.diverged

    @property
    def verdict(self) -> Verdict | None:
        return self.outcome.verdict if self.diverged and self.outcome else None

    @property
    def diverged_epoch(self) -> int | None:
        verdict = self.verdict
        return verdict.epoch if verdict else None

    @property
    def epochs_run(self) -> int:
        if self.outcome is not None and self.outcome.epochs_run:
            return self.outcome.epochs_run
        return len(self.epochs)

    @property
    def test_accuracy(self) -> float | None:
        return self.outcome.test_accuracy if self.outcome else None

    @property
    def best_epoch(self) -> int | None:
        return self.outcome.best_epoch if self.outcome else None

    def series(self, name: str) -> list[float]:
        """One number per epoch: ``series("val_loss")``."""
        return [getattr(e, name) for e in self.epochs]

    def group_series(self, name: str, group: str) -> list[float]:
        """One group's number per epoch: ``group_series("grad_norm_mean", "head")``."""
        return [getattr(e, name).get(group, math.nan) for e in self.epochs]

    @property
    def groups(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for e in self.epochs:
            seen.update(dict.fromkeys(e.grad_norm_mean))
        return tuple(seen) or tuple(g.removeprefix("lr_") for g in self.lrs)


def best_trial(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The study's best: the COMPLETE trial with the highest value, the earliest on a tie."""
    complete = [r for r in records if r.state == COMPLETE and r.accuracy is not None]
    return max(complete, key=lambda r: (r.accuracy, -r.number)) if complete else None


@dataclass(frozen=True)
class Tally:
    """A study's trials counted by what happened to them, and its best trial."""

    complete: int
    diverged: int
    pruned_other: int
    failed: int
    running: int
    waiting: int
    best: TrialRecord | None

    @property
    def finished(self) -> int:
        return self.complete + self.diverged + self.pruned_other

    @classmethod
    def of(cls, trials: Iterable[Any]) -> "Tally":
        """From FrozenTrials or TrialRecords."""
        records = [t if isinstance(t, TrialRecord) else TrialRecord.from_trial(t) for t in trials]
        count = lambda pred: sum(1 for r in records if pred(r))  # noqa: E731
        return cls(
            complete=count(lambda r: r.state == COMPLETE),
            diverged=count(lambda r: r.diverged),
            pruned_other=count(lambda r: r.pruned and not r.diverged),
            failed=count(lambda r: r.state == FAIL),
            running=count(lambda r: r.state == RUNNING),
            waiting=count(lambda r: r.state == WAITING),
            best=best_trial(records),
        )

    def to_dict(self) -> dict[str, int]:
        return {"complete": self.complete, "diverged": self.diverged, "pruned_other": self.pruned_other,
                "failed": self.failed, "running": self.running, "waiting": self.waiting}


def check_schema(study_name: str, study_attrs: Mapping[str, Any], *, writing: bool) -> int:
    """The study's record schema; an HpoError for one this ``hpo`` cannot read (or extend).

    A study without the attribute but with a stored spec was written by schema 1. A new, empty
    study has neither: the caller records :data:`SCHEMA_VERSION` on it.
    """
    version = study_attrs.get(SCHEMA_ATTR)
    if version is None:
        version = 1 if "spec" in study_attrs else SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise HpoError(
            f"study {study_name!r} was written by a newer hpo (trial record schema {version}, this hpo reads "
            f"up to {SCHEMA_VERSION}): upgrade hpo"
        )
    if writing and version < SCHEMA_VERSION:
        raise HpoError(
            f"study {study_name!r} was written by an older hpo (trial record schema {version}): report, plot, "
            f"importance and replay still read it; to run more trials start a new study with --set name=NEW_NAME"
        )
    return int(version)


# --- schema 1 -------------------------------------------------------------------------------

_V1_LISTS = {
    "train_loss": "train_loss", "val_loss": "val_loss", "val_accuracy": "val_accuracy",
    "grad_norm": "grad_norm_mean", "grad_norm_max": "grad_norm_max", "clipped_fraction": "clipped_fraction",
    "lr": "lr", "epoch_seconds": "seconds",
}


def _v1_epochs(attrs: Mapping[str, Any]) -> list[EpochRecord]:
    lists = {new: list(attrs.get(old) or []) for old, new in _V1_LISTS.items()}
    n = len(lists["val_loss"])
    defaults: dict[str, Any] = {"grad_norm_mean": {}, "grad_norm_max": {}, "lr": {}}

    def at(name: str, i: int) -> Any:
        values = lists[name]
        return values[i] if i < len(values) else defaults.get(name, math.nan)

    return [EpochRecord(i + 1, **{name: at(name, i) for name in lists}) for i in range(n)]


def _v1_outcome(attrs: Mapping[str, Any], epochs: Sequence[EpochRecord]) -> Outcome:
    verdict = None
    if attrs.get("diverged"):
        verdict = Verdict(str(attrs.get("divergence_reason")), int(attrs.get("diverged_epoch") or 0),
                          attrs.get("jump_ratio"), attrs.get("diverged_step"))
    return Outcome(
        verdict=verdict,
        best_epoch=attrs.get("best_epoch"),
        epochs_run=int(attrs.get("epochs_run") or len(epochs)),
        steps_per_epoch=int(attrs.get("steps_per_epoch") or 0),
        precision=str(attrs.get("precision") or ""),
        test_accuracy=attrs.get("test_accuracy"),
    )


def _learning_rates(params: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, float]:
    # A sampled or fixed lr_<group> parameter wins; lr_groups covers rates derived from lr_div.
    rates = {lr_param(group): float(v) for group, v in (attrs.get(LR_GROUPS) or {}).items()}
    for name, value in params.items():
        if name.startswith("lr_") and name != "lr_div":
            rates[name] = float(value)
    return rates
