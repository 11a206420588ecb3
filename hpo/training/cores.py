"""Share this machine's cores with the other hpo training processes running on it.

Each process that trains with an automatic thread count (``train.threads = 0``) registers itself
in a per-user folder under the temporary directory, and before each trial and after each epoch
takes ``cores // processes`` intra-op threads (at least one). Two ``hpo optimize`` commands
started by hand on one machine then split its cores instead of each taking all of them: two
2-thread PyTorch processes on 2 cores spend their time waiting on each other's threads
(benchmarks/shared_cores.py measures it). When the other command ends, the next epoch takes its
cores back. A process that died without unregistering is recognised by its pid and start time
and ignored.

The folder is per machine (the temporary directory) and per user: processes of another user, or
in another container, are not counted; an explicit ``train.threads`` opts out.

Example::

    share = CoreShare()                  # registers this process
    share.rebalance(log=print)           # "sharing 2 cores with 1 other hpo process: 1 thread"
    ...
    share.close()                        # unregisters (also at exit)
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from hpo.training.device import available_cores


def registry_dir() -> Path:
    """Where training processes register: ``$HPO_RUN_DIR``, else ``<tmp>/hpo-<uid>/training``."""
    override = os.environ.get("HPO_RUN_DIR")
    if override:
        return Path(override)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"hpo-{uid}" / "training"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken
    for the process that registered; empty where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _start_time(pid) in ("", started)


class CoreShare:
    """This process's share of the machine's cores among the registered hpo training processes."""

    def __init__(self, directory: Path | None = None, cores: int | None = None) -> None:
        self.directory = directory or registry_dir()
        self.cores = cores or available_cores()
        self.pid = os.getpid()
        self._said: tuple[int, int] | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = self.directory / str(self.pid)
        self._file.write_text(_start_time(self.pid))
        atexit.register(self.close)

    def processes(self) -> int:
        """Registered processes that are still alive, this one included; removes the dead ones' files."""
        alive = 0
        for entry in self.directory.iterdir():
            try:
                pid, started = int(entry.name), entry.read_text()
            except (ValueError, OSError):
                continue
            if pid == self.pid or _alive(pid, started):
                alive += 1
            else:
                entry.unlink(missing_ok=True)
        return max(alive, 1)

    def rebalance(self, log: Callable[[str], None] = lambda m: None) -> int:
        """Set this process's intra-op threads to its share; says so when the share changes."""
        processes = self.processes()
        n = max(1, self.cores // processes)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        changed = self._said != (processes, n) if self._said is not None else processes > 1
        if changed and processes > 1:
            others = processes - 1
            log(f"sharing {self.cores} cores with {others} other hpo training process{'es' if others != 1 else ''} "
                f"on this machine: {n} thread{'s' if n != 1 else ''} (train.threads=N sets a fixed count)")
        elif changed:
            log(f"no other hpo training process on this machine now: {n} thread{'s' if n != 1 else ''}")
        self._said = (processes, n)
        return n

    def close(self) -> None:
        self._file.unlink(missing_ok=True)
