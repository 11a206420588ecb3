"""Retention by score: the best-epoch weights of a study's top ``artifacts.keep_best`` trials stay.

A trial that completes at or above the study's k-th best value writes its best-epoch weights
(:func:`hpo.training.checkpoints.save_weights`) before it completes, after recording where
(``weights`` in :mod:`hpo.record`). After every trial, each worker sweeps: a weights file goes once
its trial is finished and outside the top k. The top k is ranked as the study's best is (value,
then the earlier trial), among COMPLETE trials only.

Why this is race-safe between workers finishing at once, without a lock:

* a trial's file is never removed while it runs (a RUNNING or WAITING trial is never swept), so
  a worker cannot lose its weights between writing them and completing;
* once a complete trial ranks below k, it stays there (values never change, trials only join),
  so a sweep working from a stale list of trials only removes files that had to go anyway;
* every completion is followed by its own worker's sweep, which sees every trial that completed
  before it: the last trial's sweep leaves exactly the top k holding weights.

Example::

    top_trials(study, 3)                  # [12, 4, 9]: the numbers, best first
    may_keep(study, 0.87, 3)              # whether a trial about to complete with 0.87 writes its weights
    sweep_weights(study, store, 3)        # (files, bytes) removed
    kept_trials(study, store)             # [4, 9, 12]: the trials whose weights are there
"""

from __future__ import annotations

from typing import Any, Iterable

import optuna

from hpo import record
from hpo.storage.artifacts.keys import trial_of_weights, weights_prefix

_LIVE = (record.RUNNING, record.WAITING)


def _ranked(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials, best first: by value, the earlier trial on a tie (as the study's best)."""
    complete = [t for t in trials if t.state.name == record.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (-t.value, t.number))


def top_trials(study: optuna.Study, k: int) -> list[int]:
    """The numbers of the study's top ``k`` complete trials, best first."""
    return [t.number for t in _ranked(study.get_trials(deepcopy=False))[:max(k, 0)]]


def may_keep(study: optuna.Study, value: float, k: int) -> bool:
    """Whether a trial about to complete with ``value`` may join the top ``k`` (so writes its weights).

    Generous on a tie with the k-th: the sweep settles it once the trial has completed.
    """
    if k <= 0:
        return False
    ranked = _ranked(study.get_trials(deepcopy=False))
    return len(ranked) < k or value >= ranked[k - 1].value


def weights_files(study: optuna.Study, store: Any, trials: Iterable[optuna.trial.FrozenTrial] | None = None) -> set[str]:
    """Every weights file the study may hold: those its trials recorded writing, and (in a store
    that lists) those named after it."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    ids = {w for w in (record.weights_of(t) for t in trials) if w}
    ids.update(getattr(store, "ids", lambda prefix: [])(weights_prefix(study)))
    return ids


def sweep_weights(study: optuna.Study, store: Any, k: int) -> tuple[int, int]:
    """Remove the weights of finished trials outside the top ``k``; returns (files, bytes) removed."""
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in _ranked(trials)[:max(k, 0)]}
    live = {t.number for t in trials if t.state.name in _LIVE}
    size = getattr(store, "size", lambda _id: None)
    removed = freed = 0
    for artifact_id in sorted(weights_files(study, store, trials)):
        number = trial_of_weights(artifact_id)
        if number is None or number in keep or number in live:
            continue
        try:
            took = size(artifact_id) or 0
            store.remove(artifact_id)
        except Exception:  # removed already (by another worker's sweep), or never written
            continue
        removed += 1
        freed += took
    return removed, freed


def kept_trials(study: optuna.Study, store: Any) -> dict[int, str]:
    """Trial number -> weights file, for the files that are there (best first where ranked)."""
    trials = study.get_trials(deepcopy=False)
    order = {t.number: i for i, t in enumerate(_ranked(trials))}
    found: dict[int, str] = {}
    for artifact_id in weights_files(study, store, trials):
        number = trial_of_weights(artifact_id)
        if number is not None and _exists(store, artifact_id):
            found[number] = artifact_id
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def _exists(store: Any, artifact_id: str) -> bool:
    if hasattr(store, "size"):
        return store.size(artifact_id) is not None
    try:
        with store.open_reader(artifact_id):
            return True
    except Exception:
        return False
