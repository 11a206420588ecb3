"""Optuna's private API, in one place: every use that has no public equivalent, and why.

Optuna's public API covers studies and trials; a few things hpo needs reach underneath it. Each
sits here, so that an Optuna upgrade that moves one breaks this module alone, and a reader can
see at a glance what hpo relies on:

* :func:`storage_of`, :func:`study_id`, :func:`trial_id`: a ``Study`` keeps its storage and its
  ids private, yet artifact uploads and listings (``optuna.artifacts``) take the storage, and
  optuna-dashboard keys notes and artifact URLs by the storage's ids;
* :data:`BaseHeartbeat`: the gRPC client must be a heartbeat storage so that ``study.optimize``
  runs Optuna's heartbeat thread for workers behind `hpo storage-proxy`;
* :data:`RDB_RETRIABLE_METHODS`: the RDBStorage methods, public and private (``_get_trials``...),
  that the resilient storage may simply run again after a connection error;
* :func:`rdb_models`, :func:`grpc_servicer`, :func:`grpc_api`: the proxy finds stale trials with
  one query over Optuna's own tables and answers heartbeats in Optuna's own servicer;
* :func:`grpc_trial_from_proto`, :func:`grpc_trial_state_from_proto`: the proxy answers a resent
  write (a new trial, a state change) itself, with the servicer's own message conversions;
* :func:`is_constraint_attr`: a re-run must not inherit its predecessor's constraints, which
  Optuna stores as system attributes under a private prefix;
* :func:`use_grpc_channel`: Optuna's gRPC client opens a plain channel that sends no metadata;
  hpo's client talks to the proxy over its own (TLS, the proxy's token on every call);
* :func:`backend_of`: Optuna's cache wraps the RDB storage in ``_backend``;
* :func:`rdb_of`, :func:`count_trials_by_state`, :func:`study_system_attrs_by_key`, :func:`rewrite_study_system_attrs`: reads Optuna's API
  has only whole: its storages give a study's trials with every attribute and its system
  attributes all at once (the dashboard's notes of every trial among them), where a worker needs
  counts of states or a note's few keys; each ran once per trial and grew with the study
  (benchmarks/storage_cost.py). Small queries over Optuna's tables do it in constant work;
* :func:`ensure_trial_state_index`: an index of hpo's own on Optuna's trials table, so that
  the search for stale trials (every trial start, with heartbeats) stops reading every trial;
* :func:`stale_trial_ids`: that search as one query that returns the stale trials only (Optuna's
  reads every running trial and its heartbeat, and compares them in Python);
* :func:`trials_since`, :func:`grpc_trial_proto`: the proxy answers a worker's cache with the trials
  it asks for, read as such (Optuna's servicer reads every trial of the study for each call);
* :func:`set_trial_param`: the proxy checks a parameter against the distribution it remembers for
  the study, as Optuna's cache does for a direct worker (the public call looks it up in the database);
* :func:`rdb_session`, :func:`set_value_in`, :func:`set_system_attr_in`, :func:`new_trial_in`,
  :func:`set_trial_id`: RDBStorage's own steps without their commit, so that
  :mod:`hpo.storage.database.trial_writes` can put a write and the token that recognises it in one
  transaction (Optuna's public calls commit on their own).

Example::

    optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study))
"""

from __future__ import annotations

import json
from typing import Any, Callable

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.storages._rdb import models as _rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
import sqlalchemy
from sqlalchemy import func, inspect

__all__ = ["BaseHeartbeat", "RDB_RETRIABLE_METHODS", "backend_of", "count_trials_by_state", "ensure_trial_state_index",
           "grpc_api", "grpc_servicer", "grpc_trial_from_proto", "grpc_trial_proto", "grpc_trial_state_from_proto",
           "is_constraint_attr", "new_trial_in", "rdb_models", "rdb_of", "rdb_session", "rewrite_study_system_attrs",
           "set_system_attr_in", "set_trial_id", "set_trial_param", "set_value_in", "stale_trial_ids", "storage_of",
           "study_id", "study_system_attrs_by_key", "trial_id", "trials_since", "use_grpc_channel"]

# The RDBStorage methods that open a database session and may simply run again after a connection
# error: reads, and writes that land the same however often they run (upserts of attributes,
# intermediate values, parameters and heartbeats). Others call these, and only the outermost call
# retries, so one outage costs one backoff, not a product of nested ones. Creating a study or a
# trial, deleting a study and changing a trial's state are not here: the resilient storage checks
# whether such a write landed before it runs it again (hpo.storage.database.trial_writes).
RDB_RETRIABLE_METHODS = (
    "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "_set_trial_param",
    "get_trial_param", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "_get_trials", "_get_best_trial_id", "record_heartbeat",
)
# ``_get_stale_trial_ids`` is retriable too; the resilient storage throttles it and retries it itself.


def storage_of(study: optuna.Study) -> Any:
    """The storage a study reads and writes through (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a trial, live or frozen (``_trial_id``)."""
    return trial._trial_id


def backend_of(storage: Any) -> Any:
    """The storage under Optuna's cache layer (``_CachedStorage._backend``), or None."""
    return getattr(storage, "_backend", None)


def rdb_of(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDBStorage a storage is or wraps (Optuna's cache), or None for any other storage."""
    for candidate in (storage, backend_of(storage)):
        if isinstance(candidate, optuna.storages.RDBStorage):
            return candidate
    return None


# Optuna's trials table is indexed by study, not by state: with heartbeats on, every trial start
# looks for the study's RUNNING trials (``fail_stale_trials``) and read every trial of the study to
# find them (benchmarks/storage_cost.py: 76 blocks per look at 10,000 trials, and growing). An index
# on (study_id, state) makes that look, and :func:`count_trials_by_state`, read what they need. It is
# an index of hpo's own on Optuna's table: Optuna's migrations neither use nor drop it.
TRIAL_STATE_INDEX = "ix_hpo_trials_study_id_state"


def ensure_trial_state_index(rdb: optuna.storages.RDBStorage) -> bool:
    """Create :data:`TRIAL_STATE_INDEX` unless it is there (call it under the creation lock);
    whether it is there now. An index is worth no wait: a table another session holds is left as it
    is after 5 s (the next worker to open the storage tries again), and so is a failure."""
    # Plain DDL, not a sqlalchemy.Index on TrialModel's table: that would join Optuna's own metadata
    # in this process, and Optuna's create_all would then make it on every new database, twice over.
    table = _rdb_models.TrialModel.__tablename__
    try:
        if TRIAL_STATE_INDEX in {ix["name"] for ix in inspect(rdb.engine).get_indexes(table)}:
            return True
        with rdb.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            elif dialect in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")
            conn.exec_driver_sql(f"CREATE INDEX {TRIAL_STATE_INDEX} ON {table} (study_id, state)")
        return True
    except sqlalchemy.exc.SQLAlchemyError:
        return False


def count_trials_by_state(rdb: optuna.storages.RDBStorage, study_id: int) -> dict[str, int]:
    """``{state name: trials}`` of one study, by one GROUP BY over the trials table (no attributes)."""
    trial = _rdb_models.TrialModel
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = (session.query(trial.state, func.count(trial.trial_id))
                .filter(trial.study_id == study_id).group_by(trial.state).all())
    return {state.name: int(n) for state, n in rows}


def stale_trial_ids(rdb: optuna.storages.RDBStorage, study_id: int, grace_period_s: int) -> list[int]:
    """The study's RUNNING trials whose last heartbeat is older than ``grace_period_s`` by the
    database's clock, found by the database: RDBStorage's ``_get_stale_trial_ids`` reads every
    running trial with its heartbeat to compare them in Python (and the clock in a statement of its
    own), which with many workers was a row per running trial per look. Trials without a heartbeat
    are not stale, as in Optuna."""
    trial, beat = _rdb_models.TrialModel, _rdb_models.TrialHeartbeatModel
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = (session.query(trial.trial_id).join(beat, beat.trial_id == trial.trial_id)
                .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                        beat.heartbeat < _database_now_minus(rdb.engine.dialect.name, int(grace_period_s)))
                .order_by(trial.trial_id).all())
    return [int(r[0]) for r in rows]


def _database_now_minus(dialect: str, seconds: int) -> Any:
    """The database's current time less ``seconds``, in the zone and form its heartbeats are written in
    (the column's default ``CURRENT_TIMESTAMP``, and Optuna's ``now()`` on later beats)."""
    if dialect == "postgresql":  # timestamp without time zone, as the column: the session's local time
        return sqlalchemy.literal_column(f"LOCALTIMESTAMP - INTERVAL '{seconds} seconds'")
    if dialect in ("mysql", "mariadb"):
        return sqlalchemy.literal_column(f"NOW() - INTERVAL {seconds} SECOND")
    if dialect == "sqlite":  # UTC text; a later beat's microseconds only sort it later within its second
        return sqlalchemy.literal_column(f"datetime('now', '-{seconds} seconds')")
    raise NotImplementedError(f"stale trials on {dialect}")


def study_system_attrs_by_key(rdb: optuna.storages.RDBStorage, study_id: int, keys: list[str]) -> dict[str, Any]:
    """The study system attributes named in ``keys`` that exist, by the (study_id, key) unique index."""
    with _create_scoped_session(rdb.scoped_session) as session:
        return {key: json.loads(row.value_json) for key, row in _attr_rows(session, study_id, keys).items()}


def rewrite_study_system_attrs(rdb: optuna.storages.RDBStorage, study_id: int, keys: list[str],
                               rewrite: Callable[[dict[str, Any], Callable[[list[str]], dict[str, Any]]], dict[str, Any]],
                               new: bool = False) -> None:
    """Read the study system attributes among ``keys``, and write what ``rewrite(found, more)``
    returns, in one transaction (Optuna's own calls take one transaction per attribute, with a read
    each). ``more(other_keys)`` reads further keys in the same transaction: a read through the
    storage's own calls there would share this thread's session, end it, and lose the write.

    ``keys[0]`` is read first, and the others only when it exists: a note's version key, without
    which it has no chunks either (a new trial's note, once per trial, reads one key, not all).
    With ``new``, not even that: the caller expects none of them, and the insert fails with
    sqlalchemy's ``IntegrityError``, nothing written, if ``keys[0]`` exists after all."""
    model = _rdb_models.StudySystemAttributeModel
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = {} if new else _attr_rows(session, study_id, keys[:1])
        if rows:
            rows.update(_attr_rows(session, study_id, keys[1:]))

        def more(other: list[str]) -> dict[str, Any]:
            found = _attr_rows(session, study_id, [k for k in other if k not in rows])
            rows.update(found)
            return {k: json.loads(rows[k].value_json) for k in other if k in rows}

        out = rewrite({k: json.loads(r.value_json) for k, r in rows.items()}, more)
        for key, value in out.items():
            if key in rows:
                rows[key].value_json = json.dumps(value)
            else:
                session.add(model(study_id=study_id, key=key, value_json=json.dumps(value)))


def _attr_rows(session: Any, study_id: int, keys: list[str]) -> dict[str, Any]:
    if not keys:
        return {}
    model = _rdb_models.StudySystemAttributeModel
    return {r.key: r for r in session.query(model).filter(model.study_id == study_id, model.key.in_(keys)).all()}


def rdb_models() -> Any:
    """Optuna's SQLAlchemy models (``optuna.storages._rdb.models``)."""
    return _rdb_models


def grpc_servicer() -> type:
    """Optuna's gRPC storage servicer class; ImportError without grpcio."""
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    return OptunaStorageProxyService


def grpc_api() -> tuple[Any, Any]:
    """Optuna's generated gRPC modules ``(api_pb2, api_pb2_grpc)``; ImportError without grpcio."""
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

    return api_pb2, api_pb2_grpc


def grpc_trial_from_proto(proto: Any) -> Any:
    """A FrozenTrial from the protocol's Trial message (the servicer's own conversion)."""
    from optuna.storages._grpc.servicer import _from_proto_trial

    return _from_proto_trial(proto)


def grpc_trial_state_from_proto(state: Any) -> Any:
    """A TrialState from the protocol's enum (the servicer's own conversion)."""
    from optuna.storages._grpc.servicer import _from_proto_trial_state

    return _from_proto_trial_state(state)


def is_constraint_attr(key: str) -> bool:
    """Whether a trial system attribute is a constraint of ``Trial.set_constraint`` (Optuna 5: ``constraints:NAME``)."""
    return key.startswith(f"{_CONSTRAINTS_KEY}:")


def use_grpc_channel(client: Any, channel: Any) -> None:
    """Points Optuna's ``GrpcStorageProxy`` ``client`` at ``channel``, with a fresh stub and cache.

    Its ``_setup`` opens an insecure channel of its own; hpo's subclass overrides ``_setup`` and
    calls this instead (also after unpickling, which runs ``_setup`` again).
    """
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.client import GrpcClientCache

    client._channel = channel
    client._stub = api_pb2_grpc.StorageServiceStub(channel)
    client._cache = GrpcClientCache(client._stub)


def set_trial_param(storage: Any, trial_id: int, name: str, value: float, distribution: Any, previous: Any) -> None:
    """RDBStorage's ``_set_trial_param`` with the study's known distribution of the parameter
    (Optuna's cache passes it; without it, the storage looks it up in the study's trials)."""
    storage._set_trial_param(trial_id, name, value, distribution, previous)


def trials_since(storage: Any, study_id: int, included_trial_ids: set[int], trial_id_greater_than: int) -> list[Any]:
    """The study's trials with an id above ``trial_id_greater_than`` or in ``included_trial_ids``, read as
    such (RDBStorage's ``_get_trials``, which Optuna's cache uses; the public ``get_all_trials`` reads all)."""
    return storage._get_trials(study_id, None, included_trial_ids, trial_id_greater_than)


def grpc_trial_proto(trial: Any) -> Any:
    """A FrozenTrial as the gRPC protocol's message (Optuna's servicer's ``_to_proto_trial``)."""
    from optuna.storages._grpc.servicer import _to_proto_trial

    return _to_proto_trial(trial)


def rdb_session(storage: Any) -> Any:
    """A session of an RDBStorage that commits when the block ends (and rolls back on an exception)."""
    return _create_scoped_session(storage.scoped_session)


def set_value_in(storage: Any, session: Any, trial: Any, objective: int, value: float) -> None:
    """A trial's objective value, written in ``session`` without committing."""
    storage._set_trial_value_without_commit(session, trial, objective, value)


def set_system_attr_in(storage: Any, session: Any, trial_id: int, key: str, value: Any) -> None:
    """A trial system attribute, written in ``session`` without committing."""
    storage._set_trial_attr_without_commit(session, _rdb_models.TrialSystemAttributeModel, trial_id, key, value)


def new_trial_in(storage: Any, study_id: int, template: Any, session: Any) -> Any:
    """A new trial row from ``template`` (numbered under the study's row lock), without committing."""
    return storage._get_prepared_new_trial(study_id, template, session)


def set_trial_id(trial: Any, trial_id: int) -> None:
    """A FrozenTrial's storage id (set by the storage that created it)."""
    trial._trial_id = trial_id
