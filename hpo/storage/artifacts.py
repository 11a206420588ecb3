"""Where a study keeps files (per-trial figures, checkpoints, pretrained encoders): an artifact store.

The store is chosen when the study is created and recorded on the study, so every worker, ``hpo
plot``, ``hpo report`` and ``hpo dashboard`` open the same one, wherever they run:

* ``$HPO_ARTIFACTS`` set: that folder (recorded in the user attribute ``artifact_dir``, as every
  study made before database stores was), or ``s3://bucket/prefix`` through Optuna's
  ``Boto3ArtifactStore`` (needs ``boto3``; recorded in ``artifact_store``);
* else, on PostgreSQL and MySQL/MariaDB: the study's own database
  (:mod:`hpo.storage.db_artifacts`; ``artifact_store = "database"``), so a machine needs the
  database URL and nothing else: no shared folder, no NFS mount. A worker behind `hpo
  storage-proxy` (``grpc://``) reaches the same store through the proxy
  (:mod:`hpo.storage.http_artifacts`); a study created through the proxy records it too;
* else, on SQLite: a folder beside the database file (``hpo.db`` -> ``hpo-artifacts/``), chosen by
  measurement (see :data:`SQLITE_CHOICE`).

Only the kind of store is recorded for a database store, never a URL: each worker reaches it
through its own storage URL and password.

Stores here can also say how large an artifact is and list artifacts by prefix, which is what
the disk-usage summary and the clean-up of checkpoints need: :class:`FolderStore` adds that to
Optuna's ``FileSystemArtifactStore``; :class:`~hpo.storage.db_artifacts.DatabaseStore` has it.

Example::

    store = artifact_store(study)            # a FolderStore, a DatabaseStore or an S3 store
    optuna.artifacts.upload_artifact(artifact_store=store, file_path="curves.png", study_or_trial=trial)
    usage(study, store)                      # Usage(figures=41_233, checkpoints=0, checkpoint_files=0, encoders=0)
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError

ATTR = "artifact_dir"  # a folder store's absolute path
STORE_ATTR = "artifact_store"  # any other store: "database", or "s3://bucket/prefix"
DATABASE = "database"
ENV_VAR = "HPO_ARTIFACTS"
DEFAULT_DIR = "hpo-artifacts"
CHECKPOINT_PREFIX = "checkpoint-"
ENCODER_PREFIX = "encoder-"
# SQLite's default, by benchmarks/artifact_store.py (1 and 50 MB blobs, write + read): the folder
# was several times faster, and a blob written into the database holds SQLite's one write lock
# for the whole write, stalling every other local worker's trial updates meanwhile. All workers
# on SQLite share one machine (the file cannot be shared safely over a network), so a folder
# beside the database file reaches all of them.
SQLITE_CHOICE = "folder"


class FolderStore(FileSystemArtifactStore):
    """Optuna's folder store, plus the size of an artifact and a listing by prefix, and writes
    that are atomic and durable.

    Optuna's store truncates the file and copies into it: a Ctrl-C, SIGTERM or SIGKILL in the
    middle left a torn file, and for a trial's first checkpoint nothing to resume from. Here a
    write goes to a hidden temporary file beside the target, is flushed to disk, and is renamed
    over the target (atomic on a POSIX file system): a reader sees the old content or the new,
    whole, and it survives a power cut once ``write`` has returned.
    """

    TEMP_PREFIX = ".tmp-"  # a write in progress (or one a kill cut short): never listed

    def __init__(self, base_path: str | Path) -> None:
        Path(base_path).mkdir(parents=True, exist_ok=True)
        super().__init__(str(base_path))
        self.folder = Path(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        fd, temp = tempfile.mkstemp(prefix=self.TEMP_PREFIX, dir=target.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)  # the rename itself, durable

    def size(self, artifact_id: str) -> int | None:
        try:
            return (self.folder / artifact_id).stat().st_size
        except OSError:
            return None

    def ids(self, prefix: str = "") -> list[str]:
        try:
            return sorted(p.name for p in self.folder.iterdir()
                          if p.name.startswith(prefix) and not p.name.startswith(self.TEMP_PREFIX))
        except OSError:
            return []

    def __repr__(self) -> str:
        return f"folder {self.folder}"


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: once per process, put straight back
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory descriptors (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - a file system that cannot sync a directory
        pass
    finally:
        os.close(fd)


class PrefixedStore:
    """Another store (Optuna's S3 store) with every artifact id under ``prefix``."""

    def __init__(self, inner: Any, prefix: str, shown: str) -> None:
        self.inner, self.prefix, self.shown = inner, prefix, shown

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)

    def __repr__(self) -> str:
        return self.shown


def upload_bytes(data: bytes, filename: str, trial: Any, store: Any, mimetype: str) -> str:
    """Upload ``data`` as the artifact ``filename`` of ``trial``, a live ``optuna.Trial``; returns its id.

    Optuna uploads files; a finished trial takes no artifacts any more, so callers run as it ends.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                                mimetype=mimetype)


def default_artifact_dir() -> str:
    return str(Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve())


def default_location(storage: Any) -> str:
    """What a new study records: ``$HPO_ARTIFACTS``, else its database (PostgreSQL, MySQL), else a folder."""
    from hpo.storage.db_artifacts import rdb_engine
    from hpo.storage.urls import sqlite_path

    env = os.environ.get(ENV_VAR)
    if env:
        return env if env.startswith("s3://") else str(Path(env).expanduser().resolve())
    engine = rdb_engine(storage)
    if engine is None:
        # `hpo storage-proxy` serves its database's store to the workers behind it; another
        # storage without a database (Optuna's plain gRPC client, journal files): the folder.
        return DATABASE if hasattr(storage, "artifact_address") else default_artifact_dir()
    if engine.dialect.name != "sqlite":
        return DATABASE
    if SQLITE_CHOICE == DATABASE:
        return DATABASE  # pragma: no cover - the measured choice is the folder
    db = sqlite_path(engine.url.render_as_string(hide_password=True))
    return str(db.parent / f"{db.stem}-artifacts") if db is not None else default_artifact_dir()


def artifact_location(study: optuna.Study, record: bool = True) -> str:
    """The study's store as recorded (a folder path, ``database`` or ``s3://...``).

    A study that records none gets the default, recorded unless ``record`` is False (what the
    read-only commands pass: they change nothing in the study).
    """
    attrs = study.user_attrs
    location = attrs.get(STORE_ATTR) or attrs.get(ATTR)
    if not location:
        location = default_location(study._storage)
        if record:
            study.set_user_attr(ATTR if _is_folder(location) else STORE_ATTR, location)
    return str(location)


def open_location(location: str, storage: Any) -> Any:
    """The store a recorded location names, reached through ``storage`` when it is the database."""
    if location == DATABASE:
        from hpo.storage.db_artifacts import DatabaseStore, rdb_engine

        if rdb_engine(storage) is None and hasattr(storage, "artifact_address"):
            from hpo.storage.http_artifacts import HttpArtifactStore

            return HttpArtifactStore(*storage.artifact_address)  # through `hpo storage-proxy`
        return DatabaseStore.for_storage(storage)
    if location.startswith("s3://"):
        return _s3_store(location)
    return FolderStore(location)


def artifact_store(study: optuna.Study) -> Any:
    return open_location(artifact_location(study), study._storage)


def store_for(name: str, storage: Any) -> Any:
    """The store of the study ``name`` in ``storage``, or the one it will get when created; records
    nothing, creates no study (for commands that share the study's artifacts before it exists)."""
    names = {s.study_name for s in storage.get_all_studies()}
    if name in names:
        return open_location(artifact_location(optuna.load_study(study_name=name, storage=storage), record=False), storage)
    return open_location(default_location(storage), storage)


def describe_location(location: str) -> str:
    return "the study's database" if location == DATABASE else location


def _is_folder(location: str) -> bool:
    return location != DATABASE and not location.startswith("s3://")


def _s3_store(location: str) -> PrefixedStore:
    """``s3://bucket/prefix`` through Optuna's Boto3ArtifactStore (endpoint and keys: boto3's usual
    environment, e.g. ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``)."""
    bucket, _, prefix = location[len("s3://"):].partition("/")
    if not bucket:
        raise HpoError(f"${ENV_VAR} = {location}: expected s3://BUCKET[/PREFIX]")
    try:
        import boto3
    except ImportError:
        raise HpoError(f"artifact store {location} needs boto3: pip install 'hpo[s3]'") from None
    from optuna.artifacts import Boto3ArtifactStore

    prefix = prefix.strip("/")
    return PrefixedStore(Boto3ArtifactStore(bucket, client=boto3.client("s3")), f"{prefix}/" if prefix else "", location)


def checkpoint_prefix(study: optuna.Study) -> str:
    """What every checkpoint of this study's trials is named with (its uid tells reused names apart)."""
    return f"{CHECKPOINT_PREFIX}{study.user_attrs.get('uid', study.study_name)}-trial-"


@dataclass(frozen=True)
class Usage:
    """Bytes a study's artifacts take: trial figures (and other uploads), checkpoints, encoders."""

    figures: int
    checkpoints: int
    checkpoint_files: int
    encoders: int = 0

    @property
    def total(self) -> int:
        return self.figures + self.checkpoints + self.encoders

    def describe(self) -> str:
        left = (f"; checkpoints {human_bytes(self.checkpoints)} in {self.checkpoint_files} files, kept for "
                "trials that may still resume") if self.checkpoint_files else "; no checkpoints left"
        encoders = f"; pretrained encoders {human_bytes(self.encoders)}" if self.encoders else ""
        return f"{human_bytes(self.total)} (figures {human_bytes(self.figures)}{left}{encoders})"


def usage(study: optuna.Study, store: Any) -> Usage:
    """What ``study``'s artifacts take in ``store`` (stores without ``size`` count 0).

    Encoders are counted when the store holds the study's own (they may be shared with other
    studies of the same data and model, so deleting one study frees less than this).
    """
    known = store.sizes() if hasattr(store, "sizes") else None  # one query instead of one per artifact

    def size(artifact_id: str) -> int:
        if known is not None:
            return known.get(artifact_id, 0)
        return getattr(store, "size", lambda _id: None)(artifact_id) or 0

    figures = 0
    for trial in study.get_trials(deepcopy=False):
        for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage):
            figures += size(meta.artifact_id)
    for meta in optuna.artifacts.get_all_artifact_meta(study, storage=study._storage):
        figures += size(meta.artifact_id)
    ids = getattr(store, "ids", lambda prefix: [])
    checkpoints = ids(checkpoint_prefix(study))
    ours = set(study_encoder_ids(study))
    encoders = [i for i in ids(ENCODER_PREFIX) if i in ours]
    return Usage(figures, sum(size(i) for i in checkpoints), len(checkpoints), sum(size(i) for i in encoders))


def usage_summary(study: optuna.Study) -> dict[str, Any]:
    """What the study's artifacts take, for reports: bytes by kind, a one-line summary, the store."""
    location = artifact_location(study, record=False)
    if _is_folder(location) and not Path(location).is_dir():  # elsewhere, or never written: create nothing
        return {"store": f"folder {location}", "summary": "none here (the folder does not exist on this machine)",
                "total_bytes": 0}
    if location == DATABASE:
        from hpo.storage.db_artifacts import ARTIFACTS_TABLE, rdb_engine

        engine = rdb_engine(study._storage)
        if engine is not None and not sa_has_table(engine, ARTIFACTS_TABLE):  # nothing stored yet: create nothing
            return {"store": "the study's database", "summary": Usage(0, 0, 0).describe(), "total_bytes": 0}
    try:
        store = open_location(location, study._storage)
        used = usage(study, store)
    except HpoError as exc:  # an S3 store without boto3 here: the report still stands
        return {"store": describe_location(location), "summary": f"unknown ({exc})"}
    return {"store": repr(store), "summary": used.describe(), "total_bytes": used.total, "figure_bytes": used.figures,
            "checkpoint_bytes": used.checkpoints, "checkpoint_files": used.checkpoint_files,
            "encoder_bytes": used.encoders}


def sa_has_table(engine: Any, table: str) -> bool:
    import sqlalchemy

    return sqlalchemy.inspect(engine).has_table(table)


def study_encoder_ids(study: optuna.Study) -> list[str]:
    """The artifact ids of the pretrained encoders this study's trials used (from their user attrs)."""
    from hpo import record

    keys = {(t.user_attrs.get(record.PRETRAINED) or {}).get("key") for t in study.get_trials(deepcopy=False)}
    return sorted(f"{ENCODER_PREFIX}{k}.pt" for k in keys if isinstance(k, str))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
