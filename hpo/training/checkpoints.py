"""Per-trial training checkpoints in the study's artifact store, so a retried trial resumes.

After every epoch a trial writes its :class:`~hpo.training.loop.Checkpoint` (weights, optimizer
moments, best epoch so far) to the study's artifact store (a shared folder, the study's database,
or any Optuna ``ArtifactStore`` such as ``Boto3ArtifactStore``), under the ids of
:mod:`hpo.storage.artifacts.keys`. A trial whose worker died is re-run by another worker with the same
parameters and the same checkpoint key (Optuna's retry copies the user attributes), and resumes
after the last epoch that was saved.

Two slots alternate (odd and even epochs): a worker killed in the middle of writing one leaves
the other intact, and loading picks the newest slot that reads back whole.

A trial that enters the study's top ``artifacts.keep_best`` also leaves its best-epoch weights
(:func:`save_weights`), with the vocabulary and class names they were trained on: what ``hpo
export`` needs, whatever becomes of the data cache (:mod:`hpo.storage.artifacts.retention`).

Example::

    ckpts = TrialCheckpoints(artifact_store(study), key="3f2a9c1e07b4-trial-12")
    train(model, data, cfg, resume=ckpts.load(), on_checkpoint=ckpts.save)
    ckpts.remove()      # the trial finished: nothing to resume any more
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import torch
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.errors import HpoError
from hpo.storage.artifacts.keys import SLOTS, checkpoint_id
from hpo.storage.database.outage import RETRY_S
from hpo.training.loop import Checkpoint

READ_RETRY_S = RETRY_S  # as long as a storage call waits out an outage


class TrialCheckpoints:
    """Save, load and remove one trial's checkpoints under ``key`` in an Optuna artifact store."""

    def __init__(self, store: Any, key: str) -> None:
        self.store = store
        self.key = key

    def save(self, checkpoint: Checkpoint) -> None:
        buffer = io.BytesIO()
        # Plain containers and tensors: they load with weights_only=True, so a file in a shared
        # store cannot run code in the worker that reads it.
        torch.save({f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)}, buffer)
        buffer.seek(0)
        self.store.write(checkpoint_id(self.key, SLOTS[checkpoint.epoch % 2]), buffer)

    def load(self) -> Checkpoint | None:
        """The newest readable checkpoint, or None when there is none (the trial starts over).

        A slot that is missing, or whose bytes do not load (cut short by a kill), is passed over for
        the other one. A slot the store cannot serve right now (a storage proxy restarting under
        the read) is read again until it can, for up to :data:`READ_RETRY_S`: taken for missing, it
        made a re-run resume from the older slot and train a finished epoch again (chaos.py through
        the proxy at 99711f7, trial 40)."""
        found: list[Checkpoint] = []
        for slot in SLOTS:
            data = self._read(checkpoint_id(self.key, slot))
            if data is None:
                continue
            try:
                found.append(Checkpoint(**torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)))
            except Exception:  # cut short by a kill: the other slot may do
                continue
        return max(found, key=lambda c: c.epoch, default=None)

    def _read(self, artifact_id: str) -> bytes | None:
        """The slot's bytes; None when the store has no such slot."""
        deadline, delay = time.monotonic() + READ_RETRY_S, 0.5
        while True:
            try:
                with self.store.open_reader(artifact_id) as f:
                    return f.read()
            except (ArtifactNotFound, FileNotFoundError, KeyError):
                return None
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise HpoError(f"checkpoint {artifact_id!r} could not be read for {READ_RETRY_S:.0f} s: "
                                   f"{type(exc).__name__}: {exc}") from None
                time.sleep(delay)
                delay = min(2 * delay, 8.0)

    def remove(self) -> None:
        for slot in SLOTS:
            try:
                self.store.remove(checkpoint_id(self.key, slot))
            except Exception:  # never written, or already gone
                pass


def save_weights(store: Any, artifact_id: str, state: dict[str, torch.Tensor], vocab: list[str],
                 classes: tuple[str, ...], epoch: int | None) -> None:
    """A trial's best-epoch weights, with the vocabulary and class names they go with (plain
    containers and CPU tensors: the file loads with ``weights_only=True``). The vocabulary is one
    newline-separated string (tokens hold no whitespace): a list of 30,000 strings loads 1000x slower."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "vocab": "\n".join(vocab),
                "classes": list(classes), "epoch": epoch}, buffer)
    buffer.seek(0)
    store.write(artifact_id, buffer)


def load_weights(store: Any, artifact_id: str) -> dict[str, Any]:
    """What :func:`save_weights` wrote (the vocabulary as a list again); an HpoError when the file
    is gone or unreadable."""
    try:
        with store.open_reader(artifact_id) as f:
            data = f.read()
        kept = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return {**kept, "vocab": kept["vocab"].split("\n")}
    except Exception as exc:
        raise HpoError(f"kept weights {artifact_id} cannot be read from {store!r} ({type(exc).__name__}: {exc})") from None
