"""The worker's side of `hpo storage-proxy`: a ``grpc://HOST:PORT`` storage that also beats.

Workers then use ``grpc://HOST:PORT`` as their storage and need nothing else (the server side,
:mod:`hpo.storage.proxy.server`, holds the database connections). Optuna's proxy protocol has no
heartbeat call, and its client (``GrpcStorageProxy``) is no ``BaseHeartbeat``, so behind plain
Optuna a killed worker's trial stays RUNNING for ever. :class:`ProxiedStorage` is a
``BaseHeartbeat``: ``study.optimize`` runs Optuna's own heartbeat thread for it, and each beat is
a ``SetTrialSystemAttribute`` call with the key :data:`HEARTBEAT_ATTR`, which the proxy turns
into ``record_heartbeat`` on its database storage instead of storing an attribute. Stale trials
are found and failed by the proxy, so the worker's own check before each trial costs no call.

The proxy also serves the database's artifact store over HTTP (default: the gRPC port + 1, or
``?artifact_port=N`` in the storage URL): :func:`artifact_address`.

Example::

    storage = open_grpc("grpc://proxy-host:13000", heartbeat_interval=10)
    optuna.load_study(study_name="imdb", storage=storage)
"""

from __future__ import annotations

import warnings
from typing import Callable
from urllib.parse import parse_qs

import optuna
from optuna.trial import FrozenTrial

from hpo.errors import HpoError
from hpo.storage.optuna_private import BaseHeartbeat

READY_TIMEOUT_S = 10.0  # how long a worker waits for the proxy to answer when it opens the storage
# The key of a trial system attribute that is never stored: the proxy records a heartbeat instead.
HEARTBEAT_ATTR = "hpo:heartbeat"

try:  # grpcio is optional (hpo[proxy]); without it grpc:// URLs are one clear error in open_grpc
    import grpc
    from optuna.storages import GrpcStorageProxy as _GrpcStorageProxy

    HAVE_GRPC = True
except ImportError:
    # An empty stand-in, never instantiated, so that the class below still defines: every hpo
    # process imports this module (open_storage parses URLs with it), grpcio or not.
    class _GrpcStorageProxy:  # type: ignore[no-redef]
        pass

    HAVE_GRPC = False


def grpc_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a ``grpc://host:port`` storage URL; None for database URLs."""
    if not url.startswith("grpc://"):
        return None
    address, _, _query = url[len("grpc://"):].partition("?")
    host, sep, port = address.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HpoError(f"storage URL {url!r}: expected grpc://HOST:PORT (the address of `hpo storage-proxy`)")
    return host.strip("[]"), int(port)


def artifact_address(url: str) -> tuple[str, int]:
    """Where the proxy at ``grpc://host:port`` serves the artifact store: port + 1, or ``?artifact_port=N``."""
    host, port = grpc_address(url) or ("", 0)
    query = parse_qs(url.partition("?")[2])
    wanted = query.get("artifact_port", [str(port + 1)])[-1]
    if not wanted.isdigit() or not 0 < int(wanted) < 65536:
        raise HpoError(f"storage URL {url!r}: artifact_port must be a port number, not {wanted!r}")
    return host, int(wanted)


class ProxiedStorage(_GrpcStorageProxy, BaseHeartbeat):  # type: ignore[misc,valid-type]
    """Optuna's gRPC client, plus heartbeats that `hpo storage-proxy` records (see the module doc).

    Stale trials are found and failed by the proxy, so :meth:`_get_stale_trial_ids` is empty
    here: Optuna's check before each trial costs no call. ``artifact_address`` is where the
    proxy serves the study database's artifact store.
    """

    def __init__(self, *, host: str, port: int, artifact_address: tuple[str, int],
                 heartbeat_interval: int | None = None, grpc_url: str | None = None) -> None:
        self.artifact_address = artifact_address
        self.grpc_url = grpc_url or f"grpc://{host}:{port}"  # not ``url``: that names a database to hpo
        self._heartbeat_interval = heartbeat_interval
        super().__init__(host=host, port=port)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)
        except grpc.RpcError:
            # The proxy is restarting: the next beat (a quarter of the grace period later at
            # most) tries again. Raising here would end Optuna's heartbeat thread for good.
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


def open_grpc(url: str, timeout_s: float | None = None, heartbeat_interval: int | None = None) -> ProxiedStorage:
    """A :class:`ProxiedStorage` on ``grpc://host:port``, once the proxy answers; else an HpoError.

    ``heartbeat_interval`` (seconds) turns on heartbeats for the trials this process runs.
    """
    host, port = grpc_address(url) or ("", 0)
    timeout_s = READY_TIMEOUT_S if timeout_s is None else timeout_s
    if not HAVE_GRPC:
        raise HpoError("grpc:// storage needs grpcio: pip install 'hpo[proxy]'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable enough since Optuna 4.2
        storage = ProxiedStorage(host=host, port=port, artifact_address=artifact_address(url),
                                 heartbeat_interval=heartbeat_interval, grpc_url=url)
    try:
        storage.wait_server_ready(timeout=timeout_s)
    except ConnectionError:
        raise HpoError(f"no storage proxy answers at {url} within {timeout_s:.0f} s: is `hpo storage-proxy` running there?") from None
    return storage
