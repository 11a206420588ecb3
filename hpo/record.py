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
    resumed, and which pretrained encoder it started from;
``weights``
    the artifact id its best-epoch weights were written to when it entered the study's top
    ``artifacts.keep_best`` (written before the file; the file goes once it drops out).

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
from hpo.spec.files import spec_from_dict
from hpo.spec.knobs import lr_param
from hpo.spec.schema import Spec

SCHEMA_VERSION = 2

# Study user attributes.
SCHEMA_ATTR = "hpo_schema"
SPEC_ATTR = "spec"  # the resolved spec the study was created with, as plain data
UID_ATTR = "uid"  # tells apart studies that reuse a name after one was deleted (checkpoint keys)
ARTIFACT_DIR_ATTR = "artifact_dir"  # a folder artifact store's absolute path
ARTIFACT_STORE_ATTR = "artifact_store"  # any other store: "database", or "s3://bucket/prefix"
CLASSES_ATTR = "classes"  # {"names": [...], "counts": {"train": [...], "valid": [...], "test": [...]}}

# Trial user attributes.
EPOCHS = "epochs"
OUTCOME = "outcome"
LR_GROUPS = "lr_groups"
CHECKPOINT = "checkpoint"
WORKER = "worker"
RESUMED_AT = "resumed_at_epoch"
PRETRAINED = "pretrained_encoder"
WEIGHTS = "weights"
# What one run of a trial did (where it resumed, which worker ran it): a re-run's queued copy starts
# without them and writes its own, while the rest (its checkpoint key above all) passes down the chain.
RUN_ATTRS = (RESUMED_AT, WORKER)

# Trial states by name (optuna.trial.TrialState.X.name), so this module needs no Optuna.
COMPLETE, PRUNED, FAIL, RUNNING, WAITING = "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"
FINISHED = (COMPLETE, PRUNED)


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
    # per class (by name), the share of its validation rows predicted right; empty in older records
    val_class_accuracy: Mapping[str, float] = field(default_factory=dict)
    val_macro_f1: float | None = None  # mean of the per-class F1 scores on validation; None in older records

    @property
    def max_grad_norm(self) -> float:
        """The largest pre-clip gradient norm of any group in this epoch (the divergence rules' input)."""
        return max(self.grad_norm_max.values(), default=0.0)

    def to_attr(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["tokens_per_second"] = round(self.tokens_per_second)
        out["val_class_accuracy"] = {k: round(v, 6) for k, v in self.val_class_accuracy.items()}
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
    checkpoint: str | None = None  # its checkpoint key; a re-run inherits the key of the trial it re-runs
    worker: str | None = None  # "host:pid" of the process that ran it
    resumed_at: int | None = None  # the epoch a re-run resumed at from its checkpoint
    pretrained: Mapping[str, Any] | None = None  # the pretrained encoder it started from (key, perplexity...)
    weights: str | None = None  # the artifact id of its kept best-epoch weights (they may be gone since)
    # hpo.training.telemetry.StepTelemetry: the sampled steps, when the objective hands the record to
    # its listeners as the trial ends; from_trial leaves it None (it lives in an artifact)
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
            checkpoint=attrs.get(CHECKPOINT),
            worker=attrs.get(WORKER),
            resumed_at=attrs.get(RESUMED_AT),
            pretrained=attrs.get(PRETRAINED),
            weights=attrs.get(WEIGHTS),
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

    def rates_text(self, exclude: Iterable[str] = ()) -> str:
        """``lr_embedding 1e-3, lr_head 2.9e-1``: the trial's group rates, as a person writes them."""
        return rates_text(self.lrs, exclude)

    def group_series(self, name: str, group: str) -> list[float]:
        """One group's number per epoch: ``group_series("grad_norm_mean", "head")``."""
        return [getattr(e, name).get(group, math.nan) for e in self.epochs]

    @property
    def groups(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for e in self.epochs:
            seen.update(dict.fromkeys(e.grad_norm_mean))
        return tuple(seen) or tuple(g.removeprefix("lr_") for g in self.lrs)


def rate_text(x: float) -> str:
    """0.0025 -> '2.5e-3', 0.01 -> '1e-2', 0.5 -> '5e-1': the way learning rates are written here."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    exp = math.floor(math.log10(abs(x)))
    mantissa = round(x / 10**exp, 1)
    if abs(mantissa) >= 10:
        mantissa, exp = mantissa / 10, exp + 1
    return f"{mantissa:g}" if exp == 0 else f"{mantissa:g}e{exp}"


def rates_text(lrs: Mapping[str, float], exclude: Iterable[str] = ()) -> str:
    """``lr_embedding 1e-3, lr_head 2.9e-1``: rates by name, in name order (the one way they are shown)."""
    skip = set(exclude)
    return ", ".join(f"{name} {rate_text(value)}" for name, value in sorted(lrs.items()) if name not in skip)


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
    return StudyRecord.from_attrs(study_name, study_attrs).check(writing=writing)


# --- writing a live trial's record (the objective, the worker, the pruner adapter) ------------


def write_epochs(trial: Any, rows: Sequence[EpochRecord]) -> None:
    """Every epoch so far, as one attribute: one storage write per epoch however many numbers it has."""
    trial.set_user_attr(EPOCHS, [r.to_attr() for r in rows])


def write_outcome(trial: Any, outcome: Outcome) -> None:
    trial.set_user_attr(OUTCOME, outcome.to_attr())


def write_lr_groups(trial: Any, lrs: Mapping[str, float]) -> None:
    """The peak rate per layer group, derived ones (``lr_div``) included."""
    trial.set_user_attr(LR_GROUPS, dict(lrs))


def write_checkpoint(trial: Any, key: str) -> None:
    trial.set_user_attr(CHECKPOINT, key)


def write_worker(trial: Any, worker: str) -> None:
    trial.set_user_attr(WORKER, worker)


def write_resumed_at(trial: Any, epoch: int) -> None:
    trial.set_user_attr(RESUMED_AT, epoch)


def write_pretrained(trial: Any, encoder: Mapping[str, Any]) -> None:
    trial.set_user_attr(PRETRAINED, dict(encoder))


def write_weights(trial: Any, artifact_id: str) -> None:
    trial.set_user_attr(WEIGHTS, artifact_id)


def weights_of(trial: Any) -> str | None:
    """Where a live or frozen trial's kept weights were written (None: never; they may be gone since)."""
    return trial.user_attrs.get(WEIGHTS)


def checkpoint_of(trial: Any) -> str | None:
    """A live or frozen trial's checkpoint key (a queued re-run carries its predecessor's)."""
    return trial.user_attrs.get(CHECKPOINT)


def epochs_of(trial: Any) -> list[EpochRecord]:
    """A live or frozen trial's epochs so far."""
    return epoch_rows(trial.user_attrs)


# --- the study's record --------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRecord:
    """What hpo keeps on a study: its schema, the spec it was created with, its uid, its artifact store.

    ``spec`` is the stored plain data (what a worker's spec is compared with); :meth:`parsed_spec`
    reads it back as a :class:`~hpo.spec.Spec`.
    """

    name: str
    schema: int | None
    spec: Mapping[str, Any] | None
    uid: str | None
    artifact_dir: str | None
    artifact_store: str | None
    classes: tuple[str, ...] = ()  # in label-id order; empty for studies made before they were stored
    class_counts: Mapping[str, Sequence[int]] = field(default_factory=dict)  # split -> rows per class

    @classmethod
    def of(cls, study: Any) -> "StudyRecord":
        """From an ``optuna.Study`` (one read of its attributes)."""
        return cls.from_attrs(study.study_name, study.user_attrs)

    @classmethod
    def from_attrs(cls, name: str, attrs: Mapping[str, Any]) -> "StudyRecord":
        spec = attrs.get(SPEC_ATTR)
        classes = attrs.get(CLASSES_ATTR) if isinstance(attrs.get(CLASSES_ATTR), Mapping) else {}
        return cls(name, attrs.get(SCHEMA_ATTR), spec if isinstance(spec, Mapping) else None, attrs.get(UID_ATTR),
                   attrs.get(ARTIFACT_DIR_ATTR), attrs.get(ARTIFACT_STORE_ATTR),
                   tuple(classes.get("names") or ()), dict(classes.get("counts") or {}))

    @property
    def num_classes(self) -> int:
        """K; 2 for a study made before classes were stored (they were all binary)."""
        return len(self.classes) or 2

    @property
    def key(self) -> str:
        """What names the study's checkpoints: its uid (a study made before uids: its name)."""
        return self.uid or self.name

    @property
    def artifact_location(self) -> str | None:
        """The recorded store: a folder, ``database`` or ``s3://...``; None before one is recorded."""
        return self.artifact_store or self.artifact_dir

    def parsed_spec(self) -> Spec | None:
        """The stored spec as a Spec (schema 1's renamed keys translated); None when none is stored."""
        if self.spec is None:
            return None
        return spec_from_dict(_v1_spec(self.spec))

    def check(self, *, writing: bool) -> int:
        """The schema version; an HpoError when this hpo cannot read the study, or (``writing``) extend it."""
        version = self.schema
        if version is None:
            version = 1 if self.spec is not None else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise HpoError(
                f"study {self.name!r} was written by a newer hpo (trial record schema {version}, this hpo reads "
                f"up to {SCHEMA_VERSION}): upgrade hpo"
            )
        if writing and version < SCHEMA_VERSION:
            raise HpoError(
                f"study {self.name!r} was written by an older hpo (trial record schema {version}): report, plot, "
                f"importance and replay still read it; to run more trials start a new study with --set name=NEW_NAME"
            )
        return int(version)


def write_schema(study: Any) -> None:
    study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION)


def write_spec(study: Any, spec: Mapping[str, Any]) -> None:
    study.set_user_attr(SPEC_ATTR, dict(spec))


def write_classes(study: Any, classes: Sequence[str], counts: Mapping[str, Sequence[int]]) -> None:
    """The study's classes in label-id order and their rows per split, as its data loaded them."""
    study.set_user_attr(CLASSES_ATTR, {"names": list(classes), "counts": {k: list(v) for k, v in counts.items()}})


def write_uid(study: Any, uid: str) -> None:
    study.set_user_attr(UID_ATTR, uid)


def write_artifact_location(study: Any, location: str, *, folder: bool) -> None:
    """A folder store under ``artifact_dir`` (as every study made before database stores), others under ``artifact_store``."""
    study.set_user_attr(ARTIFACT_DIR_ATTR if folder else ARTIFACT_STORE_ATTR, location)


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


def _v1_spec(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    pruner = raw.get("pruner")
    if not isinstance(pruner, Mapping) or "n_warmup_steps" not in pruner:
        return raw
    # schema 1 counted 1-based epochs as steps: n_warmup_steps 1 meant no warm-up
    table = {k: v for k, v in pruner.items() if k != "n_warmup_steps"}
    table["warmup_epochs"] = max(0, int(pruner["n_warmup_steps"]) - 1)
    return {**raw, "pruner": table}


def _learning_rates(params: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, float]:
    # A sampled or fixed lr_<group> parameter wins; lr_groups covers rates derived from lr_div.
    rates = {lr_param(group): float(v) for group, v in (attrs.get(LR_GROUPS) or {}).items()}
    for name, value in params.items():
        if name.startswith("lr_") and name != "lr_div":
            rates[name] = float(value)
    return rates
