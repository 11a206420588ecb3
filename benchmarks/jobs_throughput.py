"""Trials per hour and peak memory of ``hpo optimize`` with ``--jobs 1`` and ``--jobs 2``.

Runs the real command line on the full data set (19,924 training reviews, the default model and
``max_len``) in a fresh SQLite study, once per ``--jobs`` value, with the same fixed, stable
hyperparameters for every trial and no pruning, so that every run does exactly the same work:
``--trials`` trials of ``--epochs`` epochs. ``--jobs 1`` uses every core in one process;
``--jobs N`` splits the cores between N processes. While each runs, the resident memory (RSS) of
every process of the run is sampled from ``/proc`` every 0.2 s.

It prints, per ``--jobs`` value: wall time, trials and epochs per hour, the peak RSS of the
largest single worker process, and the peak of the whole run (all its processes together).

    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/jobs_throughput.py                 # ~12 min on 2 cores
    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/jobs_throughput.py --trials 2 --epochs 1 --max-train 2000
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The same trial every time: the practitioner's good learning rates, never diverging, never pruned.
FIXED = [
    "space.lr_embedding=0.003", "space.lr_encoder=0.003", "space.lr_head=0.003", "space.clip_norm=1.0",
    "space.cycle_len=1", "space.dropout=0.2", "space.weight_decay=0.0001", "pruner.type=none",
]


@dataclass(frozen=True)
class Run:
    jobs: int
    seconds: float
    trials: int
    epochs: int
    peak_worker_mib: float
    peak_total_mib: float
    returncode: int


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc (no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _RssSampler(threading.Thread):
    """Peak RSS of the largest process and of all processes of a tree, sampled every 0.2 s."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.peak_one = self.peak_total = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            rss = [_rss_mib(p) for p in _descendants(self.root)]
            self.peak_one = max(self.peak_one, max(rss, default=0.0))
            self.peak_total = max(self.peak_total, sum(rss))
            self.stop.wait(0.2)


def run_once(jobs: int, trials: int, epochs: int, sets: list[str], folder: Path) -> Run:
    url = f"sqlite:///{folder / f'jobs{jobs}.db'}"
    args = [sys.executable, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", str(trials),
            "--jobs", str(jobs), "--storage", url, "--seed", "0"]
    for item in [*FIXED, f"train.max_epochs={epochs}", f"name=jobs{jobs}", *sets]:
        args += ["--set", item]
    env = {**os.environ, "HPO_ARTIFACTS": str(folder / "artifacts")}
    t0 = time.perf_counter()
    with open(folder / f"jobs{jobs}.log", "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = _RssSampler(proc.pid)
        sampler.start()
        code = proc.wait()
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    import optuna

    from hpo.record import TrialRecord
    from hpo.storage.database.resilient import open_storage

    study = optuna.load_study(study_name=f"jobs{jobs}", storage=open_storage(url))
    done = [t for t in study.trials if t.state.is_finished()]
    return Run(jobs, seconds, len(done), sum(TrialRecord.from_trial(t).epochs_run for t in done),
               sampler.peak_one, sampler.peak_total, code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=0, help="0: the full training split")
    parser.add_argument("--out", default="", help="also write the printed lines to this file")
    args = parser.parse_args()

    sets = [f"data.max_train={args.max_train}"] if args.max_train else []
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    import torch

    lines = [f"# {shlex.join(['python', *sys.argv])}",
             f"# {os.cpu_count()} cores, {cpu}, torch {torch.__version__}",
             f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"# {args.trials} trials x {args.epochs} epochs, same fixed stable parameters, no pruning; "
             f"{'full training split' if not args.max_train else f'{args.max_train} training reviews'}",
             f"{'jobs':>4} {'wall s':>7} {'trials':>6} {'epochs':>6} {'trials/h':>8} {'epochs/h':>8} "
             f"{'peak worker MiB':>15} {'peak all MiB':>12}"]
    print("\n".join(lines), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hpo-jobs-") as tmp:
        for jobs in [int(j) for j in args.jobs.split(",")]:
            r = run_once(jobs, args.trials, args.epochs, sets, Path(tmp))
            if r.returncode != 0:
                print((Path(tmp) / f"jobs{jobs}.log").read_text()[-3000:])
                raise SystemExit(f"hpo optimize --jobs {jobs} exited {r.returncode}")
            runs.append(r)
            line = (f"{r.jobs:>4} {r.seconds:>7.0f} {r.trials:>6} {r.epochs:>6} {r.trials * 3600 / r.seconds:>8.1f} "
                    f"{r.epochs * 3600 / r.seconds:>8.1f} {r.peak_worker_mib:>15.0f} {r.peak_total_mib:>12.0f}")
            lines.append(line)
            print(line, flush=True)
    base = runs[0]
    for r in runs[1:]:
        lines.append(f"--jobs {r.jobs}: {base.seconds / r.seconds:.2f}x the trials per hour of --jobs {base.jobs}")
        print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
