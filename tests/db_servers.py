"""The real database servers for the multi-worker tests, and a TCP proxy that can cut them off.

Each test gets a fresh, empty database (so schema creation is exercised too) that is dropped
afterwards. A server that is not reachable skips the test with the reason, except under
``CI=true``, where it fails: CI machines have PostgreSQL and MariaDB running.

Override the admin URLs with ``HPO_TEST_POSTGRES`` / ``HPO_TEST_MYSQL``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from hpo.storage.database.urls import mask_url

ADMIN_URLS = {
    "postgres": os.environ.get("HPO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("HPO_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
# A role with a password on each server, so tests can check that it never shows (PostgreSQL
# trusts local connections, so there the password is carried but not needed; MariaDB checks it).
# One per test session (the pid in its name): two sessions on one server would otherwise reset
# each other's password. Dropped when the session's last database on that server is.
PG_ROLE = f"hpo_test_pw_{os.getpid()}"
PG_PASSWORD = f"pw-{secrets.token_hex(6)}"
MYSQL_USER = f"hpo_test_pw_{os.getpid()}"
MYSQL_PASSWORD = f"pw-{secrets.token_hex(6)}"
PASSWORDS = {"postgres": PG_PASSWORD, "mysql": MYSQL_PASSWORD}
MYSQL_HOSTS = ("localhost", "127.0.0.1", "%%")  # %% : the driver's own escaping of %
_open = {"postgres": 0, "mysql": 0}  # this session's databases on each server, not yet dropped


def _admin_engine(kind: str) -> sqlalchemy.Engine:
    url = ADMIN_URLS[kind]
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        reason = f"{kind} server not reachable at {mask_url(url)}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the server must be running)")
        pytest.skip(reason)
    return engine


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """The URL of a new, empty database on the ``kind`` server ("postgres" or "mysql"); dropped after."""
    engine = _admin_engine(kind)
    name = f"hpo_t_{uuid.uuid4().hex[:10]}"
    admin = make_url(ADMIN_URLS[kind])
    with engine.connect() as conn:
        if kind == "postgres":
            exists = conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'").scalar()
            verb = "ALTER" if exists else "CREATE"
            conn.exec_driver_sql(f"{verb} ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'")
            conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {PG_ROLE}")
            url = admin.set(username=PG_ROLE, password=PG_PASSWORD, database=name)
        else:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
            for host in MYSQL_HOSTS:
                conn.exec_driver_sql(f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'{host}' IDENTIFIED BY '{MYSQL_PASSWORD}'")
                conn.exec_driver_sql(f"ALTER USER '{MYSQL_USER}'@'{host}' IDENTIFIED BY '{MYSQL_PASSWORD}'")
                conn.exec_driver_sql(f"GRANT ALL ON {name}.* TO '{MYSQL_USER}'@'{host}'")
            url = admin.set(username=MYSQL_USER, password=MYSQL_PASSWORD, database=name)
    _open[kind] += 1
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _open[kind] -= 1
        with engine.connect() as conn:
            if kind == "postgres":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                if not _open[kind]:
                    conn.exec_driver_sql(f"DROP ROLE IF EXISTS {PG_ROLE}")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                if not _open[kind]:
                    for host in MYSQL_HOSTS:
                        conn.exec_driver_sql(f"DROP USER IF EXISTS '{MYSQL_USER}'@'{host}'")
        engine.dispose()


class CuttableProxy:
    """A TCP forwarder to a database server that can be cut off and restored, like a restart.

    ``cut()`` drops every open connection and refuses new ones (the port stops listening), which
    is what clients see while a server restarts; ``restore()`` listens on the same port again.

    Example::

        with CuttableProxy("127.0.0.1", 5432) as proxy:
            url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
            proxy.cut(); time.sleep(4); proxy.restore()
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "CuttableProxy":
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def free_port() -> int:
    """A local port with nothing listening on it nor on the port after it: ``hpo storage-proxy --port P``
    serves artifacts on P + 1 by default, and a free P alone failed it now and then ("cannot serve
    artifacts on 127.0.0.1:P+1: Address already in use") when other programs held ephemeral ports."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


@contextmanager
def study_database(kind: str, tmp_path) -> Iterator[str]:
    """A study database of ``kind``: a SQLite file in ``tmp_path``, or a fresh server database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpo.db'}"
    else:
        with fresh_database(kind) as url:
            yield url


def start_storage_proxy(port: int, cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`hpo storage-proxy --port PORT ARGS` with ``env`` (the database URL travels there, never on the
    command line), once it says it serves: (the process, its lines so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "storage-proxy", "--port", str(port), *args], cwd=cwd,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("storage proxy: grpc://"):
            return proc, lines
    proc.kill()
    pytest.fail("hpo storage-proxy did not start:\n" + "".join(lines))
