"""Interrupted, killed, restarted: no trial runs twice, no saved epoch is lost, no worker is orphaned.

Each test reproduces one defect of issue 21 on real databases (a SQLite file, and a fresh
PostgreSQL and MariaDB database per test), real processes and real signals.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
import spawned
from db_servers import ADMIN_URLS, _admin_engine, free_port, study_database
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.training.checkpoints import TrialCheckpoints
from hpo.cli import main
from hpo.data import load_dataset
from hpo.search.objective import Objective, TrialListener
from hpo.record import TrialRecord
from hpo.record import ARTIFACT_DIR_ATTR as ATTR
from hpo.storage.artifacts.stores import FolderStore, artifact_store
from hpo.storage.database.resilient import open_storage
from hpo.search.study import open_study
from hpo.search.workers import run_worker, work

BACKENDS = ["sqlite", "postgres", "mysql"]


# --- 1. A WAITING re-run is claimed by exactly one worker -----------------------------------------

# The servers' runs are e2e tests (a server's claim is also shown in-process by the lost-reply tests below).
@pytest.mark.parametrize("kind", ["sqlite", *(pytest.param(k, marks=pytest.mark.e2e) for k in ("postgres", "mysql"))])
def test_a_waiting_trial_is_claimed_by_exactly_one_of_four_processes(kind, tmp_path) -> None:
    waiting, workers = 40, 4
    with study_database(kind, tmp_path) as url:
        study = optuna.create_study(study_name="claims", storage=open_storage(url))
        for i in range(waiting):
            study.enqueue_trial({"x": i})
        ctx = multiprocessing.get_context("spawn")
        start, out = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=spawned.claim_waiting, args=(url, "claims", waiting, start, out)) for _ in range(workers)]
        for p in procs:
            p.start()
        claims = [number for _ in procs for number in out.get(timeout=120)]
        for p in procs:
            p.join(timeout=30)
        assert [p.exitcode for p in procs] == [0] * workers
        twice = sorted({n for n in claims if claims.count(n) > 1})
        assert twice == [], f"trials handed to two workers: {twice}"
        assert sorted(claims) == list(range(waiting))


class LostReply:
    """Breaks the connection right after a matching write commits: the write landed, its caller
    hears a connection error (what a database restart or a dropped link does mid-commit).

    ``arm(pattern)``: the next commit of a transaction that ran a statement matching ``pattern``
    raises OperationalError once it has committed.
    """

    def __init__(self, storage: optuna.storages.RDBStorage) -> None:
        self.pattern: re.Pattern[str] | None = None
        self.hit = False
        self.fired = 0
        sqlalchemy.event.listen(storage.engine, "after_cursor_execute", self._statement)
        sqlalchemy.event.listen(storage.scoped_session, "after_commit", self._committed)

    def arm(self, pattern: str) -> None:
        self.pattern, self.hit = re.compile(pattern, re.IGNORECASE | re.DOTALL), False

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.pattern is not None and self.pattern.search(statement):
            self.hit = True

    def _committed(self, session) -> None:
        if self.hit:
            self.pattern, self.hit = None, False
            self.fired += 1
            raise sqlalchemy.exc.OperationalError("COMMIT", None, ConnectionResetError("connection reset after COMMIT"))


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_claim_whose_reply_was_lost_is_claimed_once_and_not_left_running(kind, tmp_path) -> None:
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url)
        study = optuna.create_study(study_name="lost-claim", storage=storage)
        study.enqueue_trial({"x": 1.0})
        lost = LostReply(storage)
        lost.arm(r"^\s*UPDATE trials SET")
        trial = study.ask()
        assert lost.fired == 1
        trials = study.get_trials(deepcopy=False)
        assert [(t.number, t.state) for t in trials] == [(0, TrialState.RUNNING)], "the claim was lost to its own retry"
        assert trial.number == 0


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_new_trial_whose_reply_was_lost_is_created_once(kind, tmp_path) -> None:
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url)
        study = optuna.create_study(study_name="lost-create", storage=storage)
        lost = LostReply(storage)
        lost.arm(r"^\s*INSERT INTO trials\b")
        trial = study.ask()
        assert lost.fired == 1
        assert [(t.number, t.state) for t in study.get_trials(deepcopy=False)] == [(trial.number, TrialState.RUNNING)]


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_stamped_new_trial_whose_reply_was_lost_is_created_once_with_one_heartbeat(kind, tmp_path) -> None:
    """A worker's trial carries its worker's name and first heartbeat from its creation: the retry
    after a lost reply finds the trial the first attempt made, with both, and makes no second."""
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url, grace_period=60)
        study = optuna.create_study(study_name="lost-stamped", storage=storage)
        lost = LostReply(storage)
        lost.arm(r"^\s*INSERT INTO trials\b")
        with storage.stamping({"worker": "here:1"}):
            trial = study.ask()
        assert lost.fired == 1
        (made,) = study.get_trials(deepcopy=False)
        assert (made.number, made.state, made.user_attrs) == (trial.number, TrialState.RUNNING, {"worker": "here:1"})
        with storage.engine.connect() as conn:
            beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).scalars().all()
        assert beats == [made._trial_id]


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_workers_trial_is_created_with_its_name_and_first_heartbeat_in_one_transaction(kind, tmp_path) -> None:
    """The worker's name and the trial's first heartbeat were transactions of their own after the
    trial's creation (each re-reading the trial), 8 of the 14 statements a trial cost hpo over plain
    Optuna (benchmarks/storage_cost.py); now they are rows of the creation's transaction, and the
    heartbeat thread's first beat adds nothing."""
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url, grace_period=60)  # a beat every 10 s: the trial ends before a second
        study = optuna.create_study(study_name="stamped", storage=storage)
        sent: list[str] = []
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                                lambda conn, cursor, statement, *rest: sent.append(" ".join(statement.split())))
        sqlalchemy.event.listen(storage.engine, "commit", lambda conn: sent.append("COMMIT"))
        work(study, lambda t: t.suggest_float("x", 0, 1), 1, poll_s=0.05)
        transactions, current = [], []
        for statement in sent:
            if statement == "COMMIT":
                transactions.append(current)
                current = []
            else:
                current.append(statement)
        (creation,) = [t for t in transactions if any(s.startswith("INSERT INTO trials ") for s in t)]
        touching = lambda table: [s for t in transactions for s in t if table in s and not s.startswith("SELECT")]  # noqa: E731
        written = touching("trial_user_attributes") + touching("trial_heartbeats")
        assert len(written) == 2 and all(s in creation for s in written)
        assert not [s for t in transactions for s in t if s.startswith("SELECT") and "FROM trial_heartbeats" in s]
        (trial,) = study.get_trials(deepcopy=False)
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs == {"worker": f"{socket.gethostname()}:{os.getpid()}"}


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_rerun_claimed_by_a_worker_loop_beats_from_its_claim(kind, tmp_path) -> None:
    """A queued re-run claimed in a worker loop gets its first heartbeat in the claim's transaction.
    Before, its first beat came from Optuna's heartbeat thread after the claim: a worker killed in
    between left the trial RUNNING with no heartbeat, which no stale-trial search looks at (the
    chaos run through the proxy: trial 88). A losing claim writes no heartbeat."""
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url, grace_period=1)
        study = optuna.create_study(study_name="claimed", storage=storage)
        study.enqueue_trial({"x": 0.5})
        with storage.stamping({"worker": "here:1"}), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna: heartbeats are meant for study.optimize
            trial = study.ask()  # claims the queued trial; then the worker dies: nothing beats
            assert storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING) is False  # claimed already
        with storage.engine.connect() as conn:
            beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).scalars().all()
        assert beats == [trial._trial_id]
        time.sleep(2.5)  # past the grace period (SQLite's clock has whole seconds)
        storage._stale_checked.clear()
        assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_a_trial_asked_for_outside_a_worker_loop_has_no_heartbeat_to_go_stale(tmp_path) -> None:
    """Only a worker loop, whose study.optimize keeps beating, stamps its trials: a bare study.ask()
    on a heartbeat storage gets no first heartbeat, so it is never failed as stale (as in Optuna)."""
    storage = open_storage(f"sqlite:///{tmp_path / 'ask.db'}", grace_period=1)
    study = optuna.create_study(study_name="asked", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna: heartbeats are meant for study.optimize
        trial = study.ask()
    time.sleep(2.5)
    storage._stale_checked.clear()
    assert storage._get_stale_trial_ids(study._study_id) == []
    assert study.trials[trial.number].user_attrs == {}


def test_a_rerun_claimed_by_a_worker_is_named_after_it(tmp_path) -> None:
    """A queued trial that carries another worker's name (enqueued with a copy of a dead trial's
    attributes; hpo's own retry copy no longer carries it) is named after the worker that claims it."""
    storage = open_storage(f"sqlite:///{tmp_path / 'rerun.db'}", grace_period=60)
    study = optuna.create_study(study_name="rerun", storage=storage)
    study.enqueue_trial({"x": 0.5}, user_attrs={"worker": "gone:1"})
    work(study, lambda t: t.suggest_float("x", 0, 1), 1, poll_s=0.05)
    (trial,) = study.trials
    assert trial.params == {"x": 0.5} and trial.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.parametrize("kind", BACKENDS)
def test_finishing_a_trial_whose_reply_was_lost_is_one_finish(kind, tmp_path) -> None:
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url)
        study = optuna.create_study(study_name="lost-finish", storage=storage)
        trial = study.ask()
        lost = LostReply(storage)
        lost.arm(r"^\s*UPDATE trials SET")
        study.tell(trial, 0.5)
        assert lost.fired == 1
        (done,) = study.get_trials(deepcopy=False)
        assert done.state == TrialState.COMPLETE and done.value == 0.5


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED])
def test_a_trial_finished_by_its_worker_writes_no_token(state, tmp_path) -> None:
    """Only the trial's own worker completes or prunes it, so after a lost reply its state tells
    whether the finish landed (the test above); the token's write was one statement per trial."""
    storage = open_storage(f"sqlite:///{tmp_path / 'finish.db'}")
    study = optuna.create_study(study_name="finish", storage=storage)
    trial = study.ask()
    created = storage.get_trial_system_attrs(trial._trial_id)["hpo:write"]
    sent: list[str] = []
    listen = lambda conn, cursor, statement, *rest: sent.append(statement)  # noqa: E731
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
    study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
    writes = [s for s in sent if re.match(r"\s*(INSERT INTO|UPDATE) trial_system_attributes", s)]
    assert writes == []  # Optuna's own re-read of the finished trial still reads them
    assert storage.get_trial(trial._trial_id).state == state
    assert storage.get_trial_system_attrs(trial._trial_id)["hpo:write"] == created


def test_the_search_for_stale_trials_runs_once_per_half_heartbeat_interval(tmp_path) -> None:
    """Optuna searches at every trial start (and hpo's waiting loop at every poll), each time reading
    every running trial with its heartbeat; a trial goes stale only after several intervals."""
    storage = open_storage(f"sqlite:///{tmp_path / 'stale.db'}", grace_period=4)  # heartbeat every 1 s
    study = optuna.create_study(study_name="stale", storage=storage)
    study.ask()
    sent: list[str] = []
    listen = lambda conn, cursor, statement, *rest: sent.append(statement)  # noqa: E731
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
    for _ in range(3):
        optuna.storages.fail_stale_trials(study)
    searches = sum("trial_heartbeats" in s for s in sent)
    time.sleep(0.6)  # past half the interval: searched again
    optuna.storages.fail_stale_trials(study)
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
    assert (searches, sum("trial_heartbeats" in s for s in sent)) == (1, 2)


def test_workers_take_turns_at_the_search_for_stale_trials(tmp_path, monkeypatch) -> None:
    """Each process searched once per half interval: 32 workers made 32 searches where one does
    (benchmarks/storage_cost.py, 1,000 trials, 32 workers: a search per finished trial, 450 kB of
    buffers each; 1,000 workers on 5-minute trials would make 200 a second). Told how many share it,
    the workers together search about as often as one did. A clock of our own keeps it exact."""
    from hpo.storage.database import resilient

    clock = [1000.0]
    monkeypatch.setattr(resilient.time, "monotonic", lambda: clock[0])
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    workers = [open_storage(url, grace_period=4) for _ in range(4)]  # heartbeat every 1 s: a search per 0.5 s
    study_id = optuna.create_study(study_name="turns", storage=workers[0])._study_id
    searches: list[int] = []
    for index, storage in enumerate(workers):
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                                lambda conn, cursor, statement, *rest, i=index: searches.append(i)
                                if "trial_heartbeats" in statement else None)
        storage.share_stale_search(len(workers))
    for _ in range(200):  # 20 s, each worker polling every 0.1 s
        for storage in workers:
            storage._get_stale_trial_ids(study_id)
        clock[0] += 0.1
    # Alone, each would search 41 times (164 in all); in turns, each every 1 to 3 s: 7 to 21 times.
    assert all(7 <= searches.count(i) <= 21 for i in range(len(workers))), searches
    assert len(searches) <= 60, len(searches)


def test_a_signal_between_failing_a_dead_workers_trial_and_queueing_its_rerun_loses_neither(tmp_path) -> None:
    """chaos.py on MariaDB (178a854): a command was SIGTERMed as it failed a killed worker's trial,
    between Optuna's two writes (the FAIL, then the re-run's queueing), and the trial stayed FAIL
    with no re-run. Here the signal comes at that moment (as the FAIL's write returns): the re-run
    is queued all the same, and the interrupt still ends the step."""
    from hpo.search import workers

    storage = open_storage(f"sqlite:///{tmp_path / 'stale.db'}", grace_period=2)
    study = optuna.create_study(study_name="stale", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna: heartbeats are meant for study.optimize
        dead = study.ask()
        dead.suggest_float("x", 0, 1)
        storage.record_heartbeat(dead._trial_id)
    time.sleep(3.5)  # past the grace period: its worker is taken for dead
    from hpo.storage.database import trial_writes
    both = trial_writes.fail_and_requeue
    sent: list[str] = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                            lambda conn, cursor, statement, *rest: sent.append(" ".join(statement.split())))
    sqlalchemy.event.listen(storage.engine, "commit", lambda conn: sent.append("COMMIT"))

    def then_ctrl_c(*args: object, **kwargs: object) -> bool:  # the FAIL and the re-run land; then a signal
        landed = both(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs in here
        return landed

    trial_writes.fail_and_requeue = then_ctrl_c
    try:
        with pytest.raises(KeyboardInterrupt), workers._interruptible():
            workers._fail_stale_trials(study)
    finally:
        trial_writes.fail_and_requeue = both
    states = sorted(t.state.name for t in study.get_trials(deepcopy=False))
    assert states == ["FAIL", "WAITING"], states  # the dead trial failed, and its re-run queued
    # ...in one transaction: a process killed between two (SIGKILL, which no shield holds) lost the
    # re-run (chaos.py through the proxy at 1a46669: trial 73, its reaper's proxy killed mid-round)
    fail = next(i for i, st in enumerate(sent) if st.startswith("UPDATE trials SET state"))
    rerun = next(i for i, st in enumerate(sent) if st.startswith("INSERT INTO trials "))
    assert "COMMIT" not in sent[min(fail, rerun):max(fail, rerun)]


def test_a_signal_during_a_trials_finishing_write_ends_the_worker_after_it(tmp_path, monkeypatch) -> None:
    """chaos.py on SQLite (8b6113a): a Ctrl-C landed in the write that finishes a trial (Optuna's
    tell); Optuna's clean-up after it then failed with UnboundLocalError ('updated_state'), a
    traceback and exit 1, the trial left RUNNING for another worker to find dead. The signal now
    waits for the write: the trial is COMPLETE, and the worker stops at its loop's next turn."""
    from hpo.search import workers
    from hpo.storage.database import trial_writes

    storage = open_storage(f"sqlite:///{tmp_path / 'finish.db'}")
    study = optuna.create_study(study_name="finish", storage=storage)
    set_state = trial_writes.set_state

    def ctrl_c_inside(storage_, trial_id, state, *rest):  # as the trial's COMPLETE is being written
        if state == TrialState.COMPLETE:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs in here
        return set_state(storage_, trial_id, state, *rest)

    monkeypatch.setattr(trial_writes, "set_state", ctrl_c_inside)
    with pytest.raises(KeyboardInterrupt):
        workers.work(study, lambda trial: trial.suggest_float("x", 0, 1), budget=3)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states == ["COMPLETE"], states


def _ctrl_c_in_the_tells_read(tmp_path, ends: Callable[[float], float],
                              raises: type[BaseException] | tuple[type[BaseException], ...]) -> tuple[optuna.Study, list[bool]]:
    """A worker's study whose first trial's objective ends with ``ends(x)`` (a return or a raise),
    and Ctrl-C lands in the read that begins Optuna's tell of it; the worker stops with ``raises``.
    Returns the study and [True, True] once the signal was sent."""
    from hpo.search import workers

    storage = open_storage(f"sqlite:///{tmp_path / 'tell.db'}")
    study = optuna.create_study(study_name="tell", storage=storage)
    ended: list[bool] = []
    get_trial = study._storage.get_trial

    def ctrl_c_in_the_read(trial_id: int):
        if len(ended) == 1:
            ended.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs in here
        return get_trial(trial_id)

    study._storage.get_trial = ctrl_c_in_the_read

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        ended.append(True)
        return ends(x)

    with pytest.raises(raises):
        workers.work(study, objective, budget=3)
    return study, ended


def test_a_signal_while_optuna_reads_a_finished_trial_ends_the_worker_after_the_finish(tmp_path) -> None:
    """chaos.py through the proxy (d22386f): a SIGTERM landed in the read that begins Optuna's tell,
    after the objective returned and before the state's write (which was shielded); Optuna's clean-up
    failed with UnboundLocalError ('updated_state'), a traceback and exit 1. The whole finish now
    waits: the trial is COMPLETE, and the worker stops at its loop's next turn."""
    study, sent = _ctrl_c_in_the_tells_read(tmp_path, lambda x: x, KeyboardInterrupt)
    assert len(sent) == 2, "the signal was not sent in the tell's read"
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["COMPLETE"]


def _own_bug(x: float) -> float:
    raise ValueError("the objective's own bug")


def test_a_trial_failed_by_its_own_error_is_not_rerun_when_a_signal_lands_in_its_finish(tmp_path) -> None:
    """A trial whose objective raised is FAIL for a reason a re-run would repeat: the signal that
    lands while Optuna writes that FAIL stops the worker and queues no re-run (the loop's own
    re-queue acts only on a trial a signal stopped before the objective's guard began)."""
    study, sent = _ctrl_c_in_the_tells_read(tmp_path, _own_bug, (KeyboardInterrupt, ValueError))
    assert len(sent) == 2, "the signal was not sent in the tell's read"
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["FAIL"]


class _Killed(BaseException):
    """The process dying (SIGKILL) at this point: nothing after it runs, no handler sees it."""


def _interrupted_trial_dies_at_its_fail(tmp_path, monkeypatch, after_write: bool) -> optuna.Study:
    """A worker's trial is stopped by Ctrl-C mid-objective, and the worker dies as the trial's FAIL
    is written (``after_write``: once it landed, else before)."""
    from hpo.search import workers

    storage = open_storage(f"sqlite:///{tmp_path / 'killed.db'}", grace_period=2)
    study = optuna.create_study(study_name="killed", storage=storage)
    set_state = storage.set_trial_state_values

    def dies_at_fail(trial_id, state, values=None, *rest):
        if state == TrialState.FAIL and not after_write:
            raise _Killed
        landed = set_state(trial_id, state, values, *rest)
        if state == TrialState.FAIL:
            raise _Killed
        return landed

    monkeypatch.setattr(storage, "set_trial_state_values", dies_at_fail)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted in here
        return 0.0

    # Optuna's clean-up after a tell that raised fails on its own (UnboundLocalError); a real
    # SIGKILL runs nothing at all after that point, and writes nothing more, as here
    with pytest.raises((_Killed, UnboundLocalError)):
        workers.work(study, objective, budget=1)
    monkeypatch.undo()
    return study


def test_a_worker_killed_right_after_its_stopped_trials_fail_leaves_a_rerun_queued(tmp_path, monkeypatch) -> None:
    """chaos.py through the proxy (d22386f): a worker stopped by a signal wrote its trial's FAIL, then
    was SIGKILLed before it queued the re-run (during a database restart, which made it wait): trial
    90 stayed FAIL with no re-run. The re-run is now queued before the FAIL is written."""
    study = _interrupted_trial_dies_at_its_fail(tmp_path, monkeypatch, after_write=True)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["retry_history"] == [0]


def test_a_stopped_trial_whose_worker_died_before_its_fail_is_rerun_once(tmp_path, monkeypatch) -> None:
    """The worker dies after queueing the re-run and before writing the FAIL: the trial stays
    RUNNING until it is found stale, and failing it then queues no second re-run."""
    from hpo.search import workers

    study = _interrupted_trial_dies_at_its_fail(tmp_path, monkeypatch, after_write=False)
    assert sorted(t.state.name for t in study.get_trials(deepcopy=False)) == ["RUNNING", "WAITING"]
    time.sleep(3.5)  # past the grace period (SQLite's clock has whole seconds)
    other = optuna.load_study(study_name="killed", storage=open_storage(study._storage._backend.url, grace_period=2))
    workers._fail_stale_trials(other)
    assert [t.state.name for t in other.get_trials(deepcopy=False)] == ["FAIL", "WAITING"]


def test_a_call_that_waits_too_long_for_a_pooled_connection_waits_again(tmp_path) -> None:
    """`hpo storage-proxy` serves 16 calls at once on a pool of 4 connections: when 64 workers joined
    at once (each reading the study), calls waited past the pool's timeout and the workers died of a
    StorageInternalError. All connections busy is a database busy for now: retried like an outage."""
    from hpo.storage.database.resilient import ResilientStorage

    url = f"sqlite:///{tmp_path / 'pool.db'}"
    storage = ResilientStorage(url, retry_s=30, engine_kwargs={"pool_size": 2, "max_overflow": 0, "pool_timeout": 0.2})
    study = optuna.create_study(study_name="pool", storage=storage)
    held = [storage.engine.connect() for _ in range(2)]  # the pool's connections, busy elsewhere for a while
    release = threading.Timer(1.0, lambda: [c.close() for c in held])
    release.start()
    try:
        assert storage.get_study_id_from_name("pool") == study._study_id
    finally:
        release.join()


# --- 2. The checkpoint of a finished epoch is durable before the epoch is announced -----------------

# Same settings every trial, no pruning and no divergence verdicts: a trial's fate is decided by the
# test (an interrupt, a signal), not by its luck.
STEADY = [
    "space.lr_embedding=0.001", "space.lr_encoder=0.001", "space.lr_head=0.001", "space.clip_norm=1.0",
    "space.cycle_len=2", "space.dropout=0.1", "space.weight_decay=0.0001", "pruner.type=none",
    "divergence.threshold=100.0", "train.max_epochs=3", "train.threads=1",
]


class _Listen(TrialListener):
    """Calls ``at_epoch(trial, row)`` as each epoch is announced (where the worker prints its line)."""

    def __init__(self, at_epoch) -> None:
        self.at_epoch = at_epoch

    def epoch_finished(self, trial, row, max_epochs, verdict) -> None:
        self.at_epoch(trial, row)


def _study_with_folder(tmp_path: Path, name: str = "s") -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}", grace_period=60)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(0), pruner=optuna.pruners.NopPruner())
    study.set_user_attr(ATTR, str(tmp_path / "artifacts"))
    return study


@pytest.mark.e2e
def test_an_epoch_is_checkpointed_before_it_is_announced(small_spec, tmp_path) -> None:
    """Whatever stops the worker once it has printed ``epoch k/N`` (Ctrl-C, SIGTERM, SIGKILL), epoch k
    is in the store: the line is printed as the epoch is announced to the listeners."""
    spec = small_spec(*STEADY)
    study = _study_with_folder(tmp_path)
    store = artifact_store(study)
    found: dict[int, int | None] = {}

    def look(trial, row) -> None:
        saved = TrialCheckpoints(store, trial.user_attrs["checkpoint"]).load()
        found[row.epoch] = saved.epoch if saved else None

    work(study, Objective(spec, load_dataset(spec.data), listeners=[_Listen(look)], store=store), 1)
    assert found == {1: 1, 2: 2, 3: 3}  # the last too: see the next test


class _StopWhileEnding(TrialListener):
    """Ctrl-C while the trial, its epochs all trained, scores itself and draws its figures."""

    def __init__(self) -> None:
        self.epochs = 0
        self.fired = False

    def epoch_finished(self, trial, row, max_epochs, verdict) -> None:
        self.epochs += 1

    def trial_ending(self, trial, ending) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.e2e
def test_a_trial_stopped_after_its_last_epoch_finishes_without_training_again(small_spec, tmp_path) -> None:
    """Found by benchmarks/chaos.py: before, no checkpoint followed the last epoch, and a re-run trained it again."""
    spec = small_spec(*STEADY)
    study = _study_with_folder(tmp_path)
    store = artifact_store(study)
    data = load_dataset(spec.data)
    stop = _StopWhileEnding()
    with pytest.raises(KeyboardInterrupt):
        work(study, Objective(spec, data, listeners=[stop], store=store), 1)
    assert stop.epochs == 3
    again = _StopWhileEnding()
    again.fired = True  # lets it end this time
    work(study, Objective(spec, data, listeners=[again], store=store), 1)
    first, rerun = study.get_trials(deepcopy=False)
    assert (first.state, rerun.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert again.epochs == 0, "the re-run trained a finished epoch again"
    assert rerun.user_attrs["resumed_at_epoch"] == 4
    assert [r.epoch for r in TrialRecord.from_trial(rerun).epochs] == [1, 2, 3]
    assert rerun.value == max(r.val_accuracy for r in TrialRecord.from_trial(first).epochs)


class _BreaksAfter(io.RawIOBase):
    """A body that hands over ``good`` bytes, then is interrupted (Ctrl-C in the middle of a write)."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise KeyboardInterrupt
        n = min(len(buffer), self.left, 4096)
        buffer[:n] = b"n" * n
        self.left -= n
        return n


def test_an_interrupted_folder_write_leaves_the_previous_content_whole(tmp_path) -> None:
    store = FolderStore(tmp_path)
    store.write("checkpoint-k-a.pt", io.BytesIO(b"o" * 100_000))
    with pytest.raises(KeyboardInterrupt):
        store.write("checkpoint-k-a.pt", io.BufferedReader(_BreaksAfter(50_000)))
    with store.open_reader("checkpoint-k-a.pt") as f:
        assert f.read() == b"o" * 100_000
    assert store.ids() == ["checkpoint-k-a.pt"]  # no half-written file under any name


# A test run in the background inherits SIGINT ignored, and so would `hpo optimize`: Ctrl-C must reach it
# as in a terminal, so it starts through this, which puts SIGINT back to its default and execs.
_SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _optimize(tmp_path: Path, data_cache_dir: str, name: str, trials: int, *extra: str,
              grace: int = 60) -> tuple[subprocess.Popen[str], Path]:
    """``hpo optimize`` in its own process group, on a SQLite study in ``tmp_path``; (process, its log)."""
    from conftest import SMALL

    log = tmp_path / f"{name}-{len(list(tmp_path.glob(name + '-*.log')))}.log"
    args = [sys.executable, "-c", _SIGINT_DEFAULT, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", str(trials),
            *extra]
    for item in [*SMALL, f"data.cache_dir={data_cache_dir!r}", f"name={name}", "train.precision=fp32", *STEADY]:
        args += ["--set", item]
    env = {**os.environ, "HPO_STORAGE": f"sqlite:///{tmp_path / 'hpo.db'}", "HPO_ARTIFACTS": str(tmp_path / "artifacts"),
           "HPO_GRACE_PERIOD": str(grace), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return proc, log


def _wait_for_line(proc: subprocess.Popen[str], log: Path, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, f"ended ({proc.returncode}) before {pattern!r}:\n{text}"
        time.sleep(0.005)
    raise AssertionError(f"no {pattern!r} in {timeout} s:\n{log.read_text()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.e2e
def test_a_printed_epoch_survives_the_signal_that_follows_it(sig, tmp_path, data_cache_dir, small_spec) -> None:
    proc, log = _optimize(tmp_path, data_cache_dir, "sig", 1, "--jobs", "1", grace=2)
    try:
        _wait_for_line(proc, log, r"trial 0 epoch 1/3")
        os.killpg(proc.pid, sig)  # at once: as a Ctrl-C right after the line appears
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGKILL:
        time.sleep(3)  # past the grace period: the next worker fails the silent trial and re-runs it
    lines: list[str] = []
    outcome = run_worker(small_spec("name=sig", "train.precision=fp32", *STEADY), f"sqlite:///{tmp_path / 'hpo.db'}",
                         trials=1, log=lines.append, grace_period=2)
    assert outcome.ran == 1
    said = "\n".join(lines)
    assert "re-run of interrupted trial 0, same parameters; resumes at epoch 2 from its checkpoint" in said, \
        f"{log.read_text()}\n---\n{said}"


# --- 3. A re-run never reports a step its predecessor already reported --------------------------------

def _interrupt_at(epoch: int, once: list[bool]):
    def at_epoch(trial, row) -> None:
        if row.epoch == epoch and not once:
            once.append(True)
            raise KeyboardInterrupt  # Ctrl-C right after the epoch was reported
    return at_epoch


@pytest.mark.parametrize("lose_checkpoints", [False, True], ids=["resumes", "starts-over"])
def test_a_rerun_reports_no_step_its_predecessor_reported(lose_checkpoints, small_spec, tmp_path) -> None:
    spec = small_spec(*STEADY)
    study = _study_with_folder(tmp_path)
    store = artifact_store(study)
    data = load_dataset(spec.data)
    once: list[bool] = []
    with pytest.raises(KeyboardInterrupt):
        work(study, Objective(spec, data, listeners=[_Listen(_interrupt_at(2, once))], store=store), 1)
    first, rerun = study.get_trials(deepcopy=False)
    assert (first.state, rerun.state) == (TrialState.FAIL, TrialState.WAITING)
    if lose_checkpoints:  # the store lost them: the re-run starts from the first epoch
        TrialCheckpoints(store, first.user_attrs["checkpoint"]).remove()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work(study, Objective(spec, data, store=store), 1)
    repeated = [str(w.message) for w in caught if "already reported" in str(w.message)]
    assert repeated == []
    done = study.get_trials(deepcopy=False)[1]
    rows = TrialRecord.from_trial(done).epochs
    assert done.state == TrialState.COMPLETE and [r.epoch for r in rows] == [1, 2, 3]
    assert done.intermediate_values == {r.epoch: r.val_accuracy for r in rows}  # its own curve, nothing stale
    assert done.user_attrs.get("resumed_at_epoch") == (None if lose_checkpoints else 3)


def test_a_rerun_says_where_it_resumed_itself_not_where_its_predecessor_did(small_spec, tmp_path) -> None:
    """Optuna's retry copies the failed trial's user attributes, and the copy carried its predecessor's
    ``resumed_at_epoch`` (and ``worker``) until it wrote its own: a re-run that starts over, or one stopped
    before it loaded its checkpoint, said it had resumed where its predecessor did. benchmarks/chaos.py on
    MariaDB counted such a copy (trial 34: no line, no reported step) as a re-run that redid 2 epochs.
    Before the fix the last re-run here said 3: trial 1's resume."""
    spec = small_spec(*STEADY)
    study = _study_with_folder(tmp_path)
    store = artifact_store(study)
    data = load_dataset(spec.data)
    for epoch in (2, 3):  # trial 0 stops after epoch 2; its re-run, trial 1, resumes at 3 and stops after it
        with pytest.raises(KeyboardInterrupt):
            work(study, Objective(spec, data, listeners=[_Listen(_interrupt_at(epoch, []))], store=store), 1)
    first, resumed, queued = study.get_trials(deepcopy=False)
    assert resumed.user_attrs["resumed_at_epoch"] == 3 and queued.state == TrialState.WAITING
    assert "resumed_at_epoch" not in queued.user_attrs and "worker" not in queued.user_attrs  # it has run nowhere yet
    assert queued.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]  # what the chain shares, it keeps
    TrialCheckpoints(store, first.user_attrs["checkpoint"]).remove()  # the store lost them: it starts over
    work(study, Objective(spec, data, store=store), 1)
    done = study.get_trials(deepcopy=False)[2]
    assert done.state == TrialState.COMPLETE and "resumed_at_epoch" not in done.user_attrs
    assert done.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.skipif(not hasattr(optuna.Trial, "set_constraint"), reason="Optuna 5 constraints")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() here
def test_a_rerun_sets_its_own_diverged_constraint(tmp_path) -> None:
    """A trial stopped after it set its constraint (a SIGKILL after its last epoch) is re-run; the
    re-run's verdict is its own. Before, the copy inherited the constraint and Optuna ignored the
    re-run's with a warning ('this constraint ... is already set'): a re-run that converged stayed
    'diverged' to the sampler."""
    from optuna.distributions import FloatDistribution

    from hpo.search.objective import DIVERGED_CONSTRAINT
    from hpo.storage.database.resilient import retry_callback

    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    study = optuna.create_study(study_name="c", storage=storage)
    first = study.ask({"x": FloatDistribution(0, 1)})
    first.set_constraint(DIVERGED_CONSTRAINT, 1.0)
    storage.set_trial_state_values(first._trial_id, TrialState.FAIL)
    retry_callback()(study, storage.get_trial(first._trial_id))
    rerun = study.ask()  # claims the WAITING copy
    assert rerun.params == first.params
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "already set" would be an error here
        rerun.set_constraint(DIVERGED_CONSTRAINT, 0.0)
    assert storage.get_trial(rerun._trial_id).system_attrs[f"constraints:{DIVERGED_CONSTRAINT}"] == 0.0


# --- 5. Tables are created once, under a lock ------------------------------------------------------

@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.e2e
def test_workers_starting_at_once_create_the_artifact_tables_once(kind, tmp_path) -> None:
    """Three processes open the database store of a fresh database at the same moment."""
    ctx = multiprocessing.get_context("spawn")
    with study_database(kind, tmp_path) as url:
        start, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=spawned.open_database_store, args=(url, start, out)) for _ in range(3)]
        for p in procs:
            p.start()
        said = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    assert said == ["ok"] * 3


# --- 6. Every read-only command names the real connection error ------------------------------------

READ_ONLY = [["report"], ["importance"], ["replay"], ["plot"], ["clean"], ["dashboard", "--port", "0"]]


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
@pytest.mark.parametrize("where", ["nothing-listens", "wrong-password"])
def test_a_read_only_command_names_the_connection_error(where, command) -> None:
    if where == "nothing-listens":
        url, reason = f"postgresql+psycopg://me:topsecret@127.0.0.1:{free_port()}/hpo", "Connection refused"
    else:
        _admin_engine("mysql")  # skips (or fails under CI) without a server
        admin = make_url(ADMIN_URLS["mysql"])
        url = admin.set(username="hpo_no_such_user", password="topsecret").render_as_string(hide_password=False)
        reason = "Access denied for user 'hpo_no_such_user'"
    result = CliRunner().invoke(main, [*command, "--study", "s", "--storage", url])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage "), result.output
    assert reason in lines[0] and "An exception is raised during the commit" not in lines[0], lines[0]
    assert "topsecret" not in result.output and "Traceback" not in result.output


# --- 7. A command that fails before its first trial leaves no study behind ------------------------

@pytest.mark.parametrize("command", [
    ["optimize", "--trials", "1", "--jobs", "1"], ["optimize", "--trials", "1", "--jobs", "2"],
    ["optimize", "--trials", "1", "--jobs", "auto"], ["pretrain", "--set", "pretrain.epochs=1"],
], ids=lambda c: f"{c[0]}{'-jobs-' + c[4] if len(c) > 4 else ''}")
def test_a_command_that_fails_before_its_first_trial_leaves_no_study(command, tmp_path, small_spec) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    bad = ["--set", f"data.path={tmp_path / 'bad.csv'}", "--set", "train.precision=fp32", "--set", "name=fixme"]
    result = CliRunner().invoke(main, [command[0], "--study", "imdb", "--storage", url, *command[1:], *bad])
    assert result.exit_code == 2 and "bad.csv' does not exist" in result.output, result.output
    storage = open_storage(url)
    assert [s.study_name for s in storage.get_all_studies()] == []
    # the corrected command creates the study afresh, instead of being refused for a different spec
    open_study(small_spec("train.precision=fp32", "name=fixme"), storage)


# --- 4. Worker processes end when their parent dies, however it dies ------------------------------

def _workers_of(pid: int) -> list[int]:
    """The --jobs worker processes whose parent is ``pid`` (multiprocessing's resource tracker left out)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


@pytest.mark.e2e
def test_jobs_workers_end_when_hpo_optimize_is_killed(tmp_path, data_cache_dir) -> None:
    proc, log = _optimize(tmp_path, data_cache_dir, "orphans", 6, "--jobs", "2")
    workers: list[int] = []
    try:
        _wait_for_line(proc, log, r"(?s)\[worker \d\]   trial \d epoch 1/3.*\[worker \d\]   trial \d epoch 1/3")
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, log.read_text()
        proc.kill()  # SIGKILL: the parent gets no chance to stop them itself
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if _alive(pid)]
        assert left == [], f"workers {left} outlived hpo optimize:\n{log.read_text()}"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    said = [line for line in output.splitlines() if "died: stopping" in line]
    assert len(said) == 2 and all(f"hpo optimize (pid {proc.pid}) died: stopping" in line for line in said), output
    assert "Traceback" not in output
    trials = optuna.load_study(study_name="orphans", storage=open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")).trials
    assert [t.number for t in trials] == list(range(len(trials)))
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == [], [t.state.name for t in trials]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    rerun = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == len(rerun) == 2  # handed over as on Ctrl-C: each queued to run again
    assert sorted(t.system_attrs["failed_trial"] for t in rerun) == sorted(t.number for t in failed)


@pytest.mark.e2e
def test_ctrl_c_of_jobs_workers_hands_every_trial_over_once(tmp_path, data_cache_dir) -> None:
    """Ctrl-C reaches the command and its workers together, and the command then SIGTERMs the workers
    too: the second signal must not cut a worker's hand-over (Optuna's FAIL, the re-queue) short."""
    proc, log = _optimize(tmp_path, data_cache_dir, "ctrlc", 6, "--jobs", "2")
    try:
        _wait_for_line(proc, log, r"(?s)\[worker \d\]   trial \d epoch 1/3.*\[worker \d\]   trial \d epoch 1/3")
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole process group
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output, output
    assert output.count("interrupted: its running trial is queued to run again") == 2, output
    trials = optuna.load_study(study_name="ctrlc", storage=open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")).trials
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == [], [t.state.name for t in trials]
    failed = sorted(t.number for t in trials if t.state == TrialState.FAIL)
    rerun = sorted(t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING)
    assert len(failed) == 2 and rerun == failed, [(t.number, t.state.name) for t in trials]


# --- 8. Found by benchmarks/chaos.py: Ctrl-C while hpo starts is one line, no traceback ------------

def _torch_loading(pid: int) -> bool:
    """Whether the process has begun to import torch (its library is mapped): hpo.cli's imports are under way."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("moment", ["importing", "loading-data"])
def test_ctrl_c_while_hpo_starts_is_one_line(moment, tmp_path, data_cache_dir) -> None:
    """Before the fix: Python's traceback of ``import torch`` (or of the data loading), exit 1."""
    proc, log = _optimize(tmp_path, data_cache_dir, "early", 1, "--jobs", "1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "importing" and _torch_loading(proc.pid):
                break
            if moment == "loading-data" and "storage: " in log.read_text():
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 130 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith("interrupted"), output  # one message: what was done, how to resume


# Imports torch as ``hpo`` does and, the moment torch is looked for, sends itself a Ctrl-C from a
# weakref callback, where Python drops a KeyboardInterrupt with "Exception ignored in": as an import
# lock's callback did in benchmarks/chaos.py on SQLite.
_CTRL_C_IN_AN_IMPORT_CALLBACK = """
import importlib.abc, os, signal, sys, time, weakref
signal.signal(signal.SIGINT, signal.default_int_handler)

class _Thing:
    pass

class _CtrlCOnTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            thing = _Thing()
            ref = weakref.ref(thing, lambda ref: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))
            del thing, ref
        return None

sys.meta_path.insert(0, _CtrlCOnTorch())
sys.argv = ["hpo", *sys.argv[1:]]
from hpo.cli import main
main()
"""


def test_ctrl_c_dropped_by_an_import_callback_still_ends_hpo(tmp_path) -> None:
    """Before the fix the Ctrl-C went to the callback, Python printed "Exception ignored in" with its
    traceback and dropped it, and the command ran on (here to the report's own error; in chaos.py a
    trial, and the next Ctrl-C aborted the process). Held until the imports are done, it ends the
    command as one line, exit 130."""
    db = f"sqlite:///{tmp_path / 'none.db'}"
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN_AN_IMPORT_CALLBACK, "report", "--study", "imdb", "--storage", db],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert "Exception ignored" not in output and "Traceback" not in output, output
    assert proc.returncode == 130, output
    assert output.strip().splitlines() == ["interrupted while hpo was starting: nothing was done"], output


@pytest.mark.e2e
def test_ctrl_c_while_a_jobs_worker_imports_is_one_line_per_worker(tmp_path, data_cache_dir) -> None:
    """Found by benchmarks/chaos.py on SQLite: a --jobs worker took Ctrl-C while it imported torch (its
    spawn start-up imports hpo.cli); torch's C++ start-up turned the KeyboardInterrupt into
    std::terminate and SIGABRT (exit -6). Where the Ctrl-C lands in the import is chance (most often
    hpo.cli's guard says "interrupted while hpo was starting"); the fix holds it until the worker's own
    handler is in, which hands the trial over and says so. Before the fix neither worker said that here."""
    proc, log = _optimize(tmp_path, data_cache_dir, "early-worker", 2, "--jobs", "2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _workers_of(proc.pid)
            if any(_torch_loading(pid) for pid in workers):
                break
            time.sleep(0.002)
        assert workers and proc.poll() is None, log.read_text()
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the command and its workers at once
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 130, output
    assert "Traceback" not in output and "terminate called" not in output and "Fatal Python error" not in output, output
    assert output.count("interrupted: its running trial is queued to run again") == 2, output  # each worker, once


def _swallows_ctrl_c(trial: optuna.Trial) -> float:
    """A trial in which some code catches the KeyboardInterrupt of a Ctrl-C, as library code may."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2)  # the handler runs here
    except KeyboardInterrupt:
        pass
    return trial.suggest_float("x", 0, 1)


class _InterruptedWhileCollected:
    """Ctrl-C arriving while the garbage collector runs a finalizer (SQLAlchemy's weakref callbacks did)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the handler runs here, inside the finalizer
            pass


def _ctrl_c_in_a_finalizer(trial: optuna.Trial) -> float:
    _InterruptedWhileCollected()  # collected at once
    return trial.suggest_float("x", 0, 1)


def _ctrl_c_in_a_pool_reset(trial: optuna.Trial) -> float:
    """Ctrl-C while SQLAlchemy's pool takes a connection back: the pool logs it with a traceback and re-raises it."""
    engine = sqlalchemy.create_engine(f"sqlite:///{trial.study.user_attrs['scratch']}")

    @sqlalchemy.event.listens_for(engine, "reset")
    def _reset(dbapi_connection: object, record: object, state: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the handler runs here, inside the pool's reset
            pass

    with engine.connect() as conn:
        conn.exec_driver_sql("select 1")
    return trial.suggest_float("x", 0, 1)


def test_a_ctrl_c_in_a_pool_reset_is_no_traceback(tmp_path, caplog) -> None:
    """Found by benchmarks/chaos.py on MariaDB: Ctrl-C landing while SQLAlchemy's pool reset a connection
    printed "Exception during reset or similar" and a KeyboardInterrupt traceback (2 of 50 faults).
    The interrupt still stops the worker; only the traceback goes. Failed before: the record was logged."""
    study = optuna.create_study(study_name="reset", storage=open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    study.set_user_attr("scratch", str(tmp_path / "scratch.db"))
    with caplog.at_level(logging.ERROR, logger="sqlalchemy"), pytest.raises(KeyboardInterrupt):
        work(study, _ctrl_c_in_a_pool_reset, 3, poll_s=0.05)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy.pool")] == []
    assert [t.state for t in study.get_trials(deepcopy=False)][0] != TrialState.COMPLETE
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("objective", [_swallows_ctrl_c, _ctrl_c_in_a_finalizer], ids=["caught", "in-a-finalizer"])
def test_a_worker_whose_interrupt_was_swallowed_stops_before_its_next_trial(objective, tmp_path, monkeypatch) -> None:
    """Found by benchmarks/chaos.py: one of two --jobs workers took Ctrl-C inside a garbage-collection
    callback, where Python prints "Exception ignored in" with a traceback and drops the KeyboardInterrupt;
    it ran trials on for minutes, deaf to the SIGTERM that followed (the first signal turns both off).
    Before the fix work() ran all 3 trials here, and printed that traceback."""
    printed: list[str] = []  # what Python would print as "Exception ignored in ...", with a traceback
    monkeypatch.setattr(sys, "unraisablehook", lambda info: printed.append(repr(info.exc_value)))
    study = optuna.create_study(study_name="deaf", storage=open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    with pytest.raises(KeyboardInterrupt):
        work(study, objective, 3, poll_s=0.05)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are back as they were
    assert printed == []


def test_a_trial_being_numbered_holds_up_other_creators_but_not_a_note_on_postgres(tmp_path) -> None:
    """storage_cost.py, 32 workers at 100 trials: each trial's dashboard note (a row of the study's
    attributes, whose foreign-key check locks the study's row FOR KEY SHARE) waited 202 ms behind
    the trial creations' FOR UPDATE on that row. The creation's lock still makes every other
    creator wait (Optuna's own FOR UPDATE included), and no longer a note."""
    from contextlib import ExitStack

    from db_servers import study_database
    from hpo.storage.database import trial_writes
    from hpo.storage.optuna_private import rdb_of

    with ExitStack() as stack:
        url = stack.enter_context(study_database("postgres", tmp_path))
        storage = open_storage(url)
        sid = optuna.create_study(study_name="numbering", storage=storage)._study_id
        creating = stack.enter_context(sqlalchemy.orm.Session(rdb_of(storage).engine))
        trial_writes.lock_study_row(creating, sid)  # a creator, mid-transaction
        other = stack.enter_context(sqlalchemy.create_engine(url).connect())
        other.exec_driver_sql("SET lock_timeout = '2s'")
        other.exec_driver_sql("INSERT INTO study_system_attributes (study_id, key, value_json) "
                              "VALUES (%(s)s, 'dashboard:1:note_ver', '1')", {"s": sid})  # at once
        other.commit()
        for lock in ("FOR NO KEY UPDATE", "FOR UPDATE"):  # another hpo creator; plain Optuna's
            with pytest.raises(sqlalchemy.exc.OperationalError, match="lock timeout"):
                other.exec_driver_sql(f"SELECT study_id FROM studies WHERE study_id = %(s)s {lock}", {"s": sid})
            other.rollback()
            other.exec_driver_sql("SET lock_timeout = '2s'")
        with pytest.raises(KeyError):
            trial_writes.lock_study_row(creating, sid + 1)
