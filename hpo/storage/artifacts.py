"""Where a study keeps files (per-trial figures, checkpoints): an Optuna artifact store.

The location is chosen when the study is created and recorded in the study's user attribute
``artifact_dir``, so every worker, ``hpo plot`` and ``hpo dashboard`` find the same store. By
default it is ``$HPO_ARTIFACTS``, else ``hpo-artifacts/`` in the working directory.

Example::

    store = artifact_store(study)            # a FileSystemArtifactStore
    optuna.artifacts.upload_artifact(artifact_store=store, file_path="curves.png", study_or_trial=trial)
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

ATTR = "artifact_dir"
ENV_VAR = "HPO_ARTIFACTS"
DEFAULT_DIR = "hpo-artifacts"


def default_artifact_dir() -> str:
    return str(Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve())


def artifact_dir(study: optuna.Study) -> str:
    """The study's artifact directory, recording the default on first use."""
    folder = study.user_attrs.get(ATTR)
    if not folder:
        folder = default_artifact_dir()
        study.set_user_attr(ATTR, folder)
    return folder


def artifact_store(study: optuna.Study) -> FileSystemArtifactStore:
    folder = Path(artifact_dir(study))
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))
