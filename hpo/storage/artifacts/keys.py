"""How hpo names what it keeps in a study's artifact store: checkpoints and pretrained encoders.

One owner for the scheme, so building a name, reading a trial back out of it and sweeping the
names nobody needs any more cannot drift apart:

* a trial's checkpoint **key** is ``<study key>-trial-<number>``, the study key being its uid (a
  study made before uids: its name); a re-run inherits its predecessor's key, so it finds the
  checkpoints the first run wrote;
* a checkpoint's **artifact id** is ``checkpoint-<key>-<slot>.pt`` (two slots, odd and even
  epochs, so a kill mid-write leaves the other whole);
* a pretrained encoder's artifact id is ``encoder-<encoder key>.pt``, shared by every study of the
  same data, model and pretraining settings;
* a kept trial's best-epoch weights (``artifacts.keep_best``, :mod:`hpo.storage.artifacts.retention`)
  are ``weights-<study key>-trial-<number>.pt``: one file per trial, never rewritten.

The ids are derived, not registered in the database: a checkpoint costs no storage round trip.

Example::

    key = checkpoint_key("3f2a9c1e07b4", 12)          # "3f2a9c1e07b4-trial-12"
    checkpoint_id(key, "a")                           # "checkpoint-3f2a9c1e07b4-trial-12-a.pt"
    trial_of_key(key)                                 # 12
    weights_id("3f2a9c1e07b4", 12)                    # "weights-3f2a9c1e07b4-trial-12.pt"
    sweep_checkpoints(study, store)                   # (files, bytes) removed
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo import record
from hpo.record import StudyRecord

CHECKPOINT_PREFIX = "checkpoint-"
ENCODER_PREFIX = "encoder-"
WEIGHTS_PREFIX = "weights-"
SLOTS = ("a", "b")
_TRIAL = "-trial-"


def checkpoint_key(study_key: str, trial_number: int) -> str:
    return f"{study_key}{_TRIAL}{trial_number}"


def trial_of_key(key: str | None) -> int | None:
    """The number of the trial that first wrote under ``key``; None for no key (or not ours)."""
    if not key:
        return None
    number = str(key).rpartition(_TRIAL)[2]
    return int(number) if number.isdigit() else None


def checkpoint_id(key: str, slot: str) -> str:
    return f"{CHECKPOINT_PREFIX}{key}-{slot}.pt"


def key_of_checkpoint(artifact_id: str) -> str:
    """``checkpoint-<key>-<slot>.pt`` -> ``<key>``."""
    return artifact_id[len(CHECKPOINT_PREFIX):].rsplit("-", 1)[0]


def checkpoint_prefix(study: optuna.Study) -> str:
    """What every checkpoint of this study's trials is named with (its uid tells reused names apart)."""
    return f"{CHECKPOINT_PREFIX}{StudyRecord.of(study).key}{_TRIAL}"


def weights_id(study_key: str, trial_number: int) -> str:
    """Where a kept trial's best-epoch weights live."""
    return f"{WEIGHTS_PREFIX}{study_key}{_TRIAL}{trial_number}.pt"


def weights_prefix(study: optuna.Study) -> str:
    """What every kept-weights file of this study is named with."""
    return f"{WEIGHTS_PREFIX}{StudyRecord.of(study).key}{_TRIAL}"


def trial_of_weights(artifact_id: str) -> int | None:
    """``weights-<study key>-trial-12.pt`` -> 12; None for anything else."""
    if not artifact_id.startswith(WEIGHTS_PREFIX) or not artifact_id.endswith(".pt"):
        return None
    return trial_of_key(artifact_id[: -len(".pt")])


def encoder_id(key: str) -> str:
    return f"{ENCODER_PREFIX}{key}.pt"


def study_encoder_ids(study: optuna.Study) -> list[str]:
    """The artifact ids of the pretrained encoders this study's trials used."""
    records = (record.TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False))
    keys = {(r.pretrained or {}).get("key") for r in records}
    return sorted(encoder_id(k) for k in keys if isinstance(k, str))


def sweep_checkpoints(study: optuna.Study, store: Any) -> tuple[int, int]:
    """Deletes checkpoints that no trial can resume from any more; returns (files, bytes) removed.

    A checkpoint key is live while a RUNNING or WAITING trial holds it (a re-run inherits its
    trial's key). Run it when the study is done: while workers still run, a dead worker's trial
    is failed a moment before its re-run is queued, and its checkpoints must survive that moment.
    """
    live = {record.checkpoint_of(t) for t in study.get_trials(deepcopy=False)
            if t.state.name in (record.RUNNING, record.WAITING)}
    removed = freed = 0
    size = getattr(store, "size", lambda _id: None)
    for artifact_id in getattr(store, "ids", lambda prefix: [])(checkpoint_prefix(study)):
        if key_of_checkpoint(artifact_id) not in live:
            try:
                took = size(artifact_id) or 0
                store.remove(artifact_id)
                removed += 1
                freed += took
            except Exception:  # gone already
                pass
    return removed, freed
