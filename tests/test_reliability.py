"""Interrupted, killed, restarted: no trial runs twice, no saved epoch is lost, no worker is orphaned.

Each test reproduces one defect of issue 21 on real databases (a SQLite file, and a fresh
PostgreSQL and MariaDB database per test), real processes and real signals.
"""

from __future__ import annotations

import multiprocessing
import re

import optuna
import pytest
import sqlalchemy
from db_servers import study_database
from optuna.trial import TrialState

from hpo.storage.resilient import open_storage

BACKENDS = ["sqlite", "postgres", "mysql"]


# --- 1. A WAITING re-run is claimed by exactly one worker -----------------------------------------

def _claimer(url: str, name: str, waiting: int, start: multiprocessing.synchronize.Barrier,
             out: multiprocessing.Queue[list[int]]) -> None:
    """Asks for trials until it gets a new one (numbered after the ``waiting`` ones): the WAITING ones it was handed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    start.wait()
    got = []
    while True:
        trial = study.ask()
        if trial.number >= waiting:  # a new trial: nothing was waiting any more
            break
        got.append(trial.number)
    out.put(got)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_waiting_trial_is_claimed_by_exactly_one_of_four_processes(kind, tmp_path) -> None:
    waiting, workers = 40, 4
    with study_database(kind, tmp_path) as url:
        study = optuna.create_study(study_name="claims", storage=open_storage(url))
        for i in range(waiting):
            study.enqueue_trial({"x": i})
        ctx = multiprocessing.get_context("spawn")
        start, out = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_claimer, args=(url, "claims", waiting, start, out)) for _ in range(workers)]
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
