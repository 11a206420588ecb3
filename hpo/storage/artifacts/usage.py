"""What a study's artifacts take, by kind: trial figures (and other uploads), checkpoints, kept
weights, encoders.

Stores here say how large an artifact is and list artifacts by prefix
(:class:`~hpo.storage.artifacts.stores.FolderStore`, the database and HTTP stores); an S3 store
counts 0. The summary at the end of `hpo optimize` and in `hpo report` comes from here.

Example::

    usage(study, artifact_store(study)).describe()
    # "12.4 MB (figures 41.2 kB; no checkpoints left; weights of trials 4, 9, 12 kept, 12.3 MB)"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from hpo.errors import HpoError
from hpo.storage.artifacts.database_store import ARTIFACTS_TABLE, rdb_engine
from hpo.storage.artifacts.keys import (
    ENCODER_PREFIX,
    checkpoint_prefix,
    study_encoder_ids,
)
from hpo.storage.artifacts.retention import kept_trials
from hpo.storage.artifacts.stores import (
    DATABASE,
    artifact_location,
    describe_location,
    is_folder,
    open_location,
)
from hpo.storage.optuna_private import storage_of


@dataclass(frozen=True)
class Usage:
    """Bytes a study's artifacts take: trial figures (and other uploads), checkpoints, kept weights, encoders."""

    figures: int
    checkpoints: int
    checkpoint_files: int
    encoders: int = 0
    weights: int = 0
    kept: tuple[int, ...] = ()  # the trials whose best-epoch weights are kept (artifacts.keep_best), best first

    @property
    def total(self) -> int:
        return self.figures + self.checkpoints + self.encoders + self.weights

    def describe(self) -> str:
        left = (f"; checkpoints {human_bytes(self.checkpoints)} in {self.checkpoint_files} files, kept for "
                "trials that may still resume") if self.checkpoint_files else "; no checkpoints left"
        kept = (f"; weights of {describe_trials(self.kept)} kept, {human_bytes(self.weights)}" if self.kept
                else "; no weights kept")
        encoders = f"; pretrained encoders {human_bytes(self.encoders)}" if self.encoders else ""
        return f"{human_bytes(self.total)} (figures {human_bytes(self.figures)}{left}{kept}{encoders})"


def describe_trials(numbers: tuple[int, ...] | list[int]) -> str:
    """``(4, 9, 12)`` -> ``trials 4, 9, 12``; ``(7,)`` -> ``trial 7``."""
    ordered = sorted(numbers)
    return f"trial{'s' * (len(ordered) != 1)} {', '.join(str(n) for n in ordered)}"


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
        for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study)):
            figures += size(meta.artifact_id)
    for meta in optuna.artifacts.get_all_artifact_meta(study, storage=storage_of(study)):
        figures += size(meta.artifact_id)
    ids = getattr(store, "ids", lambda prefix: [])
    checkpoints = ids(checkpoint_prefix(study))
    ours = set(study_encoder_ids(study))
    encoders = [i for i in ids(ENCODER_PREFIX) if i in ours]
    kept = kept_trials(study, store)
    return Usage(figures, sum(size(i) for i in checkpoints), len(checkpoints), sum(size(i) for i in encoders),
                 sum(size(i) for i in kept.values()), tuple(kept))


def usage_summary(study: optuna.Study) -> dict[str, Any]:
    """What the study's artifacts take, for reports: bytes by kind, a one-line summary, the store."""
    location = artifact_location(study, record=False)
    if is_folder(location) and not Path(location).is_dir():  # elsewhere, or never written: create nothing
        return {"store": f"folder {location}", "summary": "none here (the folder does not exist on this machine)",
                "total_bytes": 0}
    if location == DATABASE:
        engine = rdb_engine(storage_of(study))
        if engine is not None and not sa_has_table(engine, ARTIFACTS_TABLE):  # nothing stored yet: create nothing
            return {"store": "the study's database", "summary": Usage(0, 0, 0).describe(), "total_bytes": 0}
    try:
        store = open_location(location, storage_of(study))
        used = usage(study, store)
    except HpoError as exc:  # an S3 store without boto3 here: the report still stands
        return {"store": describe_location(location), "summary": f"unknown ({exc})"}
    return {"store": repr(store), "summary": used.describe(), "total_bytes": used.total, "figure_bytes": used.figures,
            "checkpoint_bytes": used.checkpoints, "checkpoint_files": used.checkpoint_files,
            "encoder_bytes": used.encoders, "weights_bytes": used.weights, "kept_weights": list(used.kept)}


def sa_has_table(engine: Any, table: str) -> bool:
    return sqlalchemy.inspect(engine).has_table(table)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
