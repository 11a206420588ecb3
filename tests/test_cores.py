"""Two hpo training processes on one machine split its cores instead of each taking all of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpo.search.workers import run_worker
from hpo.training.cores import CoreShare, _start_time


@pytest.fixture
def other_process():
    """A live process of this user, to register as another hpo training process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def register(directory: Path, pid: int, started: str | None = None) -> Path:
    entry = directory / str(pid)
    entry.write_text(_start_time(pid) if started is None else started)
    return entry


def test_the_share_halves_with_another_process_and_returns_when_it_ends(tmp_path: Path, other_process) -> None:
    said: list[str] = []
    share = CoreShare(tmp_path, cores=4)
    assert share.rebalance(said.append) == 4 and said == []  # alone: every core, nothing to say
    other = register(tmp_path, other_process.pid)
    assert share.rebalance(said.append) == 2 and torch.get_num_threads() == 2
    assert said == ["sharing 4 cores with 1 other hpo training process on this machine: 2 threads "
                    "(train.threads=N sets a fixed count)"]
    share.rebalance(said.append)
    assert len(said) == 1  # said once per change, not per epoch
    other_process.kill()
    other_process.wait()
    assert share.rebalance(said.append) == 4
    assert not other.exists()  # a dead process's entry is swept
    assert said[-1] == "no other hpo training process on this machine now: 4 threads"
    share.close()
    assert list(tmp_path.iterdir()) == []


def test_a_reused_pid_or_a_dead_pid_is_not_counted(tmp_path: Path, other_process) -> None:
    share = CoreShare(tmp_path, cores=2)
    register(tmp_path, other_process.pid, started="1")  # same pid, another start time: a reused pid
    register(tmp_path, 2**22 + 7, started="")  # above pid_max: no such process
    (tmp_path / "not-a-pid").write_text("")
    assert share.processes() == 1 and share.rebalance() == 2
    share.close()


def test_never_fewer_than_one_thread(tmp_path: Path, other_process) -> None:
    share = CoreShare(tmp_path, cores=1)
    register(tmp_path, other_process.pid)
    assert share.rebalance() == 1
    share.close()


def test_a_worker_beside_another_hpo_takes_its_share_and_an_explicit_count_opts_out(
        small_spec, tmp_path: Path, monkeypatch, other_process) -> None:
    run_dir = tmp_path / "running"
    run_dir.mkdir()
    monkeypatch.setenv("HPO_RUN_DIR", str(run_dir))
    register(run_dir, other_process.pid)
    url = f"sqlite:///{tmp_path / 'cores.db'}"
    cores = CoreShare(run_dir).cores
    lines: list[str] = []
    spec = small_spec("name=cores", "train.max_epochs=1", "data.max_train=200", "data.max_valid=100")
    run_worker(spec, url, trials=1, log=lines.append)
    expected = max(1, cores // 2)
    assert f"({expected} threads)" in next(line for line in lines if "running 1 more" in line)
    assert any(line.startswith(f"sharing {cores} cores with 1 other hpo training process") for line in lines)
    assert sorted(p.name for p in run_dir.iterdir()) == [str(other_process.pid)]  # unregistered at its end

    lines.clear()
    run_worker(small_spec("name=cores2", "train.max_epochs=1", "data.max_train=200", "data.max_valid=100",
                          f"train.threads={cores}"), url, trials=1, log=lines.append)
    assert f"({cores} threads)" in next(line for line in lines if "running 1 more" in line)
    assert not any(line.startswith("sharing") for line in lines)
