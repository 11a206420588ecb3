"""Fault injection: a real study, several worker processes, and faults at random moments.

A small but real study (a few hundred reviews, 3 short epochs, a tiny LSTM: a trial takes seconds)
runs in several ``hpo optimize --jobs N`` commands ("stations", ``--jobs 2 1``: one with two worker
processes, one with one), each in its own process group, on one storage: SQLite, PostgreSQL,
MariaDB, or `hpo storage-proxy` (with a token) in front of PostgreSQL (or SQLite: ``--proxy-db``). Every few seconds (``--gap``,
random) one fault hits a random station or the servers; a station's fault lands at a random moment
of its start-up (``--early`` of them) or a random moment of its training (the others: a station
that has printed an epoch line, waited for if none has):

* ``sigkill``: SIGKILL of the station's whole process group (the command and its workers); the
  station starts again at once, and its trials are failed and re-run once their heartbeat is
  older than the grace period;
* ``sigint``: Ctrl-C (SIGINT to the process group), then the resume command it printed, as printed;
* ``sigterm``: SIGTERM to the command alone (what Docker and Kubernetes send), then the same command;
* ``db-restart``: a PostgreSQL or MariaDB restart (rare: ``--db-restarts``; the servers are shared);
* ``proxy-restart``: the storage proxy stopped (SIGTERM or SIGKILL) and started again.

Then every station is stopped with Ctrl-C and one last run brings the study to its budget with no
fault. Counted from the database and the logs: trials run twice (a trial number in two workers'
lines, or a failed trial re-run more than once), trials left RUNNING, finished epochs redone (a
re-run that did not resume after every epoch its predecessor recorded), failed trials, tracebacks,
exits that no fault explains, resume commands that differ from the command they resume, wall time.
A re-run is judged by what it did itself: where it resumed (``resumed_at_epoch``, which its queued
copy no longer inherits) or, with none, whether it reported an epoch of its own (it started over);
one stopped before either redid no finished epoch (a start-over stopped inside its first epoch is
the epoch in flight).

    python benchmarks/chaos.py --backend sqlite
    python benchmarks/chaos.py --backend postgres --db-restarts 2
    python benchmarks/chaos.py --backend mysql --db-restarts 2
    python benchmarks/chaos.py --backend proxy --db-restarts 2
    python benchmarks/chaos.py --backend proxy --proxy-db sqlite   # leaves the shared servers alone
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpo.record import TrialRecord  # noqa: E402
from hpo.storage.database.resilient import MAX_RETRY, open_storage  # noqa: E402

ADMIN_URLS = {
    "postgres": os.environ.get("HPO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("HPO_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
PG_RESTART = ["pg_ctlcluster", "15", "main", "restart", "-m", "fast"]  # PostgreSQL 15 as Debian runs it


def restart_server(kind: str) -> float:
    """Restarts the shared PostgreSQL or MariaDB server, quickly; seconds until it answers again.

    MariaDB here runs without a service manager (``service mariadb status`` says stopped): it is
    shut down with mysqladmin and started again as its own user, detached, as it was.
    """
    start = time.monotonic()
    if kind == "postgres":
        subprocess.run(PG_RESTART, check=True, capture_output=True, timeout=120)
    else:
        subprocess.run(["mysqladmin", "-uroot", "shutdown"], check=True, capture_output=True, timeout=120)
        subprocess.Popen(["setsid", "runuser", "-u", "mysql", "--", "/usr/sbin/mariadbd"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    admin = sqlalchemy.create_engine(ADMIN_URLS[kind], poolclass=sqlalchemy.pool.NullPool)
    while time.monotonic() - start < 120:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return time.monotonic() - start
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"the {kind} server did not come back within 120 s: start it by hand")
# The study: seconds per trial, nothing left to luck (no pruning, no divergence verdicts).
SPEC = [
    "name=chaos", "data.max_train=300", "data.max_valid=100", "data.max_test=100", "data.max_len=64",
    "model.embedding_dim=16", "model.hidden_size=16", "train.max_epochs=3", "train.threads=2", "train.precision=fp32",
    "pruner.type=none", "divergence.threshold=100.0", "space.cycle_len=2",
]
# `hpo optimize` started from a background process would inherit SIGINT ignored: put it back, as a terminal has it.
SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
HPO = [sys.executable, "-c", SIGINT_DEFAULT, "-m", "hpo.cli"]
TRIAL_LINE = re.compile(r"^(?:\[worker (\d+)\])?\s+trial (\d+) (?:epoch \d+/\d+|COMPLETE|PRUNED)", re.M)


@dataclass
class Station:
    """One `hpo optimize --jobs N` in its own process group, started again after each fault."""

    index: int
    args: list[str]
    env: dict[str, str]
    folder: Path
    proc: Any = None
    log: Path | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)
    expected_exit: set[int] | None = None  # what the fault that ends this run may exit with

    def start(self, args: list[str] | None = None) -> None:
        self.args = args or self.args
        self.runs += 1
        self.log = self.folder / f"station{self.index}-run{self.runs}.log"
        self.logs.append(self.log)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([*HPO, *self.args], env=self.env, cwd=self.folder, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.expected_exit = None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Tally:
    faults: Counter = field(default_factory=Counter)
    unexplained_exits: list[str] = field(default_factory=list)
    resume_mismatches: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)  # logs of the runs that did not end after a signal


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def _fresh_database(kind: str) -> tuple[str, str]:
    """(URL of a new database on the ``kind`` server, its name)."""
    name = f"hpo_chaos_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(ADMIN_URLS[kind], isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return sqlalchemy.engine.make_url(ADMIN_URLS[kind]).set(database=name).render_as_string(hide_password=False), name


def _drop_database(kind: str, name: str) -> None:
    admin = sqlalchemy.create_engine(ADMIN_URLS[kind], isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        if kind == "postgres":
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        else:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")


class Proxy:
    """`hpo storage-proxy` in front of the database, with a token; restarted on the same ports."""

    def __init__(self, db_url: str, folder: Path, grace: int) -> None:
        self.db_url, self.folder, self.grace = db_url, folder, grace
        self.port, self.token = _free_port(), secrets.token_hex(24)
        self.proc: Any = None
        self.logs: list[Path] = []

    def start(self) -> None:
        log = self.folder / f"proxy-run{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {**os.environ, "HPO_STORAGE": self.db_url, "HPO_PROXY_TOKEN": self.token, "PYTHONUNBUFFERED": "1",
               "HPO_GRACE_PERIOD": str(self.grace)}
        # A proxy killed with SIGKILL leaves its port in use for a while, and a loaded machine starts
        # Python slowly: 300 s, as long as a worker waits for the proxy (WORKER_READY_S).
        deadline = time.monotonic() + 300
        while True:
            with open(log, "a") as out:
                self.proc = subprocess.Popen([*HPO, "storage-proxy", "--port", str(self.port)], env=env, cwd=self.folder,
                                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if "storage proxy: grpc://" in log.read_text():
                    return
                time.sleep(0.2)
            if self.proc.poll() is None or time.monotonic() > deadline:
                raise RuntimeError(f"hpo storage-proxy did not start:\n{log.read_text()}")
            time.sleep(1)  # the port is still held by the last one: try again

    def stop(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=60)


def _resume_args(log: Path) -> list[str] | None:
    """The arguments of the printed ``resume with: hpo ...`` command, without its note."""
    m = re.search(r"resume with: (hpo .*?)(?: \(with .*\))?$", log.read_text(), re.M)
    if not m:
        return None
    return shlex.split(m.group(1))[1:]


def _wait_exit(station: Station, timeout: float, tally: Tally) -> int:
    """The station's exit code; a station still running after ``timeout`` s is hung: SIGABRT makes
    each of its Python processes print every thread's stack into its log (PYTHONFAULTHANDLER, "most
    recent call first", not counted as a traceback), then SIGKILL ends it."""
    try:
        return station.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tally.hangs.append(station.log.name)
        station.signal_group(signal.SIGABRT)
        try:
            station.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        station.signal_group(signal.SIGKILL)
        return station.proc.wait()


def _training(station: Station) -> bool:
    return bool(re.search(r"trial \d+ epoch \d+/", station.log.read_text(errors="replace")))


def inject(kind: str, stations: list[Station], proxy: Proxy | None, backend: str, tally: Tally, rng: random.Random,
           log: Any, early: float) -> None:
    station = rng.choice(stations)
    if kind.startswith("sig") and rng.random() >= early:  # one that trains (waited for), at a random moment of it
        deadline = time.monotonic() + 300
        while not (training := [s for s in stations if _training(s)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        station = rng.choice(training or stations)
        time.sleep(rng.uniform(0.0, 3.0))
    if kind == "sigkill":
        station.signal_group(signal.SIGKILL)
        station.proc.wait()
        station.start()
    elif kind == "sigint":
        station.signal_group(signal.SIGINT)
        code = _wait_exit(station, 120, tally)
        resume = _resume_args(station.log)
        if code != 130 or resume is None:
            if code not in (0, 130, -signal.SIGINT):  # -SIGINT: before Python set its handler
                tally.unexplained_exits.append(f"{station.log.name}: exit {code} after SIGINT")
            resume = station.args
        elif resume != station.args:
            tally.resume_mismatches.append(f"{station.log.name}: {shlex.join(resume)}")
        station.start(resume)
    elif kind == "sigterm":
        try:
            os.kill(station.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        code = _wait_exit(station, 120, tally)
        if code not in (0, 130, 143, -signal.SIGTERM):  # SIGTERM's default action while Python starts
            tally.unexplained_exits.append(f"{station.log.name}: exit {code} after SIGTERM")
        station.start()
    elif kind == "db-restart":
        took = restart_server(backend)
        log(f"  (the server answered again after {took:.1f} s)")
    elif kind == "proxy-restart":
        assert proxy is not None
        proxy.stop(rng.choice([signal.SIGTERM, signal.SIGKILL]))
        proxy.start()
    tally.faults[kind] += 1
    log(f"  fault {sum(tally.faults.values())}: {kind}" + (f" (station {station.index})" if kind.startswith("sig") else ""))


def _check_exits(stations: list[Station], tally: Tally) -> None:
    """A station that ended with no fault: an unexplained exit (0 only once the budget is met)."""
    for station in stations:
        code = station.proc.poll()
        if code is not None:
            tally.unexplained_exits.append(f"{station.log.name}: exit {code} on its own: "
                                           + " | ".join(station.log.read_text().strip().splitlines()[-2:]))
            station.start()


def count(db_url: str, logs: list[Path]) -> dict[str, Any]:
    """What the database and the logs say."""
    storage = open_storage(db_url)
    study = optuna.load_study(study_name="chaos", storage=storage)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    states = Counter(t.state.name for t in trials)
    reruns: dict[int, list[int]] = {}
    redone = 0
    redone_by: dict[int, int] = {}
    for t in trials:
        # Optuna's retry names the first trial of a chain (failed_trial) and every one since (retry_history):
        # the trial this one re-runs is the last of those.
        history = t.system_attrs.get("retry_history") or [t.system_attrs.get("failed_trial")]
        before = history[-1]
        if before is None:
            continue
        reruns.setdefault(before, []).append(t.number)
        if t.state == TrialState.WAITING:
            continue  # never started
        recorded = len(TrialRecord.from_trial(by_number[before]).epochs)
        resumed_at = t.user_attrs.get("resumed_at_epoch")  # its own: a queued copy no longer inherits it
        if resumed_at is None and not t.intermediate_values:
            continue  # stopped before it resumed or finished a first epoch: nothing finished was redone
        resumed_at = resumed_at or 1  # no resume, yet it reported an epoch of its own: it started over
        if recorded > resumed_at - 1:
            redone_by[t.number] = recorded - (resumed_at - 1)
    redone = sum(redone_by.values())
    twice = {n for n, after in reruns.items() if len(after) > 1}
    runners: dict[int, set[tuple[str, str]]] = {}
    tracebacks = 0
    for path in logs:
        text = path.read_text(errors="replace")
        tracebacks += text.count("Traceback (most recent call last)")
        for m in TRIAL_LINE.finditer(text):
            runners.setdefault(int(m.group(2)), set()).add((path.name, m.group(1) or "-"))
    twice |= {n for n, who in runners.items() if len(who) > 1}
    # A trial failed MAX_RETRY + 1 times is not queued again (by design: a trial that keeps killing its
    # worker stops being retried); under faults every few seconds that happens. Any other is lost.
    unqueued = [t for t in trials if t.state == TrialState.FAIL and t.number not in reruns]
    exhausted = [t.number for t in unqueued if len(t.system_attrs.get("retry_history") or []) >= MAX_RETRY]
    failed_unqueued = [t.number for t in unqueued if t.number not in exhausted]
    return {
        "trials": len(trials), "states": dict(states), "run twice": sorted(twice), "left RUNNING": states.get("RUNNING", 0),
        "epochs redone": redone, "redone by": redone_by, "failed": states.get("FAIL", 0), "failed, no re-run queued": failed_unqueued,
        "retries used up": exhausted,
        "tracebacks": tracebacks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "mysql", "proxy"], default="sqlite")
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 1], help="one hpo optimize --jobs N per number")
    parser.add_argument("--gap", type=float, nargs=2, default=(1.0, 6.0), metavar=("MIN", "MAX"),
                        help="seconds between faults, drawn uniformly")
    parser.add_argument("--early", type=float, default=0.4, help="share of signals sent at any moment, start-up included")
    parser.add_argument("--proxy-db", choices=["postgres", "sqlite"], default="postgres",
                        help="--backend proxy: the database behind the proxy (a fresh one on the shared PostgreSQL, or a SQLite file)")
    parser.add_argument("--db-restarts", type=int, default=0,
                        help="PostgreSQL/MariaDB restarts among the faults (the servers are shared: a few)")
    parser.add_argument("--grace", type=int, default=10, help="$HPO_GRACE_PERIOD of every worker (and the proxy)")
    parser.add_argument("--minutes", type=float, default=None, help="stop injecting after this long, even short of --faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs) and the database")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally below: no station left running
    rng = random.Random(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix=f"chaos-{args.backend}-"))
    cache = os.environ.get("HPO_CACHE_DIR") or os.environ.get("HPO_TEST_CACHE_DIR")
    spec = [*SPEC, *([f"data.cache_dir={cache!r}"] if cache else [])]
    kind = args.proxy_db if args.backend == "proxy" else args.backend
    database = None
    if kind == "sqlite":
        db_url = f"sqlite:///{folder / 'chaos.db'}"
    else:
        db_url, database = _fresh_database(kind)
    proxy = None
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPO_GRACE_PERIOD": str(args.grace), "HPO_STORAGE": db_url,
           "PYTHONFAULTHANDLER": "1"}  # a hung station's stacks, on the SIGABRT of _wait_exit
    if args.backend == "proxy":
        proxy = Proxy(db_url, folder, args.grace)
        proxy.start()
        env.update(HPO_STORAGE=f"grpc://127.0.0.1:{proxy.port}", HPO_PROXY_TOKEN=proxy.token)
    kinds = ["sigkill", "sigint", "sigterm"] + (["proxy-restart"] if proxy else [])
    budget = 100_000  # never met while faults go on

    def command(jobs: int, trials: int) -> list[str]:
        args = ["optimize", "--study", "imdb", "--trials", str(trials), "--jobs", str(jobs)]
        for item in spec:
            args += ["--set", item]
        return args

    shape = " + ".join(f"hpo optimize --jobs {j}" for j in args.jobs)
    behind = f" in front of {kind}" if args.backend == "proxy" else ""
    print(f"chaos: {args.backend}{behind}, {shape}, {args.faults} faults, logs in {folder}", flush=True)
    stations = [Station(i, command(jobs, budget), env, folder) for i, jobs in enumerate(args.jobs)]
    tally = Tally()
    start = time.monotonic()
    restarts_at = set(rng.sample(range(5, args.faults), min(args.db_restarts, max(0, args.faults - 5)))) if kind != "sqlite" else set()
    try:
        for station in stations:
            station.start()
        for n in range(args.faults):
            if args.minutes is not None and time.monotonic() - start > args.minutes * 60:
                print(f"  --minutes {args.minutes:g} reached: no more faults", flush=True)
                break
            time.sleep(rng.uniform(*args.gap))
            _check_exits(stations, tally)
            inject("db-restart" if n in restarts_at else rng.choice(kinds), stations, proxy, kind, tally, rng,
                   lambda m: print(m, flush=True), args.early)
        # The end: Ctrl-C everywhere, then one run without faults to a budget just above what is finished.
        for station in stations:
            station.signal_group(signal.SIGINT)
        for station in stations:
            code = _wait_exit(station, 120, tally)
            if code not in (0, 130, -signal.SIGINT):
                tally.unexplained_exits.append(f"{station.log.name}: exit {code} after the last SIGINT")
        finished = sum(1 for t in optuna.load_study(study_name="chaos", storage=open_storage(db_url)).get_trials(deepcopy=False)
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        for station, jobs in zip(stations, args.jobs):
            station.start(command(jobs, finished + 2 * sum(args.jobs)))
        for station in stations:
            code = _wait_exit(station, 900, tally)
            if code != 0:
                tally.unexplained_exits.append(f"{station.log.name}: exit {code} in the last run")
        wall = time.monotonic() - start
        logs = [p for s in stations for p in s.logs] + (proxy.logs if proxy else [])
        result = count(db_url, logs)
    finally:
        for station in stations:
            if station.proc is not None and station.proc.poll() is None:
                station.signal_group(signal.SIGKILL)
        if proxy is not None and proxy.proc.poll() is None:
            proxy.stop(signal.SIGTERM)
        if database is not None and not args.keep:
            _drop_database(kind, database)
    print(f"chaos ({args.backend}): {sum(tally.faults.values())} faults injected in {wall / 60:.1f} min "
          f"({', '.join(f'{k} {v}' for k, v in sorted(tally.faults.items()))}); "
          f"{shape}, grace period {args.grace} s")
    print(f"  trials                     {result['trials']}  {result['states']}")
    for key in ("run twice", "left RUNNING", "epochs redone", "failed", "failed, no re-run queued", "retries used up",
                "tracebacks"):
        value = result[key]
        print(f"  {key:26} {len(value) if isinstance(value, list) else value}" + (f"  {value}" if isinstance(value, list) and value else ""))
    if result["redone by"]:
        print(f"      (re-run: finished epochs it did again) {result['redone by']}")
    print(f"  {'exits no fault explains':26} {len(tally.unexplained_exits)}")
    for line in tally.unexplained_exits:
        print(f"      {line}")
    print(f"  {'resume commands changed':26} {len(tally.resume_mismatches)}")
    print(f"  {'hung after a signal':26} {len(tally.hangs)}" + (f"  {tally.hangs} (their stacks: 'most recent call first' in them)" if tally.hangs else ""))
    print(f"  {'wall time':26} {wall:.0f} s")
    print(f"  logs: {folder}")


if __name__ == "__main__":
    main()
