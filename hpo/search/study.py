"""A study as the spec describes it: sampler, pruner, creation or resumption, and its tally.

Optuna stores trials but not the sampler or pruner, so every process that works on a study
builds them from the spec here. To make sure they all build the same ones, the resolved spec
(after ``--set`` overrides) is stored in the study's user attribute ``spec`` when the study is
created, and a worker whose spec differs is refused with the differing keys. Creating the
study, recording its spec and its artifact store (:mod:`hpo.storage.artifacts.stores`) happen under
one database-wide lock, so ten workers starting in the same second create one study.

The study also records the trial-record schema it is written with (:mod:`hpo.record`): a worker
refuses to add trials to a study of another schema, with one line that says what to do.

Example::

    find_study(spec, storage)  # None: not there yet; an HpoError: there, with another spec (creates nothing)
    study = open_study(spec, open_storage("sqlite:///hpo.db"), seed=0)
    tally(study).finished      # COMPLETE + PRUNED trials so far
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from collections import Counter
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from hpo import record
from hpo.errors import HpoError
from hpo.pruning import make_pruner
from hpo.record import StudyRecord, Tally, TrialRecord, best_trial
from hpo.spec import CategoricalParam, SamplerSpec, Spec
from hpo.storage.artifacts.stores import artifact_location
from hpo.storage.database.locks import storage_lock_of
from hpo.storage.database.proxied_lock import PREFIX as LOCK_PREFIX
from hpo.storage.database.proxied_lock import is_lock_study
from hpo.storage.database.studies import has_study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Settings of one machine, not of the study: they may differ between workers.
LOCAL_KEYS = ("description", "data.cache_dir", "train.device", "train.threads", "sampler.seed")


def make_sampler(spec: SamplerSpec, seed: int | None = None, grid: Mapping[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler; ``seed`` (from the command line) wins over ``sampler.seed``.

    ``grid``: knob -> choices, for ``sampler.type = "grid"`` (every combination once, in any order).
    """
    seed = spec.seed if seed is None else seed
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.type == "grid":
        if not grid:
            raise HpoError("spec: sampler.type = 'grid' needs at least one knob with categorical choices")
        return optuna.samplers.GridSampler({name: list(values) for name, values in grid.items()}, seed=seed)
    with warnings.catch_warnings():
        # multivariate and constant_liar are stable in practice but flagged experimental in Optuna 4.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            n_startup_trials=spec.n_startup_trials,
            multivariate=spec.multivariate,
            constant_liar=spec.constant_liar,
            seed=seed,
        )


def find_study(spec: Spec, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """The spec's study if ``storage`` has it and ``spec`` may join it (an HpoError if not); None
    when it does not exist yet. Creates nothing: a command checks this first, loads what may still
    fail on bad input (the data), and only then creates the study (:func:`open_study`), so that a
    failed command leaves no study behind whose spec would refuse the corrected one.
    """
    _check_name(spec)
    if not has_study(storage, spec.name):
        return None
    study = optuna.load_study(study_name=spec.name, storage=storage)
    _check_joinable(spec, study)
    return study


def _check_name(spec: Spec) -> None:
    if is_lock_study(spec.name):
        raise HpoError(f"study name {spec.name!r}: names starting {LOCK_PREFIX!r} are hpo's locks; choose another --set name=...")


def _check_joinable(spec: Spec, study: optuna.Study) -> StudyRecord:
    """An HpoError unless ``spec`` may add trials to ``study`` (direction, schema, and its spec if
    recorded); else what the study records."""
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise HpoError(f"study {spec.name!r} in this storage is not a maximize study: choose another --study name")
    stored = StudyRecord.of(study)
    stored.check(writing=True)
    if stored.spec is not None:
        differing = spec_diff(stored.spec, _plain(spec.to_dict()))
        if differing:
            raise HpoError(_mismatch_message(spec.name, differing))
    return stored


def open_study(spec: Spec, storage: optuna.storages.BaseStorage, seed: int | None = None) -> optuna.Study:
    """Create the spec's study in ``storage``, or join it if its stored spec is the same as ours."""
    _check_name(spec)
    with storage_lock_of(storage):  # the database's lock, or through `hpo storage-proxy` a StorageLock
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            direction="maximize",
            sampler=make_sampler(spec.sampler, seed, grid_of(spec)),
            pruner=make_pruner(spec.pruner, spec.train.max_epochs),
            load_if_exists=True,
        )
        stored = _check_joinable(spec, study)
        if stored.schema is None:
            record.write_schema(study)
        if stored.spec is None:
            # New, or made before specs were recorded: from now on this spec is the study's.
            record.write_spec(study, _plain(spec.to_dict()))
        if stored.uid is None:
            record.write_uid(study, uuid.uuid4().hex[:12])
        artifact_location(study)  # recorded now, under the lock: every worker then agrees on it
    return study


def grid_of(spec: Spec) -> dict[str, tuple[Any, ...]]:
    """The categorical knobs of the spec's space: what a grid sampler walks through."""
    return {k: v.choices for k, v in spec.space.items() if isinstance(v, CategoricalParam)}


def spec_diff(stored: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (study's value, ours)}`` for every study-wide setting that differs."""
    a, b = _flatten(stored), _flatten(_plain(ours))
    missing = object()
    return {
        key: (a.get(key, missing), b.get(key, missing))
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing) and not any(key == k or key.startswith(k + ".") for k in LOCAL_KEYS)
        and not (key not in a and b[key] == _newer_default(key, missing))
    }


def _newer_default(key: str, missing: Any) -> Any:
    """The default of a section setting (``divergence.confirm_epochs``): a study stored by an
    older hpo lacks settings added since, and their defaults keep the behaviour it had."""
    section, _, name = key.partition(".")
    kinds = {f.name: f.default_factory for f in dataclasses.fields(Spec) if f.default_factory is not dataclasses.MISSING}
    kind = kinds.get(section)
    if not dataclasses.is_dataclass(kind) or "." in name:
        return missing
    defaults = {f.name: f.default for f in dataclasses.fields(kind) if f.default is not dataclasses.MISSING}
    return _plain({"v": defaults[name]})["v"] if name in defaults else missing


def _mismatch_message(name: str, differing: Mapping[str, tuple[Any, Any]]) -> str:
    def show(value: Any) -> str:
        return "(unset)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else json.dumps(value)

    items = "; ".join(f"{key}: study {show(theirs)}, yours {show(mine)}" for key, (theirs, mine) in differing.items())
    return (
        f"study {name!r} was created with a different spec ({items}): run with the study's settings "
        f"(the same --set options), or start a new study with --set name=NEW_NAME"
    )


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """As it comes back from the database: JSON types only (tuples become lists)."""
    return json.loads(json.dumps(data))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out



def tally(study: optuna.Study) -> Tally:
    return Tally.of(study.get_trials(deepcopy=False))


class LiveTally:
    """A study's :class:`Tally`, read again after every trial at a cost that does not grow with the study.

    ``study.get_trials`` goes through Optuna's cache, which asks the database only for the trials
    that changed since its last read (database storages; the proxy's client keeps its own), so the
    reading is cheap; what grew was building a record of every trial each time (half a second per
    trial on a study of 10,000, benchmarks/storage_cost.py). A finished trial never changes: its
    record is built once, and the best trial, the diverged ones and the epochs run are summed as
    they come; the rest is a count of states.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()  # numbers of the finished trials already summed
        self._best: TrialRecord | None = None
        self._diverged = 0
        self._epochs = 0

    def read(self, study: optuna.Study) -> Tally:
        states: Counter[str] = Counter()
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] += 1
            if t.state in FINISHED and t.number not in self._seen:
                self._add(TrialRecord.from_trial(t))
        return Tally(
            complete=states[record.COMPLETE], diverged=self._diverged,
            pruned_other=states[record.PRUNED] - self._diverged, failed=states[record.FAIL],
            running=states[record.RUNNING], waiting=states[record.WAITING], best=self._best,
        )

    def mean_epochs(self) -> float | None:
        """Epochs a finished trial has run, on average (None before the first)."""
        return self._epochs / len(self._seen) if self._seen else None

    def _add(self, r: TrialRecord) -> None:
        self._seen.add(r.number)
        self._diverged += r.diverged
        self._epochs += r.epochs_run
        self._best = best_trial([r] if self._best is None else [self._best, r])
