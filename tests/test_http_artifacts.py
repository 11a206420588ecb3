"""The database artifact store over HTTP (what `hpo storage-proxy` serves): round trips and errors.

The server is the real one on a real DatabaseStore (a SQLite file: the HTTP layer is what is
tested here; the proxy tests run it on PostgreSQL and MariaDB).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError
from hpo.storage.artifacts.database_store import ArtifactCorrupted, DatabaseStore, artifacts
from hpo.storage.artifacts.http_store import CHUNK_BYTES, SHA_HEADER, HttpArtifactStore
from hpo.storage.proxy.artifact_server import serve_artifacts
from db_servers import free_port


@pytest.fixture
def served(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    store = DatabaseStore(engine, chunk_bytes=64 * 1024)  # several chunks for a small blob
    server = serve_artifacts(store, "127.0.0.1", 0)
    yield store, HttpArtifactStore("127.0.0.1", server.server_address[1], retry_s=0)
    server.shutdown()
    engine.dispose()


class _Pipe(io.RawIOBase):
    """A body that cannot seek (as a socket or a generator would be)."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.inner.readinto(buffer)


def test_round_trip_streams_several_chunks_and_lists_sizes(served) -> None:
    db, client = served
    blob = os.urandom(300_000)  # 5 chunks of 64 kB in the database
    client.write("checkpoint-x-trial-1.pt", io.BytesIO(blob))
    client.write("figure.png", _Pipe(b"\x89PNG small"))
    with client.open_reader("checkpoint-x-trial-1.pt") as f:
        assert f.read() == blob
    assert db.header("checkpoint-x-trial-1.pt").sha256 == hashlib.sha256(blob).hexdigest()  # stored as sent
    assert client.open_reader("figure.png").read() == b"\x89PNG small"
    assert client.size("figure.png") == 10 and client.size("nothing") is None
    assert client.ids("checkpoint-") == ["checkpoint-x-trial-1.pt"]
    assert client.sizes() == {"checkpoint-x-trial-1.pt": 300_000, "figure.png": 10}
    client.write("figure.png", io.BytesIO(b""))  # replaced; an empty artifact is fine
    assert client.open_reader("figure.png").read() == b""
    client.remove("figure.png")
    assert client.ids() == ["checkpoint-x-trial-1.pt"]


def test_missing_artifacts_are_artifact_not_found(served) -> None:
    _, client = served
    with pytest.raises(ArtifactNotFound):
        client.open_reader("nope")
    with pytest.raises(ArtifactNotFound):
        client.remove("nope")


def test_a_damaged_upload_is_refused_and_the_previous_content_kept(served) -> None:
    db, client = served
    client.write("a", io.BytesIO(b"first"))
    port = client.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", "/artifacts/a", body=b"second", headers={"Content-Length": "6", "X-Sha256": hashlib.sha256(b"other").hexdigest()})
    response = conn.getresponse()
    assert response.status == 409 and "sha256" in response.read().decode()
    conn.close()
    assert client.open_reader("a").read() == b"first"  # the write was rolled back


def test_a_damaged_download_raises_at_its_end(served) -> None:
    db, client = served
    client.write("a", io.BytesIO(b"x" * 200_000))
    with db.engine.begin() as conn:  # the row's sha256 no longer matches the chunks
        conn.execute(artifacts.update().values(sha256="0" * 64))
    with pytest.raises(ArtifactCorrupted, match="'a'"):
        client.open_reader("a").read()


def test_no_server_is_one_line() -> None:
    port = free_port()  # free: nothing listens there
    with pytest.raises(HpoError, match=rf"artifact store http://127.0.0.1:{port} \(the storage proxy's --artifact-port\) does not answer"):
        HttpArtifactStore("127.0.0.1", port, retry_s=0).size("a")


def test_a_database_error_is_one_line_without_the_password(served, monkeypatch) -> None:
    db, client = served
    url = db.engine.url.set(password="s3cret-pw").render_as_string(hide_password=False)
    monkeypatch.setattr(db, "engine", sa.create_engine(url))

    def broken(artifact_id):
        raise sa.exc.OperationalError("SELECT", {}, Exception(f"server closed the connection ({url})\nmore"))

    monkeypatch.setattr(db, "header", broken)
    with pytest.raises(HpoError) as caught:
        client.open_reader("a")
    message = str(caught.value)
    assert message.startswith(f"artifact store http://127.0.0.1:{client.port}: 500 OperationalError: server closed")
    assert "s3cret-pw" not in message and "\n" not in message


def _established_to(port: int) -> int:
    """This machine's client sockets connected to ``port`` on 127.0.0.1 (/proc/net/tcp, state ESTABLISHED)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if (f := row.split()) and int(f[2].split(":")[1], 16) == port and f[3] == "01")


class _CtrlCMidUpload(io.BytesIO):
    """A body that takes a real Ctrl-C (SIGINT to this process) once the upload itself is under way:
    the client reads it once to hash it, rewinds it, then sends it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sending = False

    def seek(self, *args) -> int:
        self.sending = self.sending or self.tell() > 0  # rewound after the hashing pass
        return super().seek(*args)

    def read(self, n: int = -1) -> bytes:
        if self.sending and self.tell() > 0:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the KeyboardInterrupt is raised here
        return super().read(n)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_a_ctrl_c_mid_upload_closes_the_connection_at_once(served) -> None:
    """The worker's hand-over after Ctrl-C (Optuna's FAIL, the re-queue) runs while the interrupt's
    traceback is alive, and that traceback held the upload's socket open: the proxy's end waited
    for the rest of the body. Before the fix the connection was still established here."""
    db, client = served
    with pytest.raises(KeyboardInterrupt) as caught:
        client.write("a", _CtrlCMidUpload(os.urandom(3 * CHUNK_BYTES)))
    assert caught.traceback  # held, as the worker holds it while it hands its trial over
    deadline = time.monotonic() + 5
    while _established_to(client.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _established_to(client.port) == 0
    assert client.size("a") is None  # nothing half-stored


def test_a_client_gone_silent_mid_upload_is_dropped(tmp_path) -> None:
    """A worker stopped mid-upload with its socket open held one of the proxy's connection threads for
    ever: the artifact port had no socket timeout. Before the fix the server never closed this one."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    store = DatabaseStore(engine)
    server = serve_artifacts(store, "127.0.0.1", 0, idle_timeout_s=1)
    try:
        with socket.create_connection(server.server_address[:2]) as sock:
            sock.sendall(b"PUT /artifacts/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                         + f"{SHA_HEADER}: {'0' * 64}\r\n\r\n".encode() + b"x" * 10)
            sock.settimeout(15)
            assert sock.recv(1) == b""  # closed by the server, with no answer: nobody is listening
        assert store.size("a") is None
    finally:
        server.shutdown()
        engine.dispose()
