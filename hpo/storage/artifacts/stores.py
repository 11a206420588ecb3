"""Where a study keeps files (per-trial figures, checkpoints, pretrained encoders): an artifact store.

The store is chosen when the study is created and recorded on the study, so every worker, ``hpo
plot``, ``hpo report`` and ``hpo dashboard`` open the same one, wherever they run:

* ``$HPO_ARTIFACTS`` set: that folder (recorded in the user attribute ``artifact_dir``, as every
  study made before database stores was), or ``s3://bucket/prefix`` through Optuna's
  ``Boto3ArtifactStore`` (needs ``boto3``; recorded in ``artifact_store``);
* else, on PostgreSQL and MySQL/MariaDB: the study's own database
  (:mod:`hpo.storage.artifacts.database_store`; ``artifact_store = "database"``), so a machine needs the
  database URL and nothing else: no shared folder, no NFS mount. A worker behind `hpo
  storage-proxy` (``grpc://``) reaches the same store through the proxy
  (:mod:`hpo.storage.artifacts.http_store`); a study created through the proxy records it too;
* else, on SQLite: a folder beside the database file (``hpo.db`` -> ``hpo-artifacts/``), chosen by
  measurement (see :data:`SQLITE_CHOICE`).

Only the kind of store is recorded for a database store, never a URL: each worker reaches it
through its own storage URL and password.

Stores here can also say how large an artifact is and list artifacts by prefix, which is what
the disk-usage summary and the clean-up of checkpoints need: :class:`FolderStore` adds that to
Optuna's ``FileSystemArtifactStore``; :class:`~hpo.storage.artifacts.database_store.DatabaseStore` has it.

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
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError
from hpo.record import StudyRecord, write_artifact_location
from hpo.storage.artifacts.database_store import DatabaseStore, rdb_engine
from hpo.storage.artifacts.http_store import HttpArtifactStore
from hpo.storage.database.urls import sqlite_path
from hpo.storage.optuna_private import storage_of

DATABASE = "database"
ENV_VAR = "HPO_ARTIFACTS"
DEFAULT_DIR = "hpo-artifacts"
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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                                mimetype=mimetype)


def read_upload(trial: Any, storage: Any, store: Any, filename: str) -> bytes | None:
    """The content a trial (live or frozen) uploaded as ``filename`` (the latest such upload), or None."""
    found = [m for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage) if m.filename == filename]
    if not found:
        return None
    with store.open_reader(found[-1].artifact_id) as f:
        return f.read()


def default_artifact_dir() -> str:
    return str(Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve())


def default_location(storage: Any) -> str:
    """What a new study records: ``$HPO_ARTIFACTS``, else its database (PostgreSQL, MySQL), else a folder."""
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
    location = StudyRecord.of(study).artifact_location
    if not location:
        location = default_location(storage_of(study))
        if record:
            write_artifact_location(study, location, folder=is_folder(location))
    return str(location)


def open_location(location: str, storage: Any) -> Any:
    """The store a recorded location names, reached through ``storage`` when it is the database."""
    if location == DATABASE:
        if rdb_engine(storage) is None and hasattr(storage, "artifact_address"):
            return HttpArtifactStore(*storage.artifact_address, auth=storage.auth)  # through `hpo storage-proxy`
        return DatabaseStore.for_storage(storage)
    if location.startswith("s3://"):
        return _s3_store(location)
    return FolderStore(location)


def artifact_store(study: optuna.Study) -> Any:
    return open_location(artifact_location(study), storage_of(study))


def store_for(name: str, storage: Any) -> Any:
    """The store of the study ``name`` in ``storage``, or the one it will get when created; records
    nothing, creates no study (for commands that share the study's artifacts before it exists)."""
    names = {s.study_name for s in storage.get_all_studies()}
    if name in names:
        return open_location(artifact_location(optuna.load_study(study_name=name, storage=storage), record=False), storage)
    return open_location(default_location(storage), storage)


def describe_location(location: str) -> str:
    return "the study's database" if location == DATABASE else location


def is_folder(location: str) -> bool:
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
