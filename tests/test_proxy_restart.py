"""A storage proxy that restarts pauses its workers, it does not kill them: real `hpo storage-proxy`
processes (on a SQLite file), killed and started again on the same port."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from db_servers import start_storage_proxy
from hpo.storage.database.resilient import open_storage
from db_servers import free_port

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")


def _proxy(db: Path, port: int, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_STORAGE": f"sqlite:///{db}", "HPO_GRACE_PERIOD": "10"}
    env.pop("HPO_PROXY_TOKEN", None)
    proc, _ = start_storage_proxy(port, cwd, env)
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.e2e
def test_a_proxy_killed_and_restarted_mid_trial_is_waited_for(tmp_path) -> None:
    """Trials running through a proxy that is SIGKILLed and comes back 4 s later finish, each
    once: the worker's calls wait for it. Before, the first call after the kill raised grpc's
    UNAVAILABLE out of study.optimize (the chaos run: a traceback, a dead worker)."""
    db, port = tmp_path / "proxied.db", free_port()
    proxy = _proxy(db, port, tmp_path)
    restarted: list[subprocess.Popen[str]] = []
    try:
        storage = open_storage(f"grpc://127.0.0.1:{port}", grace_period=10)
        study = optuna.create_study(study_name="restart", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
        in_trial = threading.Event()

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -1, 1)
            for step in range(10):
                in_trial.set()
                time.sleep(0.3)
                trial.report(x, step)  # a storage call every 0.3 s: some land while the proxy is away
            return x * x

        def restart() -> None:
            in_trial.wait(60)
            time.sleep(1.0)
            _kill(proxy)
            time.sleep(4.0)
            restarted.append(_proxy(db, port, tmp_path))

        chaos = threading.Thread(target=restart)
        chaos.start()
        study.optimize(objective, n_trials=4)
        chaos.join(120)
        assert restarted, "the proxy was not restarted during the trials"
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert all(len(t.intermediate_values) == 10 for t in trials)
    finally:
        for proc in [proxy, *restarted]:
            if proc.poll() is None:
                _kill(proc)


@pytest.mark.e2e
def test_a_worker_started_while_no_proxy_answers_waits_for_it(tmp_path, capfd) -> None:
    """A worker opening its storage while the proxy restarts waits (one line says so) and goes on
    when it answers; before, it gave up after 10 s ('no storage proxy answers')."""
    db, port = tmp_path / "late.db", free_port()
    opened: list[Any] = []
    worker = threading.Thread(target=lambda: opened.append(open_storage(f"grpc://127.0.0.1:{port}", grace_period=10)))
    worker.start()
    time.sleep(14)  # past the old 10 s
    proxy = _proxy(db, port, tmp_path)
    try:
        worker.join(120)
        assert opened, "the worker gave up before the proxy came"
        assert opened[0].get_all_studies() == []
        err = capfd.readouterr().err
        waiting = [line for line in err.splitlines() if "no storage proxy answers" in line]
        assert waiting == [f"no storage proxy answers at grpc://127.0.0.1:{port} yet: waiting up to 300 s for it "
                           "(is `hpo storage-proxy` running there, or restarting?)"], err
    finally:
        _kill(proxy)


class _LostReply(grpc.RpcError):
    """What a client sees when the proxy dies after its write committed, before it replied."""

    def code(self) -> Any:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Socket closed (the reply was lost)"

    def result(self, timeout: float | None = None) -> Any:
        raise self


class _LoseReplyOnce(grpc.UnaryUnaryClientInterceptor):
    """Lets the first call of ``method`` reach the proxy and finish there, then loses its reply."""

    def __init__(self, method: str) -> None:
        self.method, self.lost = method, 0

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/" + self.method) and not self.lost:
            outcome.result()  # it ran, and committed
            self.lost += 1
            return _LostReply()
        return outcome


def _losing(storage: Any, method: str) -> _LoseReplyOnce:
    from hpo.storage.optuna_private import use_grpc_channel

    lose = _LoseReplyOnce(method)
    use_grpc_channel(storage, grpc.intercept_channel(storage._channel, lose))
    return lose


@pytest.mark.e2e
def test_writes_whose_reply_was_lost_are_applied_once(tmp_path) -> None:
    """A new trial, a claim of a WAITING trial and a new study whose replies were lost in a
    restart are resent and land once: one trial made, the claim ours (not 'another worker has
    it', which left the trial RUNNING with nobody), the study found. Before, the lost reply was
    UNAVAILABLE out of the call."""
    from optuna.study import StudyDirection

    db, port = tmp_path / "tokens.db", free_port()
    proxy = _proxy(db, port, tmp_path)
    try:
        url = f"grpc://127.0.0.1:{port}"
        storage = open_storage(url)
        study_id = storage.create_new_study([StudyDirection.MINIMIZE], "tokens")

        lose = _losing(storage, "CreateNewTrial")
        storage.create_new_trial(study_id)
        assert lose.lost == 1
        assert len(open_storage(url).get_all_trials(study_id)) == 1  # not two

        waiting = storage.create_new_trial(study_id, optuna.trial.create_trial(state=TrialState.WAITING))
        lose = _losing(storage, "SetTrialStateValues")
        assert storage.set_trial_state_values(waiting, TrialState.RUNNING) is True
        assert lose.lost == 1 and open_storage(url).get_trial(waiting).state == TrialState.RUNNING

        lose = _losing(storage, "CreateNewStudy")
        made = storage.create_new_study([StudyDirection.MINIMIZE], "made-once")
        assert lose.lost == 1 and open_storage(url).get_study_id_from_name("made-once") == made
    finally:
        _kill(proxy)


@pytest.mark.e2e
def test_a_client_that_resets_its_artifact_connection_is_no_traceback_in_the_proxy_log(tmp_path) -> None:
    """A worker killed with a kept-alive connection to the artifact port resets it; the proxy
    logged socketserver's traceback for each (the chaos run: 12 'tracebacks' in 6 faults, all
    ConnectionResetError from the artifact port)."""
    import socket
    import struct

    db, port = tmp_path / "reset.db", free_port()
    proxy = _proxy(db, port, tmp_path)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port + 1)) as conn:
                conn.sendall(b"GET /artifacts/x HTTP/1.1\r\n")  # part of a request, then gone
                time.sleep(0.2)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        time.sleep(1.0)
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=30)
    assert "storage proxy: stopped" in out
    assert "Traceback" not in out and "ConnectionResetError" not in out, out


@pytest.mark.e2e
def test_an_upload_stalled_mid_body_does_not_hold_up_the_other_workers(tmp_path) -> None:
    """A worker stopped (Ctrl-C) while it uploads a checkpoint may leave its connection open with
    the body half sent. The proxy streamed bodies straight into the database's write transaction,
    so on SQLite every other write waited behind it (the chaos run: a station hung 120 s in
    set_trial_state_values, 'database is locked' in the proxy's log). Now another worker's write
    goes through at once."""
    import hashlib
    import socket

    from optuna.study import StudyDirection

    from hpo.storage.artifacts.database_store import CHUNK_BYTES

    db, port = tmp_path / "stall.db", free_port()
    proxy = _proxy(db, port, tmp_path)
    try:
        storage = open_storage(f"grpc://127.0.0.1:{port}")
        storage.create_new_study([StudyDirection.MINIMIZE], "before")  # the tables exist
        body = os.urandom(3 * CHUNK_BYTES)
        stalled = socket.create_connection(("127.0.0.1", port + 1))
        stalled.sendall(f"PUT /artifacts/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                        f"X-Sha256: {hashlib.sha256(body).hexdigest()}\r\n\r\n".encode())
        stalled.sendall(body[:CHUNK_BYTES + 10])  # more than one chunk: the store has begun writing
        time.sleep(2.0)
        done: list[int] = []
        other = threading.Thread(target=lambda: done.append(storage.create_new_study([StudyDirection.MINIMIZE], "other")))
        start = time.monotonic()
        other.start()
        other.join(20)
        waited = time.monotonic() - start
        stalled.close()
        other.join(120)
        assert done and waited < 20, f"another worker's write waited {waited:.0f} s behind the stalled upload"
    finally:
        _kill(proxy)


def test_a_signal_during_a_proxied_trials_finishing_write_ends_the_worker_after_it(tmp_path, monkeypatch) -> None:
    """As for a direct worker (test_reliability.py): a Ctrl-C inside the call that finishes a trial
    made Optuna's tell clean-up fail with UnboundLocalError and left the trial RUNNING. Through the
    proxy the write is a gRPC call; the signal waits for it, the trial is COMPLETE."""
    from optuna.storages._grpc.client import GrpcStorageProxy

    from hpo.search import workers

    db, port = tmp_path / "finish.db", free_port()
    proxy = _proxy(db, port, tmp_path)
    try:
        storage = open_storage(f"grpc://127.0.0.1:{port}")
        study = optuna.create_study(study_name="finish", storage=storage)
        finish = GrpcStorageProxy.set_trial_state_values

        def ctrl_c_inside(self: Any, trial_id: int, state: TrialState, values: Any = None) -> bool:
            if state == TrialState.COMPLETE:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler runs in here
            return finish(self, trial_id, state, values)

        monkeypatch.setattr(GrpcStorageProxy, "set_trial_state_values", ctrl_c_inside)
        with pytest.raises(KeyboardInterrupt):
            workers.work(study, lambda trial: trial.suggest_float("x", 0, 1), budget=3)
        monkeypatch.undo()
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
    finally:
        _kill(proxy)
