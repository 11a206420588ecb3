"""``hpo storage-proxy`` in front of the real PostgreSQL: workers on grpc:// run one study's budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from db_servers import fresh_database, start_storage_proxy
from hpo.cli import main
from hpo.storage.database.resilient import open_storage
from hpo.search.study import FINISHED
from hpo.search.workers import work
from db_servers import free_port

pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")


def _start_proxy(url: str, port: int, cwd: Path, grace: int | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    """`hpo storage-proxy` on ``port`` (gRPC) and ``port + 1`` (artifacts), once it says it serves."""
    env = {**os.environ, "HPO_STORAGE": url}  # the password stays off the command line
    if grace is not None:
        env["HPO_GRACE_PERIOD"] = str(grace)
    return start_storage_proxy(port, cwd, env)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    trial.report(x, 0)
    return x * x


def test_workers_run_one_budget_through_the_proxy(tmp_path) -> None:
    with fresh_database("postgres") as url:
        port = free_port()
        proc, lines = _start_proxy(url, port, tmp_path)
        try:
            assert f"storage proxy: grpc://127.0.0.1:{port} -> " in lines[-1]
            assert make_url(url).password not in "".join(lines)
            proxied = open_storage(f"grpc://127.0.0.1:{port}")
            study = optuna.create_study(study_name="via-proxy", storage=proxied, sampler=optuna.samplers.RandomSampler(seed=0))
            assert work(study, _objective, 12, poll_s=0.05) == 12
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "storage proxy: stopped" in out
        direct = optuna.load_study(study_name="via-proxy", storage=open_storage(url))
        assert len([t for t in direct.get_trials(deepcopy=False) if t.state in FINISHED]) == 12  # in the database


def test_a_proxy_nobody_runs_and_bad_addresses_are_one_line(monkeypatch) -> None:
    monkeypatch.setattr("hpo.storage.database.proxy_client.READY_TIMEOUT_S", 1.0)
    port = free_port()
    result = CliRunner().invoke(main, ["report", "--study", "s", "--storage", f"grpc://127.0.0.1:{port}"])
    assert result.exit_code == 2 and f"no storage proxy answers at grpc://127.0.0.1:{port}" in result.stderr, result.output
    result = CliRunner().invoke(main, ["report", "--study", "s", "--storage", "grpc://nohost"])
    assert result.exit_code == 2 and "expected grpc://HOST:PORT" in result.stderr, result.output
    result = CliRunner().invoke(main, ["storage-proxy", "--storage", "grpc://127.0.0.1:1"])
    assert result.exit_code == 2 and "not another proxy's grpc:// address" in result.stderr, result.output


def test_workers_find_the_artifact_store_next_to_the_proxy() -> None:
    from hpo.errors import HpoError
    from hpo.storage.database.proxy_client import artifact_address, grpc_address

    assert grpc_address("grpc://proxy:13000?artifact_port=14000") == ("proxy", 13000)
    assert artifact_address("grpc://proxy:13000") == ("proxy", 13001)
    assert artifact_address("grpc://[::1]:13000?artifact_port=14000") == ("::1", 14000)
    with pytest.raises(HpoError, match="artifact_port must be a port number"):
        artifact_address("grpc://proxy:13000?artifact_port=x")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() here
def test_the_proxy_fails_a_silent_trial_once_and_queues_its_rerun(tmp_path) -> None:
    """The proxy's reaper, on its own storage: a trial whose heartbeat stopped is failed and
    re-queued with its parameters; a trial still beating is left alone; a second pass (or a
    second reaper) finds nothing more to do."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hpo.storage.proxy.server import Reaper

    storage = open_storage(f"sqlite:///{tmp_path / 'reap.db'}", grace_period=2)
    study = optuna.create_study(study_name="reap", storage=storage)
    dead = study.ask({"x": FloatDistribution(0, 1)})
    alive = study.ask({"x": FloatDistribution(0, 1)})
    storage.record_heartbeat(dead._trial_id)
    storage.record_heartbeat(alive._trial_id)
    said: list[str] = []
    reaper = Reaper(storage, 2, said.append)
    assert reaper.round() == 0  # the proxy sees both running
    time.sleep(3.5)  # SQLite's clock has whole seconds
    storage.record_heartbeat(alive._trial_id)
    assert reaper.round() == 1
    assert reaper.round() == 0 and Reaper(storage, 2).round() == 0
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == trials[0].params and trials[2].system_attrs["failed_trial"] == dead.number
    assert said == ["storage proxy: study 'reap', trial 0: no heartbeat for 2 s; failed, and a re-run with its "
                    "parameters is queued"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() here
def test_a_restarted_proxy_gives_running_trials_a_grace_period_before_failing_them(tmp_path) -> None:
    """A trial silent for longer than the grace period only because the proxy was down (no worker
    can beat then) is not failed by the proxy that comes back: its silence counts from when that
    proxy first saw it. Before, the new proxy failed it at once while its worker still ran it
    (the chaos run: "Cannot tell a FAIL trial")."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hpo.storage.proxy.server import Reaper

    storage = open_storage(f"sqlite:///{tmp_path / 'restart.db'}", grace_period=2)
    study = optuna.create_study(study_name="restart", storage=storage)
    running = study.ask({"x": FloatDistribution(0, 1)})
    storage.record_heartbeat(running._trial_id)
    time.sleep(3.5)  # the proxy is down: no beat lands
    restarted = Reaper(storage, 2)
    assert restarted.round() == 0  # its worker gets a grace period to beat again
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
    time.sleep(3.5)  # ...and when it never does, the trial is failed
    assert restarted.round() == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() here
def test_a_proxied_workers_trials_beat_from_the_proxys_first_transaction(tmp_path) -> None:
    """Through the proxy, a worker loop's new trial carries its worker's name and first heartbeat
    from the transaction that creates it, and a queued re-run it claims its first heartbeat from the
    claim's: both are in the database before the worker's heartbeat thread beats at all. Before,
    a proxied worker SIGKILLed between its trial's creation and that first beat left the trial
    RUNNING with no heartbeat row, never reaped (benchmarks/results/chaos-proxy-postgres-a3620b7.txt)."""
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'stamped.db'}"
    port = free_port()
    proc, _ = _start_proxy(url, port, tmp_path, grace=60)
    try:
        proxied = open_storage(f"grpc://127.0.0.1:{port}", grace_period=60)
        study = optuna.create_study(study_name="stamped", storage=proxied)
        study.enqueue_trial({"x": 0.5})
        with proxied.stamping({"worker": "here:1"}):
            claimed = study.ask()  # the queued re-run
            made = study.ask()  # a new trial
        plain = study.ask()  # outside a worker loop: no heartbeat (it would go stale), no name
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats ORDER BY trial_id")).scalars().all()
        names = conn.execute(sqlalchemy.text("SELECT trial_id, value_json FROM trial_user_attributes")).all()
    assert beats == [claimed._trial_id, made._trial_id]
    assert names == [(made._trial_id, '"here:1"')]  # a re-run is named by the worker's own write (tracked)
    assert plain._trial_id not in beats


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # ask() here
def test_a_proxy_too_busy_to_hear_heartbeats_fails_no_trial_until_it_could_again(tmp_path) -> None:
    """benchmarks/storage_cost.py, 64 workers joining a 1,000-trial study through the proxy: every
    thread of the proxy was busy serving their reads for a minute, the workers' heartbeats waited in
    its queue, and the reaper failed 3 trials whose workers were alive (they died on "Cannot tell a
    FAIL trial"). Silence now counts from the last moment all its threads were busy at the earliest."""
    import threading

    import grpc
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hpo.storage.proxy.server import Backlog, Reaper

    backlog = Backlog(threads=2)
    assert backlog.quiet_for() == float("inf")
    release = threading.Event()
    handler = backlog.intercept_service(lambda details: grpc.unary_unary_rpc_method_handler(
        lambda request, context: release.wait(10)), None)
    calls = [threading.Thread(target=handler.unary_unary, args=(None, None)) for _ in range(2)]
    for call in calls:
        call.start()
    time.sleep(0.2)
    assert backlog.quiet_for() == 0.0  # both threads busy: a heartbeat would wait
    release.set()
    for call in calls:
        call.join()
    time.sleep(0.2)
    assert 0.1 < backlog.quiet_for() < 5

    storage = open_storage(f"sqlite:///{tmp_path / 'busy.db'}", grace_period=2)
    study = optuna.create_study(study_name="busy", storage=storage)
    trial = study.ask({"x": FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    quiet = [0.0]
    reaper = Reaper(storage, 2, quiet_for=lambda: quiet[0])
    assert reaper.round() == 0
    time.sleep(3.5)  # silent past the grace period (SQLite's clock has whole seconds)...
    quiet[0] = 1.0  # ...but the proxy was too busy to hear it until a second ago
    assert reaper.round() == 0
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
    quiet[0] = 3.5  # free for longer than the grace period, and still nothing: dead
    assert reaper.round() == 1


def test_without_grpcio_database_urls_still_open_and_grpc_urls_say_what_to_install(tmp_path) -> None:
    """grpcio is an extra (hpo[proxy]), yet every hpo process imports the proxy module."""
    code = (
        "import sys; sys.modules['grpc'] = None\n"  # as if grpcio were not installed
        "from hpo.errors import HpoError\n"
        "from hpo.storage.database.resilient import open_storage\n"
        f"print(type(open_storage('sqlite:///{tmp_path / 'hpo.db'}')).__name__)\n"
        "try:\n"
        "    open_storage('grpc://127.0.0.1:1')\n"
        "except HpoError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)  # not the repository root
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ResilientStorage", "grpc:// storage needs grpcio: pip install 'hpo[proxy]'"]


def _servicer_in_process(db: Path):
    """hpo's proxy servicer over a SQLite file, in this process (its statements can be listened to):
    (its storage, the gRPC server, its port)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from hpo.storage import optuna_private
    from hpo.storage.proxy.server import _HeartbeatServicer

    storage = open_storage(f"sqlite:///{db}")
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    optuna_private.grpc_api()[1].add_StorageServiceServicer_to_server(_HeartbeatServicer(storage), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return storage, server, port


def test_the_proxy_reads_what_a_worker_asks_for_and_remembers_distributions(tmp_path) -> None:
    """Behind Optuna's servicer each parameter looked its study up in trial_params (a scan that
    grows with the database); the proxy remembers each study's distributions, as a direct worker's
    cache does, and still refuses an incompatible one."""
    import sqlalchemy
    from optuna.storages import GrpcStorageProxy

    storage, server, port = _servicer_in_process(tmp_path / "proxied.db")
    lookups: list[str] = []
    whole_study: list[str] = []

    def listen(conn, cursor, statement, *rest) -> None:
        flat = " ".join(statement.split())
        if "FROM trial_params JOIN trials" in flat:
            lookups.append(flat)
        if "FROM trials WHERE trials.study_id = ? ORDER BY" in flat:  # every trial, unfiltered
            whole_study.append(flat)

    try:
        study = optuna.create_study(study_name="proxied", storage=GrpcStorageProxy(host="127.0.0.1", port=port))
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
        objective = lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 3)  # noqa: E731
        study.optimize(objective, n_trials=1)
        study.get_trials()  # the worker's cache has seen a finished trial: until then Optuna itself asks for them all
        whole_study.clear()
        study.optimize(objective, n_trials=2)
        assert len(lookups) == 2  # the first trial's two parameters; none after
        # A worker's cache asks for its unfinished trials and the newer ones; Optuna's servicer read
        # the whole study for each such call and filtered afterwards.
        assert whole_study == []
        trial = study.ask()
        with pytest.raises(Exception):  # the proxy's INVALID_ARGUMENT, as Optuna's servicer answers
            trial.suggest_categorical("x", ["a", "b"])  # the study's x is a float
        assert "x" not in storage.get_trial(trial._trial_id).params
        assert [t.state for t in storage.get_all_trials(study._study_id)][:3] == [optuna.trial.TrialState.COMPLETE] * 3
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
        server.stop(None)


def test_the_proxy_looks_for_an_earlier_write_only_when_a_write_is_resent(tmp_path) -> None:
    """A proxied worker's new trial and state change carry a write token; the proxy looked for an
    earlier call with that token before every one of them, a scan of the study's attributes
    (benchmarks/storage_cost.py, 64 workers through the proxy at 1,000 trials: 260 kB of the 10 MB
    a trial cost). A first send says so, and only a resend is looked for: it still gets what the
    first call did, once."""
    import sqlalchemy

    storage, server, port = _servicer_in_process(tmp_path / "first.db")
    lookups: list[str] = []

    def listen(conn, cursor, statement, *rest) -> None:
        flat = " ".join(statement.split())
        if "FROM trial_system_attributes" in flat and "hpo:write" in str(rest[0]):
            lookups.append(flat)

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
    try:
        proxied = open_storage(f"grpc://127.0.0.1:{port}")
        study = optuna.create_study(study_name="first", storage=proxied)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert lookups == []
        made = storage.create_new_trial_once(study._study_id, None, "resent-token", first=True)
        assert storage.create_new_trial_once(study._study_id, None, "resent-token") == made  # a resend: found
        assert len(lookups) == 1 and len(study.get_trials(deepcopy=False)) == 4
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
        server.stop(None)


def test_a_resend_that_arrives_while_the_first_send_runs_waits_for_it(tmp_path) -> None:
    """The first send of a new trial skips the lookup of its token, but still registers it: a resend
    arriving while the first send is still being written (the client saw its connection reset) waits
    for it and gets its trial, and no second trial is made."""
    import threading

    from hpo.storage.database.proxy_client import FIRST_SEND_KEY, WRITE_TOKEN_KEY
    from hpo.storage.proxy.server import _HeartbeatServicer

    storage = open_storage(f"sqlite:///{tmp_path / 'resend.db'}")
    study = optuna.create_study(study_name="resend", storage=storage)
    servicer = _HeartbeatServicer(storage)

    class Context:
        def __init__(self, *metadata: tuple[str, str]) -> None:
            self.metadata = metadata

        def invocation_metadata(self):
            return self.metadata

    writing, release = threading.Event(), threading.Event()

    def slow_first(token: str, first: bool) -> int:
        writing.set()
        release.wait(10)  # the first send is still being written...
        return storage.create_new_trial_once(study._study_id, None, token, first)

    made: list[int] = []
    first = threading.Thread(target=lambda: made.append(servicer._once(
        Context((WRITE_TOKEN_KEY, "t1"), (FIRST_SEND_KEY, "1")), lambda: None, slow_first)))
    first.start()
    assert writing.wait(10)
    resend = threading.Thread(target=lambda: made.append(servicer._once(
        Context((WRITE_TOKEN_KEY, "t1")), lambda: None,
        lambda token, first: storage.create_new_trial_once(study._study_id, None, token, first))))
    resend.start()  # ...when the client's resend arrives
    time.sleep(0.3)
    release.set()
    first.join()
    resend.join()
    assert len(made) == 2 and made[0] == made[1]
    assert len(study.get_trials(deepcopy=False)) == 1


def test_a_note_through_the_proxy_reads_its_own_keys_not_every_note(tmp_path) -> None:
    """Optuna's protocol reads a study's system attributes only all at once, every trial's note
    among them; hpo's proxy answers a read by key, so a trial's note costs the same as direct."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import sqlalchemy
    from optuna_dashboard import get_note

    from hpo.analysis.notes import save_note
    from hpo.storage import optuna_private
    from hpo.storage.database.proxy_client import ProxiedStorage
    from hpo.storage.proxy.server import _HeartbeatServicer, study_attrs_handler

    storage = open_storage(f"sqlite:///{tmp_path / 'proxied.db'}")
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    optuna_private.grpc_api()[1].add_StorageServiceServicer_to_server(_HeartbeatServicer(storage), server)
    server.add_generic_rpc_handlers((study_attrs_handler(storage),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    whole: list[str] = []

    def listen(conn, cursor, statement, *rest) -> None:
        flat = " ".join(statement.split())
        if "FROM study_system_attributes WHERE ? = study_system_attributes.study_id" in flat or \
                flat.endswith("FROM study_system_attributes WHERE study_system_attributes.study_id = ?"):
            whole.append(flat)  # every attribute of the study

    try:
        client = ProxiedStorage(host="127.0.0.1", port=port, artifact_address=("127.0.0.1", port + 1))
        study = optuna.create_study(study_name="noted", storage=client)
        for _ in range(3):
            save_note(study.ask(), "another trial's note")
        trial = study.ask()
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
        save_note(trial, "this trial's note")
        save_note(trial, "x" * 9000)  # rewritten longer, then shorter: the chunks are found by key too
        save_note(trial, "short")
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
        assert whole == []
        assert get_note(trial) == "short"
    finally:
        server.stop(None)
