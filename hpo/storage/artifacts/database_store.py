"""An Optuna artifact store inside the study's own database: one URL is all a worker needs.

Checkpoints, per-trial figures and pretrained encoders live in two tables created on first use
next to Optuna's, through SQLAlchemy, so the same code runs on SQLite, PostgreSQL and
MySQL/MariaDB:

* ``hpo_artifacts``: one row per artifact: its id, the version of its current content, its size
  and its sha256;
* ``hpo_artifact_chunks``: the content, in chunks of at most 1 MiB per row (``version``, ``seq``).

Chunks keep every statement far below MariaDB's ``max_allowed_packet`` (16 MiB on many installs,
and the chunk shrinks to a quarter of it on a server configured lower) and PostgreSQL's limits,
and they are what makes the store streaming: a write reads ``content_body`` one chunk at a time,
and a reader fetches one chunk per ``read`` as it is consumed, so neither ever holds a whole
50 MB blob (benchmarks/artifact_store.py measures it).

A write is one transaction: the chunks go in under a new version, then the artifact's row points
at that version and the previous version's chunks are deleted. A worker killed mid-write leaves
the previous content intact (the transaction is rolled back by the server), never a half
artifact. A reader checks the sha256 and size it read against the row's as it reaches the end;
a mismatch raises :class:`ArtifactCorrupted` rather than handing over damaged bytes.

Example::

    store = DatabaseStore.for_storage(storage)      # the engine Optuna already opened
    store.write("curves.png", open("curves.png", "rb"))
    with store.open_reader("curves.png") as f:
        data = f.read()
    store.size("curves.png"), store.ids(prefix="checkpoint-"), store.total_bytes()
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import sqlalchemy as sa
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy.dialects import mysql

from hpo.errors import HpoError
from hpo.storage.database.locks import creation_lock
from hpo.storage.database.resilient import is_transient
from hpo.storage.database.urls import mask_url
from hpo.storage.optuna_private import backend_of

T = TypeVar("T")
CHUNK_BYTES = 1 << 20  # 1 MiB: small against every server's packet limit, few round trips for 50 MB
ARTIFACTS_TABLE = "hpo_artifacts"
CHUNKS_TABLE = "hpo_artifact_chunks"
TABLES_LOCK = "create artifact tables"  # not the study-creation lock: a store may open while that is held
_ID_LENGTH = 255  # Optuna's ids are uuids; ours (checkpoints, encoders) are well under this

_metadata = sa.MetaData()
artifacts = sa.Table(
    ARTIFACTS_TABLE,
    _metadata,
    sa.Column("artifact_id", sa.String(_ID_LENGTH), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("chunks", sa.Integer, nullable=False),
)
chunks = sa.Table(
    CHUNKS_TABLE,
    _metadata,
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    # MySQL's plain BLOB stops at 64 kB; LONGBLOB has room for any chunk size.
    sa.Column("data", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
)


class ArtifactCorrupted(HpoError):
    """What was read back is not what was written (sha256 or size differ, or chunks are missing)."""


@dataclass(frozen=True)
class Header:
    version: str
    size: int
    sha256: str
    chunks: int


_created: set[str] = set()  # engines (by URL) whose tables this process has made sure of
_created_lock = threading.Lock()


class DatabaseStore:
    """Optuna's ``ArtifactStore`` protocol on two tables of a SQLAlchemy database.

    Also says how large an artifact is, lists ids by prefix, totals the bytes and removes
    chunks nothing points at: what the disk-usage summary and ``hpo clean`` need.
    """

    def __init__(self, engine: sa.Engine, chunk_bytes: int = CHUNK_BYTES, retry_s: float = 0.0) -> None:
        self.engine = engine
        self.retry_s = retry_s
        self._ensure_tables()
        self.chunk_bytes = self._fitting_chunk(chunk_bytes)

    @classmethod
    def for_storage(cls, storage: Any) -> "DatabaseStore":
        """The store inside an Optuna RDB storage (or the cached wrapper around one), on its engine."""
        engine = rdb_engine(storage)
        if engine is None:
            raise HpoError(
                "this study keeps its artifacts in its database, which this worker reaches through a "
                "storage without a database engine: pass the database URL itself as --storage, or the "
                "address of `hpo storage-proxy` (grpc://HOST:PORT)"
            )
        # Ride out database restarts as the storage itself does: a checkpoint that cannot be
        # written for a few seconds must not fail the trial.
        return cls(engine, retry_s=float(getattr(_rdb(storage), "_retry_s", 0.0)))

    def __repr__(self) -> str:
        return f"database {mask_url(self.engine.url.render_as_string(hide_password=True))} (table {ARTIFACTS_TABLE})"

    # --- Optuna's ArtifactStore protocol ---

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store ``content_body`` (read to its end, one chunk at a time) as ``artifact_id``, atomically.

        A connection error is retried (from the start of the body) when the body can seek back.
        """
        _check_id(artifact_id)
        start = content_body.tell() if content_body.seekable() else None

        def attempt() -> None:
            if start is not None:
                content_body.seek(start)
            self._write(artifact_id, content_body)

        _retrying(attempt, self.retry_s if start is not None else 0.0)

    def _write(self, artifact_id: str, content_body: BinaryIO) -> None:
        version = uuid.uuid4().hex
        digest = hashlib.sha256()
        size = seq = 0
        with self._transaction() as conn:
            while True:
                block = _read_full(content_body, self.chunk_bytes)
                if not block and seq > 0:
                    break
                conn.execute(chunks.insert().values(version=version, seq=seq, data=block))
                digest.update(block)
                size += len(block)
                seq += 1
                if len(block) < self.chunk_bytes:
                    break  # the end (an empty artifact is one empty chunk)
            row = {"version": version, "size": size, "sha256": digest.hexdigest(), "chunks": seq}
            # No locking read first: on InnoDB a SELECT ... FOR UPDATE of an id not there yet locks
            # the gap, and two workers uploading new figures side by side deadlock. An artifact
            # has one writer at a time (a trial's worker; the encoder under its lock), so: update
            # the row if it is there, else insert it.
            previous = conn.execute(sa.select(artifacts.c.version).where(artifacts.c.artifact_id == artifact_id)).scalar()
            if previous is None:
                conn.execute(artifacts.insert().values(artifact_id=artifact_id, **row))
            else:
                conn.execute(artifacts.update().where(artifacts.c.artifact_id == artifact_id).values(**row))
                conn.execute(chunks.delete().where(chunks.c.version == previous))

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """A transaction; READ COMMITTED on MySQL/MariaDB, whose default (REPEATABLE READ) takes
        gap locks that make concurrent inserts of neighbouring keys deadlock."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name in ("mysql", "mariadb"):
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                yield conn

    def open_reader(self, artifact_id: str, header: Header | None = None) -> BinaryIO:
        """A buffered binary reader that fetches one chunk at a time; ArtifactNotFound when absent.

        ``header``: the version already read (and promised to a client); by default, the current one.
        """
        header = self.header(artifact_id) if header is None else header
        if header is None:
            raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database store")
        raw = _ChunkReader(self.engine, artifact_id, header, self.retry_s)
        return io.BufferedReader(raw, buffer_size=self.chunk_bytes)  # type: ignore[return-value]

    def remove(self, artifact_id: str) -> None:
        _retrying(lambda: self._remove(artifact_id), self.retry_s)

    def _remove(self, artifact_id: str) -> None:
        with self._transaction() as conn:
            version = conn.execute(sa.select(artifacts.c.version).where(artifacts.c.artifact_id == artifact_id)).scalar()
            if version is None:
                raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the database store")
            conn.execute(artifacts.delete().where(artifacts.c.artifact_id == artifact_id))
            conn.execute(chunks.delete().where(chunks.c.version == version))

    # --- what the usage summary and the clean-up need ---

    def header(self, artifact_id: str) -> Header | None:
        return _retrying(lambda: self._header(artifact_id), self.retry_s)

    def _header(self, artifact_id: str) -> Header | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(artifacts.c.version, artifacts.c.size, artifacts.c.sha256, artifacts.c.chunks)
                .where(artifacts.c.artifact_id == artifact_id)
            ).first()
        return None if row is None else Header(row.version, int(row.size), row.sha256, int(row.chunks))

    def size(self, artifact_id: str) -> int | None:
        header = self.header(artifact_id)
        return None if header is None else header.size

    def ids(self, prefix: str = "") -> list[str]:
        query = sa.select(artifacts.c.artifact_id).order_by(artifacts.c.artifact_id)
        if prefix:
            query = query.where(artifacts.c.artifact_id.startswith(prefix, autoescape=True))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def sizes(self) -> dict[str, int]:
        """Every artifact's size in bytes, by id (one query: for usage summaries of many trials)."""
        with self.engine.connect() as conn:
            return {r.artifact_id: int(r.size) for r in conn.execute(sa.select(artifacts.c.artifact_id, artifacts.c.size))}

    def total_bytes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(artifacts.c.size), 0))).scalar() or 0)

    def remove_orphan_chunks(self) -> tuple[int, int]:
        """Deletes chunks no artifact points at; returns (chunks, bytes) freed.

        Writes are transactions, so these only come from a server that lost a transaction's
        atomicity (or a hand-edited table); cheap to check, so ``hpo clean`` does.
        """
        orphan = ~sa.exists().where(artifacts.c.version == chunks.c.version)
        with self._transaction() as conn:
            count, freed = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(chunks.c.data)), 0)).where(orphan)
            ).one()
            if count:
                versions = [r[0] for r in conn.execute(sa.select(chunks.c.version).where(orphan).distinct())]
                conn.execute(chunks.delete().where(chunks.c.version.in_(versions)))
        return int(count), int(freed or 0)

    # --- set-up ---

    def _ensure_tables(self) -> None:
        """Create the two tables unless they exist, under the database's lock: workers that start
        together each found them missing and each ran CREATE, and on MariaDB the second one died of
        ``(1050, "Table 'hpo_artifacts' already exists")`` while the first was still at the other table."""
        key = self.engine.url.render_as_string(hide_password=True)
        with _created_lock:
            if key in _created:
                return
            with creation_lock(self.engine.url.render_as_string(hide_password=False), TABLES_LOCK):
                _metadata.create_all(self.engine, checkfirst=True)
            _created.add(key)

    def _fitting_chunk(self, wanted: int) -> int:
        """``wanted``, or a quarter of a MySQL server's ``max_allowed_packet`` when that is smaller."""
        if self.engine.dialect.name not in ("mysql", "mariadb"):
            return wanted
        with self.engine.connect() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar() or 0)
        return min(wanted, max(4096, packet // 4)) if packet else wanted


class _ChunkReader(io.RawIOBase):
    """Reads an artifact's chunks in order, one query each, checking size and sha256 at the end."""

    def __init__(self, engine: sa.Engine, artifact_id: str, header: Header, retry_s: float = 0.0) -> None:
        self.engine = engine
        self.retry_s = retry_s
        self.artifact_id = artifact_id
        self.header = header
        self.seq = 0
        self.pending = memoryview(b"")
        self.digest = hashlib.sha256()
        self.read_bytes = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            if self.seq >= self.header.chunks:
                self._verify()
                return 0
            self.pending = memoryview(self._chunk(self.seq))
            self.seq += 1
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _chunk(self, seq: int) -> bytes:
        def fetch() -> Any:
            with self.engine.connect() as conn:
                return conn.execute(
                    sa.select(chunks.c.data).where(chunks.c.version == self.header.version, chunks.c.seq == seq)
                ).scalar()

        data = _retrying(fetch, self.retry_s)
        if data is None:
            raise ArtifactCorrupted(
                f"artifact {self.artifact_id!r}: chunk {seq + 1} of {self.header.chunks} is missing "
                "(overwritten or removed while being read?)"
            )
        data = bytes(data)
        self.digest.update(data)
        self.read_bytes += len(data)
        return data

    def _verify(self) -> None:
        if self.verified:
            return
        self.verified = True
        if self.read_bytes != self.header.size or self.digest.hexdigest() != self.header.sha256:
            raise ArtifactCorrupted(
                f"artifact {self.artifact_id!r} is corrupted in the database store: read {self.read_bytes} bytes "
                f"with sha256 {self.digest.hexdigest()[:12]}..., stored {self.header.size} bytes with sha256 "
                f"{self.header.sha256[:12]}..."
            )


def rdb_engine(storage: Any) -> sa.Engine | None:
    """The SQLAlchemy engine of an Optuna RDB storage, unwrapping Optuna's cache; None for others."""
    return getattr(_rdb(storage), "engine", None)


def _rdb(storage: Any) -> Any:
    while storage is not None and not hasattr(storage, "engine"):
        storage = backend_of(storage)
    return storage


def _retrying(call: Callable[[], T], retry_s: float) -> T:
    """``call()``, tried again after connection errors with backoff for up to ``retry_s`` seconds."""
    start, delay = time.monotonic(), 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() - start + delay > retry_s:
                raise
            time.sleep(delay * random.uniform(0.75, 1.25))
            delay = min(delay * 2, 8.0)


def _read_full(body: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end (a pipe or socket may return short reads)."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        part = body.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _check_id(artifact_id: str) -> None:
    if not artifact_id or len(artifact_id) > _ID_LENGTH:
        raise HpoError(f"artifact id {artifact_id[:40]!r}...: must be 1 to {_ID_LENGTH} characters")
