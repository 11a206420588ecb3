"""A resumed training run is the run that was interrupted; checkpoints survive a torn write."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from hpo.training.checkpoints import TrialCheckpoints
from hpo.data import load_dataset
from hpo.training.models import build_model
from hpo.training.config import train_config
from hpo.training.loop import train

VALUES = {"lr_embedding": 3e-3, "lr_encoder": 3e-3, "lr_head": 3e-3, "clip_norm": 1.0, "cycle_len": 2,
          "dropout": 0.2, "weight_decay": 1e-4}


def test_resuming_from_a_checkpoint_continues_exactly_where_training_stopped(small_spec, tmp_path) -> None:
    torch.set_num_threads(1)
    spec = small_spec("train.max_epochs=3")
    data = load_dataset(spec.data)
    cfg = train_config(spec, VALUES)
    store = TrialCheckpoints(FileSystemArtifactStore(str(tmp_path)), "study-trial-0")

    saved = []

    def save(checkpoint) -> None:
        saved.append(checkpoint.epoch)
        store.save(checkpoint)

    full = train(build_model(spec, data.vocab_size, 0.2), data, cfg, on_checkpoint=save)
    assert saved == [1, 2, 3]  # the last too: a trial stopped while it scores resumes with nothing left to train

    checkpoint = store.load()
    assert checkpoint is not None and checkpoint.epoch == 3
    finished = train(build_model(spec, data.vocab_size, 0.2), data, cfg, resume=checkpoint)
    assert finished.history == [] and finished.epochs_run == 3 and finished.best_epoch == full.best_epoch
    # Back to epoch 2: drop the newer slot, as if the worker had died before writing it.
    (tmp_path / "checkpoint-study-trial-0-b.pt").unlink()
    checkpoint = store.load()
    assert checkpoint.epoch == 2

    resumed = train(build_model(spec, data.vocab_size, 0.2), data, cfg, resume=checkpoint)
    assert resumed.start_epoch == 3
    assert [s.epoch for s in resumed.history] == [3]
    for a, b in zip(full.history[2:], resumed.history):
        assert b.val_loss == pytest.approx(a.val_loss, abs=1e-6)
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
    assert resumed.best_epoch == full.best_epoch


def test_a_torn_checkpoint_falls_back_to_the_other_slot(small_spec, tmp_path) -> None:
    spec = small_spec()
    data = load_dataset(spec.data)
    store = TrialCheckpoints(FileSystemArtifactStore(str(tmp_path)), "k")
    checkpoints = []
    cfg = dataclasses.replace(train_config(spec, VALUES), max_epochs=3)
    train(build_model(spec, data.vocab_size, 0.2), data, cfg, on_checkpoint=lambda c: checkpoints.append(copy.deepcopy(c)))
    store.save(checkpoints[0])  # epoch 1 -> slot b
    store.save(checkpoints[1])  # epoch 2 -> slot a
    path = tmp_path / "checkpoint-k-a.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # killed mid-write
    assert store.load().epoch == 1
    store.remove()
    assert store.load() is None and list(tmp_path.iterdir()) == []


def test_a_slot_the_store_cannot_serve_for_a_moment_is_read_again_not_passed_over(small_spec, tmp_path, monkeypatch) -> None:
    """chaos.py through the proxy (99711f7): a re-run read its checkpoint while the storage proxy
    restarted; the newer slot's read failed, was taken for a missing slot, and the re-run resumed
    from the older one and trained a finished epoch again. A read error that is not "not found" is
    now read again."""
    from hpo.training import checkpoints as module

    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    spec = small_spec()
    data = load_dataset(spec.data)
    saved = []
    cfg = dataclasses.replace(train_config(spec, VALUES), max_epochs=2)
    train(build_model(spec, data.vocab_size, 0.2), data, cfg, on_checkpoint=lambda c: saved.append(copy.deepcopy(c)))
    real = FileSystemArtifactStore(str(tmp_path))
    store = TrialCheckpoints(real, "k")
    store.save(saved[0])  # epoch 1 -> slot b
    store.save(saved[1])  # epoch 2 -> slot a
    failures = {"checkpoint-k-a.pt": 2}  # the newer slot, unreachable twice, as through a restarting proxy

    class Restarting:
        def open_reader(self, artifact_id: str):
            if failures.get(artifact_id):
                failures[artifact_id] -= 1
                raise ConnectionResetError("the storage proxy went away mid-read")
            return real.open_reader(artifact_id)

    assert TrialCheckpoints(Restarting(), "k").load().epoch == 2
    assert failures["checkpoint-k-a.pt"] == 0
