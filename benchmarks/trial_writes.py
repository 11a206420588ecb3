"""What exact trial writes cost: a trial's creation, claim and finish, hpo's storage against Optuna's.

hpo's ResilientStorage changes a trial's state by one conditional UPDATE and writes a token with
each new trial and each state change (:mod:`hpo.storage.database.trial_writes`), so that two
workers never claim one WAITING trial and a write whose reply was lost is recognised rather than
repeated. This measures what that costs against Optuna's own RDBStorage, in the same run, on the
same database: ``--trials`` queued trials claimed and finished (``study.ask`` + ``study.tell``),
then as many new ones; statements and commits per trial from SQLAlchemy's events, and the wall
time per trial (median of three passes; a shared machine makes single timings noisy).

    python benchmarks/trial_writes.py                                        # SQLite in a temp folder
    python benchmarks/trial_writes.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/trial_writes.py --storage mysql+pymysql://root@127.0.0.1:3306/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpo.storage.database.resilient import open_storage


def _counted(storage: Any) -> Counter:
    counts: Counter = Counter()

    @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        counts["statements"] += 1

    @sqlalchemy.event.listens_for(storage.engine, "commit")
    def _commit(conn):
        counts["commits"] += 1

    return counts


def one_pass(storage: Any, trials: int) -> tuple[float, float, Counter]:
    """(seconds per queued trial claimed and finished, per new trial, statements/commits per trial)."""
    counts = _counted(storage)
    study = optuna.create_study(storage=storage, study_name=f"writes-{uuid.uuid4().hex[:8]}")
    for i in range(trials):
        study.enqueue_trial({"x": float(i)})
    counts.clear()
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.number)
    queued = (time.perf_counter() - start) / trials
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.number)
    new = (time.perf_counter() - start) / trials
    per_trial = Counter({k: v / (2 * trials) for k, v in counts.items()})
    optuna.delete_study(study_name=study.study_name, storage=storage)
    return queued, new, per_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="database URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        url = args.storage or f"sqlite:///{folder}/writes.db"
        stores = {"optuna RDBStorage": optuna.storages.RDBStorage(url), "hpo ResilientStorage": open_storage(url)}
        results: dict[str, list[tuple[float, float, Counter]]] = {name: [] for name in stores}
        for _ in range(3):  # interleaved, so that load on the machine falls on both alike
            for name, storage in stores.items():
                results[name].append(one_pass(storage, args.trials))
        for storage in stores.values():
            storage.engine.dispose()
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    print(f"one trial's creation, claim and finish ({backend}; {args.trials} queued + {args.trials} new trials, "
          "median of 3 passes; shared machine)")
    print(f"  {'':<22} {'queued ms':>10} {'new ms':>8} {'statements':>11} {'commits':>8}")
    for name, passes in results.items():
        queued = statistics.median(p[0] for p in passes) * 1000
        new = statistics.median(p[1] for p in passes) * 1000
        counts = passes[-1][2]
        print(f"  {name:<22} {queued:>10.1f} {new:>8.1f} {counts['statements']:>11.1f} {counts['commits']:>8.1f}")


if __name__ == "__main__":
    main()
