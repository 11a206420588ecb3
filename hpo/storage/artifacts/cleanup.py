"""``hpo clean``: delete what a study's artifact store holds that nothing will read again.

* checkpoints of trials that can no longer resume: every checkpoint of the study whose key no
  RUNNING or WAITING trial holds (a FAILed trial's re-run inherits its key, so a failed trial
  waiting for its re-run keeps them; see :func:`hpo.storage.artifacts.keys.sweep_checkpoints`);
* kept weights of trials outside the study's top ``artifacts.keep_best`` (a worker's sweep
  after each trial removes them already; a study whose workers died may have some left);
* in a database store, figures and other uploads no study in the database refers to any more
  (Optuna's ``delete_study`` leaves them behind) and chunks no artifact points at.

A folder store may be shared by studies of several databases, so only checkpoints (named after
this study) are removed from one. Pretrained encoders are kept: studies of the same data and
model share them.

Example::

    freed = clean_study(study, artifact_store(study))
    print(freed.describe())   # "2 checkpoints (3.1 MB), 1 orphaned artifact (41.2 kB), 0 stray chunks: 3.1 MB freed"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.record import StudyRecord
from hpo.spec import ArtifactsSpec
from hpo.storage.artifacts.keys import sweep_checkpoints
from hpo.storage.artifacts.retention import sweep_weights
from hpo.storage.artifacts.usage import human_bytes
from hpo.storage.database.proxied_lock import is_lock_study
from hpo.storage.optuna_private import storage_of

# Optuna names uploads with str(uuid4()); our own ids (checkpoint-..., encoder-...) never look so.
_UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Freed:
    checkpoints: int
    checkpoint_bytes: int
    orphans: int
    orphan_bytes: int
    chunks: int
    chunk_bytes: int
    orphans_checked: bool  # False for stores that cannot tell (a folder, S3)
    weights: int = 0  # kept-weights files of trials outside the top artifacts.keep_best
    weight_bytes: int = 0

    @property
    def total(self) -> int:
        return self.checkpoint_bytes + self.orphan_bytes + self.chunk_bytes + self.weight_bytes

    def describe(self) -> str:
        parts = [f"{self.checkpoints} checkpoint{'s' * (self.checkpoints != 1)} ({human_bytes(self.checkpoint_bytes)})"]
        if self.weights:
            parts.append(f"{self.weights} dropped trial weights ({human_bytes(self.weight_bytes)})")
        if self.orphans_checked:
            parts.append(f"{self.orphans} orphaned artifact{'s' * (self.orphans != 1)} ({human_bytes(self.orphan_bytes)})")
            parts.append(f"{self.chunks} stray chunk{'s' * (self.chunks != 1)} ({human_bytes(self.chunk_bytes)})")
        else:
            parts.append("orphaned artifacts not checked (a folder or S3 store may be shared by other databases)")
        return f"{', '.join(parts)}: {human_bytes(self.total)} freed"


def clean_study(study: optuna.Study, store: Any) -> Freed:
    """Remove the study's dead checkpoints, the weights of trials outside its top
    ``artifacts.keep_best`` and, in a database store, orphaned artifacts; what went."""
    checkpoints, checkpoint_bytes = sweep_checkpoints(study, store)
    spec = StudyRecord.of(study).parsed_spec()
    weights, weight_bytes = sweep_weights(study, store, (spec.artifacts if spec is not None else ArtifactsSpec()).keep_best)
    if not hasattr(store, "remove_orphan_chunks"):
        return Freed(checkpoints, checkpoint_bytes, 0, 0, 0, 0, False, weights, weight_bytes)
    referenced = referenced_uploads(storage_of(study))
    sizes = store.sizes()
    orphans = [i for i in sizes if _UPLOAD_ID.match(i) and i not in referenced]
    for artifact_id in orphans:
        store.remove(artifact_id)
    chunks, chunk_bytes = store.remove_orphan_chunks()
    return Freed(checkpoints, checkpoint_bytes, len(orphans), sum(sizes[i] for i in orphans), chunks, chunk_bytes, True,
                 weights, weight_bytes)


def referenced_uploads(storage: Any) -> set[str]:
    """The ids of every artifact any study (or trial) in ``storage`` records, all studies together."""
    ids: set[str] = set()
    for frozen in storage.get_all_studies():
        if is_lock_study(frozen.study_name):
            continue  # a lock held right now (no artifacts), and gone at any moment: loading it could fail
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        ids.update(m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study, storage=storage))
        for trial in study.get_trials(deepcopy=False):
            ids.update(m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage))
    return ids
