"""Database round trips per training epoch: what one epoch of a trial costs the study's database.

Runs the real objective on a tiny subset of the reviews against a real database (PostgreSQL by
default) twice, with ``train.max_epochs`` 2 and 6 and a pruner that never prunes, and counts
every SQL statement the storage's engine executes (SQLAlchemy ``before_cursor_execute``) and
every commit. The difference between the two runs, divided by the 4 extra epochs, is the cost
of one epoch: the trial's fixed costs (creating it, sampling, finishing) cancel out. Heartbeats
are off, so nothing else talks to the database meanwhile.

    python benchmarks/storage_writes.py                                   # local PostgreSQL
    python benchmarks/storage_writes.py --storage mysql+pymysql://root@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpo.data import load_dataset  # noqa: E402
from hpo.spec import load_spec  # noqa: E402

TINY = [
    "data.max_train=128", "data.max_valid=64", "data.max_len=40", "model.embedding_dim=8", "model.hidden_size=8",
    "space.lr_embedding=0.001", "space.lr_encoder=0.001", "space.lr_head=0.001", "space.clip_norm=1.0",
    "space.cycle_len=1", "space.dropout=0.0", "space.weight_decay=0.0",
]


def _counting_storage(url: str) -> tuple[optuna.storages.RDBStorage, Counter]:
    storage = optuna.storages.RDBStorage(url)
    counts: Counter = Counter()

    @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        verb = statement.lstrip().split(None, 1)[0].upper()
        counts["statements"] += 1
        counts["writes"] += verb in ("INSERT", "UPDATE", "DELETE")

    @sqlalchemy.event.listens_for(storage.engine, "commit")
    def _commit(conn):  # noqa: ANN001
        counts["commits"] += 1

    return storage, counts


def measure(url: str, epochs: int, artifacts: str) -> Counter:
    from hpo.search.objective import Objective

    spec = load_spec("imdb", [*TINY, f"train.max_epochs={epochs}"])
    data = load_dataset(spec.data)
    storage, counts = _counting_storage(url)
    study = optuna.create_study(storage=storage, study_name=f"writes-{uuid.uuid4().hex[:8]}", direction="maximize",
                                pruner=optuna.pruners.NopPruner())
    study.set_user_attr("artifact_dir", artifacts)
    objective = Objective(spec, data)
    counts.clear()
    study.optimize(objective, n_trials=1)
    result = Counter(counts)
    optuna.delete_study(study_name=study.study_name, storage=storage)
    storage.engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=os.environ.get("HPO_BENCH_STORAGE", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as artifacts:
        short, long = measure(args.storage, 2, artifacts), measure(args.storage, 6, artifacts)
    backend = sqlalchemy.engine.make_url(args.storage).get_backend_name()
    print(f"database round trips of one trial ({backend}; heartbeats off)")
    print(f"  {'':<12} {'2 epochs':>9} {'6 epochs':>9} {'per epoch':>10}")
    for key in ("statements", "writes", "commits"):
        print(f"  {key:<12} {short[key]:>9} {long[key]:>9} {(long[key] - short[key]) / 4:>10.1f}")


if __name__ == "__main__":
    main()
