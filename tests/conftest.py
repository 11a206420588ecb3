"""Shared fixtures: one data cache per test session, and small but real study specs."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import signal
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import torch

from hpo.record import write_artifact_location
from hpo.search.workers import WorkerOutcome, run_worker
from hpo.spec import Spec, load_spec
from hpo.storage.database.resilient import open_storage
from hpo.training.device import available_cores

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


def _xdist_workers() -> int:
    """How many test processes share this run (``pytest -n N``); 1 without pytest-xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _run_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this run that every test process of it shares (under ``pytest -n N`` the run's
    temporary root, above each process's own), so that they build what they share only once."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if _xdist_workers() > 1 else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def _run_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[None]:
    """Held by one test process of the run at a time."""
    with open(_run_folder(tmp_path_factory, "locks") / name, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session", autouse=True)
def own_core_registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite's training processes share cores among themselves only, not with another run of
    the suite or an hpo command beside it: a thread count that changes with what else runs would
    make a run's numbers depend on it (hpo.training.cores). Under ``pytest -n N`` the N test
    processes share the registry, and each trains in-process on its share of the cores, so that
    two of them never oversubscribe 2 cores."""
    os.environ["HPO_RUN_DIR"] = str(_run_folder(tmp_path_factory, "hpo-running"))
    if _xdist_workers() > 1:
        torch.set_num_threads(max(1, available_cores() // _xdist_workers()))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_is_keyboard_interrupt() -> None:
    """Tests that press Ctrl-C on this process (os.kill SIGINT) expect Python's KeyboardInterrupt, and
    that hpo puts that handler back. A shell starts a background job (`pytest &`) with SIGINT
    ignored, so Python installs no handler and those tests failed there, not in a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The on-disk tensor cache for the whole session (tokenizing 25k reviews takes ~10 s once)."""
    folder = os.environ.get("HPO_TEST_CACHE_DIR") or str(_run_folder(tmp_path_factory, "hpo-cache"))
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


# The shared study's spec: every trial completes (no pruner) and keeps its step telemetry (the
# figures read it); 3 of its 4 trials keep their weights, so one has none (export refuses it).
TRAINED_KEEP = 3
TRAINED = ["pruner.type=none", "data.max_train=400", "train.max_epochs=1", f"artifacts.keep_best={TRAINED_KEEP}"]


@dataclass(frozen=True)
class TrainedStudy:
    """A real 4-trial study 'imdb' in ``folder``: ``hpo.db`` and its folder store ``hpo-artifacts``.

    The session's copy is trained once and never changed; ``copy(folder)`` gives a test a study of
    its own to change, move or delete (an export, a plot, a clean-up).
    """

    folder: Path
    spec: Spec
    outcome: WorkerOutcome  # what run_worker returned when it was trained

    @property
    def url(self) -> str:
        return f"sqlite:///{self.folder / 'hpo.db'}"

    @property
    def artifacts(self) -> Path:
        return self.folder / "hpo-artifacts"

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.spec.name, storage=open_storage(self.url))

    def copy(self, folder: Path) -> "TrainedStudy":
        """The database and the artifacts copied into ``folder``; the copy records its own folder store."""
        folder.mkdir(parents=True, exist_ok=True)
        # SQLite's backup, not a file copy: the study's last writes may still be in its -wal file
        with closing(sqlite3.connect(self.folder / "hpo.db")) as source, closing(sqlite3.connect(folder / "hpo.db")) as target:
            source.backup(target)
        shutil.copytree(self.artifacts, folder / "hpo-artifacts")
        copied = replace(self, folder=folder)
        storage = open_storage(copied.url)
        study = optuna.load_study(study_name=self.spec.name, storage=storage)
        # the study records where its artifacts are, as an absolute path: the original's folder
        write_artifact_location(study, str(copied.artifacts), folder=True)
        storage.engine.dispose()  # no connection left open on a file the test may move
        return copied


@pytest.fixture(scope="session")
def trained_study(tmp_path_factory: pytest.TempPathFactory, data_cache_dir: str) -> TrainedStudy:
    """One real study (real data, model and training, on 400 reviews) for the tests that read a
    finished study: trained once per session, not once per test that reads one."""
    folder = _run_folder(tmp_path_factory, "trained-study")
    spec = load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", *TRAINED])
    done = folder / "outcome.pickle"  # written last: the study is complete (pytest -n N: one process trains it)
    with _run_lock(tmp_path_factory, "trained-study"):
        if not done.exists():
            with pytest.MonkeyPatch.context() as mp:
                mp.delenv("HPO_ARTIFACTS", raising=False)  # its folder store beside its database, as a new user's
                outcome = run_worker(spec, f"sqlite:///{folder / 'hpo.db'}", trials=4, seed=1)
            done.write_bytes(pickle.dumps(outcome))
    return TrainedStudy(folder, spec, pickle.loads(done.read_bytes()))
