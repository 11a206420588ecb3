"""The study database's artifact store over plain HTTP: what `hpo storage-proxy` serves its workers.

A worker behind the storage proxy holds no database URL, so it cannot open the
:class:`~hpo.storage.db_artifacts.DatabaseStore` itself. The proxy serves that store on a second
port (:func:`serve_artifacts`) and :class:`HttpArtifactStore` is the worker's client: Optuna's
``ArtifactStore`` protocol (``open_reader``, ``write``, ``remove``, so optuna-dashboard serves
from it too) plus the size and listing calls the usage summary and checkpoint clean-up need.

The protocol, one request per call (stdlib ``http.server``/``http.client``, no new dependency)::

    GET    /artifacts/ID     200 the bytes; Content-Length and X-Sha256 from the store's row; 404
    HEAD   /artifacts/ID     200 with Content-Length (the size); 404
    PUT    /artifacts/ID     Content-Length and X-Sha256 of the body; 204; 400 on a mismatch
    DELETE /artifacts/ID     204; 404
    GET    /sizes?prefix=P   200 {"id": size, ...} as JSON

Both directions stream, one chunk (1 MiB) at a time, as the database store does, and both are
checked end to end against a sha256: a download is hashed by the client as it is read and a
mismatch or a body cut short raises :class:`~hpo.storage.db_artifacts.ArtifactCorrupted` at its
end; an upload is hashed by the server as it goes into the database, and a mismatch (or a client
that vanishes mid-body) raises inside the store's write transaction, which is rolled back: the
previous content stays. The client hashes an upload in a first pass over the body (re-reading a
seekable file costs little; anything else is spooled to a temporary file first).

There is no login and no TLS, as for the gRPC proxy beside it: serve it on a private network.

Example::

    server = serve_artifacts(DatabaseStore(engine), "127.0.0.1", 13001)   # a thread; server.shutdown()
    store = HttpArtifactStore("127.0.0.1", 13001)
    store.write("curves.png", open("curves.png", "rb"))
    store.open_reader("curves.png").read()
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import random
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError
from hpo.storage.db_artifacts import CHUNK_BYTES, ArtifactCorrupted

TIMEOUT_S = 60.0  # one socket operation; a chunk read from the database takes milliseconds
RETRY_S = 60.0  # how long a call waits for a proxy that restarts (connection refused or reset)
SHA_HEADER = "X-Sha256"


class HttpArtifactStore:
    """Optuna's ``ArtifactStore`` protocol on the artifact server of `hpo storage-proxy`."""

    def __init__(self, host: str, port: int, timeout_s: float = TIMEOUT_S, retry_s: float = RETRY_S) -> None:
        self.host, self.port, self.timeout_s, self.retry_s = host, port, timeout_s, retry_s

    def __repr__(self) -> str:
        return f"database through the storage proxy (http://{self._netloc()})"

    def _netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # --- Optuna's ArtifactStore protocol ---

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """A buffered reader of the artifact, checked against its sha256 at the end; ArtifactNotFound."""
        conn, response = self._request("GET", _path(artifact_id))
        if response.status == 404:
            conn.close()
            raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database store")
        self._check(response, conn)
        raw = _CheckedResponse(conn, response, artifact_id)
        return io.BufferedReader(raw, buffer_size=CHUNK_BYTES)  # type: ignore[return-value]

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Uploads ``content_body`` (from where it stands to its end); stored atomically or not at all."""
        body = content_body
        spooled = None
        if not _seekable(body):
            spooled = tempfile.TemporaryFile()
            shutil.copyfileobj(body, spooled, CHUNK_BYTES)
            spooled.seek(0)
            body = spooled
        try:
            start = body.tell()
            digest, size = hashlib.sha256(), 0
            while block := body.read(CHUNK_BYTES):
                digest.update(block)
                size += len(block)
            headers = {"Content-Length": str(size), SHA_HEADER: digest.hexdigest(),
                       "Content-Type": "application/octet-stream"}

            def rewound() -> BinaryIO:
                body.seek(start)
                return body

            conn, response = self._request("PUT", _path(artifact_id), body=rewound, headers=headers)
            try:
                self._check(response, conn)
                response.read()
            finally:
                conn.close()
        finally:
            if spooled is not None:
                spooled.close()

    def remove(self, artifact_id: str) -> None:
        conn, response = self._request("DELETE", _path(artifact_id))
        try:
            if response.status == 404:
                raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database store")
            self._check(response, conn)
            response.read()
        finally:
            conn.close()

    # --- what the usage summary and the clean-up need ---

    def size(self, artifact_id: str) -> int | None:
        conn, response = self._request("HEAD", _path(artifact_id))
        try:
            if response.status == 404:
                return None
            self._check(response, conn)
            return int(response.getheader("Content-Length") or 0)
        finally:
            conn.close()

    def sizes(self, prefix: str = "") -> dict[str, int]:
        conn, response = self._request("GET", f"/sizes?prefix={quote(prefix, safe='')}")
        try:
            self._check(response, conn)
            return {str(k): int(v) for k, v in json.loads(response.read()).items()}
        finally:
            conn.close()

    def ids(self, prefix: str = "") -> list[str]:
        return sorted(self.sizes(prefix))

    def total_bytes(self) -> int:
        return sum(self.sizes().values())

    # --- plumbing ---

    def _request(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends one request; a proxy that is not there (yet) is waited for up to ``retry_s``.

        Every call here is safe to repeat: reads and deletes, and uploads, which replace the
        whole artifact (``body`` is a callable that rewinds it).
        """
        start, delay = time.monotonic(), 0.5
        while True:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s, blocksize=CHUNK_BYTES)
            try:
                conn.request(method, path, body=body() if callable(body) else body, headers=headers or {})
                return conn, conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, TimeoutError, OSError) as exc:
                conn.close()
                if time.monotonic() - start + delay > self.retry_s:
                    raise HpoError(
                        f"artifact store http://{self._netloc()} (the storage proxy's --artifact-port) does not "
                        f"answer: {type(exc).__name__}: {exc}"
                    ) from None
                time.sleep(delay * random.uniform(0.75, 1.25))
                delay = min(delay * 2, 8.0)

    def _check(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
        if 200 <= response.status < 300:
            return
        message = response.read().decode(errors="replace").strip().splitlines()
        conn.close()
        text = message[0] if message else response.reason
        if response.status == 409:
            raise ArtifactCorrupted(text)
        raise HpoError(f"artifact store http://{self._netloc()}: {response.status} {text}")


class _CheckedResponse(io.RawIOBase):
    """An HTTP response body, hashed as it is read; at its end, size and sha256 must match the headers."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, artifact_id: str) -> None:
        self.conn, self.response, self.artifact_id = conn, response, artifact_id
        self.expected_size = int(response.getheader("Content-Length") or -1)
        self.expected_sha = response.getheader(SHA_HEADER) or ""
        self.digest = hashlib.sha256()
        self.read_bytes = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.verified:
            return 0
        try:
            n = self.response.readinto(buffer)
        except (http.client.IncompleteRead, OSError) as exc:
            raise self._cut(exc) from None
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.read_bytes += n
            return n
        self._verify()
        return 0

    def _cut(self, exc: BaseException) -> ArtifactCorrupted:
        return ArtifactCorrupted(
            f"artifact {self.artifact_id!r}: the download stopped after {self.read_bytes} of {self.expected_size} bytes "
            f"({type(exc).__name__}; the store found it damaged, or the proxy went away)"
        )

    def _verify(self) -> None:
        self.verified = True
        self.conn.close()
        if self.read_bytes != self.expected_size:
            raise self._cut(EOFError("short body"))
        if self.digest.hexdigest() != self.expected_sha:
            raise ArtifactCorrupted(
                f"artifact {self.artifact_id!r} arrived damaged: sha256 {self.digest.hexdigest()[:12]}..., "
                f"the store has {self.expected_sha[:12]}..."
            )

    def close(self) -> None:
        self.conn.close()
        super().close()


def _path(artifact_id: str) -> str:
    return "/artifacts/" + quote(artifact_id, safe="")


def _seekable(body: BinaryIO) -> bool:
    try:
        return body.seekable()
    except (AttributeError, ValueError):
        return False


# --- the server ----------------------------------------------------------------------------------


class _Body(io.RawIOBase):
    """An upload's body: exactly Content-Length bytes, whose sha256 must match the client's header.

    Read by the store inside its write transaction: raising here (wrong sha256, a body cut short)
    rolls the write back.
    """

    def __init__(self, rfile: BinaryIO, length: int, sha256: str) -> None:
        self.rfile, self.left, self.sha256 = rfile, length, sha256
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        data = self.rfile.read(min(len(buffer), self.left))
        if not data:
            raise ConnectionError(f"the upload stopped with {self.left} bytes still to come")
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.left -= n
        if self.left == 0 and self.digest.hexdigest() != self.sha256:
            raise _Mismatch(f"upload damaged on the way: sha256 {self.digest.hexdigest()[:12]}..., "
                            f"the client sent {self.sha256[:12]}...")
        return n


class _Mismatch(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    store: Any  # set on the subclass serve_artifacts makes
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the proxy's log
        pass

    def _one_line(self, exc: BaseException) -> str:
        """The error in one line, without the database password (a driver may quote the URL)."""
        from hpo.storage.urls import scrub

        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        text = f"{type(exc).__name__}: {reason[0][:200] if reason else ''}"
        engine = getattr(self.store, "engine", None)
        return scrub(text, engine.url.render_as_string(hide_password=False)) if engine is not None else text

    def _artifact_id(self) -> str | None:
        path = urlsplit(self.path).path
        if not path.startswith("/artifacts/") or len(path) <= len("/artifacts/"):
            return None
        return unquote(path[len("/artifacts/"):])

    def _reply(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode() if text else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/sizes":
            prefix = parse_qs(parts.query).get("prefix", [""])[-1]
            try:
                sizes = {k: v for k, v in self.store.sizes().items() if k.startswith(prefix)}
            except Exception as exc:
                return self._reply(500, self._one_line(exc))
            body = json.dumps(sizes).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._send_artifact(with_body=True)

    def do_HEAD(self) -> None:
        self._send_artifact(with_body=False)

    def _send_artifact(self, with_body: bool) -> None:
        artifact_id = self._artifact_id()
        if artifact_id is None:
            return self._reply(404, "no such path: use /artifacts/ID or /sizes")
        try:
            header = self.store.header(artifact_id)
        except Exception as exc:
            return self._reply(500, self._one_line(exc))
        if header is None:
            return self._reply(404, f"artifact {artifact_id!r} is not in the database store")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(header.size))
        self.send_header(SHA_HEADER, header.sha256)
        self.end_headers()
        if not with_body:
            return
        try:
            # the version whose size and sha256 went out above, even if it is overwritten meanwhile
            with self.store.open_reader(artifact_id, header) as reader:
                while block := reader.read(CHUNK_BYTES):
                    self.wfile.write(block)
        except (ArtifactCorrupted, ArtifactNotFound, ConnectionError):
            # The headers are out: cutting the connection is how the client learns (its read
            # stops short of Content-Length and raises ArtifactCorrupted).
            self.close_connection = True

    def do_PUT(self) -> None:
        artifact_id = self._artifact_id()
        length, sha = self.headers.get("Content-Length"), self.headers.get(SHA_HEADER)
        if artifact_id is None or length is None or not length.isdigit() or not sha:
            self.close_connection = True
            return self._reply(400, "PUT /artifacts/ID needs Content-Length and X-Sha256")
        try:
            self.store.write(artifact_id, io.BufferedReader(_Body(self.rfile, int(length), sha), CHUNK_BYTES))
        except _Mismatch as exc:
            return self._reply(409, str(exc))
        except ConnectionError:
            self.close_connection = True
            return
        except HpoError as exc:
            return self._reply(400, str(exc))
        except Exception as exc:  # the database failed: one line back, never its statement or data
            return self._reply(500, self._one_line(exc))
        self._reply(204)

    def do_DELETE(self) -> None:
        artifact_id = self._artifact_id()
        if artifact_id is None:
            return self._reply(404, "no such path: use /artifacts/ID")
        try:
            self.store.remove(artifact_id)
        except ArtifactNotFound as exc:
            return self._reply(404, str(exc))
        except Exception as exc:
            return self._reply(500, self._one_line(exc))
        self._reply(204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a download in progress does not hold up the proxy's stop
    allow_reuse_address = True


def serve_artifacts(store: Any, host: str, port: int) -> ThreadingHTTPServer:
    """Serves ``store`` (a DatabaseStore) on ``host:port`` from a thread; ``.shutdown()`` stops it."""
    import socket

    handler = type("ArtifactHandler", (_Handler,), {"store": store})
    server_class = type("Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise HpoError(f"cannot serve artifacts on {host}:{port}: {exc.strerror or exc}; choose another --artifact-port") from None
    threading.Thread(target=server.serve_forever, name="hpo-artifact-server", daemon=True).start()
    return server
