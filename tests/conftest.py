"""Shared fixtures: one data cache per test session, and small but real study specs."""

from __future__ import annotations

import os

import pytest

from hpo.spec import Spec, load_spec

# Small subsets of the real reviews: every training test exercises the real data, model and
# loop, in seconds.
SMALL = [
    "data.max_train=600",
    "data.max_valid=300",
    "data.max_test=300",  # the best trial so far is scored on the test split: the whole one is 2,490 reviews
    "data.max_len=120",
    "model.embedding_dim=32",
    "model.hidden_size=32",
    "train.max_epochs=2",
    "sampler.n_startup_trials=2",
    "pruner.n_startup_trials=2",
]


@pytest.fixture(scope="session", autouse=True)
def own_core_registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite's training processes share cores among themselves only, not with another run of
    the suite or an hpo command beside it: a thread count that changes with what else runs would
    make a run's numbers depend on it (hpo.training.cores)."""
    os.environ["HPO_RUN_DIR"] = str(tmp_path_factory.mktemp("hpo-running"))


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The on-disk tensor cache for the whole session (tokenizing 25k reviews takes ~10 s once)."""
    folder = os.environ.get("HPO_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("hpo-cache"))
    return folder


@pytest.fixture
def small_spec(data_cache_dir: str):
    """``small_spec(*overrides)`` -> the default IMDB spec on a small subset, plus overrides."""

    def make(*overrides: str) -> Spec:
        return load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_data(data_cache_dir: str):
    """600 / 200 reviews of at most 100 tokens: the telemetry and step-figure tests' data."""
    from hpo.data import load_dataset
    from hpo.spec import DataSpec

    return load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=600, max_valid=200, max_len=100))


@pytest.fixture(scope="session")
def diverged_run(tiny_data):
    """A real run with every group at a rate of 5 and no clipping, stopped inside an epoch by the
    divergence monitor: (its TrainResult, the rates, steps per epoch). SGDR cycles of 1 epoch, 4 at most."""
    import math

    import torch

    from hpo.divergence import DivergenceMonitor
    from hpo.training.models import LSTMClassifier
    from hpo.spec import DivergenceSpec
    from hpo.training.config import TrainConfig
    from hpo.training.loop import train

    torch.manual_seed(0)
    model = LSTMClassifier(tiny_data.vocab_size, 16, 16)
    lrs = {"embedding": 5.0, "encoder": 5.0, "head": 5.0}
    steps = math.ceil(len(tiny_data.train) / 64)
    cfg = TrainConfig(lrs=lrs, clip_norm=0.0, cycle_len=1, max_epochs=4)
    monitor = DivergenceMonitor(DivergenceSpec(step_warmup=3), steps)
    return train(model, tiny_data, cfg, torch.device("cpu"), monitor=monitor), lrs, steps
