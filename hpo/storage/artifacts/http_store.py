"""The study database's artifact store over plain HTTP: what `hpo storage-proxy` serves its workers.

A worker behind the storage proxy holds no database URL, so it cannot open the
:class:`~hpo.storage.artifacts.database_store.DatabaseStore` itself. The proxy serves that store on a second
port (:mod:`hpo.storage.proxy.artifact_server`) and :class:`HttpArtifactStore` is the worker's client: Optuna's
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
mismatch or a body cut short raises :class:`~hpo.storage.artifacts.database_store.ArtifactCorrupted` at its
end; an upload is hashed by the server as it goes into the database, and a mismatch (or a client
that vanishes mid-body) raises inside the store's write transaction, which is rolled back: the
previous content stays. The client hashes an upload in a first pass over the body (re-reading a
seekable file costs little; anything else is spooled to a temporary file first).

Each request carries the proxy's token and goes over TLS when the client's
:class:`~hpo.storage.database.proxy_auth.ClientAuth` says so (the same as for the gRPC port); a
refusal (401) is one HpoError line.

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
import ssl
import tempfile
import time
from typing import Any, BinaryIO
from urllib.parse import quote

from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError
from hpo.storage.artifacts.database_store import CHUNK_BYTES, ArtifactCorrupted
from hpo.storage.database.proxy_auth import ClientAuth, refusal

TIMEOUT_S = 60.0  # one socket operation; a chunk read from the database takes milliseconds
RETRY_S = 60.0  # how long a call waits for a proxy that restarts (connection refused or reset)
SHA_HEADER = "X-Sha256"


class HttpArtifactStore:
    """Optuna's ``ArtifactStore`` protocol on the artifact server of `hpo storage-proxy`."""

    def __init__(self, host: str, port: int, timeout_s: float = TIMEOUT_S, retry_s: float = RETRY_S,
                 auth: ClientAuth | None = None) -> None:
        self.host, self.port, self.timeout_s, self.retry_s = host, port, timeout_s, retry_s
        self.auth = auth or ClientAuth()
        self._ssl = self.auth.ssl_context()  # made once: loading the CAs costs milliseconds

    def __repr__(self) -> str:
        return f"database through the storage proxy ({self._scheme()}://{self._netloc()})"

    def _scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

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
        headers = dict(headers or {})
        if (header := self.auth.header()) is not None:
            headers[header[0]] = header[1]
        while True:
            if self._ssl is not None:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, blocksize=CHUNK_BYTES, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s, blocksize=CHUNK_BYTES)
            try:
                conn.request(method, path, body=body() if callable(body) else body, headers=headers)
                return conn, conn.getresponse()
            except ssl.SSLCertVerificationError as exc:  # no use waiting: the certificate will not change
                conn.close()
                raise HpoError(f"artifact store {self._scheme()}://{self._netloc()}: the proxy's certificate is not "
                               f"trusted ({exc.verify_message}): set $HPO_PROXY_CA_FILE to its CA") from None
            except (ConnectionError, http.client.RemoteDisconnected, TimeoutError, OSError) as exc:
                conn.close()
                if time.monotonic() - start + delay > self.retry_s:
                    raise HpoError(
                        f"artifact store {self._scheme()}://{self._netloc()} (the storage proxy's --artifact-port) does not "
                        f"answer: {type(exc).__name__}: {exc}"
                    ) from None
                time.sleep(delay * random.uniform(0.75, 1.25))
                delay = min(delay * 2, 8.0)
            except BaseException:  # a Ctrl-C mid-request: the proxy's end is freed now, not when the traceback is
                conn.close()
                raise

    def _check(self, response: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
        if 200 <= response.status < 300:
            return
        message = response.read().decode(errors="replace").strip().splitlines()
        conn.close()
        text = message[0] if message else response.reason
        if response.status == 409:
            raise ArtifactCorrupted(text)
        if response.status == 401:
            raise HpoError(refusal(f"{self._scheme()}://{self._netloc()}", self.auth))
        raise HpoError(f"artifact store {self._scheme()}://{self._netloc()}: {response.status} {text}")


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
