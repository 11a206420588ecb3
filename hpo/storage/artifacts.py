"""Where a study keeps files (per-trial figures, checkpoints): an Optuna artifact store.

The location is chosen when the study is created and recorded in the study's user attribute
``artifact_dir``, so every worker, ``hpo plot`` and ``hpo dashboard`` find the same store. By
default it is ``$HPO_ARTIFACTS``, else ``hpo-artifacts/`` in the working directory.

Stores here can also say how large an artifact is and list artifacts by prefix, which is what
the disk-usage summary and the clean-up of checkpoints need: :class:`FolderStore` adds that to
Optuna's ``FileSystemArtifactStore``.

Example::

    store = artifact_store(study)            # a FolderStore
    optuna.artifacts.upload_artifact(artifact_store=store, file_path="curves.png", study_or_trial=trial)
    usage(study, store)                      # Usage(figures=41_233, checkpoints=0, checkpoint_files=0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

ATTR = "artifact_dir"
ENV_VAR = "HPO_ARTIFACTS"
DEFAULT_DIR = "hpo-artifacts"
CHECKPOINT_PREFIX = "checkpoint-"


class FolderStore(FileSystemArtifactStore):
    """Optuna's folder store, plus the size of an artifact and a listing by prefix."""

    def __init__(self, base_path: str | Path) -> None:
        Path(base_path).mkdir(parents=True, exist_ok=True)
        super().__init__(str(base_path))
        self.folder = Path(base_path)

    def size(self, artifact_id: str) -> int | None:
        try:
            return (self.folder / artifact_id).stat().st_size
        except OSError:
            return None

    def ids(self, prefix: str = "") -> list[str]:
        try:
            return sorted(p.name for p in self.folder.iterdir() if p.name.startswith(prefix))
        except OSError:
            return []

    def __repr__(self) -> str:
        return f"folder {self.folder}"


def default_artifact_dir() -> str:
    return str(Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve())


def artifact_dir(study: optuna.Study) -> str:
    """The study's artifact directory, recording the default on first use."""
    folder = study.user_attrs.get(ATTR)
    if not folder:
        folder = default_artifact_dir()
        study.set_user_attr(ATTR, folder)
    return folder


def artifact_store(study: optuna.Study) -> FolderStore:
    return FolderStore(artifact_dir(study))


def checkpoint_prefix(study: optuna.Study) -> str:
    """What every checkpoint of this study's trials is named with (its uid tells reused names apart)."""
    return f"{CHECKPOINT_PREFIX}{study.user_attrs.get('uid', study.study_name)}-trial-"


@dataclass(frozen=True)
class Usage:
    """Bytes a study's artifacts take: trial figures (and other uploads) and checkpoints."""

    figures: int
    checkpoints: int
    checkpoint_files: int

    @property
    def total(self) -> int:
        return self.figures + self.checkpoints

    def describe(self) -> str:
        left = (f"; checkpoints {human_bytes(self.checkpoints)} in {self.checkpoint_files} files, kept for "
                "trials that may still resume") if self.checkpoint_files else "; no checkpoints left"
        return f"{human_bytes(self.total)} (figures {human_bytes(self.figures)}{left})"


def usage(study: optuna.Study, store: Any) -> Usage:
    """What ``study``'s artifacts take in ``store`` (stores without ``size`` count 0)."""
    size = getattr(store, "size", lambda _id: None)
    figures = 0
    for trial in study.get_trials(deepcopy=False):
        for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage):
            figures += size(meta.artifact_id) or 0
    checkpoints = [i for i in getattr(store, "ids", lambda prefix: [])(checkpoint_prefix(study))]
    return Usage(figures, sum(size(i) or 0 for i in checkpoints), len(checkpoints))


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
