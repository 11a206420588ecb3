"""Two ``hpo optimize`` commands on one machine: each taking every core, or sharing them.

Runs the real command line, the same fixed stable trial every time (no pruning), in its own
SQLite study per command, in three set-ups measured in the same run:

- ``alone``: one command, the baseline;
- ``two, all cores each``: two commands started together, each with ``train.threads`` = the
  machine's cores (what every command did before it shared);
- ``two, sharing``: two commands started together with the automatic thread count, which
  registers each in ``$HPO_RUN_DIR`` and gives each ``cores // 2`` threads (:mod:`hpo.training.cores`).

It prints each command's training speed (tokens/s over its epochs, from the trial record) and
the sum over the commands, and the wall time until both finished.

    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/shared_cores.py --out benchmarks/results/shared_cores.txt
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from hpo.record import TrialRecord
from hpo.storage.database.resilient import open_storage
from hpo.training.device import available_cores

FIXED = [
    "space.lr_embedding=0.003", "space.lr_encoder=0.003", "space.lr_head=0.003", "space.clip_norm=1.0",
    "space.cycle_len=1", "space.dropout=0.2", "space.weight_decay=0.0001", "pruner.type=none",
]


def _command(name: str, folder: Path, sets: list[str]) -> tuple[list[str], str]:
    url = f"sqlite:///{folder / f'{name}.db'}"
    args = [sys.executable, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", "1", "--jobs", "1",
            "--storage", url, "--seed", "0"]
    for item in [*FIXED, f"name={name}", *sets]:
        args += ["--set", item]
    return args, url


def _tokens_per_second(url: str, name: str) -> float:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    rows = [row for t in study.trials for row in TrialRecord.from_trial(t).epochs]
    return statistics.fmean(row.tokens_per_second for row in rows)


def run_setup(label: str, n: int, sets: list[str], folder: Path) -> tuple[str, list[float], float]:
    """Start ``n`` commands at once; their tokens/s and the wall time until the last ended."""
    env = {**os.environ, "HPO_RUN_DIR": str(folder / "running"), "HPO_ARTIFACTS": str(folder / "artifacts")}
    started = []
    t0 = time.perf_counter()
    for i in range(n):
        name = f"{label.replace(' ', '-').replace(',', '')}-{i}"
        args, url = _command(name, folder, sets)
        log = open(folder / f"{name}.log", "w")
        started.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), name, url, log))
    for proc, name, _, log in started:
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed: see {folder / (name + '.log')}")
        log.close()
    wall = time.perf_counter() - t0
    return label, [_tokens_per_second(url, name) for _, name, url, _ in started], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--out", default="", help="also write the printed lines to this file")
    args = parser.parse_args()
    cores = available_cores()
    data = [f"train.max_epochs={args.epochs}", f"data.max_train={args.max_train}", "data.max_valid=500",
            "data.max_test=500"]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load = os.getloadavg()[0]
    lines = [f"# {shlex.join(['python', *sys.argv])}",
             f"# {cores} cores, {cpu}, torch {torch.__version__}; load average {load:.1f} at the start",
             f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"# each command: 1 trial x {args.epochs} epochs on {args.max_train} training reviews, fixed stable parameters",
             f"{'set-up':<26}{'tokens/s per command':>28}{'sum':>10}{'wall s':>9}"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="hpo-shared-cores-") as tmp:
        folder = Path(tmp)
        setups = [("alone", 1, data), ("two, all cores each", 2, [*data, f"train.threads={cores}"]),
                  ("two, sharing", 2, data)]
        for label, n, sets in setups:
            label, speeds, wall = run_setup(label, n, sets, folder)
            each = " / ".join(f"{s / 1000:.1f}k" for s in speeds)
            line = f"{label:<26}{each:>28}{sum(speeds) / 1000:>9.1f}k{wall:>9.0f}"
            print(line, flush=True)
            lines.append(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
