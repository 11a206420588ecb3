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

Every call carries the proxy's token and goes over TLS when asked
(:mod:`hpo.storage.database.proxy_auth`); the proxy's refusal (no token, a wrong one) becomes one
HpoError line, checked once when the storage opens so that a worker stops before its first trial.

**A proxy restart pauses the workers, it does not kill them.** A call that finds no proxy
(``UNAVAILABLE``) is tried again by the policy every storage path shares
(:mod:`hpo.storage.database.outage`: up to 300 s), and a worker that starts while no proxy answers
waits as long, saying so in one line. A call that may have committed before its reply was lost
is never simply sent again: a new trial and a state change carry a write token (gRPC metadata
``hpo-write-token``) by which the proxy recognises the resent call and answers with what the
first one did (:mod:`hpo.storage.proxy.server`); creating a study, deleting one and setting a
parameter are read back before they are resent. Heartbeats are not retried: the next beat is.

Example::

    storage = open_grpc("grpc://proxy-host:13000", heartbeat_interval=10)
    optuna.load_study(study_name="imdb", storage=storage)
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import uuid
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

import optuna
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.storage.database import shield
from hpo.storage.database.outage import NOT_LANDED, RETRY_S, Outage
from hpo.storage.database.proxy_auth import CA_VAR, ClientAuth, client_auth, refusal
from hpo.storage.optuna_private import BaseHeartbeat, use_grpc_channel

Log = Callable[[str], None]
READY_TIMEOUT_S = 10.0  # how long a read-only command waits for the proxy to answer: it says so soon
WORKER_READY_S = RETRY_S  # how long a worker waits for it: a proxy restart is no reason to give up
SAY_WAITING_S = 2.0  # a proxy that has not answered by then gets a line saying the worker waits
WRITE_TOKEN_KEY = "hpo-write-token"  # gRPC metadata: the proxy answers a resent write with what the first did
# gRPC metadata of a worker loop's new trial or claim: the user attributes (JSON) to create the
# trial with, and its first heartbeat, in the proxy's transaction (ResilientStorage.stamping)
STAMP_KEY = "hpo-stamp"
# gRPC metadata of a write's first send: its token is new, so the proxy need not look for an
# earlier call with it (a lookup that scans the study's attributes: 260 kB per trial at 1,000 trials)
FIRST_SEND_KEY = "hpo-first-send"
# gRPC reconnects with exponential backoff up to 120 s by default: after a long outage a worker
# would find its restarted proxy only minutes later. Capped, it looks again every few seconds.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.initial_reconnect_backoff_ms", 500),
                    ("grpc.max_reconnect_backoff_ms", 4000)]
# The key of a trial system attribute that is never stored: the proxy records a heartbeat instead.
HEARTBEAT_ATTR = "hpo:heartbeat"

# gRPC's core logs each failed TLS handshake (a client without TLS, a port scan) to stderr in its
# own format, at INFO; the proxy reports refusals itself, once a minute per address. The level is
# read once, when grpc is first imported, which is here in every hpo process; yours wins if set.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:  # grpcio is optional (hpo[proxy]); without it grpc:// URLs are one clear error in open_grpc
    import grpc
    from optuna.storages import GrpcStorageProxy as _GrpcStorageProxy

    HAVE_GRPC = True
    _Interceptor: Any = grpc.UnaryUnaryClientInterceptor
except ImportError:
    # Empty stand-ins, never instantiated, so that the classes below still define: every hpo
    # process imports this module (open_storage parses URLs with it), grpcio or not.
    class _GrpcStorageProxy:  # type: ignore[no-redef]
        pass

    _Interceptor = object
    HAVE_GRPC = False

# What grpc wants for a call's details: the fields of grpc.ClientCallDetails, as a value.
_CallDetails = collections.namedtuple(
    "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"))


_write_token = threading.local()  # the token (and stamp) of the write this thread is sending, if any


class _Credentials(_Interceptor):  # type: ignore[misc,valid-type]
    """Adds the token (and a write's token) to every call, and turns the proxy's refusal into one HpoError line."""

    def __init__(self, url: str, auth: ClientAuth) -> None:
        self.url, self.auth = url, auth

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        extra = [header] if (header := self.auth.header()) is not None else []
        if (token := getattr(_write_token, "value", None)) is not None:
            extra.append((WRITE_TOKEN_KEY, token))
        if (stamp := getattr(_write_token, "stamp", None)) is not None:
            extra.append((STAMP_KEY, stamp))
        if token is not None and getattr(_write_token, "first", False):
            extra.append((FIRST_SEND_KEY, "1"))
        if extra:
            details = _CallDetails(details.method, details.timeout, [*(details.metadata or ()), *extra],
                                   details.credentials, getattr(details, "wait_for_ready", None),
                                   getattr(details, "compression", None))
        outcome = continuation(details, request)
        if outcome.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise HpoError(refusal(self.url, self.auth))
        return outcome


# hpo's own call beside Optuna's protocol, which has no read of one study attribute: a trial's
# dashboard note read every attribute of the study (every trial's note) through the proxy.
STUDY_ATTRS_SERVICE = "hpo.StudyAttributes"
STUDY_ATTRS_METHOD = f"/{STUDY_ATTRS_SERVICE}/Get"


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


def is_unavailable(exc: BaseException) -> bool:
    """True for "no proxy answers right now" (stopped, restarting, the connection reset)."""
    return HAVE_GRPC and isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


def _describe(exc: BaseException) -> str:
    details = exc.details() if HAVE_GRPC and isinstance(exc, grpc.RpcError) else str(exc)
    lines = (details or "").strip().splitlines()
    return f"the storage proxy: {lines[0]}" if lines else f"the storage proxy: {type(exc).__name__}"


class ProxiedStorage(_GrpcStorageProxy, BaseHeartbeat):  # type: ignore[misc,valid-type]
    """Optuna's gRPC client, plus heartbeats that `hpo storage-proxy` records and calls that ride
    out a proxy restart (see the module doc).

    Stale trials are found and failed by the proxy, so :meth:`_get_stale_trial_ids` is empty
    here: Optuna's check before each trial costs no call. ``artifact_address`` is where the
    proxy serves the study database's artifact store.
    """

    def __init__(self, *, host: str, port: int, artifact_address: tuple[str, int],
                 heartbeat_interval: int | None = None, grpc_url: str | None = None,
                 auth: ClientAuth | None = None, retry_s: float = RETRY_S, log: Log | None = None) -> None:
        self.artifact_address = artifact_address
        self.grpc_url = grpc_url or f"grpc://{host}:{port}"  # not ``url``: that names a database to hpo
        self.auth = auth or ClientAuth()
        self._heartbeat_interval = heartbeat_interval
        self._retry_s = retry_s
        self._outage = Outage(retry_s, log or _stderr, describe=_describe)
        self._stamps = threading.local()  # the stamp (JSON) of the thread's worker loop (stamping)
        super().__init__(host=host, port=port)  # calls _setup

    def _open_channel(self) -> Any:
        address = f"{self._host}:{self._port}"
        if self.auth.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.auth.ca_pem)
            return grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
        return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)

    def _setup(self) -> None:
        self._raw_channel = self._open_channel()
        use_grpc_channel(self, grpc.intercept_channel(self._raw_channel, _Credentials(self.grpc_url, self.auth)))

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_raw_channel", None)
        state.pop("_outage", None)  # a lock: a copy in another process makes its own
        state.pop("_stamps", None)  # a worker loop's, in this process
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state["_outage"] = Outage(state.get("_retry_s", RETRY_S), _stderr, describe=_describe)
        state["_stamps"] = threading.local()
        super().__setstate__(state)

    def wait_server_ready(self, timeout: float | None = None) -> None:
        """Waits until the proxy answers on this storage's own channel (TLS or not); ConnectionError."""
        try:
            grpc.channel_ready_future(self._raw_channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise ConnectionError("GRPC connection timeout") from exc

    def check_access(self) -> None:
        """One cheap call: an HpoError line now if the proxy refuses this client's token."""
        try:
            self.get_study_id_from_name("hpo:access-check")  # a name no study has: NOT_FOUND, unless refused
        except KeyError:
            pass

    # --- calls that ride out a proxy restart ---

    def _retried(self, attempt: Callable[[], Any], landed: Callable[[], Any] | None = None) -> Any:
        return self._outage.call(attempt, is_unavailable, landed)

    def _tokened(self, attempt: Callable[[], Any], stamped: bool = False) -> Any:
        """``attempt()`` sent, and resent, with one write token: the proxy applies it once.
        ``stamped``: with the thread's stamp too, if it is in a :meth:`stamping` block."""
        _write_token.value = uuid.uuid4().hex
        _write_token.stamp = getattr(self._stamps, "stamp", None) if stamped else None
        _write_token.first = True

        def sent() -> Any:
            try:
                return attempt()
            finally:
                _write_token.first = False  # any send after this one may find the write landed

        try:
            return self._retried(sent)
        finally:
            _write_token.value = _write_token.stamp = None
            _write_token.first = False

    @contextmanager
    def stamping(self, user_attrs: dict[str, Any]) -> Iterator[None]:
        """:meth:`ResilientStorage.stamping <hpo.storage.database.resilient.ResilientStorage.stamping>`
        through the proxy: each trial this thread creates from no template carries ``user_attrs`` and
        its first heartbeat from the proxy's transaction that creates it, and a queued trial it claims
        its first heartbeat from the claim's. Without it a worker killed between the trial's creation
        and its heartbeat thread's first beat (a few milliseconds, one call) left a RUNNING trial
        with no heartbeat, which no reaper looks at. A proxy of an older hpo ignores the stamp (the
        worker then writes its name itself)."""
        previous = getattr(self._stamps, "stamp", None)
        # the heartbeat only where Optuna's heartbeat thread keeps beating after it
        self._stamps.stamp = json.dumps({"user_attrs": user_attrs, "heartbeat": self._heartbeat_interval is not None})
        try:
            yield
        finally:
            self._stamps.stamp = previous

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._tokened(lambda: super(ProxiedStorage, self).create_new_trial(study_id, template_trial),
                             stamped=template_trial is None)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        with shield.shielded(raise_after=not state.is_finished()):  # a signal waits for it, as in ResilientStorage
            return self._tokened(lambda: super(ProxiedStorage, self).set_trial_state_values(trial_id, state, values),
                                 stamped=state == TrialState.RUNNING)

    def create_new_study(self, directions: Any, study_name: str | None = None) -> int:
        # Named here, so that a resend looks for the study the first attempt made (studies are
        # created under hpo's creation lock: a study of that name is ours).
        name = study_name or f"{DEFAULT_STUDY_NAME_PREFIX}{uuid.uuid4()}"

        def landed() -> Any:
            try:
                return super(ProxiedStorage, self).get_study_id_from_name(name)
            except KeyError:
                return NOT_LANDED

        return self._retried(lambda: super(ProxiedStorage, self).create_new_study(directions, name), landed)

    def delete_study(self, study_id: int) -> None:
        def landed() -> Any:
            try:
                super(ProxiedStorage, self).get_study_name_from_id(study_id)
            except KeyError:
                self._cache.delete_study_cache(study_id)
                return None  # gone: deleted by the attempt whose reply was lost
            return NOT_LANDED

        return self._retried(lambda: super(ProxiedStorage, self).delete_study(study_id), landed)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        def landed() -> Any:
            trial = super(ProxiedStorage, self).get_trial(trial_id)
            if param_name in trial.params and \
                    trial.distributions[param_name].to_internal_repr(trial.params[param_name]) == param_value_internal:
                return None
            return NOT_LANDED

        return self._retried(lambda: super(ProxiedStorage, self).set_trial_param(
            trial_id, param_name, param_value_internal, distribution), landed)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:  # a beat is not resent: the next one is due soon
            return super().set_trial_system_attr(trial_id, key, value)
        return self._retried(lambda: super(ProxiedStorage, self).set_trial_system_attr(trial_id, key, value))

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)
        except (grpc.RpcError, HpoError):
            # The proxy is restarting (or restarted with another token, which the trial's own
            # next call reports): the next beat (a quarter of the grace period later at most)
            # tries again. Raising here would end Optuna's heartbeat thread for good.
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def study_attrs_by_key(self, study_id: int, keys: list[str]) -> dict[str, Any] | None:
        """The study system attributes among ``keys`` that exist, read by key in the proxy's database
        (:data:`STUDY_ATTRS_METHOD`); None from a proxy of an older hpo, which lacks the call."""
        call = self._channel.unary_unary(STUDY_ATTRS_METHOD)  # bytes in, bytes out: JSON both ways
        try:
            reply = self._retried(lambda: call(json.dumps({"study_id": study_id, "keys": list(keys)}).encode()))  # a read
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return dict(json.loads(reply))

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _make_retried(name: str) -> Callable[..., Any]:
    method = getattr(_GrpcStorageProxy, name)

    def retried(self: ProxiedStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(lambda: method(self, *args, **kwargs))

    retried.__name__ = retried.__qualname__ = name
    retried.__doc__ = method.__doc__
    return retried


# Reads, and writes that land the same however often they are sent (attributes, intermediate
# values): resent as they are after UNAVAILABLE. The writes that are not (above) are checked first.
_RESENT_AS_THEY_ARE = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "set_study_user_attr", "set_study_system_attr",
    "set_trial_intermediate_value", "set_trial_user_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials",
)
if HAVE_GRPC:
    for _name in _RESENT_AS_THEY_ARE:
        setattr(ProxiedStorage, _name, _make_retried(_name))


def open_grpc(url: str, timeout_s: float | None = None, heartbeat_interval: int | None = None,
              log: Log | None = None) -> ProxiedStorage:
    """A :class:`ProxiedStorage` on ``grpc://host:port``, once the proxy answers; else an HpoError.

    ``timeout_s``: how long to wait for the proxy (default :data:`READY_TIMEOUT_S`; workers wait
    :data:`WORKER_READY_S`, saying so in one line after :data:`SAY_WAITING_S`). ``heartbeat_interval``
    (seconds) turns on heartbeats for the trials this process runs. ``log`` hears about outages
    (default: stderr).
    """
    host, port = grpc_address(url) or ("", 0)
    timeout_s = READY_TIMEOUT_S if timeout_s is None else timeout_s
    log = log or _stderr
    if not HAVE_GRPC:
        raise HpoError("grpc:// storage needs grpcio: pip install 'hpo[proxy]'")
    auth = client_auth(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable enough since Optuna 4.2
        storage = ProxiedStorage(host=host, port=port, artifact_address=artifact_address(url),
                                 heartbeat_interval=heartbeat_interval, grpc_url=url, auth=auth, log=log)
    try:
        if timeout_s > SAY_WAITING_S:
            try:
                storage.wait_server_ready(timeout=SAY_WAITING_S)
            except ConnectionError:
                log(f"no storage proxy answers at {url} yet: waiting up to {timeout_s:.0f} s for it "
                    "(is `hpo storage-proxy` running there, or restarting?)")
                storage.wait_server_ready(timeout=timeout_s - SAY_WAITING_S)
        else:
            storage.wait_server_ready(timeout=timeout_s)
    except ConnectionError:
        tls = (f"over TLS (${CA_VAR} or ?tls=1): does the proxy have --tls-cert, and a certificate for this host name?"
               if auth.tls else f"without TLS: if the proxy has --tls-cert, set ${CA_VAR}")
        raise HpoError(f"no storage proxy answers at {url} within {timeout_s:.0f} s: is `hpo storage-proxy` running "
                       f"there? (connecting {tls})") from None
    storage.check_access()
    return storage
