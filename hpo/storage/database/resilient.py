"""Opening a study's database, strictly, and riding out its outages once open.

SQLite runs in WAL mode with a long busy timeout so several local workers can share one file;
PostgreSQL (``postgresql+psycopg://``) and MySQL/MariaDB (``mysql+pymysql://``) are for several
machines on one study.

Opening a storage is strict and fast: a database that is unreachable or misspelt is one
:class:`~hpo.errors.HpoError` line within about ``CONNECT_TIMEOUT_S`` seconds. Once open, the
storage is patient: every database call that fails with a connection error (a restarting
server, a dropped connection, SQLite's "database is locked") is retried with exponential
backoff for up to ``retry_s`` seconds, so a database restart pauses the workers instead of
killing them. With ``grace_period`` set, a running trial whose worker stopped sending
heartbeats for that long is failed by another worker and queued again.

Example::

    storage = open_storage("sqlite:///hpo.db")                  # a ResilientStorage, or a clear HpoError
    storage = open_storage(url, grace_period=60)                  # ...that also re-runs dead workers' trials
    open_storage("sqlite:///elsewhere.db", create=False)          # HpoError: no such database (nothing created)
"""

from __future__ import annotations

import functools
import random
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from hpo.errors import HpoError
from hpo.record import RUN_ATTRS
from hpo.storage.database import shield, trial_writes
from hpo.storage.database.locks import CONNECT_TIMEOUT_S, creation_lock
from hpo.storage.database.outage import NOT_LANDED, RETRY_S, Outage, quiet as _quiet
from hpo.storage.database.proxy_client import WORKER_READY_S, grpc_address, open_grpc
from hpo.storage.database.urls import display_url, mask_url, scrub, sqlite_path
from hpo.storage.optuna_private import (RDB_RETRIABLE_METHODS, ensure_trial_state_index, is_constraint_attr, rdb_of,
                                        stale_trial_ids, storage_of, study_id)

Log = Callable[[str], None]

GRACE_PERIOD_S = 60  # silence after which a running trial's worker is taken for dead
MAX_RETRY = 3  # re-runs of one trial whose workers keep dying (e.g. it runs out of memory)
_DRIVER_HINT = {
    "postgresql": "pip install 'hpo[postgres]' (psycopg 3) and use postgresql+psycopg://",
    "mysql": "pip install 'hpo[mysql]' (PyMySQL) and use mysql+pymysql://",
}


def engine_kwargs(url: str) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # One worker needs two connections: its trial and its heartbeat thread. No pre-ping: it
    # costs a round trip on every call (~10 ms per trial, benchmarks/storage_scaling.py), and a
    # connection that died while idle fails on first use, before anything ran, so
    # ResilientStorage retries the call on a fresh one.
    kwargs: dict[str, Any] = {"pool_pre_ping": False, "pool_size": 2, "max_overflow": 2, "pool_recycle": 3600}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def heartbeat_interval(grace_period: int) -> int:
    """Seconds between heartbeats: several per grace period, so one late beat is not a death."""
    return max(1, min(10, grace_period // 4))


class _Retry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry, minus the failed trial's constraints and what its run alone did, and once per
    trial (see :func:`retry_callback`)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rerun = self.template(study, trial)
        if rerun is not None:
            study.add_trial(rerun)

    def template(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        """The WAITING copy Optuna's retry would add for ``trial``; None when its retries are used up
        or its re-run is queued already."""
        if _rerun_queued(study, trial.number):
            return None
        system_attrs = {k: v for k, v in trial.system_attrs.items() if not is_constraint_attr(k)}
        history = [*(system_attrs.get("retry_history") or []), trial.number]
        system_attrs = {"failed_trial": trial.number, **system_attrs, "retry_history": history}
        if self._max_retry is not None and self._max_retry < len(history):
            return None
        return optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}, system_attrs=system_attrs,
        )


def _rerun_queued(study: optuna.Study, number: int) -> bool:
    storage = storage_of(study)
    rdb = rdb_of(storage)
    if rdb is not None:
        return trial_writes.rerun_queued(rdb, study_id(study), number)
    return any((t.system_attrs.get("retry_history") or [])[-1:] == [number]  # the proxy's client: rare, read all
               for t in study.get_trials(deepcopy=False))


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queues a copy of a failed trial (same parameters and attributes) to be run again.

    The copy inherits no reported steps: the failed trial may have reported an epoch that was
    never checkpointed, and its re-run (resuming from an earlier epoch, or starting over) would
    report that step again, which Optuna ignores with a warning. The re-run reports the epochs it
    resumes from itself, from its checkpoint (:class:`hpo.objective.Objective`).

    Nor does it inherit constraints (``diverged``): a trial stopped after it set its constraint
    would pass it on, and Optuna keeps the first value set (with a warning), so the re-run's own
    verdict would be lost. The re-run sets its own.

    Nor what its predecessor's run alone did (:data:`hpo.record.RUN_ATTRS`: where it resumed, which
    worker ran it): a copy that started over, or was stopped before it loaded its checkpoint, said
    it had resumed where its predecessor had (benchmarks/chaos.py counted one as redoing 2 epochs).

    And a trial gets one re-run: a worker that a signal stops queues its trial's re-run before it
    writes the FAIL, so a worker killed in between leaves a RUNNING trial whose re-run is queued
    already when it is found stale.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _Retry(max_retry=MAX_RETRY, inherit_intermediate_values=False)


def open_storage(
    url: str,
    *,
    grace_period: int | None = None,
    retry_s: float = RETRY_S,
    log: Log | None = None,
    create: bool = True,
    reached: bool = False,
) -> Any:
    """A :class:`ResilientStorage` for ``url`` (for ``grpc://host:port``, the
    :class:`~hpo.storage.database.proxy_client.ProxiedStorage` of `hpo storage-proxy`); any failure becomes one
    HpoError line without the password.

    ``grace_period`` (seconds) turns on heartbeats: trials of workers silent that long are
    failed and queued again. ``log`` hears about database outages and recoveries. With
    ``create=False`` (the read-only commands) nothing is created: no SQLite file, no lock file,
    no tables; a SQLite file that does not exist is an HpoError naming its absolute path.

    Opening waits for a server that says it is restarting; a refused connection is one line at
    once (a wrong port must not hang a new user's command). ``reached=True``: the process that
    started this one opened the same URL moments ago (a ``--jobs`` worker), so any connection error
    is a restart to wait out, as once open (benchmarks/chaos.py on MariaDB: both workers of a command
    started during a restart were refused and exited 2).
    """
    if grpc_address(url) is not None:
        # `hpo storage-proxy` records the heartbeats and fails the trials of silent workers, by
        # its own --grace-period; this worker only beats, as often as its grace period asks.
        # A worker (create=True) waits for a proxy that is restarting as it would for a database
        # that restarts; a read-only command says at once that none answers.
        return open_grpc(url, timeout_s=WORKER_READY_S if create else None, log=log,
                         heartbeat_interval=None if grace_period is None else heartbeat_interval(grace_period))
    hb: dict[str, Any] = {}
    if grace_period is not None:
        hb = {
            "heartbeat_interval": heartbeat_interval(grace_period),
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": retry_callback(),
        }
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise HpoError(
            f"storage URL {mask_url(url)!r} is not a database URL "
            "(e.g. sqlite:///hpo.db, postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db)"
        ) from None
    path = sqlite_path(url)
    if not create and path is not None and not path.is_file():
        raise HpoError(
            f"no study database at {display_url(url)}: pass --storage URL or set $HPO_STORAGE "
            "to the database the study was run with (nothing was created)"
        )
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna 4 but stable in practice: say it once, here.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if not create:
                return ResilientStorage(url, engine_kwargs=engine_kwargs(url), retry_s=retry_s, log=log or _quiet,
                                        skip_table_creation=True, **hb)
            return _while_restarting(lambda: _open_shared(url, backend, retry_s, log, hb), url, retry_s, log,
                                     is_transient if reached else is_restarting)
    except HpoError:
        raise
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        hint = _DRIVER_HINT.get(backend, "install the database driver")
        raise HpoError(f"no driver for storage {mask_url(url)}: {scrub(str(exc), url)}; {hint}") from None
    except Exception as exc:  # OperationalError, ProgrammingError... from the driver
        reason = scrub(str(driver_error(exc)), url).strip().splitlines()
        raise HpoError(
            f"cannot open storage {mask_url(url)}: {reason[0] if reason else type(exc).__name__}"
        ) from None


def _open_shared(url: str, backend: str, retry_s: float, log: Log | None, hb: dict[str, Any]) -> ResilientStorage:
    # Tables, schema version and alembic stamp are created by the first opener; ten workers
    # starting at once would race on them, so creation happens under a database-wide lock.
    with creation_lock(url):
        if backend == "sqlite":
            _enable_wal(url)
        storage = ResilientStorage(url, engine_kwargs=engine_kwargs(url), retry_s=retry_s, log=log or _quiet, **hb)
        ensure_trial_state_index(storage)  # the stale-trial check and trial counts read what they need
        return storage


# What a server says while it restarts (PostgreSQL's 57P03 cannot_connect_now; MariaDB's 1053).
_RESTARTING = ("the database system is starting up", "the database system is shutting down",
               "the database system is in recovery mode", "the database system is not yet accepting connections",
               "server shutdown in progress")


def is_restarting(exc: BaseException) -> bool:
    """True when the server answered that it is restarting: a worker waits for it, as it waits out
    an outage once open. A refused connection, a wrong password or a missing database are not
    (they are one line at once: a misspelt URL must not hang a new user's command)."""
    text = str(driver_error(exc)).lower()
    return any(phrase in text for phrase in _RESTARTING)


def _while_restarting(open_: Callable[[], Any], url: str, retry_s: float, log: Log | None,
                      restarting: Callable[[BaseException], bool] = is_restarting) -> Any:
    """``open_()``, waited for with the shared outage policy while ``restarting`` says the error is a
    restart (benchmarks/chaos.py: a worker started during a PostgreSQL restart exited 2)."""

    def describe(exc: BaseException) -> str:
        reason = scrub(str(driver_error(exc)), url).strip().splitlines()
        return reason[-1].strip() if reason else type(exc).__name__

    return Outage(retry_s, log or _stderr, describe=describe).call(open_, restarting)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def driver_error(exc: BaseException) -> BaseException:
    """The database driver's own error behind ``exc`` ("Connection refused", "Access denied"...).

    Optuna raises what fails inside its sessions as ``StorageInternalError`` ("An exception is
    raised during the commit. This typically happens due to invalid data..."), with the
    SQLAlchemy error, which holds the driver's, as its cause: read-only commands, which open the
    storage without creating tables, met the connection error there first and showed Optuna's text.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        orig = getattr(seen, "orig", None)
        if orig is not None:
            return orig
        seen = seen.__cause__ or seen.__context__
    return exc


def _enable_wal(url: str) -> None:
    # WAL lets readers (the dashboard, other workers) proceed while one worker writes; the mode
    # is stored in the database file. It is set before Optuna opens the file: SQLite ignores the
    # switch while another connection of the process holds a transaction.
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs(url))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    finally:
        engine.dispose()
    if str(mode).lower() not in ("wal", "memory"):  # e.g. a network file system without shared memory
        raise HpoError(f"SQLite storage {url}: cannot switch to WAL mode (got {mode!r}); use a file on a local disk")


# --- Riding out database outages ---------------------------------------------------------------

# sqlalchemy.exc.TimeoutError: every pooled connection busy past the pool's timeout (the storage
# proxy serves 16 calls on 4 connections; 64 workers joining at once each read the whole study).
_TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
              sqlalchemy.exc.TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True for errors that say "the database is not there right now", not "your request is wrong".

    Optuna wraps SQLAlchemy errors raised at commit in ``StorageInternalError``; the cause tells.
    A driver's own error counts too: SQLAlchemy lets it through unwrapped from a few dialect
    calls (setting a new connection's isolation level: chaos.py on MariaDB, a checkpoint's write
    met a restart there and the trial failed with pymysql's "Lost connection").
    """
    found, driver = _database_error(exc)
    if not found:
        return False
    if type(driver).__module__ == "sqlite3":
        # SQLite reports "no such table" and friends as OperationalError too; only a busy or
        # locked file goes away by waiting.
        return any(word in str(driver).lower() for word in ("locked", "busy"))
    return True


# Deadlocks and lock waits: MySQL/MariaDB error codes, PostgreSQL SQLSTATEs.
_MYSQL_CONFLICTS = (1205, 1213)  # lock wait timeout, deadlock
_PG_CONFLICTS = ("40P01", "40001", "55P03")  # deadlock, serialization failure, lock not available


def is_conflict(exc: BaseException) -> bool:
    """True for a transient error of a database that is there but refused this transaction for now
    (a deadlock, a lock it could not get, SQLite's busy file): retried as an outage is, said as "busy"."""
    if not is_transient(exc):
        return False
    _, driver = _database_error(exc)
    if type(driver).__module__ == "sqlite3":
        return True  # transient on SQLite: its file was locked or busy
    args = getattr(driver, "args", ())
    return getattr(driver, "sqlstate", None) in _PG_CONFLICTS or (bool(args) and args[0] in _MYSQL_CONFLICTS)


def _database_error(exc: BaseException) -> tuple[bool, BaseException | None]:
    """(whether ``exc`` or one of its causes is a connection-level database error, the driver's own
    exception in it): SQLAlchemy's (its ``orig``), or a DB-API driver's raised unwrapped (PEP 249's
    OperationalError or InterfaceError)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, _TRANSIENT):
            return True, getattr(seen, "orig", None)
        if (type(seen).__module__.split(".")[0] in ("pymysql", "MySQLdb", "psycopg", "psycopg2", "sqlite3")
                and any(cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(seen).__mro__)):
            return True, seen
        seen = seen.__cause__ or seen.__context__
    return False, None


# Writes whose first attempt may have committed when the connection broke (creating a study or a
# trial, deleting a study, changing a trial's state) are never run blindly again: ResilientStorage
# overrides each to check, after a connection error, whether the attempt landed.
_NOT_LANDED = NOT_LANDED


class ResilientStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose calls survive a database restart: connection errors are retried.

    Each call that fails with a connection error is tried again after 0.5, 1, 2, 4, 8, 8...
    seconds (with jitter, so workers do not reconnect in lockstep) until ``retry_s`` have
    passed; then the error is raised. The first failure of an outage and the recovery are
    logged once. A write that may have committed before the connection broke is not run again
    blindly: a new trial or a state change carries a token (:mod:`hpo.storage.database.trial_writes`)
    that tells whether it landed, a study is looked up by its name; and a trial's state changes by one
    conditional update, so two workers never both claim a WAITING trial, on SQLite either.

    Example::

        storage = open_storage("postgresql+psycopg://hpo@db/hpo", log=print)
        # the database restarts: "storage unreachable (...): retrying for up to 300 s" ...
        #                        "storage reachable again after 11.2 s"
    """

    def __init__(self, url: str, *, retry_s: float = RETRY_S, log: Log = _quiet, **kwargs: Any) -> None:
        self._retry_s = retry_s
        self._outage = Outage(retry_s, log, describe=self._describe, busy=is_conflict)
        self._stale_checked: dict[int, float] = {}  # study id -> when this process may look for stale trials next
        self._searchers = 1  # worker processes taking turns at that search (share_stale_search)
        self._stamps = threading.local()  # the Stamp of the thread's worker loop (stamping)
        self._beaten: set[int] = set()  # trials created with their first heartbeat, not yet beaten by the thread
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_outage"]  # a lock and a closure: a copy in another process waits as long, quietly
        del state["_stamps"]  # a worker loop's, in this process
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._outage = Outage(self._retry_s, describe=self._describe, busy=is_conflict)
        self._stale_checked = {}
        self._searchers = 1
        self._stamps = threading.local()
        self._beaten = set()

    def _describe(self, exc: BaseException) -> str:
        reason = scrub(str(driver_error(exc)), self.url).strip().splitlines()
        return reason[0] if reason else type(exc).__name__

    # --- the search for stale trials, throttled ---

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The trials of dead workers, looked for at most once per half heartbeat interval per study
        by all the workers together (none found in between). Optuna searches at every trial start and
        hpo's waiting loop at every poll, which for short trials or many waiting workers was a search
        per trial per worker; with a search per half interval per worker, 1,000 workers on 5-minute
        trials would search 200 times a second, each reading the heartbeats of a thousand running
        trials. A trial is stale only after a grace period of several intervals, so it is found as
        late as before, give or take half an interval. Each search is one query that returns the
        stale trials alone (:func:`~hpo.storage.optuna_private.stale_trial_ids`; Optuna's reads every
        running trial and its heartbeat)."""
        now = time.monotonic()
        if now < self._stale_checked.get(study_id, now):
            return []
        self._stale_checked[study_id] = now + self._stale_search_gap()
        return self._call("_get_stale_trial_ids", lambda: stale_trial_ids(self, study_id, self._grace_period_s()))

    def share_stale_search(self, searchers: int) -> None:
        """``searchers`` worker processes (this one among them) look for stale trials of the study in
        turns: each waits ``searchers`` times as long between its searches, a random 0.5x to 1.5x of it
        so that workers started together drift apart, and together they still search about once per
        half heartbeat interval. Each worker tells it from the running trials it counts (a dead
        worker's trial counts too: its searches are then a little more frequent, never fewer).

        Example::

            storage.share_stale_search(32)   # 32 trials running: this process searches every ~80 s
        """
        self._searchers = max(1, int(searchers))

    def _stale_search_gap(self) -> float:
        half = (self.heartbeat_interval or 0) / 2
        if self._searchers == 1:
            return half
        return half * self._searchers * random.uniform(0.5, 1.5)

    def _grace_period_s(self) -> int:
        """Optuna's rule: the grace period given, else two heartbeat intervals."""
        assert self.heartbeat_interval is not None
        return self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval

    # --- a worker's trials, stamped at creation ---

    @contextmanager
    def stamping(self, user_attrs: dict[str, Any], heartbeat: bool = True) -> Iterator[None]:
        """Within the block, each trial this thread creates from no template (``study.ask()``, as
        ``study.optimize`` does) carries ``user_attrs`` and, with heartbeats on, its first heartbeat,
        inserted in the transaction that creates it (:func:`trial_writes.create_trial`); a queued
        trial it claims gets its first heartbeat in the claim's transaction. Only a loop
        that runs its trials through ``study.optimize``, whose heartbeat thread keeps beating, may
        ask for it: a trial made by a bare ``study.ask()`` would otherwise be found stale once its
        grace period passed. ``heartbeat=False``: the user attributes only (the storage proxy's
        client whose loop runs no heartbeat thread)."""
        previous = getattr(self._stamps, "stamp", None)
        self._stamps.stamp = trial_writes.Stamp(dict(user_attrs), heartbeat and self.heartbeat_interval is not None)
        try:
            yield
        finally:
            self._stamps.stamp = previous

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat, but the first beat of a trial created with its heartbeat is that one."""
        if trial_id in self._beaten:
            self._beaten.discard(trial_id)
            return
        self._call("record_heartbeat", lambda: optuna.storages.RDBStorage.record_heartbeat(self, trial_id))

    # --- writes that are checked before they are tried again ---

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None,
                          token: str | None = None) -> FrozenTrial:
        token = token or trial_writes.new_token()
        stamp = getattr(self._stamps, "stamp", None)

        def landed() -> Any:
            trial_id = trial_writes.created_trial(self, study_id, token)
            return _NOT_LANDED if trial_id is None else self.get_trial(trial_id)

        frozen = self._call("_create_new_trial",
                            lambda: trial_writes.create_trial(self, study_id, template_trial, token, stamp), landed)
        if stamp is not None and stamp.heartbeat and template_trial is None:
            self._beaten.add(frozen._trial_id)
        return frozen

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None,
                               token: str | None = None) -> bool:
        # A signal waits for the write (shield.py); a finish is Optuna's tell, which must not raise
        # at all: the worker's loop raises at its next turn, the trial finished.
        with shield.shielded(raise_after=not state.is_finished()):
            return self._set_state(trial_id, state, values, token)

    def _set_state(self, trial_id: int, state: TrialState, values: Sequence[float] | None, token: str | None) -> bool:
        stamp = getattr(self._stamps, "stamp", None)
        if state == TrialState.RUNNING and stamp is not None and stamp.heartbeat:  # a worker loop claims a re-run
            claimed = self._write_state(trial_id, state, values, token, heartbeat=True)
            if claimed:
                self._beaten.add(trial_id)
            return claimed
        return self._write_state(trial_id, state, values, token)

    def _write_state(self, trial_id: int, state: TrialState, values: Sequence[float] | None, token: str | None,
                     heartbeat: bool = False) -> bool:
        if token is None and not trial_writes.needs_token(state):  # a finish of our own trial: its state says whether it landed
            return self._call(
                "set_trial_state_values", lambda: trial_writes.set_state(self, trial_id, state, values, None),
                lambda: True if trial_writes.state_of(self, trial_id) == state else _NOT_LANDED,
            )
        token = token or trial_writes.new_token()
        return self._call(
            "set_trial_state_values", lambda: trial_writes.set_state(self, trial_id, state, values, token, heartbeat),
            lambda: True if trial_writes.last_write(self, trial_id) == token else _NOT_LANDED,
        )

    # --- writes resent by a client whose reply was lost (the storage proxy's workers) ---

    def create_new_trial_once(self, study_id: int, template_trial: FrozenTrial | None, token: str,
                              first: bool = False) -> int:
        """The id of the trial made with ``token``: made now, or by an earlier call with the same token
        (``first``: the client says no earlier call had it, so none is looked for)."""
        made = None if first else self._call("created_trial", lambda: trial_writes.created_trial(self, study_id, token))
        if made is not None:
            return made
        return self._create_new_trial(study_id, template_trial, token)._trial_id

    def set_trial_state_values_once(self, trial_id: int, state: TrialState, values: Sequence[float] | None,
                                    token: str, first: bool = False) -> bool:
        """:meth:`set_trial_state_values` with ``token``; True at once if an earlier call with it made the
        change (``first``: the client says no earlier call had it)."""
        if not first and self._call("last_write", lambda: trial_writes.last_write(self, trial_id)) == token:
            return True
        return self.set_trial_state_values(trial_id, state, values, token)

    def fail_and_requeue(self, study: optuna.Study, trial_id: int) -> FrozenTrial | None:
        """A dead worker's trial failed and its re-run queued (:func:`retry_callback`'s copy) in one
        transaction (:func:`trial_writes.fail_and_requeue`): the failed trial, or None when it
        finished meanwhile (its worker was alive after all, or another reaper failed it first).
        A signal waits for it (:mod:`~hpo.storage.database.shield`)."""
        with shield.shielded():
            dead = self._call("get_trial", lambda: optuna.storages.RDBStorage.get_trial(self, trial_id))
            if dead.state != TrialState.RUNNING:
                return None
            rerun = retry_callback().template(study, dead)
            token = trial_writes.new_token()
            failed = self._call("fail_and_requeue", lambda: trial_writes.fail_and_requeue(self, dead, rerun, token),
                                lambda: True if trial_writes.last_write(self, trial_id) == token else _NOT_LANDED)
            return dead if failed else None

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # Named here, not inside each attempt, so that a retry looks for the study the first attempt made.
        name = study_name or f"{DEFAULT_STUDY_NAME_PREFIX}{uuid.uuid4()}"

        def landed() -> Any:
            try:  # the name is ours: studies are created under hpo's creation lock
                return optuna.storages.RDBStorage.get_study_id_from_name(self, name)
            except KeyError:
                return _NOT_LANDED

        return self._call("create_new_study",
                          lambda: optuna.storages.RDBStorage.create_new_study(self, directions, name), landed)

    def delete_study(self, study_id: int) -> None:
        def landed() -> Any:
            try:
                optuna.storages.RDBStorage.get_study_name_from_id(self, study_id)
            except KeyError:
                return None  # gone: deleted by the attempt whose reply was lost
            return _NOT_LANDED

        return self._call("delete_study", lambda: optuna.storages.RDBStorage.delete_study(self, study_id), landed)

    # --- retrying ---

    def retrying(self, name: str, read: Callable[[], Any]) -> Any:
        """``read()`` (a read of this storage's database made outside Optuna's methods), retried
        after connection errors as the storage's own reads are."""
        return self._call(name, read)

    def _call(self, name: str, attempt: Callable[[], Any], landed: Callable[[], Any] | None = None) -> Any:
        """``attempt()``, retried after connection errors by the outermost call only.

        ``landed``: for a write that may have committed before its connection broke, called before
        each retry; what it returns (unless ``_NOT_LANDED``) is the write's result, and no retry runs.
        """
        depth = getattr(_nesting, "depth", 0)
        if depth:
            return attempt()
        _nesting.depth = 1
        try:
            return self._retrying(name, attempt, landed)
        finally:
            _nesting.depth = 0

    def ride_out(self, attempt: Callable[[], Any]) -> Any:
        """``attempt()``, something other than a storage call on this database (taking its lock), tried
        again after connection errors as the storage's own calls are."""
        return self._call("ride_out", attempt)

    def _retrying(self, name: str, attempt: Callable[[], Any], landed: Callable[[], Any] | None) -> Any:
        return self._outage.call(attempt, is_transient, landed)


_nesting = threading.local()


def _make_retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, lambda: method(self, *args, **kwargs))

    return wrapper


for _name in RDB_RETRIABLE_METHODS:
    if _name not in ResilientStorage.__dict__:  # record_heartbeat retries inside its own override
        setattr(ResilientStorage, _name, _make_retrying(_name))
