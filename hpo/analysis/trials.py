"""A study's trials as plain records: the one input every analysis stage shares.

A :class:`TrialRecord` holds what the analysis needs from one finished trial, with the study's
conventions applied once: a PRUNED trial's accuracy is the best value it reported (Optuna's own
evaluators drop pruned trials), a diverged trial is a PRUNED one with ``diverged = True``, and
the learning rate of each layer group is read from its parameter (``lr_head``) or, when the spec
derived it (``lr_div``), from the ``lr_groups`` attribute.

Example::

    data = load_study_data("imdb", open_storage("sqlite:///hpo.db"))
    data.finished[0].accuracy      # best validation accuracy, pruned trials included
    data.max_epochs                # from the stored spec, else the longest trial
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.study import load_existing

# Study user attributes where the resolved spec may be stored (see hpo/study.py).
_SPEC_ATTRS = ("spec",)


@dataclass(frozen=True)
class TrialRecord:
    """One COMPLETE or PRUNED trial, as the analysis sees it."""

    number: int
    state: TrialState
    params: Mapping[str, Any]
    distributions: Mapping[str, BaseDistribution]
    accuracy: float | None  # COMPLETE: its value; PRUNED: best reported value; None: never reported
    diverged: bool
    diverged_epoch: int | None
    epochs_run: int
    test_accuracy: float | None
    lrs: Mapping[str, float]  # "lr_head" -> peak rate, for every layer group of the trial
    user_attrs: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def pruned(self) -> bool:
        return self.state == TrialState.PRUNED


@dataclass(frozen=True)
class StudyData:
    """The records of one study, the counts of its trials by state, and its epoch budget."""

    name: str
    finished: list[TrialRecord]
    states: Mapping[str, int]  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING -> count
    max_epochs: int
    max_epochs_source: str  # "spec" or "longest trial"
    user_attrs: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.finished if t.state == TrialState.COMPLETE]


def load_study_data(name: str, storage: optuna.storages.BaseStorage) -> StudyData:
    """Read study ``name``; an HpoError when it does not exist or has no finished trial."""
    study = load_existing(name, storage)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    finished = [to_record(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished:
        raise HpoError(no_finished_message(name, states))
    max_epochs, source = _max_epochs(study.user_attrs, finished)
    return StudyData(name, finished, dict(states), max_epochs, source, dict(study.user_attrs))


def no_finished_message(name: str, states: Mapping[str, int]) -> str:
    """``study 'x' has no finished trial yet (2 FAIL, 1 RUNNING): ...`` for every command."""
    if not states:
        what = "no trials yet"
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        what = f"no finished (COMPLETE or PRUNED) trial yet ({counts})"
    return f"study {name!r} has {what}: run `hpo optimize --study {name} --trials N` first"


def to_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        accuracy = trial.value
    else:
        reported = [v for v in trial.intermediate_values.values() if v is not None and math.isfinite(v)]
        accuracy = max(reported) if reported else None
    epochs = attrs.get("epochs_run")
    if epochs is None:
        epochs = max(len(attrs.get("val_loss") or ()), trial.last_step or 0)
    diverged = trial.state == TrialState.PRUNED and bool(attrs.get("diverged"))
    return TrialRecord(
        number=trial.number,
        state=trial.state,
        params=trial.params,
        distributions=trial.distributions,
        accuracy=accuracy,
        diverged=diverged,
        diverged_epoch=attrs.get("diverged_epoch") if diverged else None,
        epochs_run=int(epochs),
        test_accuracy=attrs.get("test_accuracy"),
        lrs=_learning_rates(trial),
        user_attrs=attrs,
    )


def _learning_rates(trial: FrozenTrial) -> dict[str, float]:
    # A sampled or fixed lr_<group> parameter wins; lr_groups covers rates derived from lr_div.
    rates = {f"lr_{group}": float(v) for group, v in (trial.user_attrs.get("lr_groups") or {}).items()}
    for name, value in trial.params.items():
        if name.startswith("lr_") and name != "lr_div":
            rates[name] = float(value)
    return rates


def _max_epochs(study_attrs: Mapping[str, Any], trials: list[TrialRecord]) -> tuple[int, str]:
    for key in _SPEC_ATTRS:
        spec = study_attrs.get(key)
        if isinstance(spec, dict):
            value = (spec.get("train") or {}).get("max_epochs")
            if isinstance(value, int) and value > 0:
                return value, "spec"
    return max((t.epochs_run for t in trials), default=0), "longest trial"
