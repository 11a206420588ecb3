"""Many workers on one study: plain Optuna, hpo, and hpo through the storage proxy, 1 to 64 processes.

The objective sleeps (``SLEEP_S`` per trial, over three "epochs" that each store a user attribute
and report an intermediate value, as the real objective's bookkeeping does), so the figures
measure coordination through the database, not the CPU. All workers run a RandomSampler (TPE's
cost grows with the study and would hide the storage), in one fresh study per run:

* plain: ``RDBStorage`` + ``study.optimize`` with ``MaxTrialsCallback`` counting COMPLETE and
  PRUNED trials (the closest plain equivalent of a global budget);
* hpo: ``open_storage(grace_period=60)`` (retrying storage, a heartbeat thread per trial) +
  ``hpo.search.workers.work`` (counts the study before every trial);
* hpo+proxy: the same workers on ``grpc://`` through ``hpo storage-proxy`` (one process, one
  connection pool; the workers' heartbeats pass through it and it checks for stale trials).

Per run: trials/s (finished trials over the wall time from the common start to the last worker's
end), the peak number of connections to the database (``pg_stat_activity``, sampled every 0.1 s;
PostgreSQL only), the overshoot of the ``--trials`` budget, trials lost (RUNNING or WAITING at the
end, or gaps in the numbering) or duplicated (one number run by two workers), and FAILed trials.

    python benchmarks/storage_scaling.py                                   # local PostgreSQL, 1,8,16,32,64
    python benchmarks/storage_scaling.py --workers 1,8 --modes plain,hpo --trials 200
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"  # a server URL: the runs get a fresh database on it
EPOCHS = 3
SLEEP_S = 0.3  # per trial: long against a storage round trip, short enough for many trials


def objective(trial) -> float:
    x = [trial.suggest_float(f"p{i}", 1e-4, 1e-1, log=True) for i in range(7)]
    value = sum(x)
    for epoch in range(1, EPOCHS + 1):
        time.sleep(SLEEP_S / EPOCHS)
        trial.set_user_attr("val_loss", [value] * epoch)
        trial.report(value * epoch, epoch)
    return value


def _worker(mode: str, url: str, name: str, budget: int, start_at: float, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler()
    ran: list[int] = []

    def tracked(trial) -> float:
        ran.append(trial.number)
        return objective(trial)

    error = ""
    try:
        if mode.startswith("hpo"):
            from hpo.storage.database.resilient import open_storage
            from hpo.search.workers import work

            study = optuna.load_study(study_name=name, storage=open_storage(url, grace_period=60), sampler=sampler)
            time.sleep(max(0.0, start_at - time.time()))
            work(study, tracked, budget, poll_s=0.05)
        else:
            from optuna.study import MaxTrialsCallback
            from optuna.trial import TrialState

            study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url), sampler=sampler)
            time.sleep(max(0.0, start_at - time.time()))
            stop = MaxTrialsCallback(budget, states=(TrialState.COMPLETE, TrialState.PRUNED))
            study.optimize(tracked, callbacks=[stop])
    except Exception as exc:  # counted and shown, not hidden: a worker that cannot connect is a result
        root = exc  # Optuna wraps the driver's error ("too many clients"): show the innermost
        for _ in range(10):
            root = root.__cause__ or root.__context__ or root
        error = f"{type(root).__name__}: {str(root).splitlines()[0][:120] if str(root) else ''}"
    out.put((time.time(), ran, error))


class ConnectionSampler:
    """The peak count of connections to one PostgreSQL database while it runs (0 elsewhere)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        # AUTOCOMMIT: inside one transaction pg_stat_activity is a snapshot, and every sample would repeat the first
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
        self.postgres = self.engine.dialect.name == "postgresql"
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ConnectionSampler":
        if self.postgres:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.postgres:
            self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.1):
                n = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).scalar()
                self.peak = max(self.peak, int(n or 0))


@dataclass
class Result:
    seconds: float
    finished: int
    overshoot: int
    lost: int
    duplicated: int
    failed: int
    peak_connections: int
    worker_errors: list[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy(url: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "HPO_STORAGE": url, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "storage-proxy", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("storage proxy: grpc://"):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
            return proc, f"grpc://127.0.0.1:{port}"
    raise RuntimeError("hpo storage-proxy did not start")


def run(mode: str, url: str, budget: int, workers: int) -> Result:
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.database.resilient import open_storage

    name = f"bench-{mode}-{workers}-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    optuna.create_study(study_name=name, storage=storage)
    proxy, worker_url = _start_proxy(url) if mode == "hpo+proxy" else (None, url)
    try:
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 5.0 + 1.0 * workers  # every process has imported and connected by then
        with ConnectionSampler(url) as sampler:
            procs = [ctx.Process(target=_worker, args=(mode, worker_url, name, budget, start_at, out), daemon=True)
                     for _ in range(workers)]
            for p in procs:
                p.start()
            reports = [out.get(timeout=1800) for _ in procs]
            for p in procs:
                p.join()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    numbers = sorted(t.number for t in trials)
    runs = Counter(n for _, ran, _ in reports for n in ran)
    gaps = len(set(range(numbers[-1] + 1)) - set(numbers)) if numbers else 0
    lost = states[TrialState.RUNNING] + states[TrialState.WAITING] + gaps
    optuna.delete_study(study_name=name, storage=storage)
    return Result(
        seconds=max(end for end, _, _ in reports) - start_at,
        finished=finished,
        overshoot=finished - budget,
        lost=lost,
        duplicated=sum(1 for c in runs.values() if c > 1),
        failed=states[TrialState.FAIL],
        peak_connections=sampler.peak,
        worker_errors=[e for _, _, e in reports if e],
    )


def fresh_database(admin_url: str) -> tuple[str, callable]:
    """A new database on the server (so the connection count is this benchmark's alone); dropped after."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    if make_url(admin_url).get_backend_name() == "sqlite":
        return admin_url, lambda: None
    name = f"hpo_scaling_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=os.environ.get("HPO_STORAGE") or DEFAULT_URL)
    parser.add_argument("--trials", type=int, default=320, help="the study's budget in every run")
    parser.add_argument("--workers", default="1,8,16,32,64")
    parser.add_argument("--modes", default="plain,hpo,hpo+proxy")
    args = parser.parse_args()

    import optuna

    from hpo.storage.database.urls import mask_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    modes = args.modes.split(",")
    print(f"storage {mask_url(args.storage)}, budget {args.trials} trials per run, {os.cpu_count()} CPUs, "
          f"objective sleeps {SLEEP_S} s in {EPOCHS} epochs of bookkeeping, RandomSampler", flush=True)
    print(f"{'workers':>7}  {'mode':<10} {'trials/s':>9} {'ideal':>7} {'peak conns':>10} {'overshoot':>9} "
          f"{'lost':>5} {'dup':>4} {'failed':>6}  worker errors", flush=True)
    url, drop = fresh_database(args.storage)
    try:
        _table(url, modes, [int(w) for w in args.workers.split(",")], args.trials)
    finally:
        drop()


def _table(url: str, modes: list[str], counts: list[int], budget: int) -> None:
    for n in counts:
        for mode in modes:
            r = run(mode, url, budget, n)
            errors = Counter(r.worker_errors)
            shown = "; ".join(f"{c}x {e}" for e, c in errors.items()) or "-"
            ideal = n / SLEEP_S  # every worker always sleeping
            print(f"{n:>7}  {mode:<10} {r.finished / r.seconds:>9.1f} {ideal:>7.1f} {r.peak_connections:>10} "
                  f"{r.overshoot:>+9} {r.lost:>5} {r.duplicated:>4} {r.failed:>6}  {shown}", flush=True)
    print("ideal = workers / sleep per trial; overshoot = finished - budget; lost = RUNNING/WAITING at the end or "
          "missing numbers; dup = trial numbers run by two workers")


if __name__ == "__main__":
    main()
