"""Several worker processes on one study: one budget, no lost trials, whatever happens to them.

Workers are real ``hpo optimize`` processes (or ``--jobs`` children) on the real databases,
training the real model on a small subset of the reviews.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from conftest import SMALL
from db_servers import ADMIN_URLS, PASSWORDS, CuttableProxy, _admin_engine, free_port, fresh_database
from hpo.training.checkpoints import TrialCheckpoints
from hpo.pruning import record_epoch
from hpo.record import TrialRecord, epoch_rows
from hpo.storage.artifacts.stores import artifact_location, artifact_store, open_location
from hpo.storage.database.resilient import open_storage
from hpo.search.study import FINISHED
from hpo.search.workers import run_worker, work

pytestmark = pytest.mark.slow

# Same settings every trial, no pruning and no divergence verdicts: a trial's fate is decided
# by the test (a kill, a signal), not by its luck.
STEADY = [
    "space.lr_embedding=0.001", "space.lr_encoder=0.001", "space.lr_head=0.001", "space.clip_norm=1.0",
    "space.cycle_len=2", "space.dropout=0.1", "space.weight_decay=0.0001", "pruner.type=none",
    "divergence.threshold=100.0", "train.max_epochs=4",
]
# For tests that SIGKILL a worker after its trial's first checkpoint: a trial of 3 epochs leaves
# one or two for its re-run to resume (4 only made every trial of those tests an epoch longer).
KILLED = [*STEADY, "train.max_epochs=3"]

# For tests that count trials and kill nothing: a smaller subset than SMALL (same shape, so the
# cached calibration still applies), each trial a few batches.
TINY = ["data.max_train=256", "data.max_valid=128"]


class Workers:
    """Starts ``python -m hpo.cli optimize`` processes on one study and collects their output."""

    def __init__(self, url: str, name: str, folder: Path, cache_dir: str, overrides: list[str], grace: int | None = None,
                 shared_folder: bool = True) -> None:
        """``shared_folder``: all workers get ``$HPO_ARTIFACTS`` = one folder and run in ``folder``;
        without it each runs in a folder of its own, with no ``$HPO_ARTIFACTS``: as on separate
        machines that share nothing but the database."""
        self.url, self.name, self.folder, self.shared_folder = url, name, folder, shared_folder
        # One thread each: several workers share the cores, as `--jobs` arranges.
        self.sets = [*SMALL, f"data.cache_dir={cache_dir!r}", f"name={name}", "train.threads=1", *overrides]
        self.env = {k: v for k, v in os.environ.items() if k != "HPO_ARTIFACTS"}
        self.env["HPO_STORAGE"] = url
        if shared_folder:
            self.env["HPO_ARTIFACTS"] = str(folder / "artifacts")
        if grace is not None:
            self.env["HPO_GRACE_PERIOD"] = str(grace)
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, trials: int, *extra: str) -> subprocess.Popen[str]:
        if "--jobs" not in extra:
            extra = (*extra, "--jobs", "1")  # one process per command: the tests kill and signal them
        args = [sys.executable, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", str(trials), *extra]
        for item in self.sets:
            args += ["--set", item]
        log = open(self.folder / f"worker-{len(self.procs)}.log", "w")
        cwd = self.folder if self.shared_folder else self.folder / f"machine-{len(self.procs)}"
        cwd.mkdir(exist_ok=True)
        proc = subprocess.Popen(args, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"worker still running after {timeout} s:\n{self.output()}") from None
        return codes

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def output(self) -> str:
        return "\n".join((self.folder / f"worker-{i}.log").read_text() for i in range(len(self.procs)))

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=open_storage(self.url))

    def wait_for_running_trial(self, epochs: int, timeout: float = 120,
                               where: Callable[[optuna.Study, FrozenTrial], bool] = lambda s, t: True) -> FrozenTrial:
        """A running trial (that ``where`` accepts) with ``epochs`` epochs recorded and checkpointed.

        The checkpoint of an epoch is written just after the epoch is reported, so the recorded
        epochs alone would race that write; this also waits until the checkpoint reads back, from
        the store the study records (a folder, or the database). A trial that finishes meanwhile
        (its checkpoints deleted) is passed over for the next one.
        """
        storage = open_storage(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name=self.name, storage=storage)
            except KeyError:  # not created yet
                time.sleep(0.3)
                continue
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if len(epoch_rows(trial.user_attrs)) >= epochs and where(study, trial):
                    store = open_location(artifact_location(study, record=False), study._storage)  # the workers' store
                    saved = TrialCheckpoints(store, trial.user_attrs["checkpoint"]).load()
                    if saved is None or saved.epoch < epochs:
                        continue
                    # under load the checks above take a while: still running, and not about to
                    # finish (or the kill that follows would land on a completed trial)
                    now = storage.get_trial(trial._trial_id)
                    if now.state == TrialState.RUNNING and len(epoch_rows(now.user_attrs)) <= epochs + 1:
                        return now
            time.sleep(0.05)
        raise AssertionError(f"no running trial checkpointed epoch {epochs} in {timeout} s:\n{self.output()}")


def assert_budget_kept(study: optuna.Study, budget: int, workers: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert budget <= len(finished) <= budget + workers - 1, [t.state.name for t in trials]
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(numbers)))  # unique and gapless
    return trials


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


# SQLite's run is the --jobs test below.
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.e2e
def test_three_workers_finish_one_study_with_one_budget(kind, tmp_path, data_cache_dir) -> None:
    with fresh_database(kind) as url:
        password = PASSWORDS[kind]
        assert password in url  # the workers must really carry a secret for the checks below to mean anything
        workers = Workers(url, f"three-{kind}", tmp_path, data_cache_dir, ["train.max_epochs=1", *TINY])
        try:
            workers.start(6)
            parent = workers.start(6, "--jobs", "2")  # hpo starts these two worker processes itself
            deadline = time.monotonic() + 30
            while len(_children(parent.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            spawned = _children(parent.pid)
            assert len(spawned) >= 2, workers.output()
            for pid in spawned:  # the storage URL (and its password) is on none of their command lines
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                assert password not in cmdline and make_url(url).database not in cmdline, cmdline
            codes = workers.wait()
        finally:
            workers.kill_all()
        output = workers.output()
        assert codes == [0, 0], output
        assert_budget_kept(workers.study(), budget=6, workers=3)
        assert password not in output
        assert f"{make_url(url).username}:***@" in output  # the URL is shown, masked


@pytest.mark.e2e
def test_three_jobs_processes_share_one_sqlite_file(tmp_path, data_cache_dir) -> None:
    """More training processes than the 2 cores CI has, one SQLite file. (Three, not four: a fourth
    process only adds its ~5 s of start-up; the synthetic test below hammers the file with four.)"""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    workers = Workers(url, "jobs", tmp_path, data_cache_dir, ["train.max_epochs=1", *TINY])
    try:
        workers.start(6, "--jobs", "3")
        codes = workers.wait()
    finally:
        workers.kill_all()
    output = workers.output()
    assert codes == [0], output
    assert output.count("starting 3 worker processes with") == 1
    assert len({line.split("]")[0] for line in output.splitlines() if line.startswith("[worker ")}) == 3
    assert "database is locked" not in output
    trials = assert_budget_kept(workers.study(), budget=6, workers=3)
    assert [t for t in trials if t.state == TrialState.FAIL] == []


def _synthetic_worker(url: str, name: str, budget: int) -> None:
    import optuna as _optuna

    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    study = _optuna.load_study(study_name=name, storage=open_storage(url, grace_period=30),
                               sampler=_optuna.samplers.RandomSampler())

    def objective(trial: _optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        for step in range(3):  # a few intermediate writes, as a training trial makes
            trial.report(x * step, step)
            record_epoch(trial, step + 1, train_loss=x * x, val_loss=x * x)
        return x * x

    work(study, objective, budget, poll_s=0.05)


@pytest.mark.e2e
def test_four_processes_hammering_one_sqlite_file_never_see_it_locked(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'stress.db'}"
    optuna.create_study(study_name="stress", storage=open_storage(url))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_synthetic_worker, args=(url, "stress", 120)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    trials = assert_budget_kept(optuna.load_study(study_name="stress", storage=open_storage(url)), 120, 4)
    assert [t for t in trials if t.state == TrialState.FAIL] == []


def _assert_resumed(workers: Workers, victim: FrozenTrial, budget: int, checkpointed: int = 1,
                    epochs: int = 3) -> FrozenTrial:
    """The victim FAILed; its one re-run has its parameters, resumed from its checkpoint and completed."""
    output = workers.output()
    trials = assert_budget_kept(workers.study(), budget=budget, workers=2)
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, output
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == victim.params
    assert retry.user_attrs["resumed_at_epoch"] >= checkpointed + 1  # after the epochs the victim had checkpointed
    rows = TrialRecord.from_trial(retry).epochs  # its history: the victim's epochs, then its own
    assert [r.epoch for r in rows] == list(range(1, epochs + 1))
    assert (f"trial {retry.number}: re-run of interrupted trial {victim.number}, same parameters; "
            f"resumes at epoch {retry.user_attrs['resumed_at_epoch']} from its checkpoint") in output
    return retry


def _kill_worker_of(trial: FrozenTrial) -> None:
    os.kill(int(trial.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)


def _has_finished_a_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    return any(t.state == TrialState.COMPLETE and t.user_attrs.get("worker") == trial.user_attrs.get("worker")
               for t in study.get_trials(deepcopy=False))


def _figures_of_both_workers(study: optuna.Study, store, retry: FrozenTrial) -> dict[int, list]:
    """The complete trials' artifacts, by trial number: no checkpoint left, figures from both workers and the re-run."""
    assert store.ids("checkpoint-") == []  # the finished study keeps no checkpoint
    figures = {t.number: optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    by_worker = {study.trials[n].user_attrs["worker"] for n, metas in figures.items() if metas}
    assert len(by_worker) == 2, figures  # figures from both workers' trials
    assert figures[retry.number], "the resumed trial uploaded its figure"
    return figures


def _kill_one_of_two(workers: "Workers") -> tuple[list[int], FrozenTrial]:
    """Two workers on a budget of 4; one is SIGKILLed in its second trial; (exit codes, the killed trial).

    A budget of 4: after each worker's first trial, two more are needed, so the study cannot reach
    its budget without the victim's (with 3 the survivor's second trial could complete it, and the
    dead trial would rightly never be re-run). The victim is a worker's second trial, so that each
    worker has finished one trial (and its figure), killed after its first checkpoint, at least one
    epoch before it would end (``wait_for_running_trial``).
    """
    try:
        workers.start(4)
        workers.start(4)
        victim = workers.wait_for_running_trial(epochs=1, where=_has_finished_a_trial)
        _kill_worker_of(victim)
        return workers.wait(), victim
    finally:
        workers.kill_all()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.e2e
def test_one_database_url_is_all_two_machines_need(kind, tmp_path, data_cache_dir) -> None:
    """Two workers in folders of their own, no $HPO_ARTIFACTS: one is killed mid-trial, the other
    resumes its trial from the checkpoint in the database; a dashboard started in a third folder
    serves the figures of both workers' trials over HTTP.

    (The same kill on SQLite with a shared folder was a test of its own; the folder store's resume
    is still shown by the SIGTERM test below, so this one replaced it.)"""
    from test_dashboard_browser import _start_dashboard, _wait_http

    with fresh_database(kind) as url:
        workers = Workers(url, f"one-url-{kind}", tmp_path, data_cache_dir, KILLED, grace=3, shared_folder=False)
        codes, victim = _kill_one_of_two(workers)
        assert sorted(codes) == [-signal.SIGKILL, 0], workers.output()
        retry = _assert_resumed(workers, victim, budget=4, checkpointed=1)
        assert "artifacts: " in workers.output() and "in database " in workers.output()
        assert not list(tmp_path.glob("machine-*/*artifacts*"))  # nothing written beside the workers

        study = workers.study()
        store = artifact_store(study)
        figures = _figures_of_both_workers(study, store, retry)

        viewer = tmp_path / "viewer"
        viewer.mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "HPO_ARTIFACTS"}
        proc, _, lines = _start_dashboard(["--study", study.study_name, "--storage", url, "--port", str(port)], viewer, env)
        try:
            assert "artifacts: the study's database" in "".join(lines)
            _wait_http(f"http://127.0.0.1:{port}/dashboard/")
            study_id = study._study_id
            for number, metas in figures.items():
                for meta in metas:
                    trial_id = study.trials[number]._trial_id
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/artifacts/{study_id}/{trial_id}/{meta.artifact_id}",
                                                timeout=10) as response:
                        body = response.read()
                    # figures are PNGs; the step telemetry (.npz) is a zip archive
                    magic = b"\x89PNG" if meta.mimetype == "image/png" else b"PK\x03\x04"
                    assert body.startswith(magic) and len(body) == store.size(meta.artifact_id), meta.filename
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert not list(viewer.iterdir())  # the dashboard wrote nothing where it ran
        store.engine.dispose()


@pytest.mark.parametrize("kind", ["postgres"])
@pytest.mark.e2e
def test_one_proxy_address_is_all_two_machines_need(kind, tmp_path, data_cache_dir) -> None:
    """As above, but the two workers know only ``grpc://`` of `hpo storage-proxy`: the proxy
    records their heartbeats, fails the killed worker's trial after the grace period and queues
    its re-run, which resumes from the checkpoint it reads through the proxy; the figures of both
    workers' trials are fetched through the proxy too.

    On PostgreSQL only (21 s a server): behind the proxy the database is the same RDBStorage and
    database artifact store that the direct kill test above runs on MariaDB as well."""
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")
    from test_storage_proxy import _start_proxy

    from hpo.storage.artifacts.http_store import HttpArtifactStore

    with fresh_database(kind) as url:
        port = free_port()
        proxy, _ = _start_proxy(url, port, tmp_path, grace=3)
        proxied = f"grpc://127.0.0.1:{port}"
        workers = Workers(proxied, f"proxied-{kind}", tmp_path, data_cache_dir, KILLED, grace=3, shared_folder=False)
        try:  # the proxy is stopped however the workers end
            codes, victim = _kill_one_of_two(workers)
            assert sorted(codes) == [-signal.SIGKILL, 0], workers.output()
            retry = _assert_resumed(workers, victim, budget=4, checkpointed=1)
            assert not list(tmp_path.glob("machine-*/*artifacts*"))  # nothing written beside the workers
            assert PASSWORDS[kind] not in workers.output()

            study = workers.study()
            store = artifact_store(study)
            assert isinstance(store, HttpArtifactStore) and store.port == port + 1
            figures = _figures_of_both_workers(study, store, retry)
            for metas in figures.values():
                for meta in metas:
                    with store.open_reader(meta.artifact_id) as f:  # checked against its sha256 at the end
                        body = f.read()
                    magic = b"\x89PNG" if meta.mimetype == "image/png" else b"PK\x03\x04"
                    assert body.startswith(magic) and len(body) == store.size(meta.artifact_id), meta.filename
            # in the database itself, where a direct worker or the dashboard finds them
            direct = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
            assert artifact_location(direct, record=False) == "database"
            assert artifact_store(direct).sizes() == store.sizes()
        finally:
            proxy.terminate()
            out, _ = proxy.communicate(timeout=30)
        assert f"study 'proxied-{kind}', trial {victim.number}: no heartbeat for 3 s; failed" in out, out
        assert PASSWORDS[kind] not in out


@pytest.mark.e2e
def test_sigterm_hands_the_running_trial_over_to_the_next_worker(tmp_path, data_cache_dir, small_spec) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    workers = Workers(url, "term", tmp_path, data_cache_dir, STEADY)
    try:
        proc = workers.start(1)
        trial = workers.wait_for_running_trial(epochs=2)
        proc.send_signal(signal.SIGTERM)
        assert workers.wait(timeout=60) == [130]
    finally:
        workers.kill_all()
    assert "interrupted: the running trial was stopped, marked FAIL" in workers.output()
    study = workers.study()
    assert [(t.number, t.state) for t in study.get_trials()] == [(0, TrialState.FAIL), (1, TrialState.WAITING)]

    os.environ["HPO_ARTIFACTS"] = str(tmp_path / "artifacts")  # recorded in the study already; belt and braces
    try:
        outcome = run_worker(small_spec("name=term", *STEADY), url, trials=1)
    finally:
        del os.environ["HPO_ARTIFACTS"]
    assert outcome.ran == 1
    retry = workers.study().trials[1]
    assert retry.state == TrialState.COMPLETE and retry.params == trial.params
    assert retry.user_attrs["resumed_at_epoch"] >= 3


@pytest.mark.e2e
def test_workers_ride_out_a_database_restart(tmp_path, data_cache_dir) -> None:
    admin = make_url(ADMIN_URLS["postgres"])
    _admin_engine("postgres")
    with fresh_database("postgres") as direct, CuttableProxy(admin.host or "127.0.0.1", admin.port or 5432) as proxy:
        url = make_url(direct).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        workers = Workers(url, "restart", tmp_path, data_cache_dir, ["train.max_epochs=2"])
        workers.env["PYTHONUNBUFFERED"] = "1"  # their "storage unreachable" line shows as it is written
        try:
            workers.start(4)
            workers.start(4)
            workers.wait_for_running_trial(epochs=1)
            proxy.cut()  # what the workers see while PostgreSQL restarts
            # the outage lasts until a worker has met it, then 2 s more: its retries after 0.5 and
            # 1.5 s fail too and it backs off (the next after 3.5 s reconnects); a fixed sleep
            # instead either ended before a worker touched the database or waited for the 7.5 s retry
            deadline = time.monotonic() + 60
            while "storage unreachable (" not in workers.output():
                assert time.monotonic() < deadline, f"no worker met the outage in 60 s:\n{workers.output()}"
                time.sleep(0.05)
            time.sleep(2)
            proxy.restore()
            codes = workers.wait()
        finally:
            workers.kill_all()
        output = workers.output()
        assert codes == [0, 0], output
        assert "storage unreachable (" in output and "storage reachable again after " in output
        trials = assert_budget_kept(workers.study(), budget=4, workers=2)
        assert [t.number for t in trials if t.state == TrialState.FAIL] == [], output


@pytest.mark.e2e
def test_a_killed_jobs_child_is_one_line_and_the_study_goes_on(tmp_path, data_cache_dir) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    workers = Workers(url, "child", tmp_path, data_cache_dir, KILLED, grace=3)
    try:
        parent = workers.start(3, "--jobs", "2")
        victim = workers.wait_for_running_trial(epochs=1)
        os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        codes = workers.wait()
    finally:
        workers.kill_all()
    output = workers.output()
    assert codes == [2], output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: worker processes died (worker ") and "by SIGKILL; out of memory?" in last, output
    assert "Traceback" not in output
    assert_budget_kept(workers.study(), budget=3, workers=2)  # the other child finished the study
