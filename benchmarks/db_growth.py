"""Database growth per 100 finished trials of the default spec: Optuna's tables and the artifact store.

Writes 100 trials with the default spec's ``train.max_epochs`` (the same trial records a real
run writes: epoch rows with losses, gradient norms, rates; from tests/synthetic.py,
whose mix of complete, pruned and diverged trials follows ``lr_head``) into a fresh database on
each server, uploads each trial's figure (the real PNG ``hpo`` draws) to the database artifact
store, and measures the tables before and after. Checkpoints are not counted: a finished trial's
are deleted (a running trial holds two, about the model's size each).

    python benchmarks/db_growth.py                      # local PostgreSQL and MariaDB
"""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # synthetic studies: test scaffolding

import synthetic  # noqa: E402
from hpo.analysis.plots import trial_figure_png  # noqa: E402
from hpo.record import TrialRecord  # noqa: E402
from hpo.spec import load_spec  # noqa: E402
from hpo.storage.artifacts.database_store import ARTIFACTS_TABLE, CHUNKS_TABLE, DatabaseStore  # noqa: E402

SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}
TRIALS = 100


def table_bytes(engine: sa.Engine) -> dict[str, int]:
    """Bytes on disk per table (PostgreSQL: with TOAST and indexes; MariaDB: data + index, after ANALYZE)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(
                "SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'").all()
        else:
            names = [r[0] for r in conn.exec_driver_sql("SHOW TABLES")]
            for name in names:
                conn.exec_driver_sql(f"ANALYZE TABLE `{name}`").all()
            rows = conn.exec_driver_sql(
                "SELECT table_name, data_length + index_length FROM information_schema.tables "
                "WHERE table_schema = DATABASE()").all()
    return {str(name): int(size) for name, size in rows}


def measure(admin_url: str, max_epochs: int) -> tuple[int, int, int]:
    """(Optuna tables, artifact tables, PNG bytes uploaded) grown by TRIALS trials, in a fresh database."""
    name = f"hpo_growth_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        storage = optuna.storages.RDBStorage(url)
        store = DatabaseStore(storage.engine)
        study = optuna.create_study(study_name="growth", storage=storage, direction="maximize")
        study.set_user_attr("spec", load_spec("imdb").to_dict())
        before = table_bytes(storage.engine)
        synthetic.add_known_trials(study, synthetic.random_lr_heads(TRIALS, seed=1), max_epochs=max_epochs)
        uploaded = 0
        for trial in study.get_trials(deepcopy=False):
            png = trial_figure_png(TrialRecord.from_trial(trial))
            uploaded += len(png)
            artifact_id = str(uuid.uuid4())
            store.write(artifact_id, io.BytesIO(png))
        after = table_bytes(storage.engine)
        ours = (ARTIFACTS_TABLE, CHUNKS_TABLE)
        optuna_growth = sum(after.get(t, 0) - before.get(t, 0) for t in after if t not in ours)
        artifact_growth = sum(after.get(t, 0) - before.get(t, 0) for t in ours)
        storage.engine.dispose()
        store.engine.dispose()
        return optuna_growth, artifact_growth, uploaded
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    max_epochs = load_spec("imdb").train.max_epochs
    print(f"growth per {TRIALS} finished trials, default spec (train.max_epochs = {max_epochs}), checkpoints deleted")
    print(f"{'server':<12} {'Optuna tables':>14} {'artifact tables':>16} {'PNG bytes':>10} {'total':>10}")
    for label, url in SERVERS.items():
        optuna_growth, artifact_growth, uploaded = measure(url, max_epochs)
        print(f"{label:<12} {optuna_growth / 1e6:>11.2f} MB {artifact_growth / 1e6:>13.2f} MB {uploaded / 1e6:>7.2f} MB "
              f"{(optuna_growth + artifact_growth) / 1e6:>7.2f} MB")


if __name__ == "__main__":
    main()
