"""Locks for work that several processes must not do twice: a file lock, and a database-wide lock.

:func:`file_lock` serialises processes of one machine (building the data cache, creating a
SQLite study). :func:`creation_lock` serialises every worker of one database, on any machine:
creating tables and studies, pretraining an encoder once. Workers behind `hpo storage-proxy`
(``grpc://``) have no database connection to lock with; for them it is a
:class:`~hpo.storage.database.proxied_lock.StorageLock`, made of storage calls through the proxy.

Example::

    with file_lock(Path("cache/imdb.lock")):
        if not target.exists():
            build(target)
    with creation_lock("postgresql+psycopg://hpo@db/hpo"):
        ...  # create the study and record its spec; nobody else does it at the same time
    with storage_lock_of(study._storage, "pretrain 1a2b"):   # a database URL's lock, or a StorageLock
        ...
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import sqlalchemy
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no file lock (see file_lock)
    fcntl = None

from hpo.errors import HpoError
from hpo.storage.database.proxied_lock import StorageLock
from hpo.storage.database.proxy_client import open_grpc
from hpo.storage.database.urls import mask_url, sqlite_path

CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 120  # MySQL GET_LOCK, StorageLock: how long a worker waits for another's creation to finish
CREATE = "create schema and studies"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; where ``fcntl`` is missing (Windows) no lock at all.

    Without it the callers' atomic renames and Optuna's own conflict handling still keep the
    results intact; only the work may be done twice.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_key(name: str) -> int:
    return zlib.crc32(f"hpo: {name}".encode())  # fits a PostgreSQL bigint and is stable


@contextmanager
def creation_lock(url: str, name: str = CREATE, timeout_s: int = LOCK_TIMEOUT_S,
                  storage: Any = None, ride_out: Callable[[Callable[[], Any]], Any] | None = None) -> Iterator[None]:
    """Hold a lock that every worker on this database shares, named ``name``.

    PostgreSQL: an advisory lock; MySQL/MariaDB: ``GET_LOCK`` (an HpoError when it is not had
    within ``timeout_s``); a SQLite file: ``flock`` on a file next to it. The lock lives on a
    connection of its own (or a file descriptor), so a worker that dies while holding it
    releases it. ``grpc://`` (`hpo storage-proxy`): a :class:`~hpo.storage.database.proxied_lock.StorageLock`
    through ``storage`` (or a connection of its own to the proxy), an HpoError when it is not had
    within ``timeout_s`` while its holder is alive; a worker of this machine that dies holding it is
    broken at once, one of another machine after its stale time (2 min).

    ``ride_out``: runs the taking of a database's lock through an open storage's outage policy
    (:func:`storage_lock_of`): a worker whose server restarts as it takes the lock waits for it
    (benchmarks/chaos.py on MariaDB: a --jobs worker died there with a traceback). Taking it again
    is safe: a lock whose connection broke went with its session. Without it (opening a storage)
    a connection error is raised at once, to be judged by the opener.
    """
    if url.startswith("grpc://"):
        own = storage is None
        storage = open_grpc(url) if own else storage
        try:
            with StorageLock(storage, name, where=url).held(timeout_s):
                yield
        finally:
            if own:
                storage.close()  # a channel of its own, needed no more
        return
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    key = _lock_key(name)
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            yield  # a memory database is private to this process
            return
        suffix = "" if name == "create schema and studies" else f".{key}"
        with file_lock(path.with_name(path.name + f"{suffix}.lock")):
            yield
        return
    if backend == "postgresql":
        acquire, release = f"SELECT pg_advisory_lock({key})", f"SELECT pg_advisory_unlock({key})"
    elif backend in ("mysql", "mariadb"):
        acquire, release = f"SELECT GET_LOCK('hpo-{key}', {int(timeout_s)})", f"SELECT RELEASE_LOCK('hpo-{key}')"
    else:  # another SQLAlchemy backend: no portable lock, fall back to Optuna's own conflict handling
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    def take() -> tuple[sqlalchemy.Connection, Any]:
        conn = engine.connect()
        try:
            return conn, conn.exec_driver_sql(acquire).scalar()
        except BaseException:
            conn.close()
            raise

    try:
        conn, got = ride_out(take) if ride_out is not None else take()
        with conn:
            if backend != "postgresql" and got != 1:
                # 0: timed out; NULL: an error. Going on without the lock could create twice.
                raise HpoError(
                    f"storage {mask_url(url)}: another worker has held the lock '{name}' for over {timeout_s} s; "
                    "if no worker is starting right now, a stuck database session holds it: end it, then retry"
                )
            try:
                yield
            finally:
                try:
                    conn.exec_driver_sql(release)
                except sqlalchemy.exc.OperationalError:  # the connection broke (a restart): the lock went with it
                    pass
    finally:
        engine.dispose()


def storage_lock_of(storage: Any, name: str = CREATE, timeout_s: int = LOCK_TIMEOUT_S) -> ContextManager[None]:
    """:func:`creation_lock` for an open storage: its database URL's, or its proxy's.

    A storage with neither (an in-memory one in tests) is private to this process: no lock.
    """
    url = getattr(storage, "url", None) or getattr(storage, "grpc_url", None)
    ride_out = getattr(storage, "ride_out", None)  # a ResilientStorage's outage policy
    return creation_lock(url, name, timeout_s, storage=storage, ride_out=ride_out) if url else nullcontext()
