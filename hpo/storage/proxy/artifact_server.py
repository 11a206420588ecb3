"""The server side of the artifact port of `hpo storage-proxy`: the study database's artifact
store over plain HTTP, for the workers behind the proxy (their client:
:class:`~hpo.storage.artifacts.http_store.HttpArtifactStore`, whose docstring gives the protocol).

An upload is hashed as it goes into the database, and a mismatch (or a client that vanishes
mid-body) raises inside the store's write transaction, which is rolled back: the previous content
stays.

Given the proxy's token, every request must carry it (``Authorization: Bearer TOKEN``, compared in
constant time) or gets 401 and closes its connection, before its body is read; given an SSL
context, each connection is a TLS one, its handshake done in the connection's own thread so that
a slow or broken client holds up no other.

Example::

    server = serve_artifacts(DatabaseStore(engine), "127.0.0.1", 13001)   # a thread; server.shutdown()
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import ssl
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError
from hpo.storage.artifacts.database_store import CHUNK_BYTES, ArtifactCorrupted
from hpo.storage.artifacts.http_store import SHA_HEADER
from hpo.storage.database.proxy_auth import TOKEN_FILE_VAR, TOKEN_VAR, token_matches
from hpo.storage.database.urls import scrub

HANDSHAKE_TIMEOUT_S = 30.0
# A client silent this long mid-request (a worker stopped, or gone with its socket left open) is
# dropped: its connection's thread waited for it for ever. Generous: it bounds each wait for the
# next bytes, not a whole upload.
IDLE_TIMEOUT_S = 60.0
Refused = Callable[[str, str, str], None]  # (port, peer address, why): RefusalLog.refused


class _Body(io.RawIOBase):
    """An upload's body: exactly Content-Length bytes, whose sha256 must match the client's header.

    Read whole into a local file before the store's write transaction opens (:meth:`_Handler.do_PUT`):
    raising here (wrong sha256, a body cut short) stores nothing.
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
    store: Any  # set on the subclass serve_artifacts makes, with the two below
    token: str | None = None
    refused: Refused = staticmethod(lambda port, peer, why: None)  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S  # socketserver sets it on the connection as it starts

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the proxy's log
        pass

    def parse_request(self) -> bool:
        """The request line and headers, then the token, before any handler reads a body."""
        if not super().parse_request():
            return False
        if self.token is None:
            return True
        presented = self.headers.get("Authorization")
        if token_matches(presented, self.token):
            return True
        why = "no token" if presented is None else "a wrong token"
        self.refused("artifact", _peer(self.client_address), why)
        self.close_connection = True  # the body, if any, is never read
        self._reply(401, f"{why}: set ${TOKEN_VAR} or ${TOKEN_FILE_VAR} to the proxy's", {"Connection": "close"})
        return False

    def _one_line(self, exc: BaseException) -> str:
        """The error in one line, without the database password (a driver may quote the URL)."""
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
            # The body is read off the network first, into a local file, and only then written to
            # the database. Streamed straight into the store's transaction, a client that stalled
            # mid-upload (a worker stopped by Ctrl-C with its connection still open) held SQLite's
            # write lock for as long, and every other worker's call waited behind it.
            with tempfile.SpooledTemporaryFile(max_size=CHUNK_BYTES) as local:
                shutil.copyfileobj(io.BufferedReader(_Body(self.rfile, int(length), sha), CHUNK_BYTES), local, CHUNK_BYTES)
                local.seek(0)
                self.store.write(artifact_id, local)
        except _Mismatch as exc:
            return self._reply(409, str(exc))
        except (ConnectionError, TimeoutError):  # the client went, or went silent: nobody to answer
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


def _peer(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a download in progress does not hold up the proxy's stop
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None
    refused: Refused = staticmethod(lambda port, peer, why: None)  # type: ignore[assignment]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a worker killed or stopped, its kept-alive
        connection reset) is routine for a proxy: no traceback in its log. Anything else is a bug
        and keeps socketserver's traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake first, if any."""
        if self.tls is None:
            return super().finish_request(request, client_address)
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.refused("artifact", _peer(client_address), f"TLS handshake failed ({type(exc).__name__})")
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


def serve_artifacts(store: Any, host: str, port: int, token: str | None = None, tls: ssl.SSLContext | None = None,
                    refused: Refused | None = None, idle_timeout_s: float = IDLE_TIMEOUT_S) -> ThreadingHTTPServer:
    """Serves ``store`` (a DatabaseStore) on ``host:port`` from a thread; ``.shutdown()`` stops it.

    ``token``: the proxy's, required on every request; ``tls``: a server SSL context; ``refused``
    is told of every refused client (port, address, why); ``idle_timeout_s``: how long a client
    may go silent mid-request before its connection is dropped.
    """
    extra = {"refused": staticmethod(refused)} if refused is not None else {}
    handler = type("ArtifactHandler", (_Handler,), {"store": store, "token": token, "timeout": idle_timeout_s, **extra})
    base = type("ArtifactServer", (_Server,), {"tls": tls, **extra})
    server_class = type("Server6", (base,), {"address_family": socket.AF_INET6}) if ":" in host else base
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise HpoError(f"cannot serve artifacts on {host}:{port}: {exc.strerror or exc}; choose another --artifact-port") from None
    threading.Thread(target=server.serve_forever, name="hpo-artifact-server", daemon=True).start()
    return server
