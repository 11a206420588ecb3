"""The artifact store inside the study's database, on SQLite and the real PostgreSQL and MariaDB.

Each server test runs in a fresh database (tests/db_servers.py), so the tables are created by the
store itself, and parallel runs never share them.
"""

from __future__ import annotations

import io
import os
import resource
import time
import tracemalloc
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy.engine import make_url

from db_servers import fresh_database, study_database
from hpo import record
from hpo.storage.artifacts.keys import checkpoint_prefix
from hpo.storage.artifacts.stores import FolderStore, artifact_location, artifact_store
from hpo.storage.artifacts.usage import usage
from hpo.storage.artifacts.database_store import CHUNKS_TABLE, ArtifactCorrupted, DatabaseStore
from hpo.storage.database.resilient import open_storage
from hpo.search.study import open_study

KINDS = ["sqlite", "postgres", "mysql"]


database = study_database


def _chunk_rows(store: DatabaseStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {CHUNKS_TABLE}").scalar())


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_in_chunks_overwrite_and_remove(kind, tmp_path) -> None:
    with database(kind, tmp_path) as url:
        engine = sa.create_engine(url)
        try:
            store = DatabaseStore(engine, chunk_bytes=4096)
            blob = os.urandom(4096 * 3 + 17)  # three full chunks and a short one
            store.write("checkpoint-x-a.pt", io.BytesIO(blob))
            assert _chunk_rows(store) == 4
            with store.open_reader("checkpoint-x-a.pt") as f:
                assert f.read(10) == blob[:10]  # partial reads, as a streaming consumer makes
                assert f.read() == blob[10:]
            assert store.size("checkpoint-x-a.pt") == len(blob)

            store.write("checkpoint-x-a.pt", io.BytesIO(b"second"))  # the old version's chunks go
            assert store.open_reader("checkpoint-x-a.pt").read() == b"second"
            assert _chunk_rows(store) == 1
            store.write("empty", io.BytesIO(b""))
            assert store.open_reader("empty").read() == b""
            assert store.ids("checkpoint-") == ["checkpoint-x-a.pt"] and store.total_bytes() == 6

            store.remove("checkpoint-x-a.pt")
            store.remove("empty")
            with pytest.raises(ArtifactNotFound):
                store.open_reader("checkpoint-x-a.pt")
            with pytest.raises(ArtifactNotFound):
                store.remove("checkpoint-x-a.pt")
            assert _chunk_rows(store) == 0
        finally:
            engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_or_missing_chunk_is_a_clear_error(kind, tmp_path) -> None:
    with database(kind, tmp_path) as url:
        engine = sa.create_engine(url)
        try:
            store = DatabaseStore(engine, chunk_bytes=4096)
            store.write("fig", io.BytesIO(os.urandom(10_000)))
            with engine.begin() as conn:  # one flipped chunk, same length: only the sha256 can tell
                conn.execute(sa.text(f"UPDATE {CHUNKS_TABLE} SET data = :d WHERE seq = 1"), {"d": b"\0" * 4096})
            with pytest.raises(ArtifactCorrupted, match="'fig' is corrupted in the database store.*sha256"):
                store.open_reader("fig").read()
            with engine.begin() as conn:
                conn.execute(sa.text(f"DELETE FROM {CHUNKS_TABLE} WHERE seq = 2"))
            with pytest.raises(ArtifactCorrupted, match="chunk 3 of 3 is missing"):
                store.open_reader("fig").read()
        finally:
            engine.dispose()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_50_mb_blob_round_trip_streams(kind, tmp_path, capsys) -> None:
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1_000_000))
    with fresh_database(kind) as url:
        engine = sa.create_engine(url)
        try:
            store = DatabaseStore(engine)
            tracemalloc.start()
            t0 = time.perf_counter()
            with open(blob, "rb") as f:
                store.write("big", f)
            t1 = time.perf_counter()
            read = 0
            with store.open_reader("big") as f:
                while piece := f.read(1 << 20):
                    read += len(piece)
            t2 = time.perf_counter()
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            engine.dispose()
    assert read == 50_000_000
    with capsys.disabled():
        print(f"\n{kind}: 50 MB write {t1 - t0:.2f} s, read {t2 - t1:.2f} s, peak Python memory {peak / 2**20:.1f} MiB,"
              f" max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    # A few chunks in flight (the driver's copy, ours, the reader's buffer), never the blob.
    assert peak < 12 * 2**20, peak


def _study(url: str, name: str) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=open_storage(url))


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_server_study_records_its_database_as_store(kind, tmp_path, monkeypatch, small_spec) -> None:
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    with fresh_database(kind) as url:
        study = open_study(small_spec("name=db-store"), open_storage(url))
        assert study.user_attrs[record.ARTIFACT_STORE_ATTR] == "database" and record.ARTIFACT_DIR_ATTR not in study.user_attrs
        store = artifact_store(study)
        assert isinstance(store, DatabaseStore)
        assert make_url(url).password not in repr(store)  # shown in summaries: masked
        store.write(f"{checkpoint_prefix(study)}0-a.pt", io.BytesIO(b"x" * 1000))
        assert usage(study, store).checkpoints == 1000
        # another process, another directory, another storage object: the same store
        again = optuna.load_study(study_name="db-store", storage=open_storage(url))
        assert artifact_store(again).size(f"{checkpoint_prefix(study)}0-a.pt") == 1000
        artifact_store(again).engine.dispose()
        store.engine.dispose()
    assert not (tmp_path / "hpo-artifacts").exists()  # nothing on this machine's disk


def test_sqlite_studies_keep_a_folder_beside_the_file_and_the_env_overrides(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    study = _study(f"sqlite:///{tmp_path / 'db' / 'runs.db'}", "s")
    assert artifact_location(study) == str(tmp_path / "db" / "runs-artifacts")
    assert study.user_attrs[record.ARTIFACT_DIR_ATTR] == str(tmp_path / "db" / "runs-artifacts")
    assert isinstance(artifact_store(study), FolderStore)

    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "elsewhere"))
    other = _study(f"sqlite:///{tmp_path / 'db' / 'runs.db'}", "t")
    assert artifact_location(other) == str(tmp_path / "elsewhere")
    assert artifact_location(study) == str(tmp_path / "db" / "runs-artifacts")  # recorded: the env no longer moves it


def test_a_study_made_with_a_folder_store_keeps_it_on_a_server(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    with fresh_database("postgres") as url:
        study = _study(url, "old")
        study.set_user_attr("artifact_dir", str(tmp_path / "nfs"))  # as every study before database stores
        store = artifact_store(study)
        assert isinstance(store, FolderStore) and store.folder == tmp_path / "nfs"
        assert record.ARTIFACT_STORE_ATTR not in study.user_attrs


def test_s3_locations_need_boto3_or_say_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_ARTIFACTS", "s3://bucket/runs")
    study = _study(f"sqlite:///{tmp_path / 'hpo.db'}", "s3")
    assert artifact_location(study) == "s3://bucket/runs"
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match=r"needs boto3: pip install 'hpo\[s3\]'"):
            artifact_store(study)


def _finished_study_with_leftovers(url: str, name: str, folder: Path) -> tuple[optuna.Study, DatabaseStore]:
    """A study in its database store: 2 finished trials with a figure each, one FAILed trial's
    checkpoints, a RUNNING trial's checkpoints, and an upload no study refers to any more."""
    from hpo.record import CHECKPOINT

    study = _study(url, name)
    store = artifact_store(study)
    prefix = checkpoint_prefix(study)
    for i in range(2):
        trial = study.ask()
        optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(_png(folder, i)), study_or_trial=trial)
        study.tell(trial, 0.5)
    for state, n in (("failed", 2), ("running", 3)):
        trial = study.ask()
        trial.set_user_attr(CHECKPOINT, f"{prefix[len('checkpoint-'):-len('-trial-')]}-trial-{n}")
        for slot in "ab":
            store.write(f"{prefix}{n}-{slot}.pt", io.BytesIO(b"c" * 5000))
        if state == "failed":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    store.write("0123abcd-0000-4000-8000-000000000000", io.BytesIO(b"o" * 700))  # its study was deleted
    return study, store


def _png(folder: Path, i: int) -> Path:
    path = folder / f"fig-{i}.png"
    path.write_bytes(b"\x89PNG" + b"f" * 1000)
    return path


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_report_counts_and_clean_frees_the_study_artifacts(kind, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from hpo.cli import main

    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    with fresh_database(kind) as url:
        study, store = _finished_study_with_leftovers(url, "leftovers", tmp_path)
        before = usage(study, store)
        assert (before.figures, before.checkpoints, before.checkpoint_files) == (2008, 20_000, 4)

        result = CliRunner().invoke(main, ["report", "--study", "leftovers", "--storage", url])
        assert result.exit_code == 0, result.output
        assert "Artifacts\n\n22.0 kB (figures 2.0 kB; checkpoints 20.0 kB in 4 files" in result.output
        assert make_url(url).password not in result.output

        result = CliRunner().invoke(main, ["clean", "--study", "leftovers", "--storage", url])
        assert result.exit_code == 0, result.output
        assert "removed 2 checkpoints (10.0 kB), 1 orphaned artifact (700 B), 0 stray chunks (0 B): 10.7 kB freed" in result.output
        # the running trial keeps its two slots; the finished trials keep their figures
        assert store.ids("checkpoint-") == [f"{checkpoint_prefix(study)}3-{s}.pt" for s in "ab"]
        assert usage(study, store).figures == 2008
        again = CliRunner().invoke(main, ["clean", "--study", "leftovers", "--storage", url])
        assert "removed 0 checkpoints (0 B), 0 orphaned artifacts (0 B), 0 stray chunks (0 B): 0 B freed" in again.output
        store.engine.dispose()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_workers_writing_at_once_never_deadlock(kind, tmp_path) -> None:
    """Figures of many trials uploaded at the same moment (new ids side by side), and checkpoints
    overwritten meanwhile: no deadlock and no lock wait error, even without retries."""
    import threading

    with fresh_database(kind) as url:
        engine = sa.create_engine(url, pool_size=12)
        try:
            store = DatabaseStore(engine, chunk_bytes=2048)  # retry_s=0: any deadlock would surface
            errors: list[BaseException] = []
            start = threading.Barrier(8)

            def writer(i: int) -> None:
                try:
                    start.wait()
                    for j in range(15):
                        store.write(f"fig-{j:03d}-{i}", io.BytesIO(os.urandom(3000)))
                        store.write(f"checkpoint-w{i}-a.pt", io.BytesIO(os.urandom(5000)))
                except BaseException as exc:  # collected: the assertion below shows them
                    errors.append(exc)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert len(store.ids("fig-")) == 120 and len(store.ids("checkpoint-")) == 8
            assert _chunk_rows(store) == 120 * 2 + 8 * 3  # no chunks of overwritten versions left
        finally:
            engine.dispose()


def test_a_write_on_a_connection_the_server_dropped_is_retried(tmp_path, caplog) -> None:
    """chaos.py on MariaDB (4547dbb): a restart dropped the connection a checkpoint's write had just
    taken from the pool; setting its isolation level raised pymysql's own "Lost connection" (2013),
    which SQLAlchemy lets through unwrapped, the store took it for a bad request, and the trial
    failed with a traceback (the command too). Here the server drops the pooled connection itself
    (KILL): the next write meets it the same way, and must be retried on a new one; in a worker's
    loop, without the pool's traceback of the dead connection's reset ("Exception during reset or
    similar"), which chaos.py counted in the same run."""
    from db_servers import _admin_engine
    from hpo.search.workers import _interruptible

    with database("mysql", tmp_path) as url:
        engine = sa.create_engine(url)  # no pre-ping: the pool hands out the dead connection as it is
        try:
            store = DatabaseStore(engine, chunk_bytes=4096, retry_s=30)
            store.write("checkpoint-x-a.pt", io.BytesIO(b"first"))
            with engine.connect() as conn:
                pooled = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            with _admin_engine("mysql").connect() as admin:
                admin.exec_driver_sql(f"KILL {int(pooled)}")
            with _interruptible(), caplog.at_level("ERROR", logger="sqlalchemy.pool"):
                store.write("checkpoint-x-a.pt", io.BytesIO(b"second"))
            assert store.open_reader("checkpoint-x-a.pt").read() == b"second"
            assert not [r for r in caplog.records if r.name.startswith("sqlalchemy.pool")], caplog.text
        finally:
            engine.dispose()
