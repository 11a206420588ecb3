import math

import pytest
import torch

from hpo.data import load_dataset
from hpo.divergence import DivergenceMonitor
from hpo.training.models import LSTMClassifier
from hpo.spec import DivergenceSpec
from hpo.training.config import TrainConfig
from hpo.training.device import native_bf16 as _native_bf16, precision_note, resolve_precision
from hpo.training.step import make_optimizer
from hpo.training.schedule import sgdr_factor
from hpo.training.loop import train


def test_sgdr_schedule_values():
    assert sgdr_factor(0.0, cycle_len=2) == pytest.approx(1.0)
    assert sgdr_factor(1.0, cycle_len=2) == pytest.approx(0.5)  # half way down the cosine
    assert sgdr_factor(1.999, cycle_len=2) < 1e-4
    assert sgdr_factor(2.0, cycle_len=2) == pytest.approx(1.0)  # warm restart
    assert sgdr_factor(0.5, cycle_len=1, min_ratio=0.1) == pytest.approx(0.55)
    # cycle_mult=2: cycles of 1, 2, 4 epochs -> restarts at 1 and 3
    assert sgdr_factor(1.0, 1, 2) == pytest.approx(1.0) and sgdr_factor(2.0, 1, 2) == pytest.approx(0.5)
    assert sgdr_factor(3.0, 1, 2) == pytest.approx(1.0) and sgdr_factor(5.0, 1, 2) == pytest.approx(0.5)


def test_one_optimizer_group_per_layer_group_with_its_own_rate():
    model = LSTMClassifier(100, 8, 8)
    cfg = TrainConfig(lrs={"embedding": 1e-4, "encoder": 1e-3, "head": 1e-2}, clip_norm=1, cycle_len=1, max_epochs=1, weight_decay=0.01)
    opt = make_optimizer(model, cfg)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == cfg.lrs
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)


@pytest.fixture(scope="module")
def small(data_cache_dir):
    from hpo.spec import DataSpec

    return load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=600, max_valid=300, max_len=120))


def _cfg(**kw):
    base = dict(lrs={"embedding": 3e-3, "encoder": 3e-3, "head": 3e-3}, clip_norm=5.0, cycle_len=3, max_epochs=3)
    base.update(kw)
    return TrainConfig(**base)


def _model(small, **kw):
    torch.manual_seed(0)
    return LSTMClassifier(small.vocab_size, 32, 32, **kw)


def test_training_learns_and_records_telemetry_per_group(small):
    seen = []
    result = train(_model(small), small, _cfg(), torch.device("cpu"), on_epoch=lambda s, v: seen.append(s) or False)
    assert [s.epoch for s in seen] == [1, 2, 3] and result.history == seen
    assert seen[-1].train_loss < seen[0].train_loss
    for s in seen:
        assert set(s.grad_norm_mean) == {"embedding", "encoder", "head"}
        assert all(s.grad_norm_max[g] >= s.grad_norm_mean[g] > 0 for g in s.grad_norm_mean)
        assert 0.0 <= s.clipped_fraction <= 1.0 and s.seconds > 0
    # one cosine cycle over 3 epochs: each epoch starts lower than the one before
    heads = [s.lr["head"] for s in seen]
    assert heads[0] == pytest.approx(3e-3) and heads[0] > heads[1] > heads[2]
    assert result.best_epoch == max(seen, key=lambda s: s.val_accuracy).epoch
    assert result.best_state is not None


def test_clipped_fraction_follows_the_clip_norm(small):
    tight = train(_model(small), small, _cfg(clip_norm=1e-4, max_epochs=1))
    loose = train(_model(small), small, _cfg(clip_norm=1e6, max_epochs=1))
    assert tight.history[0].clipped_fraction == 1.0
    assert loose.history[0].clipped_fraction == 0.0


def test_callback_stops_training(small):
    result = train(_model(small), small, _cfg(), on_epoch=lambda s, v: s.epoch == 2)
    assert len(result.history) == 2 and result.stopped_by_callback


def test_huge_learning_rate_is_stopped_at_the_first_step_after_the_first_epoch(small):
    # The first epoch's spikes are tolerated (a high head rate can recover from them); an
    # explosion that lasts is stopped at the first step the guard judges, not at an epoch's end.
    lrs = {"embedding": 5.0, "encoder": 5.0, "head": 5.0}
    steps = math.ceil(len(small.train) / 64)
    monitor = DivergenceMonitor(DivergenceSpec(step_warmup=3), steps)
    result = train(_model(small), small, _cfg(lrs=lrs, clip_norm=0.0, max_epochs=3), monitor=monitor)
    assert result.verdict is not None and result.verdict.reason in ("nan", "jump")
    if result.verdict.reason == "jump":
        assert (result.verdict.epoch, result.verdict.step) == (2, 0)
        assert len(result.history) == 1 and result.history[0].train_loss > 5 * math.log(2)
        assert result.epochs_run == 2  # the partial epoch counts


def test_bf16_autocast_trains_too_and_falls_back_to_fp32_on_a_cpu_without_bf16(small):
    result = train(_model(small), small, _cfg(precision="bf16", max_epochs=1))
    assert math.isfinite(result.history[0].train_loss) and result.history[0].val_accuracy > 0
    cpu = torch.device("cpu")
    if _native_bf16("cpu"):
        assert resolve_precision("bf16", cpu) == "bf16" and precision_note("bf16", cpu) is None
    else:  # oneDNN's LSTM refuses bf16 here: without the fallback, train() raised
        assert resolve_precision("bf16", cpu) == "fp32" and "training in fp32" in precision_note("bf16", cpu)
    assert precision_note("auto", cpu) is None and precision_note("fp32", cpu) is None


def test_record_only_divergence_keeps_training_and_keeps_the_first_verdict(small):
    # rules that call every run "no progress" after its first epoch: a verdict for sure
    rules = DivergenceSpec(no_progress_epochs=1, chance_margin=0.99, grad_norm_limit=1e-9, action="record")
    steps = math.ceil(len(small.train) / 64)
    result = train(_model(small), small, _cfg(max_epochs=3), monitor=DivergenceMonitor(rules, steps))
    assert [r.epoch for r in result.history] == [1, 2, 3] and result.epochs_run == 3
    assert (result.verdict.reason, result.verdict.epoch) == ("no_progress", 1)
    stopping = DivergenceSpec(no_progress_epochs=1, chance_margin=0.99, grad_norm_limit=1e-9)
    stopped = train(_model(small), small, _cfg(max_epochs=3), monitor=DivergenceMonitor(stopping, steps))
    assert len(stopped.history) == 1 and stopped.verdict == result.verdict
