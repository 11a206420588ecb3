"""``hpo storage-proxy``: Optuna's gRPC storage proxy in front of the study's database, with
heartbeats and the database artifact store passed through.

Workers then use ``grpc://HOST:PORT`` as their storage and need nothing else: one process holds
the database connections (at most the pool of :func:`~hpo.storage.database.resilient.engine_kwargs`: 2,
plus 2 in bursts) however many workers there are, and it caches trials for them. The proxy opens
the database as every hpo process does (strictly, with tables created under the database lock,
and riding out database restarts).

Optuna 4's proxy protocol (``optuna/storages/_grpc``) has no heartbeat call, and its client
(``GrpcStorageProxy``) is no ``BaseHeartbeat``, so behind plain Optuna a killed worker's trial
stays RUNNING for ever. Two small additions make a proxied worker's death end as a direct one's:

* **Heartbeats ride on a call the protocol has.** :class:`ProxiedStorage` (the worker's side) is
  a ``BaseHeartbeat``, so ``study.optimize`` runs Optuna's own heartbeat thread for it; each beat
  is a ``SetTrialSystemAttribute`` call with the key :data:`HEARTBEAT_ATTR`. The proxy's servicer
  turns exactly that key into ``record_heartbeat`` on its database storage instead of storing an
  attribute, so the beat lands in Optuna's ``trial_heartbeats`` table, where a direct worker's
  would: direct and proxied workers can share a study and fail each other's dead trials.
* **The proxy reaps.** Every few seconds it looks for RUNNING trials whose heartbeat is older
  than its ``--grace-period``, and fails each with its re-run queued in one transaction
  (:meth:`~hpo.storage.database.resilient.ResilientStorage.fail_and_requeue`, the copy every hpo
  worker's retry makes, :func:`~hpo.storage.database.resilient.retry_callback`): the trial is
  failed once (a conditional update decides between the proxy and any direct worker reaping at
  the same time; the loser changes nothing), and the copy with its parameters is run by the next
  free worker, resuming from its checkpoint.

  A trial's silence counts from its last heartbeat, from when this proxy first saw it
  running, or from the last moment all the proxy's threads were busy (heartbeats then wait in
  its queue), whichever is latest: while the proxy was down (restarting, for minutes) no worker
  could beat, and a trial claimed again keeps its old heartbeat until its new worker's first
  beat. Counting from the heartbeat alone, a restarted proxy failed trials whose workers were
  still running them (they then died on "Cannot tell a FAIL trial").

  The proxy reaps rather than the workers because a worker cannot ask the proxy for stale trials
  (no call for it) and one reaper per database needs no coordination; the workers' own check
  before each trial is empty for a proxied storage.

Alternatives weighed: an hpo-level heartbeat (a timestamp attribute written by a thread, reaped
by live workers) works over any storage but duplicates what Optuna already does, in the worker's
clock rather than the database's, with a reaping race per worker pair; here the database's
clock, Optuna's row lock and Optuna's retry callback do all of it.

**The creation lock passes through too.** Creating a study (and recording its spec) and
pretraining an encoder happen under :func:`~hpo.storage.database.locks.creation_lock`, a database lock a
proxied worker cannot take. For ``grpc://`` it is a :class:`~hpo.storage.database.proxied_lock.StorageLock`,
made of plain storage calls (a study ``hpo-lock:NAME`` whose first trial is the token), so it
needs nothing from the proxy; a worker killed while holding it is broken at once by a waiter on
its machine (its pid is gone or reused), and otherwise holds the others up for the lock's stale
time (2 min) instead of releasing it at once as a database session would. Direct
workers keep the database's lock (released at once by a dead worker), so a direct and a proxied
worker starting at the same moment are not kept apart: start a shared study's first worker alone.

The proxy also serves the database's artifact store (:mod:`hpo.storage.artifacts.http_store`) over
HTTP on ``--artifact-port`` (default: the gRPC port + 1), so a proxied worker reaches its
checkpoints, figures and pretrained encoders through the same machine. A worker on
``grpc://host:PORT`` looks for it at ``host:PORT+1``, or at the port of ``?artifact_port=N`` in its
storage URL.

**Who may connect.** Both ports serve only clients presenting the shared token
(``$HPO_PROXY_TOKEN`` or ``$HPO_PROXY_TOKEN_FILE``, :mod:`hpo.storage.database.proxy_auth`): a gRPC
interceptor checks every call before Optuna's servicer sees it (a refusal is ``UNAUTHENTICATED``)
and the artifact port every request (401). Each refusal is logged with the peer's address, never
what it sent, at most once a minute per address. ``--tls-cert``/``--tls-key`` put both ports
under TLS. Without a token the proxy serves loopback addresses only, unless ``--insecure``.

Example::

    HPO_PROXY_TOKEN_FILE=/run/secrets/hpo-proxy/token \
        hpo storage-proxy --storage postgresql+psycopg://hpo@db/hpo --host 0.0.0.0 --port 13000   # and 13001
    HPO_PROXY_TOKEN_FILE=... HPO_STORAGE=grpc://proxy-host:13000 hpo optimize --study imdb --trials 100
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import unquote

import optuna
import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.storage import optuna_private
from hpo.storage.artifacts.database_store import DatabaseStore
from hpo.storage.database.proxy_auth import TOKEN_FILE_VAR, TOKEN_VAR, ServerTls, is_loopback, proxy_token, token_matches
from hpo.storage.database.bounded import study_attrs
from hpo.storage.database.proxy_client import (FIRST_SEND_KEY, HEARTBEAT_ATTR, STAMP_KEY, STUDY_ATTRS_SERVICE, WRITE_TOKEN_KEY,
                                              grpc_address)
from hpo.storage.database.resilient import (
    GRACE_PERIOD_S,
    heartbeat_interval,
    open_storage,
)
from hpo.storage.database.urls import display_url
from hpo.storage.proxy.artifact_server import serve_artifacts

Log = Callable[[str], None]
THREADS = 16  # concurrent calls served; each takes a database connection from the pool while it runs

try:  # grpcio is optional (hpo[proxy]): without it `hpo storage-proxy` is one clear error in serve
    import grpc

    _Servicer = optuna_private.grpc_servicer()
    _api_pb2, _api_pb2_grpc = optuna_private.grpc_api()
    _ServerInterceptor: Any = grpc.ServerInterceptor
except ImportError:
    grpc = None

    class _Servicer:  # type: ignore[no-redef]  # never instantiated: serve() stops first
        pass

    _ServerInterceptor = object

REFUSAL_LOG_S = 60.0  # a client retrying with a wrong token is logged once a minute, not per call


class RefusalLog:
    """Logs refused clients by address, the first refusal at once, then at most every ``REFUSAL_LOG_S``
    per address with how many there were; never what the client sent. Shared by both ports."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # address -> (last logged, refusals since)

    def refused(self, port: str, peer: str, why: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, count = self._seen.get(peer, (float("-inf"), 0))
            if now - last < REFUSAL_LOG_S:
                self._seen[peer] = (last, count + 1)
                return
            self._seen[peer] = (now, 0)
        more = f" ({count} more refused since the last line)" if count else ""
        self.log(f"storage proxy: refused a client at {peer} on the {port} port: {why}{more}")


def grpc_peer(peer: str) -> str:
    """``ipv4:10.0.0.7:5123`` or ``ipv6:%5B::1%5D:5123`` (gRPC's form) as ``10.0.0.7:5123`` or ``[::1]:5123``."""
    kind, _, address = peer.partition(":")
    return unquote(address) if kind in ("ipv4", "ipv6") else peer


class _TokenCheck(_ServerInterceptor):  # type: ignore[misc,valid-type]
    """Lets a call through to Optuna's servicer only with the proxy's token in its metadata."""

    def __init__(self, token: str, refusals: RefusalLog) -> None:
        self.token, self.refusals = token, refusals

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        presented = dict(details.invocation_metadata or ()).get("authorization")
        if token_matches(presented, self.token):
            return continuation(details)
        why = "no token" if presented is None else "a wrong token"

        def refuse(request: Any, context: Any) -> Any:
            self.refusals.refused("gRPC", grpc_peer(context.peer()), why)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}: set ${TOKEN_VAR} or ${TOKEN_FILE_VAR} to the proxy's")

        return grpc.unary_unary_rpc_method_handler(refuse)  # every call of Optuna's protocol is unary


class Backlog(_ServerInterceptor):  # type: ignore[misc,valid-type]
    """Counts the calls the proxy is serving, so that its reaper knows when it could not hear heartbeats.

    With every one of its ``threads`` busy (64 workers joining a 1,000-trial study at once, each
    reading the whole study through it), a heartbeat waits in gRPC's queue like any call; the
    reaper then took the queue's delay for silence and failed trials whose workers were alive
    (benchmarks/storage_cost.py, 64 workers through the proxy: 3 trials failed a minute into the
    cell, their workers died on "Cannot tell a FAIL trial"). :meth:`quiet_for` says for how long
    every call could start at once; a trial's silence counts from then at the earliest.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._in_flight = 0
        self._busy_until: float | None = None  # when all threads were last busy (monotonic)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        """The call's handler, counted while it runs."""
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:  # every call of Optuna's protocol is unary
            return handler
        served = handler.unary_unary

        def counted(request: Any, context: Any) -> Any:
            with self._lock:
                self._in_flight += 1
                if self._in_flight >= self.threads:
                    self._busy_until = time.monotonic()
            try:
                return served(request, context)
            finally:
                with self._lock:
                    if self._in_flight >= self.threads:
                        self._busy_until = time.monotonic()
                    self._in_flight -= 1

        return handler._replace(unary_unary=counted)

    def quiet_for(self) -> float:
        """Seconds since every thread was last busy: 0 while they are, infinity if they never were."""
        with self._lock:
            if self._in_flight >= self.threads:
                return 0.0
            return float("inf") if self._busy_until is None else time.monotonic() - self._busy_until


KNOWN_TRIALS = 100_000  # trial ids whose study the proxy remembers (a few MB); the oldest are forgotten first


class _HeartbeatServicer(_Servicer):  # type: ignore[misc,valid-type]
    """Optuna's servicer, where a write of :data:`HEARTBEAT_ATTR` records the trial's heartbeat, and
    a parameter is checked against the distribution the study's first trial gave it, remembered, and
    a new trial or a state change resent with the same write token (a worker whose reply was lost
    in a restart) is applied once: the resend gets what the first call did.

    Behind Optuna's servicer the database storage has no cache, so every parameter a trial sets
    looked for an earlier trial of the study with that parameter (a join of trial_params and
    trials by name, which PostgreSQL answers by scanning trial_params from the start: 26 MB per
    trial in a database of a few studies, benchmarks/storage_cost.py --modes proxy). A direct
    worker's Optuna cache remembers the distribution per study; the proxy now does the same, for
    the trials created through it (a trial it did not create is checked by Optuna's own lookup).
    """

    def __init__(self, storage: Any) -> None:
        super().__init__(storage)
        self._tokens = threading.Lock()
        self._in_flight: dict[str, threading.Event] = {}
        self._study_of_trial: dict[int, int] = {}
        self._distributions: dict[tuple[int, str], Any] = {}  # (study id, parameter) -> its first distribution

    def _once(self, context: Any, fresh: Callable[[], Any], once: Callable[[str, bool], Any]) -> Any:
        """``once(token, first)`` for a call that carries a write token, else ``fresh()``; ``first``:
        the client says this is the token's first send (:data:`FIRST_SEND_KEY`).

        A resend that arrives while its first call still runs (the client saw its connection
        reset, the proxy did not) waits for it, then finds its token written.
        """
        metadata = dict(context.invocation_metadata() or ())
        token = metadata.get(WRITE_TOKEN_KEY)
        if token is None:
            return fresh()
        with self._tokens:
            running = self._in_flight.get(token)
            if running is None:
                self._in_flight[token] = threading.Event()
        if running is not None:
            running.wait()
            return once(token, False)
        try:
            # a first send's token was never sent before: no earlier call to look for (a resend
            # arriving while it runs still waits for it, above)
            return once(token, bool(metadata.get(FIRST_SEND_KEY)))
        finally:
            with self._tokens:
                self._in_flight.pop(token).set()

    def _stamped(self, context: Any) -> Any:
        """The worker loop's stamp that came with a call (:data:`STAMP_KEY`), as the block to make
        the call's trial in (:meth:`ResilientStorage.stamping`); a plain block without one."""
        sent = dict(context.invocation_metadata() or ()).get(STAMP_KEY)
        stamping = getattr(self._backend, "stamping", None)
        if sent is None or stamping is None:
            return contextlib.nullcontext()
        stamp = json.loads(sent)
        return stamping(dict(stamp.get("user_attrs") or {}), heartbeat=bool(stamp.get("heartbeat")))

    def CreateNewTrial(self, request: Any, context: Any) -> Any:
        template = None if request.template_trial_is_none else optuna_private.grpc_trial_from_proto(request.template_trial)
        try:
            with self._stamped(context):
                trial_id = self._once(context, lambda: self._backend.create_new_trial(request.study_id, template),
                                      lambda token, first: self._backend.create_new_trial_once(request.study_id, template,
                                                                                               token, first))
        except KeyError as exc:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(exc))
        self._study_of_trial[trial_id] = request.study_id
        if len(self._study_of_trial) > KNOWN_TRIALS:
            self._study_of_trial.pop(next(iter(self._study_of_trial)), None)
        return _api_pb2.CreateNewTrialReply(trial_id=trial_id)

    def GetTrials(self, request: Any, context: Any) -> Any:
        """The trials a worker's cache asks for (its unfinished ones, and those past its last
        finished one), read as such: Optuna's servicer read every trial of the study with all
        its attributes for each call and filtered them afterwards, several times per trial (a
        study of 1,000 trials: 2,150 trials read per finished trial, and growing with the study)."""
        try:
            trials = optuna_private.trials_since(self._backend, request.study_id, set(request.included_trial_ids),
                                                 request.trial_id_greater_than)
        except KeyError as e:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(e))
        return _api_pb2.GetTrialsReply(trials=[optuna_private.grpc_trial_proto(t) for t in trials])

    def SetTrialParameter(self, request: Any, context: Any) -> Any:
        study = self._study_of_trial.get(request.trial_id)
        known = None if study is None else self._distributions.get((study, request.param_name))
        if known is None:
            reply = super().SetTrialParameter(request, context)  # Optuna's own lookup; it raised if refused
            if study is not None:
                self._distributions[(study, request.param_name)] = json_to_distribution(request.distribution)
            return reply
        try:
            optuna_private.set_trial_param(self._backend, request.trial_id, request.param_name,
                                           request.param_value_internal, json_to_distribution(request.distribution), known)
        except KeyError as e:  # the replies Optuna's servicer gives
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(e))
        except UpdateFinishedTrialError as e:
            context.abort(code=grpc.StatusCode.FAILED_PRECONDITION, details=str(e))
        except ValueError as e:
            context.abort(code=grpc.StatusCode.INVALID_ARGUMENT, details=str(e))
        return _api_pb2.SetTrialParameterReply()

    def SetTrialStateValues(self, request: Any, context: Any) -> Any:
        state = optuna_private.grpc_trial_state_from_proto(request.state)
        values = list(request.values) if request.values else None
        try:
            with self._stamped(context):
                updated = self._once(
                    context, lambda: self._backend.set_trial_state_values(request.trial_id, state, values),
                    lambda token, first: self._backend.set_trial_state_values_once(request.trial_id, state, values,
                                                                                   token, first))
        except KeyError as exc:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(exc))
        except UpdateFinishedTrialError as exc:
            context.abort(code=grpc.StatusCode.FAILED_PRECONDITION, details=str(exc))
        return _api_pb2.SetTrialStateValuesReply(trial_updated=updated)

    def SetTrialSystemAttribute(self, request: Any, context: Any) -> Any:
        if request.key != HEARTBEAT_ATTR:
            return super().SetTrialSystemAttribute(request, context)
        try:
            self._backend.record_heartbeat(request.trial_id)
        except Exception as exc:  # a trial id that does not exist (its row is referenced)
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=f"heartbeat of trial {request.trial_id}: {exc}")
        return _api_pb2.SetTrialSystemAttributeReply()


def study_attrs_handler(storage: Any) -> Any:
    """hpo's call :data:`~hpo.storage.database.proxy_client.STUDY_ATTRS_METHOD`: a study's system
    attributes by key (JSON ``{"study_id", "keys"}`` in, ``{key: value}`` of those that exist out),
    read by key as a direct worker reads them (:func:`~hpo.storage.database.bounded.study_attrs`)."""

    def get(request: bytes, context: Any) -> bytes:
        ask = json.loads(request)
        return json.dumps(study_attrs(storage, int(ask["study_id"]), [str(k) for k in ask["keys"]])).encode()

    return grpc.method_handlers_generic_handler(STUDY_ATTRS_SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(get)})


class Reaper:
    """Fails the trials of every study in ``storage`` that are silent for ``grace_period`` s, and
    queues their re-runs (see "The proxy reaps" above).

    ``storage`` is the proxy's own (a ResilientStorage opened with ``grace_period``, whose
    heartbeat-stale callback is hpo's retry). A trial is failed by one conditional state change,
    so a trial another reaper (or a direct worker) fails first is skipped, not re-run twice.
    """

    def __init__(self, storage: Any, grace_period: int, log: Log = lambda m: None,
                 quiet_for: Callable[[], float] = lambda: float("inf")) -> None:
        self.storage, self.grace_period, self.log, self.quiet_for = storage, grace_period, log, quiet_for
        self._first_seen: dict[int, datetime] = {}  # RUNNING trial id -> when this proxy first saw it (database clock)

    def silent(self) -> dict[int, list[int]]:
        """{study id: ids of its RUNNING trials silent for over the grace period}, by the database's clock.

        One query over every study, so that the proxy looks at a study only when one of its trials looks dead.
        """
        models = optuna_private.rdb_models()
        trial, beat = models.TrialModel, models.TrialHeartbeatModel
        with self.storage.engine.connect() as conn:
            now = conn.execute(sa.select(sa.func.now())).scalar()
            rows = conn.execute(
                sa.select(trial.study_id, trial.trial_id, beat.heartbeat)
                .join(beat, beat.trial_id == trial.trial_id)
                .where(trial.state == TrialState.RUNNING)
            ).all()
        now = now.replace(tzinfo=None)  # PostgreSQL answers with a time zone, the column has none
        seen = {trial_id: self._first_seen.get(trial_id, now) for _, trial_id, _ in rows}
        self._first_seen = seen  # finished trials drop out
        # While every thread of the proxy was busy, heartbeats waited in its queue: not silence.
        heard = now - timedelta(seconds=min(self.quiet_for(), 10 * 365 * 86400))
        silent: dict[int, list[int]] = {}
        for study_id, trial_id, at in rows:
            if now - max(at, seen[trial_id], heard) > timedelta(seconds=self.grace_period):
                silent.setdefault(study_id, []).append(trial_id)
        return silent

    def round(self) -> int:
        """One look: how many trials it failed (each with a re-run queued)."""
        failed = 0
        for study_id, trial_ids in sorted(self.silent().items()):
            name = self.storage.get_study_name_from_id(study_id)
            study = optuna.Study(study_name=name, storage=self.storage, sampler=optuna.samplers.RandomSampler())
            for trial_id in sorted(trial_ids):
                # failed and its re-run queued in one transaction: a proxy killed in its round loses neither
                dead = self.storage.fail_and_requeue(study, trial_id)
                if dead is None:
                    continue  # finished meanwhile: by its worker, or by another reaper
                self.log(f"storage proxy: study {name!r}, trial {dead.number}: no heartbeat for {self.grace_period} s; "
                         "failed, and a re-run with its parameters is queued")
                failed += 1
        return failed


def serve(url: str, host: str, port: int, log: Log = lambda m: None, ready: threading.Event | None = None,
          artifact_port: int | None = None, grace_period: int | None = None, tls: ServerTls | None = None,
          insecure: bool = False) -> None:
    """Serve the database at ``url`` on ``host:port`` (gRPC) and its artifact store on
    ``host:artifact_port`` (HTTP; default port + 1) until SIGTERM or Ctrl-C.

    Trials whose heartbeat is ``grace_period`` seconds old (default: a worker's default) are
    failed and queued again, checked every :func:`~hpo.storage.database.resilient.heartbeat_interval`.
    Clients must present the token of the environment (:func:`~hpo.storage.database.proxy_auth.proxy_token`);
    without one, only a loopback ``host`` is served, unless ``insecure``. ``tls``: both ports over TLS.
    """
    if grpc is None:
        raise HpoError("hpo storage-proxy needs grpcio: pip install 'hpo[proxy]'")

    if grpc_address(url) is not None:
        raise HpoError("hpo storage-proxy needs the database URL itself, not another proxy's grpc:// address")
    token = proxy_token()
    if token is None and not insecure and not is_loopback(host):
        raise HpoError(f"--host {host} lets other machines in, and the proxy can change every study: set ${TOKEN_VAR} "
                       f"or ${TOKEN_FILE_VAR} (the workers need the same; `openssl rand -hex 24` makes one), "
                       "or pass --insecure on a network you trust")
    grace_period = GRACE_PERIOD_S if grace_period is None else grace_period
    artifact_port = port + 1 if artifact_port is None else artifact_port
    if artifact_port == port:
        raise HpoError(f"--artifact-port {artifact_port} is the gRPC --port: choose another (workers look at {port + 1})")
    storage = open_storage(url, grace_period=grace_period, log=log)
    refusals = RefusalLog(log)
    backlog = Backlog(THREADS)
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS),
                         interceptors=[backlog, *([_TokenCheck(token, refusals)] if token is not None else [])])
    _api_pb2_grpc.add_StorageServiceServicer_to_server(_HeartbeatServicer(storage), server)
    server.add_generic_rpc_handlers((study_attrs_handler(storage),))
    try:
        if tls is not None:
            server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
        else:
            server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc cannot bind the port
        raise HpoError(f"cannot serve on {host}:{port}: {exc}; choose another --port") from None
    artifacts = serve_artifacts(DatabaseStore.for_storage(storage), host, artifact_port, token=token,
                                tls=tls.ssl_context() if tls is not None else None,
                                refused=refusals.refused)  # HpoError if taken
    server.start()
    stop = threading.Event()  # before the line that says it serves: a SIGTERM right after it stops it cleanly
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    shown = f"[{host}]" if ":" in host else host
    access = "token required" if token is not None else "NO TOKEN: anyone who reaches the ports may change every study"
    tls_note = "TLS" if tls is not None else "no TLS"
    log(f"storage proxy: grpc://{shown}:{port} -> {display_url(url)} (workers: --storage grpc://HOST:{port}"
        f"{'?tls=1' if tls is not None else ''}); artifacts: http{'s' if tls is not None else ''}://{shown}:{artifact_port}; "
        f"{access}, {tls_note}; trials silent for {grace_period} s are re-run")
    if ready is not None:
        ready.set()
    interval = heartbeat_interval(grace_period)
    reaper = Reaper(storage, grace_period, log, backlog.quiet_for)
    try:
        while not stop.wait(interval):
            try:
                reaper.round()
            except Exception as exc:  # the database is away: the next round tries again
                log(f"storage proxy: could not check for dead workers' trials ({type(exc).__name__}); retrying")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        artifacts.shutdown()
        server.stop(grace=5).wait()
        log("storage proxy: stopped")
