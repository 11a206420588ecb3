"""Step telemetry as TensorBoard scalars, read back with TensorBoard's own reader."""

import pytest
import torch

from hpo.data import load_dataset
from hpo.training.models import LSTMClassifier
from hpo.record import COMPLETE, TrialRecord
from hpo.spec import DataSpec
from hpo.training.config import TrainConfig
from hpo.training.loop import train

pytest.importorskip("tensorboard", reason="the optional extra: pip install '.[tensorboard]'")


def test_a_trials_telemetry_reads_back_from_tensorboard(tmp_path, data_cache_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hpo.analysis.tensorboard import write_trial

    data = load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=320, max_valid=100, max_len=80))
    torch.manual_seed(0)
    lrs = {"embedding": 1e-3, "encoder": 1e-3, "head": 3e-3}
    result = train(LSTMClassifier(data.vocab_size, 16, 16), data,
                   TrainConfig(lrs=lrs, clip_norm=1.0, cycle_len=1, max_epochs=2, telemetry_every=2), torch.device("cpu"))
    t = result.telemetry
    trial = TrialRecord(3, COMPLETE, {}, {}, 0.6, tuple(result.history), None, {f"lr_{g}": v for g, v in lrs.items()})
    run = write_trial(tmp_path, "tb-study", trial, t)
    assert run == tmp_path / "tb-study" / "trial-3"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "clipped", "lr/head", "grad_norm/encoder", "update_ratio/embedding", "epoch/val_loss"} <= tags
    heads = events.Scalars("update_ratio/head")
    assert [e.step for e in heads] == t.step.tolist()
    assert [e.value for e in heads] == pytest.approx(t.column("update_ratio", "head").tolist(), rel=1e-6)
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [t.steps_per_epoch - 1, 2 * t.steps_per_epoch - 1]


def test_a_worker_writes_one_run_per_trial(small_spec, tmp_path, monkeypatch):
    from hpo.search.workers import run_worker

    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    spec = small_spec("name='tb-worker'", "train.max_epochs=1", "data.max_train=200", "data.max_valid=100")
    run_worker(spec, f"sqlite:///{tmp_path / 'hpo.db'}", trials=1, tensorboard=str(tmp_path / "tb"))
    assert [p.name for p in (tmp_path / "tb" / "tb-worker").iterdir()] == ["trial-0"]
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb" / "tb-worker" / "trial-0").iterdir())
