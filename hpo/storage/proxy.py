"""``hpo storage-proxy``: Optuna's gRPC storage proxy in front of the study's database.

Workers then use ``grpc://HOST:PORT`` as their storage: one process holds the database
connections (at most the pool of :func:`~hpo.storage.resilient.engine_kwargs`: 2, plus 2 in
bursts) however many workers there are, and it caches trials for them. The proxy opens the
database as every hpo process does (strictly, with tables created under the database lock, and
riding out database restarts).

What does not pass through the proxy (Optuna 4's ``GrpcStorageProxy``): heartbeats, so a
worker killed while behind the proxy leaves its trial RUNNING (it is not re-run automatically);
and the database artifact store, so proxied workers need ``$HPO_ARTIFACTS`` (a shared folder or
``s3://``) for checkpoints and figures.

Example::

    hpo storage-proxy --storage postgresql+psycopg://hpo@db/hpo --host 0.0.0.0 --port 13000
    HPO_STORAGE=grpc://proxy-host:13000 HPO_ARTIFACTS=s3://bucket/hpo hpo optimize --study imdb --trials 100
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Any, Callable

import optuna

from hpo.errors import HpoError

Log = Callable[[str], None]
READY_TIMEOUT_S = 10.0  # how long a worker waits for the proxy to answer when it opens the storage
THREADS = 16  # concurrent calls served; each takes a database connection from the pool while it runs


def grpc_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a ``grpc://host:port`` storage URL; None for database URLs."""
    if not url.startswith("grpc://"):
        return None
    host, sep, port = url[len("grpc://"):].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HpoError(f"storage URL {url!r}: expected grpc://HOST:PORT (the address of `hpo storage-proxy`)")
    return host.strip("[]"), int(port)


def open_grpc(url: str, timeout_s: float | None = None) -> Any:
    """A ``GrpcStorageProxy`` on ``grpc://host:port``, once the proxy answers; else an HpoError."""
    host, port = grpc_address(url) or ("", 0)
    timeout_s = READY_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        from optuna.storages import GrpcStorageProxy
    except ImportError:
        raise HpoError("grpc:// storage needs grpcio: pip install 'hpo[proxy]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable enough since Optuna 4.2
        storage = GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=timeout_s)
    except ConnectionError:
        raise HpoError(f"no storage proxy answers at {url} within {timeout_s:.0f} s: is `hpo storage-proxy` running there?") from None
    return storage


def serve(url: str, host: str, port: int, log: Log = lambda m: None, ready: threading.Event | None = None) -> None:
    """Serve the database at ``url`` on ``host:port`` until SIGTERM or Ctrl-C."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        from optuna.storages._grpc.server import make_server
    except ImportError:
        raise HpoError("hpo storage-proxy needs grpcio: pip install 'hpo[proxy]'") from None
    from hpo.storage.resilient import open_storage
    from hpo.storage.urls import display_url

    if grpc_address(url) is not None:
        raise HpoError("hpo storage-proxy needs the database URL itself, not another proxy's grpc:// address")
    storage = open_storage(url, log=log)
    try:
        server = make_server(storage, host, port, ThreadPoolExecutor(max_workers=THREADS))
    except RuntimeError as exc:  # grpc cannot bind the port
        raise HpoError(f"cannot serve on {host}:{port}: {exc}; choose another --port") from None
    server.start()
    shown = f"[{host}]" if ":" in host else host
    log(f"storage proxy: grpc://{shown}:{port} -> {display_url(url)} (workers: --storage grpc://HOST:{port})")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop(grace=5).wait()
        log("storage proxy: stopped")
