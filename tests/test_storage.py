"""Storage URLs and engines: fast, clear failures at open; patience with outages once open."""

from __future__ import annotations

import sqlite3
import threading
import time

import optuna
import psycopg
import pymysql
import pytest
import sqlalchemy
from click.testing import CliRunner

from db_servers import ADMIN_URLS, CuttableProxy, _admin_engine, fresh_database
from hpo.cli import main
from hpo.errors import HpoError
from hpo.storage.database.outage import Outage
from hpo.storage.database.resilient import _while_restarting, is_conflict, is_restarting, is_transient, open_storage
from hpo.storage.database.urls import mask_url, resolve_storage_url
from sqlalchemy.engine import make_url


def test_unreachable_database_is_one_clear_line_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg://me:topsecret@127.0.0.1:1/hpo")
    start = time.monotonic()
    result = CliRunner().invoke(main, ["optimize", "--study", "imdb", "--trials", "1"])
    assert time.monotonic() - start < 12
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0] == "storage: postgresql+psycopg://me:***@127.0.0.1:1/hpo ($HPO_STORAGE)"
    assert len(lines) == 2 and lines[1].startswith("error: cannot open storage postgresql+psycopg://me:***@127.0.0.1:1/hpo")
    assert "Connection refused" in lines[1]
    assert "topsecret" not in result.output


def test_misspelt_database_name_is_named() -> None:
    _admin_engine("postgres")  # skips (or fails under CI) without a server
    url = make_url(ADMIN_URLS["postgres"]).set(password="topsecret", database="hpo_no_such_db")
    with pytest.raises(HpoError) as info:
        open_storage(url.render_as_string(hide_password=False))
    message = str(info.value)
    assert 'database "hpo_no_such_db" does not exist' in message
    assert "topsecret" not in message and "***" in message


# What a worker started during benchmarks/chaos.py's PostgreSQL restart got (its log, PostgreSQL 15).
_SHUTTING_DOWN = ('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                  "FATAL:  the database system is shutting down")


def test_a_worker_waits_for_a_server_that_says_it_is_restarting() -> None:
    """Found by benchmarks/chaos.py: a worker started while PostgreSQL shut down for a restart exited 2;
    now it waits, saying so once, as it waits out an outage once open. A refused connection or a
    missing database stays one line at once (the two tests above)."""
    restarting = sqlalchemy.exc.OperationalError("connect", {}, Exception(_SHUTTING_DOWN))
    assert is_restarting(restarting)
    assert not is_restarting(sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused")))
    url = "postgresql+psycopg://me:topsecret@127.0.0.1/hpo"
    attempts: list[float] = []
    said: list[str] = []

    def open_() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise restarting
        return "storage"

    assert _while_restarting(open_, url, 30, said.append) == "storage"
    assert len(attempts) == 3 and attempts[-1] - attempts[0] >= 1.0  # the shared backoff: 0.5 s, then 1 s (+-25%)
    assert len(said) == 2 and "the database system is shutting down" in said[0] and "up to 30 s" in said[0]
    assert said[1].startswith("storage reachable again")
    assert "topsecret" not in "".join(said)

    def never() -> str:
        raise restarting

    with pytest.raises(sqlalchemy.exc.OperationalError):  # past its time, the error as before (one line in open_storage)
        _while_restarting(never, url, 0, said.append)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_jobs_worker_waits_for_the_server_its_command_just_opened(kind) -> None:
    """Found by benchmarks/chaos.py on MariaDB: a command opened its study, then the server went down
    for a restart while it started its two --jobs workers; both were refused and exited 2, and the
    command with them. A worker (reached=True) now waits; a new command still says it at once.
    Before the fix the reached=True open raised the same one line as the other."""
    with fresh_database(kind) as direct:
        target = make_url(direct)
        with CuttableProxy(target.host or "127.0.0.1", target.port) as proxy:
            url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            open_storage(url)  # the command's open: the tables are there
            proxy.cut()  # the server restarts
            with pytest.raises(HpoError, match="cannot open storage"):
                open_storage(url)  # a user's command on a dead port: one line at once, as before
            said: list[str] = []
            threading.Timer(3, proxy.restore).start()
            started = time.monotonic()
            storage = open_storage(url, reached=True, log=said.append)
            assert time.monotonic() - started >= 2.5 and storage.get_all_studies() == []
            assert len(said) == 2 and said[0].startswith("storage unreachable") and "reachable again" in said[1], said
            storage.engine.dispose()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_worker_taking_the_creation_lock_waits_for_a_restarting_server(kind) -> None:
    """Found by benchmarks/chaos.py on MariaDB: a --jobs worker that had opened the storage took the
    study's creation lock as the server restarted, and died of the OperationalError with a traceback
    (the lock's connection is its own, outside the storage's retries). Before the fix the lock raised."""
    from hpo.storage.database.locks import storage_lock_of

    with fresh_database(kind) as direct:
        target = make_url(direct)
        with CuttableProxy(target.host or "127.0.0.1", target.port) as proxy:
            url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            said: list[str] = []
            storage = open_storage(url, log=said.append)
            proxy.cut()
            threading.Timer(3, proxy.restore).start()
            with storage_lock_of(storage):
                study = optuna.create_study(study_name="locked", storage=storage)
            assert study.study_name == "locked"
            # the lock's outage, then maybe the pool's connections found cut by create_study: each ridden out
            assert said[0].startswith("storage unreachable") and said[1].startswith("storage reachable again"), said
            assert all(line.startswith(("storage unreachable", "storage reachable again")) for line in said), said
            storage.engine.dispose()


def test_missing_driver_says_which_extra_to_install() -> None:
    with pytest.raises(HpoError, match=r"pip install 'hpo\[postgres\]'"):
        open_storage("postgresql+pg8000://me:topsecret@127.0.0.1/hpo")


def test_connection_errors_are_transient_and_mistakes_are_not() -> None:
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert is_transient(refused)
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused
    assert is_transient(wrapped)
    assert not is_transient(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("bad value"))
    import sqlite3

    assert is_transient(sqlalchemy.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")))
    assert not is_transient(sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: trials")))


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.fixture
def proxied_postgres() -> CuttableProxy:
    admin = make_url(ADMIN_URLS["postgres"])
    _admin_engine("postgres")
    with CuttableProxy(admin.host or "127.0.0.1", admin.port or 5432) as proxy:
        proxy.url = admin.set(host="127.0.0.1", port=proxy.port, database="test").render_as_string(hide_password=False)
        yield proxy


def test_storage_calls_wait_out_a_database_restart(proxied_postgres: CuttableProxy) -> None:
    messages: list[str] = []
    storage = open_storage(proxied_postgres.url, log=messages.append)
    name = f"outage-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        proxied_postgres.cut()
        threading.Timer(3.0, proxied_postgres.restore).start()
        start = time.monotonic()
        study.set_user_attr("written", "during the outage")  # blocks until the database is back
        assert time.monotonic() - start > 2.0
        assert study.user_attrs["written"] == "during the outage"
        assert messages[0].startswith("storage unreachable (") and "retrying for up to 300 s" in messages[0]
        assert messages[-1].startswith("storage reachable again after ")
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_storage_gives_up_after_its_retry_budget(proxied_postgres: CuttableProxy) -> None:
    storage = open_storage(proxied_postgres.url, retry_s=2.0)
    name = f"giveup-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        proxied_postgres.cut()
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            study.set_user_attr("never", 1)
        assert is_transient(info.value)
        assert time.monotonic() - start < 5
    finally:
        proxied_postgres.restore()
        optuna.delete_study(study_name=name, storage=storage)


def test_the_password_can_come_from_a_secret_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "postgres_password"
    secret.write_text("s3cr3t/with@odd:chars\n")
    monkeypatch.setenv("HPO_STORAGE", "postgresql+psycopg://hpo@db:5432/hpo")
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(secret))
    url, origin = resolve_storage_url(None)
    assert origin == "$HPO_STORAGE"
    assert make_url(url).password == "s3cr3t/with@odd:chars"
    assert mask_url(url) == "postgresql+psycopg://hpo:***@db:5432/hpo"
    # A URL that brings its own password keeps it; a missing file is one clear line.
    assert resolve_storage_url("postgresql+psycopg://hpo:other@db/hpo")[0] == "postgresql+psycopg://hpo:other@db/hpo"
    monkeypatch.setenv("HPO_STORAGE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(HpoError, match=r"HPO_STORAGE_PASSWORD_FILE = .*missing: cannot read the storage password"):
        resolve_storage_url(None)


def test_a_mysql_creation_lock_that_cannot_be_had_is_an_error_not_a_silent_go_ahead() -> None:
    from hpo.storage.database.locks import _lock_key, creation_lock

    engine = _admin_engine("mysql")
    url = ADMIN_URLS["mysql"]
    name = "create schema and studies"
    with engine.connect() as holder:
        assert holder.exec_driver_sql(f"SELECT GET_LOCK('hpo-{_lock_key(name)}', 5)").scalar() == 1
        start = time.monotonic()
        with pytest.raises(HpoError, match="another worker has held the lock 'create schema and studies' for over 1 s"):
            with creation_lock(url, timeout_s=1):
                pytest.fail("went ahead without the lock")
        assert time.monotonic() - start < 10
        holder.exec_driver_sql(f"SELECT RELEASE_LOCK('hpo-{_lock_key(name)}')")
    with creation_lock(url, timeout_s=1):  # free again: taken at once
        pass


def _driver_error(orig: BaseException) -> sqlalchemy.exc.OperationalError:
    """What SQLAlchemy raises around a driver's error, as a failed statement leaves it."""
    return sqlalchemy.exc.OperationalError("UPDATE trials SET state=...", {}, orig)


@pytest.mark.parametrize("orig, busy", [
    (pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction"), True),
    (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction"), True),
    (psycopg.errors.DeadlockDetected("deadlock detected"), True),
    (sqlite3.OperationalError("database is locked"), True),
    (pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"), False),
    (psycopg.OperationalError("connection failed: Connection refused"), False),
])
def test_a_deadlock_is_retried_as_the_database_being_busy_not_away(orig, busy) -> None:
    """chaos.py on MariaDB: a deadlock (1213), retried as it should be, was logged as "storage
    unreachable (... Deadlock found ...)" and "reachable again after 0.6 s": a user would look for
    an outage that never happened. The drivers' own error classes, as SQLAlchemy wraps them."""
    said: list[str] = []
    failures = [_driver_error(orig)]

    def attempt() -> str:
        if failures:
            raise failures.pop()
        return "done"

    outage = Outage(log=said.append, describe=lambda exc: str(exc.orig), sleep=lambda s: None, busy=is_conflict)
    assert is_transient(failures[0]) and outage.call(attempt, is_transient) == "done"
    first, last = ("storage busy (", "storage went through on a retry after ") if busy else \
                  ("storage unreachable (", "storage reachable again after ")
    assert len(said) == 2 and said[0].startswith(first) and said[1].startswith(last), said
