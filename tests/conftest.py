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
