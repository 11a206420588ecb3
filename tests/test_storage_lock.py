"""The lock made of storage calls, through a real `hpo storage-proxy` in front of the real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from db_servers import fresh_database
from hpo.errors import HpoError
from hpo.storage.database.locks import creation_lock
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.proxied_lock import StorageLock, is_lock_study
from hpo.storage.database.studies import load_existing
from db_servers import free_port
from test_pretrain import TINY_LM, assert_two_workers_pretrain_once

pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory):
    """``grpc://`` of one proxy (on a fresh PostgreSQL database) shared by this module's tests."""
    from test_storage_proxy import _start_proxy

    with fresh_database("postgres") as url:
        port = free_port()
        proc, _ = _start_proxy(url, port, tmp_path_factory.mktemp("proxy"))
        try:
            yield f"grpc://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.communicate(timeout=20)


def _lock_studies(url: str) -> list[str]:
    return [s.study_name for s in open_storage(url).get_all_studies() if is_lock_study(s.study_name)]


def test_threads_taking_one_lock_through_the_proxy_never_overlap(proxy_url) -> None:
    spans: list[tuple[float, float]] = []

    def worker() -> None:
        storage = open_storage(proxy_url)  # a connection of its own, as another machine's worker has
        for _ in range(3):
            with StorageLock(storage, "overlap", log=lambda m: None).held(timeout_s=60):
                entered = time.monotonic()
                time.sleep(0.1)
                spans.append((entered, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    spans.sort()
    assert len(spans) == 12
    assert all(left[1] <= right[0] for left, right in zip(spans, spans[1:])), spans  # one holder at a time
    assert _lock_studies(proxy_url) == []  # every release deleted its lock study


_HOLD_FOR_EVER = """
import sys, time
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.proxied_lock import StorageLock
StorageLock(open_storage(sys.argv[1]), "killed", stale_s=2).acquire(timeout_s=30)
print("held", flush=True)
time.sleep(600)
"""


def test_a_holder_killed_with_sigkill_on_this_machine_is_broken_at_once(proxy_url, tmp_path) -> None:
    """A dead holder on the waiter's machine is known dead: its lock is broken at once, not after
    the stale time (the chaos run: new commands waited 120 s, then gave up, behind a killed worker)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FOR_EVER, proxy_url], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        storage = open_storage(proxy_url)
        # Alive and beating: a short wait is one line naming the lock and its holder; it is not broken.
        with pytest.raises(HpoError) as err:
            StorageLock(storage, "killed", stale_s=2, where=proxy_url).acquire(timeout_s=3)
        assert "lock 'killed' not had within 3 s, " in str(err.value) and f"pid {holder.pid} holds it and is alive" in str(err.value)
        assert "\n" not in str(err.value)
        # Lock studies are no studies of trials: listings leave them out.
        with pytest.raises(HpoError) as err:
            load_existing("nope", storage)
        assert "studies: none" in str(err.value)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    said: list[str] = []
    start = time.monotonic()
    lock = StorageLock(storage, "killed", stale_s=60, log=said.append)
    with lock.held(timeout_s=120):
        waited = time.monotonic() - start
        assert not lock.broken
    assert waited < 10, waited  # not the stale time (60 s)
    assert len(said) == 1 and f"its holder ({os.uname().nodename} pid {holder.pid}) is no longer running" in said[0], said
    assert _lock_studies(proxy_url) == []


def _silent_holder(storage, name: str, holder: str, started: str | None) -> StorageLock:
    """A lock held by a holder that stopped beating, named ``holder`` with process start ``started``."""
    from hpo.storage.database import proxied_lock

    taken = StorageLock(storage, name, stale_s=60, log=lambda m: None)
    taken.acquire(timeout_s=10)
    taken._stop.set()
    taken._beater.join()
    if hasattr(proxied_lock, "HOLDER_START_ATTR"):
        storage.set_trial_system_attr(taken._token, proxied_lock.HOLDER_START_ATTR, started)
    HOLDER_ATTR = proxied_lock.HOLDER_ATTR
    storage.set_trial_system_attr(taken._token, HOLDER_ATTR, holder)
    return taken


def test_a_holder_whose_pid_was_reused_is_broken_at_once(proxy_url) -> None:
    storage = open_storage(proxy_url)
    # Our own pid, alive, but started at another time: the pid of a dead holder, reused.
    started = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
    _silent_holder(storage, "reused", f"{os.uname().nodename} pid {os.getpid()}", str(int(started) - 1))
    said: list[str] = []
    start = time.monotonic()
    with StorageLock(storage, "reused", stale_s=60, log=said.append).held(timeout_s=120):
        assert time.monotonic() - start < 10
    assert len(said) == 1 and "is no longer running on this machine" in said[0], said


def test_a_waiter_outlasts_its_timeout_for_a_silent_holder_and_breaks_it(proxy_url) -> None:
    """A holder on another machine, silent: the waiter does not give up at its timeout (shorter
    than the stale time, as the creation lock's 120 s equalled it) but breaks the lock when stale."""
    storage = open_storage(proxy_url)
    _silent_holder(storage, "elsewhere", "another-machine pid 1", "12345")
    said: list[str] = []
    start = time.monotonic()
    with StorageLock(storage, "elsewhere", stale_s=4, log=said.append).held(timeout_s=1):
        waited = time.monotonic() - start
    assert 4 <= waited < 15, waited
    assert len(said) == 1 and "its holder (another-machine pid 1) had been silent for" in said[0], said
    assert _lock_studies(proxy_url) == []


def test_a_held_lock_broken_by_another_is_not_deleted_by_its_late_release(proxy_url) -> None:
    storage = open_storage(proxy_url)
    stalled = StorageLock(storage, "late", stale_s=1, log=lambda m: None)
    stalled.acquire(timeout_s=10)
    stalled._stop.set()  # its beats stop, as those of a process cut off from the proxy would
    breaker = StorageLock(storage, "late", stale_s=1, log=lambda m: None)
    breaker.acquire(timeout_s=10)
    said: list[str] = []
    stalled.log = said.append
    stalled.release()  # finds the breaker's mark on its token: deletes nothing
    assert said and "broken by another worker while held" in said[0]
    assert _lock_studies(proxy_url) == ["hpo-lock:late"]  # the breaker still holds it
    breaker.release()
    assert _lock_studies(proxy_url) == []


@pytest.mark.e2e
def test_creation_lock_on_a_grpc_url_is_the_storage_lock(proxy_url) -> None:
    inside = threading.Event()
    with creation_lock(proxy_url, name="via url", timeout_s=5):
        assert _lock_studies(proxy_url) == ["hpo-lock:via url"]
        with pytest.raises(HpoError, match=r"lock 'via url' not had within 1 s"):
            with creation_lock(proxy_url, name="via url", timeout_s=1):
                inside.set()
    assert not inside.is_set() and _lock_studies(proxy_url) == []


def test_proxied_workers_starting_together_with_different_specs_make_one_study_of_one_spec(proxy_url, small_spec) -> None:
    """Without the lock each of them found no spec recorded and recorded its own."""
    from hpo.record import SPEC_ATTR
    from hpo.search.study import open_study

    specs = [small_spec("name=raced", f"train.max_epochs={2 + i % 2}") for i in range(4)]
    barrier, outcomes = threading.Barrier(4), []

    def join(spec) -> None:
        storage = open_storage(proxy_url)
        barrier.wait(timeout=30)
        try:
            study = open_study(spec, storage)
            outcomes.append(("ok", study.user_attrs[SPEC_ATTR]["train"]["max_epochs"]))
        except HpoError as exc:
            outcomes.append(("refused", str(exc)))

    threads = [threading.Thread(target=join, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    kept = {epochs for kind, epochs in outcomes if kind == "ok"}
    assert len(outcomes) == 4 and len(kept) == 1, outcomes  # every worker that joined agrees with the study
    refused = [m for kind, m in outcomes if kind == "refused"]
    assert len(refused) == 2 and all("was created with a different spec" in m for m in refused), outcomes
    names = [s.study_name for s in open_storage(proxy_url).get_all_studies()]
    assert names.count("raced") == 1 and not [n for n in names if is_lock_study(n)]


def test_two_proxied_workers_started_together_pretrain_once(proxy_url, small_spec, tmp_path) -> None:
    """As tests/test_pretrain.py's test for a direct database, with the workers knowing only ``grpc://``;
    a smaller language model (a 5,000-token stream, 0.2% held out) keeps it to seconds."""
    spec = small_spec(*TINY_LM, "pretrain.epochs=1", "pretrain.max_tokens=5000", "pretrain.valid_fraction=0.002")
    assert_two_workers_pretrain_once(spec, tmp_path / "artifacts", proxy_url)
    assert _lock_studies(proxy_url) == []


def test_a_study_cannot_take_a_lock_s_name(small_spec) -> None:
    import optuna

    from hpo.search.study import open_study

    with pytest.raises(HpoError, match=r"names starting 'hpo-lock:' are hpo's locks"):
        open_study(small_spec("name='hpo-lock:x'"), optuna.storages.InMemoryStorage())


def test_a_waiter_whose_time_runs_out_as_the_lock_changes_hands_waits_for_the_next_holder(proxy_url) -> None:
    """The chaos run through the proxy (chaos-proxy-postgres.txt): a waiter's 120 s ran out just as
    another station broke a killed worker's lock and took it; the waiter gave up ("... holds it and
    is alive") though the queue had just moved. Its wait now starts again when the lock changes hands."""
    storage = open_storage(proxy_url)
    other = StorageLock(open_storage(proxy_url), "handover", log=lambda m: None)
    waiter = StorageLock(storage, "handover", log=lambda m: None)
    took = waiter._try_take

    def beaten_to_it() -> bool:  # the lock was free, but another takes it first and holds it 1 s
        waiter._try_take = took
        other.acquire(timeout_s=10)
        threading.Timer(1.0, other.release).start()
        time.sleep(0.6)  # the waiter's timeout runs out meanwhile
        return False

    waiter._try_take = beaten_to_it
    start = time.monotonic()
    with waiter.held(timeout_s=0.5):  # past its timeout when it first finds the lock taken
        assert time.monotonic() - start >= 1.0  # it got the lock after the other released it
        assert other._token is None
    assert _lock_studies(proxy_url) == []


def test_a_waiter_on_a_storage_that_does_not_answer_gives_up_at_its_timeout() -> None:
    """Nothing is seen changing hands while the storage is away: the wait is not started again."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GrpcStorageProxy is "experimental"
        away = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=free_port())  # nothing listens there
    start = time.monotonic()
    with pytest.raises(HpoError, match="lock 'away' not had within 2 s, the storage does not answer"):
        StorageLock(away, "away", where="grpc://127.0.0.1", log=lambda m: None).acquire(timeout_s=2)
    assert time.monotonic() - start < 10
