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
