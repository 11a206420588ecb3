"""Reads and writes whose cost does not grow with the study: trial counts by state, study attributes by key.

Optuna's storage API reads a study's trials with all their attributes, and its system attributes
all at once; optuna-dashboard keeps every trial's note among the latter. A worker that asked
"what version is this trial's note at?" through that API read every note of the study to answer,
once per trial, so a trial's cost grew with the study (benchmarks/storage_cost.py). Here such
questions cost one small query on a database (SQLite, PostgreSQL, MySQL), retried through an
outage like the storage's own calls; the proxy's gRPC client asks the proxy for attributes by key
(an hpo call beside Optuna's protocol, which has none), and any other storage (a journal file,
memory, an older proxy) answers through the public API.

Example::

    trial_counts(storage, study_id)                         # {"COMPLETE": 950, "RUNNING": 8, ...}
    study_attrs(storage, study_id, ["dashboard:note_ver"])  # {} when the study has no note yet
    rewrite_study_attrs(storage, study_id, ["n"], lambda found, more: {"n": found.get("n", 0) + 1})
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, TypeVar

import sqlalchemy

from hpo.storage.database.resilient import ResilientStorage
from hpo.storage.optuna_private import (
    count_trials_by_state,
    rdb_of,
    rewrite_study_system_attrs,
    study_system_attrs_by_key,
)

T = TypeVar("T")
Rewrite = Callable[[dict[str, Any], Callable[[list[str]], dict[str, Any]]], dict[str, Any]]


def trial_counts(storage: Any, study_id: int) -> dict[str, int]:
    """``{state name: number of trials}`` of the study (states without trials left out)."""
    rdb = rdb_of(storage)
    if rdb is None:
        return dict(Counter(t.state.name for t in storage.get_all_trials(study_id, deepcopy=False)))
    return _retried(rdb, "trial_counts", lambda: count_trials_by_state(rdb, study_id))


def study_attrs(storage: Any, study_id: int, keys: Iterable[str]) -> dict[str, Any]:
    """The study system attributes among ``keys`` that exist (a missing key is left out)."""
    wanted = list(dict.fromkeys(keys))
    rdb = rdb_of(storage)
    if rdb is None:
        found = _by_key(storage, study_id, wanted)
        if found is not None:
            return found
        attrs = storage.get_study_system_attrs(study_id)
        return {k: attrs[k] for k in wanted if k in attrs}
    return _retried(rdb, "study_attrs", lambda: study_system_attrs_by_key(rdb, study_id, wanted))


def rewrite_study_attrs(storage: Any, study_id: int, keys: Iterable[str], rewrite: Rewrite, new: bool = False) -> None:
    """Write the study system attributes ``rewrite(found, more)`` returns, ``found`` being those among
    ``keys`` that exist, ``more(other_keys)`` a read of further keys: on a database in one
    transaction, which a retry runs whole again. The first key is read first and the others only
    when it exists (:func:`~hpo.storage.optuna_private.rewrite_study_system_attrs`): none of them
    may exist without it.

    ``new``: the caller expects the first key not to exist (a trial's note as the trial ends), so
    on a database nothing is read: the write is an insert, and only if the key exists after all
    (a note written in the dashboard meanwhile; a retried write whose first attempt landed) is it
    read and rewritten as without ``new``."""
    wanted = list(dict.fromkeys(keys))
    rdb = rdb_of(storage)
    if rdb is None:
        first = _by_key(storage, study_id, wanted[:1])
        if first is not None:  # the proxy reads by key: the first key, then the others if it exists
            found = {**first, **(_by_key(storage, study_id, wanted[1:]) or {})} if first else {}
            more: Callable[[list[str]], dict[str, Any]] = lambda other: _by_key(storage, study_id, other) or {}  # noqa: E731
        else:
            attrs = storage.get_study_system_attrs(study_id)
            found = {k: attrs[k] for k in wanted if k in attrs}
            more = lambda other: {k: attrs[k] for k in other if k in attrs}  # noqa: E731
        for key, value in rewrite(found, more).items():
            storage.set_study_system_attr(study_id, key, value)
        return
    if new:
        try:
            return _retried(rdb, "rewrite_study_attrs", lambda: rewrite_study_system_attrs(rdb, study_id, wanted, rewrite, new=True))
        except sqlalchemy.exc.IntegrityError:
            pass  # there after all: read it
    _retried(rdb, "rewrite_study_attrs", lambda: rewrite_study_system_attrs(rdb, study_id, wanted, rewrite))


def _by_key(storage: Any, study_id: int, keys: list[str]) -> dict[str, Any] | None:
    """The attributes among ``keys``, from a storage that reads them by key itself (the proxy's
    client: :meth:`~hpo.storage.database.proxy_client.ProxiedStorage.study_attrs_by_key`); None from
    any other, or from a proxy without that call."""
    read = getattr(storage, "study_attrs_by_key", None)
    return None if read is None else read(study_id, keys)


def _retried(rdb: Any, name: str, call: Callable[[], T]) -> T:
    if isinstance(rdb, ResilientStorage):
        return rdb.retrying(name, call)
    return call()
