"""What one finished trial asks of PostgreSQL (or MariaDB/MySQL), counted by the server: plain Optuna
against hpo's workers, direct or through `hpo storage-proxy`.

``pg_stat_statements`` (the server must preload it; see docs/operations/scale.rst) counts, per
statement, the calls, the rows returned or written, the shared buffers touched (hit + read, 8 kB
each: the bytes the server went through) and the execution time. This script takes a snapshot
before and after a window of ``--measured`` finished trials and divides the difference by the
mean of the trials started and finished in it (with many workers, trials in flight at its edges
have only their start or their end in it). The figures count the database's work, not this
machine's speed: on 2 shared cores a worker's wall time says little, a statement count says the
same on any machine.

Per cell (study size x workers x mode), in a database of its own choosing (``--storage``), whose
studies are deleted first (its tables truncated: each cell pays for its own study alone; with
``--shared-database`` they stay, as in the runs before 2026-12-04):

* a study pre-filled with ``size`` finished trials: one trial run by the mode's own objective,
  then copied ``size - 1`` times in SQL (parameters, values, epochs, attributes, and for hpo the
  trial's dashboard note), then ``VACUUM ANALYZE`` (this server runs without autovacuum; a production one
  has its statistics);
* ``workers`` forked processes, each with its own storage, run a cheap objective (7 sampled
  floats, 3 "epochs" that each store the epochs so far as one attribute and report a value, an
  outcome attribute at the end; no sleep) with a RandomSampler, whose own cost does not grow
  with the study;
   - plain: ``RDBStorage`` + ``study.optimize`` + ``MaxTrialsCallback`` on COMPLETE and PRUNED
     (the closest plain equivalent of hpo's global budget);
   - plain-hb: the same with Optuna's own answer to a killed worker, as its docs give it for
     several machines: ``RDBStorage(heartbeat_interval=10, grace_period=60,
     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))`` (hpo's
     interval and grace period): a heartbeat row per trial and a stale-trial search before each;
   - hpo: ``open_storage(grace_period=60)`` (heartbeats, stale-trial check, retrying writes) +
     ``hpo.search.workers.work`` (the budget loop) with the :class:`DashboardNotes` of
     ``run_worker`` (a note per trial as it ends, the study's note at most once a minute);
* the window opens once every worker has finished a trial (its first read of the study, which
  loads every trial once per process, is the "join" column, per worker) and as many trials more
  have finished (the steady state), and closes ``--measured`` trials later.

On MariaDB/MySQL (``--storage mysql+pymysql://...``) the counts come from ``performance_schema``'s
statement digests: rows sent + affected, and rows examined where PostgreSQL's buffers stand.
``--modes proxy`` starts ``hpo storage-proxy`` per cell (its log in a temporary file) and runs hpo's
workers on its ``grpc://`` address. The peak-connections column samples the database's client
connections every 50 ms. A cell ends by failing the trials its killed workers left RUNNING.

    python benchmarks/storage_cost.py                       # sizes 100,1000,10000 x workers 1,8,32
    python benchmarks/storage_cost.py --sizes 1000 --workers 64 --modes plain,proxy
    python benchmarks/storage_cost.py --sizes 1000 --workers 8 --top 12   # and the costliest statements
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hpo import record  # noqa: E402
from hpo.record import EpochRecord, Outcome, TrialRecord  # noqa: E402
from hpo.search.callbacks import DashboardNotes  # noqa: E402
from hpo.search.workers import work  # noqa: E402
from hpo.storage.database.resilient import heartbeat_interval, open_storage  # noqa: E402
from hpo.storage.database.urls import mask_url  # noqa: E402
from hpo.storage.optuna_private import TRIAL_STATE_INDEX  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/cost_bench"
EPOCHS = 3
TAG = "/* cost-monitor */"  # the benchmark's own statements, left out of the counts
BLOCK = 8192


def objective(trial: optuna.Trial, notes: DashboardNotes | None = None) -> float:
    """hpo's objective's storage traffic without its training: the same attributes and reports."""
    x = [trial.suggest_float(f"p{i}", 1e-4, 1e-1, log=True) for i in range(7)]
    value = 1.0 - sum(x)
    record.write_lr_groups(trial, {"embedding": x[0], "head": x[1]})
    rows: list[EpochRecord] = []
    for epoch in range(1, EPOCHS + 1):
        rows.append(EpochRecord(epoch, 0.5 / epoch, 0.6 / epoch, value * epoch / EPOCHS, {"head": 0.1}, {"head": 0.2},
                                0.0, {"head": x[1]}, 0.01))
        record.write_epochs(trial, rows)
        trial.report(rows[-1].val_accuracy, epoch)
    outcome = Outcome(None, EPOCHS, EPOCHS, 10, "fp32")
    record.write_outcome(trial, outcome)
    if notes is not None:  # what run_worker's DashboardNotes listener does as a trial ends
        notes.trial_ending(trial, TrialRecord(trial.number, record.COMPLETE, trial.params, trial.distributions,
                                              value, tuple(rows), outcome, {}))
    return value


# --- the study, pre-filled -------------------------------------------------------------------


GRACE_S = 60


def _plain(mode: str) -> bool:
    return mode.startswith("plain")


def _storage(mode: str, url: str):
    if mode == "hpo-noindex":  # what-if: hpo without its (study_id, state) index on the trials table
        from hpo.storage.database import resilient

        resilient.ensure_trial_state_index = lambda rdb: False  # this worker process only
    if mode in ("hpo", "hpo-noindex", "proxy"):  # proxy: ``url`` is the proxy's grpc:// address
        return open_storage(url, grace_period=GRACE_S)
    if mode == "plain-hb":
        with warnings.catch_warnings():  # "experimental": Optuna's heartbeat has been for years
            warnings.simplefilter("ignore")
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9's names
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
            else:
                retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval(GRACE_S), grace_period=GRACE_S,
                                              **retry)
    return optuna.storages.RDBStorage(url)


def _run(mode: str, study: optuna.Study, budget: int, ready=None) -> None:
    first = [True]
    notes = DashboardNotes(every_s=60.0) if not _plain(mode) else None

    ready_box = [ready]

    def wrapped(trial: optuna.Trial) -> float:
        box = ready_box[0]
        if not first[0] and box is not None:
            with box.get_lock():  # this worker's first trial, its callbacks included, is over
                box.value += 1
            ready_box[0] = None
        first[0] = False
        return objective(trial, notes)

    if not _plain(mode):
        work(study, wrapped, budget, poll_s=0.05, callbacks=[notes])
    else:
        stop = optuna.study.MaxTrialsCallback(budget, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(wrapped, callbacks=[stop], gc_after_trial=False)


def prefill(mode: str, url: str, engine: sqlalchemy.Engine, size: int) -> str:
    """A new study of ``size`` finished trials: one run by the mode's objective, the rest copied in SQL."""
    name = f"cost-{mode}-{size}-{uuid.uuid4().hex[:6]}"
    storage = _storage(mode if _plain(mode) else "hpo", url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler())
    _run(mode, study, 1)
    storage.remove_session()
    storage.engine.dispose()  # else its idle connections, inherited by the forked workers, count as theirs
    mysql = engine.dialect.name in ("mysql", "mariadb")
    q = "`" if mysql else '"'
    with engine.begin() as conn:
        sid = conn.exec_driver_sql(f"{TAG} SELECT study_id FROM studies WHERE study_name = %(n)s", {"n": name}).scalar()
        tid = conn.exec_driver_sql(f"{TAG} SELECT trial_id FROM trials WHERE study_id = %(s)s", {"s": sid}).scalar()
        numbers = f"seq_1_to_{size - 1} g" if mysql else "generate_series(1, %(n)s) AS g(seq)"
        if size > 1:
            conn.exec_driver_sql(
                f"{TAG} INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                f"SELECT g.seq, study_id, state, datetime_start, datetime_complete FROM trials, {numbers} "
                "WHERE trial_id = %(t)s", {"n": size - 1, "t": tid})
        for table in ("trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
                      "trial_intermediate_values"):
            cols = [c for c in _columns(conn, table) if c != "trial_id"][1:]  # [0]: the primary key
            listed = ", ".join(f"{q}{c}{q}" for c in cols)
            conn.exec_driver_sql(
                f"{TAG} INSERT INTO {table} (trial_id, {listed}) SELECT t.trial_id, {', '.join(f'c.{q}{c}{q}' for c in cols)} "
                f"FROM trials t JOIN {table} c ON c.trial_id = %(t)s WHERE t.study_id = %(s)s AND t.trial_id <> %(t)s",
                {"t": tid, "s": sid})
        # every trial's dashboard note, as DashboardNotes leaves one per trial in the study's attributes
        prefix = "CONCAT('dashboard:', %(t)s, ':')" if mysql else "'dashboard:' || %(t)s || ':'"
        own = "CONCAT('dashboard:', t.trial_id, ':')" if mysql else "'dashboard:' || t.trial_id || ':'"
        like = f"CONCAT({prefix}, '%%')" if mysql else f"{prefix} || '%%'"
        conn.exec_driver_sql(
            f"{TAG} INSERT INTO study_system_attributes (study_id, {q}key{q}, value_json) "
            f"SELECT %(s)s, replace(a.{q}key{q}, {prefix}, {own}), a.value_json "
            f"FROM trials t JOIN study_system_attributes a ON a.study_id = %(s)s AND a.{q}key{q} LIKE {like} "
            "WHERE t.study_id = %(s)s AND t.trial_id <> %(t)s", {"t": tid, "s": sid})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if mysql:
            conn.exec_driver_sql(f"{TAG} ANALYZE TABLE trials, trial_params, trial_values, trial_user_attributes, "
                                 "trial_system_attributes, trial_intermediate_values, study_system_attributes, trial_heartbeats")
        else:
            conn.exec_driver_sql(f"{TAG} VACUUM ANALYZE")  # autovacuum is off here: its visibility map too
    return name


def _columns(conn, table: str) -> list[str]:
    schema = "DATABASE()" if conn.dialect.name in ("mysql", "mariadb") else "current_schema()"
    rows = conn.exec_driver_sql(
        f"{TAG} SELECT column_name FROM information_schema.columns WHERE table_name = %(t)s "
        f"AND table_schema = {schema} ORDER BY ordinal_position", {"t": table}).all()
    return [r[0] for r in rows]


def same_schema(mode: str, engine: sqlalchemy.Engine) -> None:
    """Plain cells run without hpo's trial-state index (an earlier hpo cell made it): both sides with
    the schema each would have alone. hpo's workers make it again as they open the storage (not
    those of hpo-noindex)."""
    if not _plain(mode) and mode != "hpo-noindex":
        return
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        inspector = sqlalchemy.inspect(conn)
        if inspector.has_table("trials") and TRIAL_STATE_INDEX in {ix["name"] for ix in inspector.get_indexes("trials")}:
            conn.exec_driver_sql(f"{TAG} DROP INDEX {TRIAL_STATE_INDEX}" + (" ON trials" if mysql else ""))


# --- counting --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    finished: int
    per_query: dict[int, tuple[str, int, int, int, float]]  # queryid -> (text, calls, rows, blocks, ms)
    cpu_s: float = 0.0  # the workers' CPU time (user + system) so far
    created: int = 0  # the study's trials, in any state
    # PostgreSQL: table -> (inserts, updates, HOT updates, deletes, index scans' fetched tuples) so far
    tables: dict[str, tuple[int, int, int, int, int]] = field(default_factory=dict)

    def minus(self, before: "Snapshot") -> tuple[int, int, int, float]:
        calls = rows = blocks = 0
        ms = 0.0
        for qid, (_, c, r, b, t) in self.per_query.items():
            _, c0, r0, b0, t0 = before.per_query.get(qid, ("", 0, 0, 0, 0.0))
            calls, rows, blocks, ms = calls + c - c0, rows + r - r0, blocks + b - b0, ms + t - t0
        return calls, rows, blocks, ms


def snapshot(conn, name: str) -> Snapshot:
    if conn.dialect.name in ("mysql", "mariadb"):
        # performance_schema's digests: rows = sent + affected, "blocks" = rows examined (MariaDB
        # counts no buffer pages per statement), time in picoseconds. The monitor's connection has
        # no default database, so its own statements fall under another schema.
        rows = conn.exec_driver_sql(
            "SELECT DIGEST, MIN(DIGEST_TEXT), SUM(COUNT_STAR), SUM(SUM_ROWS_SENT + SUM_ROWS_AFFECTED), "
            "SUM(SUM_ROWS_EXAMINED), SUM(SUM_TIMER_WAIT) / 1e9 FROM performance_schema.events_statements_summary_by_digest "
            "WHERE SCHEMA_NAME = %(db)s GROUP BY DIGEST", {"db": _database(conn)}).all()
        finished, created = conn.exec_driver_sql(
            f"SELECT SUM(CASE WHEN t.state IN ('COMPLETE', 'PRUNED') THEN 1 ELSE 0 END), count(*) FROM `{_database(conn)}`.trials t "
            f"JOIN `{_database(conn)}`.studies s USING (study_id) WHERE s.study_name = %(n)s", {"n": name}).one()
        return Snapshot(int(finished), {r[0]: (r[1] or "", int(r[2]), int(r[3]), int(r[4]), float(r[5])) for r in rows},
                        created=int(created))
    rows = conn.exec_driver_sql(
        f"{TAG} SELECT queryid, min(query), sum(calls), sum(rows), sum(shared_blks_hit + shared_blks_read), "
        "sum(total_exec_time) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) AND query NOT LIKE '%%cost-monitor%%' GROUP BY queryid").all()
    finished, created = conn.exec_driver_sql(
        f"{TAG} SELECT count(*) FILTER (WHERE t.state IN ('COMPLETE', 'PRUNED')), count(*) FROM trials t "
        "JOIN studies s USING (study_id) WHERE s.study_name = %(n)s", {"n": name}).one()
    tables = conn.exec_driver_sql(
        f"{TAG} SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, coalesce(idx_tup_fetch, 0) "
        "FROM pg_stat_user_tables WHERE schemaname = current_schema()").all()
    return Snapshot(int(finished), {r[0]: (r[1], int(r[2]), int(r[3]), int(r[4]), float(r[5])) for r in rows},
                    created=int(created), tables={r[0]: tuple(int(x) for x in r[1:]) for r in tables})


def table_writes(after: Snapshot, before: Snapshot, n: float) -> list[tuple[str, float, float, float, float, float]]:
    """Per table, per trial: inserts, updates, the share of those that were HOT (no new index
    entries: PostgreSQL can do that only when no indexed column changes and the page has room),
    deletes, and tuples fetched through its indexes. The server flushes these counters about once a
    second per backend, so they trail the window by that much at each edge."""
    out = []
    for table, now in sorted(after.tables.items()):
        then = before.tables.get(table, (0, 0, 0, 0, 0))
        ins, upd, hot, dele, fetched = (a - b for a, b in zip(now, then))
        if ins or upd or dele or fetched:
            out.append((table, ins / n, upd / n, hot / upd if upd else float("nan"), dele / n, fetched / n))
    return out


def connections(conn) -> int:
    """The database's client connections now, the monitor's own left out."""
    if conn.dialect.name in ("mysql", "mariadb"):
        return int(conn.exec_driver_sql("SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %(db)s",
                                        {"db": _database(conn)}).scalar())
    return int(conn.exec_driver_sql(f"{TAG} SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").scalar())


_DB: dict[str, str] = {}


def _qualified(conn, table: str) -> str:
    """``table`` as the monitor's connection names it (on MySQL it has no default database)."""
    return f"`{_DB['name']}`.{table}" if conn.dialect.name in ("mysql", "mariadb") else table


def _database(conn) -> str:
    return _DB["name"]


def monitor_engine(url: str) -> sqlalchemy.Engine:
    """The monitor's engine: on MySQL without a default database (see :func:`snapshot`)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        _DB["name"] = parsed.database
        parsed = parsed._replace(database=None)  # URL.set(database=None) keeps the old one
    return sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def start_proxy(url: str) -> tuple[subprocess.Popen, str]:
    """`hpo storage-proxy` on a free loopback port for ``url`` (passed in $HPO_STORAGE): (process, grpc:// URL).
    Its lines go to a file (a pipe nobody reads would stop it once full), named on stderr."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HPO_STORAGE": url, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    log = Path(tempfile.mkstemp(prefix="storage-proxy-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "storage-proxy", "--port", str(port),
                                 "--artifact-port", str(port + 1 if port < 65535 else port - 1)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    print(f"# proxy log: {log}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(line.startswith("storage proxy: grpc://") for line in log.read_text().splitlines()):
            return proc, f"grpc://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("hpo storage-proxy did not start:\n" + log.read_text())


def _worker(mode: str, url: str, name: str, budget: int, ready, opened, workers: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=_storage(mode, url), sampler=optuna.samplers.RandomSampler())
    # No trial before every worker has its storage open: the first to open would otherwise run trials
    # while the rest start, and a mode whose workers open slower (hpo's: 32 on 2 cores) would enter
    # its window with a larger study (529 trials against plain-hb's 261 in a "100"-trial cell, each
    # trial's numbering count reading them all).
    with opened.get_lock():
        opened.value += 1
    while opened.value < workers:
        time.sleep(0.01)
    _run(mode, study, budget, ready)


@dataclass
class Cost:
    trials: int
    calls: float
    rows: float
    kbytes: float
    ms: float
    cpu_ms: float
    join_calls: float
    join_rows: float
    join_kbytes: float
    top: list[tuple[str, float, float, float, float]]  # text, calls, rows, kB (or rows examined), ms: per trial
    peak_connections: int = 0
    tables: list[tuple[str, float, float, float, float, float]] = field(default_factory=list)  # table_writes
    # the study's trials (any state) as the window opened and closed: Optuna's numbering count reads them all
    window_sizes: tuple[int, int] = (0, 0)


# Optuna's tables, children first (MySQL truncates one at a time, foreign key checks off)
STUDY_TABLES = ("trial_heartbeats", "trial_intermediate_values", "trial_values", "trial_system_attributes",
                "trial_user_attributes", "trial_params", "trials", "study_system_attributes", "study_user_attributes",
                "study_directions", "studies")


def emptied(engine: sqlalchemy.Engine) -> None:
    """Every study of the database gone, its tables and indexes new and empty: a cell then pays for its
    own study alone. Cells sharing one database made each pay for the ones before it: the first plain
    cell ran on empty tables, hpo's after it on plain's rows too (at 100 trials the same statements
    read up to 2.3x the buffers on hpo's side, storage_cost-after-by-query.txt)."""
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not sqlalchemy.inspect(conn).has_table("studies"):
            return
        if mysql:
            conn.exec_driver_sql(f"{TAG} SET FOREIGN_KEY_CHECKS = 0")
            for table in STUDY_TABLES:
                conn.exec_driver_sql(f"{TAG} TRUNCATE TABLE {table}")
            conn.exec_driver_sql(f"{TAG} SET FOREIGN_KEY_CHECKS = 1")
        else:
            conn.exec_driver_sql(f"{TAG} TRUNCATE {', '.join(STUDY_TABLES)} RESTART IDENTITY CASCADE")


def measure(mode: str, url: str, engine: sqlalchemy.Engine, size: int, workers: int, measured: int, top: int,
            alone: bool = True) -> Cost:
    data = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)  # ``engine`` is the monitor's
    try:
        if alone:
            emptied(data)
        name = prefill(mode, url, data, size)
        same_schema(mode, data)  # after: prefill opens an hpo mode's storage as hpo does, index and all
    finally:
        data.dispose()
    proxy, worker_url = (start_proxy(url) if mode == "proxy" else (None, url))
    try:
        return _window(mode, worker_url, engine, name, workers, measured, top)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)


def _window(mode: str, url: str, engine: sqlalchemy.Engine, name: str, workers: int, measured: int, top: int) -> Cost:
    budget = 10**9  # the workers run until the window closes, then they are killed: a slow starter cannot miss it
    ctx = multiprocessing.get_context("fork")  # hpo and Optuna are imported already; storages are opened after
    ready = ctx.Value("i", 0)
    opened = ctx.Value("i", 0)
    engine.dispose()
    peak = 0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        s0 = snapshot(conn, name)
        procs = [ctx.Process(target=_worker, args=(mode, url, name, budget, ready, opened, workers), daemon=True)
                 for _ in range(workers)]
        for p in procs:
            p.start()
        while ready.value < workers:
            peak = max(peak, connections(conn))
            if sum(p.is_alive() for p in procs) < workers:  # one died before its first trial: it never gets ready
                raise RuntimeError(f"{mode}, {workers} workers: a worker stopped before its first trial ended")
            time.sleep(0.05)
        pids = [p.pid for p in procs]
        # Then as many trials again before the window opens: right after the join every worker has a
        # trial in flight at once (started in the join, ended in the window), not the steady state.
        warm = snapshot(conn, name).finished + workers
        while snapshot(conn, name).finished < warm:
            peak = max(peak, connections(conn))
            if not any(p.is_alive() for p in procs):
                raise RuntimeError(f"{mode}, {workers} workers: the workers stopped before the window opened")
            time.sleep(0.05)
        s1 = snapshot(conn, name)
        s1.cpu_s = cpu_seconds(pids)
        while True:
            peak = max(peak, connections(conn))
            s2 = snapshot(conn, name)
            s2.cpu_s = cpu_seconds(pids)
            if s2.finished >= s1.finished + measured:
                break
            if not any(p.is_alive() for p in procs):
                raise RuntimeError(f"{mode}, {workers} workers: the workers stopped before the window closed")
            time.sleep(0.05)
        for p in procs:
            p.kill()  # what a killed worker leaves (a RUNNING trial) is past the window
            p.join()
        # ...and is failed here, uncounted: else a later cell's proxy, whose reaper looks at every
        # study of the database, would re-run it inside that cell's window and count it there.
        conn.exec_driver_sql(
            f"{TAG} UPDATE {_qualified(conn, 'trials')} SET state = 'FAIL' WHERE state = 'RUNNING' AND study_id = "
            f"(SELECT study_id FROM {_qualified(conn, 'studies')} WHERE study_name = %(n)s)", {"n": name})
    # Per trial: the window's statements over the mean of the trials it started and those it finished.
    # Trials in flight at its edges had their start (or their end) counted in it: with 32 workers and a
    # window of 60 finished trials, dividing by the finished alone moved a cell by up to 20% between runs.
    n = ((s2.finished - s1.finished) + (s2.created - s1.created)) / 2
    calls, rows, blocks, ms = s2.minus(s1)
    jc, jr, jb, _ = s1.minus(s0)
    # what the join leaves once the trials that ran in it are taken out at the steady rate
    joined = s1.finished - s0.finished
    top_rows = []
    for qid, (text, c, r, b, t) in s2.per_query.items():
        _, c0, r0, b0, t0 = s1.per_query.get(qid, ("", 0, 0, 0, 0.0))
        if c > c0:
            top_rows.append((_short(text), (c - c0) / n, (r - r0) / n, (b - b0) * _unit(engine) / n,
                             (t - t0) / n))
    top_rows.sort(key=lambda x: -x[3])
    return Cost(n, calls / n, rows / n, blocks * _unit(engine) / n, ms / n, (s2.cpu_s - s1.cpu_s) * 1000 / n,
                (jc - joined * calls / n) / workers, (jr - joined * rows / n) / workers,
                (jb * _unit(engine) - joined * blocks * _unit(engine) / n) / workers, top_rows[:top], peak,
                table_writes(s2, s1, n), (s1.created, s2.created))


def _short(query: str) -> str:
    """A statement's text in 150 characters that tell it apart: a long column list is elided (the
    lookups of a trial by id and the cache's reads of new trials began alike)."""
    text = " ".join(query.split())
    text = re.sub(r"^SELECT (.{40,}?) FROM ", "SELECT ... FROM ", text)
    return text[:150]


def _unit(engine: sqlalchemy.Engine) -> float:
    """What one count of the third column is worth: 8 kB buffers on PostgreSQL; rows examined on MySQL."""
    return 1.0 if engine.dialect.name in ("mysql", "mariadb") else BLOCK / 1024


def _ratios(mode: str, c: Cost, baselines: dict[str, Cost], unit: str) -> str:
    if _plain(mode):
        return ""
    out = [f"x{c.calls / b.calls:.2f} stmts, x{c.kbytes / b.kbytes:.2f} {unit} of {base}"
           for base in ("plain", "plain-hb") if (b := baselines.get(base)) is not None]
    return ("  " + "; ".join(out)) if out else ""


def _print_row(size: int, workers: int, mode: str, c: Cost, baselines: dict[str, Cost], third: str, mysql: bool,
               median_of: int = 0, show_tables: bool = False) -> None:
    ratio = _ratios(mode, c, baselines, third.split("/")[0]) + (f"  [median of {median_of} runs]" if median_of else "")
    print(f"{size:>6} {workers:>7}  {mode:<8}{c.calls:>12.1f}{c.rows:>11.1f}{c.kbytes:>15.1f}{c.ms:>12.2f}{c.cpu_ms:>13.0f}"
          f"{c.peak_connections:>11}  | {c.join_calls:>18.0f}{c.join_rows:>8.0f}{c.join_kbytes:>9.0f}{ratio}", flush=True)
    if not median_of:
        print(f"        the study held {c.window_sizes[0]:,} trials as the window opened, {c.window_sizes[1]:,} as it closed")
    if not median_of:
        for text, calls, rows, kb, ms in c.top:
            print(f"        {calls:6.2f} calls {rows:8.1f} rows {kb:8.1f} {'examined' if mysql else 'kB'} {ms:7.2f} ms  {text}")
        if c.tables and show_tables:
            print("        per trial:  " + "; ".join(
                f"{t} {ins:.1f} ins, {upd:.1f} upd ({hot:.0%} HOT), {fetched:.0f} idx fetches" + (f", {d:.1f} del" if d else "")
                for t, ins, upd, hot, d, fetched in c.tables))


def _median(costs: list[Cost]) -> Cost:
    """Each column's median over the runs of one cell (the 8- and 32-worker cells' bytes moved by
    up to 25% between runs on 2 shared cores)."""
    med = statistics.median
    return Cost(int(med([c.trials for c in costs])), med([c.calls for c in costs]), med([c.rows for c in costs]),
                med([c.kbytes for c in costs]), med([c.ms for c in costs]), med([c.cpu_ms for c in costs]),
                med([c.join_calls for c in costs]), med([c.join_rows for c in costs]), med([c.join_kbytes for c in costs]),
                [], int(med([c.peak_connections for c in costs])))


def _only_copy(engine: sqlalchemy.Engine, mysql: bool) -> sqlalchemy.Connection:
    """A session lock on the server, held by the returned connection: a second copy of this script
    on the same server empties the tables under the first one's window (a copy started by mistake
    deadlocked on TRUNCATE with the running one, 2026-12-04 19:17). It stops instead, in one line."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    query = f"{TAG} SELECT GET_LOCK('hpo-storage-cost', 0)" if mysql else f"{TAG} SELECT pg_try_advisory_lock(26026)"
    if not conn.exec_driver_sql(query).scalar():
        conn.close()
        sys.exit("storage_cost.py: another copy runs against this server (its lock is held): wait for it to end")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=os.environ.get("HPO_COST_STORAGE") or DEFAULT_URL,
                        help="a PostgreSQL database with pg_stat_statements (CREATE EXTENSION done)")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--workers", default="1,8,32")
    parser.add_argument("--modes", default="plain,hpo",
                        help="plain (RDBStorage), plain-hb (RDBStorage with Optuna's heartbeats and retry callback), "
                             "hpo (open_storage), proxy (hpo's workers through `hpo storage-proxy`), "
                             "hpo-noindex (hpo without its trial-state index: a what-if)")
    parser.add_argument("--measured", type=int, default=50, help="finished trials per window")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each cell's modes in turn this many times, then print each column's median")
    parser.add_argument("--top", type=int, default=0, help="also print the N statements that read the most")
    parser.add_argument("--tables", action="store_true",
                        help="also print each table's inserts, updates (and the share of HOT ones) and index fetches per trial")
    parser.add_argument("--shared-database", action="store_true",
                        help="keep every cell's study (the runs before 2026-12-04): each cell then also pays for the earlier ones' rows")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = monitor_engine(args.storage)
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT VERSION()" if mysql else "SHOW server_version").scalar()
    guard = _only_copy(engine, mysql)  # held until this process ends
    third = "examined/trial" if mysql else "kB/trial"
    print(f"# storage {mask_url(args.storage)} ({'MariaDB/MySQL' if mysql else 'PostgreSQL'} {version}), {os.cpu_count()} CPUs; optuna "
          f"{optuna.__version__}; objective: {EPOCHS} epochs of bookkeeping, no sleep; RandomSampler; "
          f"{args.measured} trials per window", flush=True)
    print(f"{'size':>6} {'workers':>7}  {'mode':<8}{'stmts/trial':>12}{'rows/trial':>11}{third:>15}"
          f"{'db ms/trial':>12}{'cpu ms/trial':>13}{'peak conns':>11}  | join/worker: {'stmts':>6}{'rows':>8}{third.split('/')[0]:>9}",
          flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        for workers in [int(w) for w in args.workers.split(",")]:
            runs: dict[str, list[Cost]] = {}
            for _ in range(args.repeat):  # the modes in turn: a drift of the machine hits them alike
                for mode in args.modes.split(","):
                    try:
                        c = measure(mode, args.storage, engine, size, workers, args.measured, args.top, not args.shared_database)
                    except sqlalchemy.exc.OperationalError as exc:  # a server restarted under the cell: once more
                        print(f"# {size} {workers} {mode}: measured again after {str(exc).splitlines()[0][:100]}", flush=True)
                        c = measure(mode, args.storage, engine, size, workers, args.measured, args.top, not args.shared_database)
                    runs.setdefault(mode, []).append(c)
                    _print_row(size, workers, mode, c, {m: r[-1] for m, r in runs.items()}, third, mysql,
                               show_tables=args.tables)
            if args.repeat > 1:
                medians = {m: _median(r) for m, r in runs.items()}
                for mode, c in medians.items():
                    _print_row(size, workers, mode, c, medians, third, mysql, median_of=args.repeat)
    third_means = ("rows examined (performance_schema; MariaDB counts no buffer pages)" if mysql
                   else "shared buffers hit+read x 8 kB")
    print(f"# per trial: statements (BEGIN/COMMIT included), rows returned or written, {third_means}, "
          "server execution time (lock waits included), the workers' own CPU time (not the proxy's); over the mean of the trials the window started and finished. "
          "peak conns: the database's client connections, sampled every 50 ms (the monitor's left out). join/worker: what a worker's start costs on top "
          "(its first full read of the study), the window's per-trial rate taken out")
    guard.close()


if __name__ == "__main__":
    main()
