"""Step telemetry from the real training loop: what is sampled, what it says, and that it survives a resume."""


import numpy as np
import pytest
import torch

from hpo.training.checkpoints import TrialCheckpoints
from hpo.errors import HpoError
from hpo.training.models import LSTMClassifier
from hpo.storage.artifacts.stores import FolderStore
from hpo.training.telemetry import StepTelemetry, auto_every
from hpo.training.config import TrainConfig
from hpo.training.schedule import sgdr_factor
from hpo.training.loop import train

GROUPS = ("embedding", "encoder", "head")


@pytest.fixture(scope="module")
def small(tiny_data):
    return tiny_data


def _cfg(**kw):
    base = dict(lrs={"embedding": 3e-3, "encoder": 3e-3, "head": 1e-2}, clip_norm=1.0, cycle_len=1, max_epochs=2)
    base.update(kw)
    return TrainConfig(**base)


def _model(small):
    torch.manual_seed(0)
    return LSTMClassifier(small.vocab_size, 16, 16)


def test_auto_interval_keeps_an_epoch_under_200_samples():
    assert [auto_every(n) for n in (1, 200, 201, 390, 10_000)] == [1, 1, 2, 2, 50]


def test_sampled_steps_carry_loss_rates_norms_and_update_ratios(small):
    result = train(_model(small), small, _cfg(telemetry_every=3), torch.device("cpu"))
    t = result.telemetry
    spe = result.steps_per_epoch  # 10 batches of 64
    assert t.groups == GROUPS and t.every == 3 and t.steps_per_epoch == spe
    assert t.step.tolist() == [e * spe + s for e in range(2) for s in range(0, spe, 3)]
    assert t.epoch.tolist() == [1 + s // spe for s in t.step.tolist()]
    # the rate each group had at the sampled step: SGDR with a warm restart at every epoch
    for i, step in enumerate(t.step.tolist()):
        factor = sgdr_factor(step / spe, 1, 1, 0.01)
        assert t.column("lr", "head")[i] == pytest.approx(1e-2 * factor, rel=1e-5)
        assert t.column("lr", "embedding")[i] == pytest.approx(3e-3 * factor, rel=1e-5)
    assert np.all(t.grad_norm > 0) and np.all(t.grad_norm_max >= t.grad_norm - 1e-6)
    # the mean epoch loss the loop records is the mean of the steps this sampled
    assert t.loss[0] == pytest.approx(t.loss_mean[0])  # the first window is the first step alone
    # |dw|/|w|: positive, small for a sane rate, larger where the rate is larger
    assert np.all(t.update_ratio > 0) and np.all(t.update_ratio < 0.5)
    assert t.clipped.dtype == bool
    # the per-epoch max agrees with the step telemetry's window maxima (every step is in a window)
    for row in result.history:
        in_epoch = t.epoch == row.epoch
        for g, group in enumerate(GROUPS):
            assert t.grad_norm_max[in_epoch, g].max() == pytest.approx(row.grad_norm_max[group], rel=1e-5)


def test_a_tight_clip_is_seen_on_every_sampled_step_and_off_records_nothing(small):
    tight = train(_model(small), small, _cfg(clip_norm=1e-4, max_epochs=1), torch.device("cpu"))
    assert tight.telemetry.clipped.all() and tight.telemetry.every == 1
    off = train(_model(small), small, _cfg(max_epochs=1, telemetry_every=-1), torch.device("cpu"))
    assert off.telemetry is None


def test_npz_round_trip_and_bad_bytes(small):
    t = train(_model(small), small, _cfg(max_epochs=1), torch.device("cpu")).telemetry
    data = t.to_bytes()
    assert len(data) < 20_000
    back = StepTelemetry.from_bytes(data)
    assert back.groups == t.groups and back.meta["cycle_len"] == 1 and back.meta["lrs"]["head"] == 1e-2
    for name in ("step", "loss", "lr", "grad_norm", "update_ratio", "clipped"):
        assert np.array_equal(getattr(back, name), getattr(t, name))
    with pytest.raises(HpoError, match="not a step telemetry file"):
        StepTelemetry.from_bytes(b"PK not really")


def test_a_resumed_run_keeps_the_earlier_epochs_telemetry(small, tmp_path):
    cfg = _cfg(max_epochs=3, telemetry_every=2)
    whole = train(_model(small), small, cfg, torch.device("cpu")).telemetry
    ckpts = TrialCheckpoints(FolderStore(tmp_path), "t-0")
    # a worker that dies during epoch 2: epoch 1's checkpoint, saved through the real store before
    # epoch 1 was announced, is all there is (stopping as epoch 1 is announced leaves the same)
    train(_model(small), small, cfg, torch.device("cpu"), on_epoch=lambda row, v: row.epoch == 1,
          on_checkpoint=ckpts.save)
    resumed_from = ckpts.load()
    assert resumed_from.epoch == 1 and len(resumed_from.telemetry["step"]) == 5
    resumed = train(_model(small), small, cfg, torch.device("cpu"), resume=resumed_from).telemetry
    assert resumed.step.tolist() == whole.step.tolist()
    np.testing.assert_allclose(resumed.loss, whole.loss, rtol=1e-4)
    np.testing.assert_allclose(resumed.update_ratio, whole.update_ratio, rtol=1e-3)


def test_a_run_stopped_inside_an_epoch_keeps_the_steps_before_the_blow_up(diverged_run):
    result, _, steps = diverged_run
    assert result.verdict is not None and result.cut_mid_epoch
    t = result.telemetry
    assert len(t) >= steps and t.epoch.max() <= result.verdict.epoch  # every=1: epoch 1 whole
    assert np.nanmax(t.update_ratio) > 1e-2  # a rate of 5 moves the weights by far more than 1e-3 a step
