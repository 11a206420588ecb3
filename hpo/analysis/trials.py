"""A study's trials as trial records: the one input every analysis stage shares.

:func:`load_study_data` reads a study once, through Optuna's public API (so it works on every
storage), and turns each trial into a :class:`~hpo.record.TrialRecord`: the record module's
conventions (what "diverged" means, a pruned trial's accuracy, every group's learning rate)
apply everywhere without being repeated here.

Example::

    data = load_study_data("imdb", open_storage("sqlite:///hpo.db", create=False))
    data.finished[0].accuracy      # best validation accuracy, pruned trials included
    data.max_epochs                # from the stored spec, else the longest trial
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import optuna

from hpo import record
from hpo.analysis.logs import TrainingLog, from_trial_record
from hpo.errors import HpoError
from hpo.record import StudyRecord, Tally, TrialRecord, best_trial
from hpo.spec import DivergenceSpec, Spec, builtin_studies
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.studies import load_existing
from hpo.storage.database.urls import resolve_storage_url

__all__ = ["StudyData", "TrialRecord", "load_study_data", "load_study_records", "no_finished_message", "trial_log"]


@dataclass(frozen=True)
class StudyData:
    """The records of one study, its tally, and its epoch budget."""

    name: str
    finished: list[TrialRecord]
    states: Mapping[str, int]  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING -> count
    max_epochs: int
    max_epochs_source: str  # "spec" or "longest trial"
    spec: Spec | None = None  # the spec the study was created with, when it stored one
    tally: Tally | None = None
    classes: tuple[str, ...] = ()  # in label-id order, as stored with the study (empty: made before they were)
    class_counts: Mapping[str, Sequence[int]] = field(default_factory=dict)  # split -> rows per class

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.finished if t.state == record.COMPLETE]

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.finished)


def load_study_data(name: str, storage: optuna.storages.BaseStorage) -> StudyData:
    """Read study ``name``; an HpoError when it does not exist or has no finished trial."""
    study = load_existing(name, storage)
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    states = Counter(r.state for r in records)
    finished = [r for r in records if r.finished]
    if not finished:
        raise HpoError(no_finished_message(name, states))
    stored = StudyRecord.of(study)
    try:
        spec = stored.parsed_spec()
    except HpoError:  # a spec of another hpo version: analysis goes on with the defaults
        spec = None
    max_epochs, source = _max_epochs(spec, finished)
    return StudyData(name, finished, dict(states), max_epochs, source, spec, Tally.of(records),
                     stored.classes, stored.class_counts)


def load_study_records(study: str, storage: str | optuna.storages.BaseStorage | None = None) -> list[TrialRecord]:
    """Every trial of ``study``, running and failed ones too, as :class:`~hpo.record.TrialRecord` s
    in trial-number order: epochs, outcome, parameters and each layer group's rate.

    ``storage``: a database URL (default ``$HPO_STORAGE``, else ``sqlite:///hpo.db``) or an opened
    storage; a URL is opened read-only, so a mistyped one creates nothing. An HpoError when the
    study does not exist.
    """
    if storage is None or isinstance(storage, str):
        storage = open_storage(resolve_storage_url(storage)[0], create=False)
    return [TrialRecord.from_trial(t) for t in load_existing(study, storage).get_trials(deepcopy=False)]


def no_finished_message(name: str, states: Mapping[str, int]) -> str:
    """``study 'x' has no finished trial yet (2 FAIL, 1 RUNNING): ...`` for every command."""
    if not states:
        what = "no trials yet"
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        what = f"no finished (COMPLETE or PRUNED) trial yet ({counts})"
    return f"study {name!r} has {what}: run {_optimize_command(name)} first"


def _optimize_command(name: str) -> str:
    """A command that adds trials to study ``name``. ``--study`` takes a spec, not a study: the
    study's own name works only when a spec of that name exists (built-in or ./studies/NAME.toml);
    a study named with ``--set name=...`` needs its spec and that override again."""
    if name in builtin_studies() or (Path("studies") / f"{name}.toml").is_file():
        return f"`hpo optimize --study {shlex.quote(name)} --trials N`"
    return (f"`hpo optimize --study imdb --set name={shlex.quote(name)} --trials N` "
            "(--study: the spec file or built-in study it was made from, with its other --set options)")


def _max_epochs(spec: Spec | None, trials: list[TrialRecord]) -> tuple[int, str]:
    if spec is not None:
        return spec.train.max_epochs, "spec"
    return max((t.epochs_run for t in trials), default=0), "longest trial"


def trial_log(name: str, storage: optuna.storages.BaseStorage, number: int) -> tuple[TrainingLog, DivergenceSpec | None]:
    """Trial ``number`` of study ``name`` as a training log (``hpo diagnose --study --trial``), and
    the divergence rules the study ran with (None when it stored no spec this hpo reads)."""
    study = load_existing(name, storage)
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.number == number:
            record = StudyRecord.of(study)
            try:
                spec = record.parsed_spec()
            except HpoError:  # a spec of another hpo version: the default rules
                spec = None
            log = dataclasses.replace(from_trial_record(TrialRecord.from_trial(t), name), num_classes=record.num_classes)
            return log, spec.divergence if spec else None
    have = f"{trials[0].number}-{trials[-1].number}" if trials else "none yet"
    raise HpoError(f"study {name!r} has no trial {number} (its trials: {have})")
