"""Where a trial's wall time goes: training forward/backward versus everything else.

Runs one real worker (``hpo.search.workers.run_worker``: SQLite study, data from the disk cache, the
Objective with its checkpoints, storage writes, test evaluation and figure upload) under
``cProfile`` and splits its wall time into phases, from the profiler's cumulative times:

* forward (training), backward, optimizer step, gradient norms and clipping: the training itself;
* batching (padding, copies), validation and test evaluation;
* data loading (the tensor cache), storage and Optuna (study, ask/tell, per-epoch user attributes,
  pruning), checkpoints, the trial's figure, and the rest.

cProfile adds a little to every Python call, so the script also times the same trial without the
profiler and prints both walls; the shares are of the profiled run.

    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/trial_profile.py                      # full data, 2 epochs, ~4 min
    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/trial_profile.py --set data.max_train=2000
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import pstats
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from hpo.spec import load_spec
from hpo.search.workers import quiet_optuna_logging, run_worker

FIXED = [
    "space.lr_embedding=0.003", "space.lr_encoder=0.003", "space.lr_head=0.003", "space.clip_norm=1.0",
    "space.cycle_len=1", "space.dropout=0.2", "space.weight_decay=0.0001", "pruner.type=none",
]

# (phase, file suffix, function name, only the time spent when called from this function or None)
PHASES = [
    ("forward (train)", "torch/nn/modules/module.py", "_wrapped_call_impl", "train"),
    ("backward", "torch/_tensor.py", "backward", "train"),
    ("optimizer step", "torch/optim/adam.py", "step", None),
    ("grad norms + clipping", "torch/nn/utils/clip_grad.py", "_no_grad_wrapper", None),
    ("batching (pad, copy)", "hpo/data.py", "iter_batches", "train"),
    ("batch to device", "hpo/data.py", "to", "train"),
    # evaluate() runs under torch.no_grad(): its caller in the profile is that decorator.
    ("validation", "torch/utils/_contextlib.py", "decorate_context", "train"),
    ("test evaluation", "torch/utils/_contextlib.py", "decorate_context", "_store_outcome"),
    ("data loading (cache)", "hpo/data.py", "load_dataset", None),
    ("checkpoints", "hpo/checkpoints.py", "save", None),
    ("figure upload", "hpo/objective.py", "_upload_figure", None),
    ("per-epoch user attrs", "hpo/objective.py", "store", None),
    ("pruning check", "optuna/trial/_trial.py", "should_prune", None),
]


def _cumulative(stats: pstats.Stats, suffix: str, name: str, caller: str | None) -> float:
    total = 0.0
    for (file, _, func), (_, _, _, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func != name or not file.endswith(suffix):
            continue
        if caller is None:
            total += ct
        else:
            total += sum(v[3] for (_, _, cfunc), v in callers.items() if cfunc == caller)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument("--out", default="", help="also write the printed lines to this file")
    args = parser.parse_args()
    quiet_optuna_logging()
    overrides = [*FIXED, f"train.max_epochs={args.epochs}", *args.sets]

    walls = {}
    with tempfile.TemporaryDirectory(prefix="hpo-profile-") as tmp:
        os.environ["HPO_ARTIFACTS"] = str(Path(tmp) / "artifacts")
        url = f"sqlite:///{Path(tmp) / 'profile.db'}"
        # A tiny first trial pays the one-time costs (imports, the first figure, the database
        # schema), as a worker's first trial does; the two measured trials are its later ones.
        run_worker(load_spec("imdb", [*FIXED, "name=warmup", "train.max_epochs=1", "data.max_train=200",
                                      "data.max_valid=100"]), url, trials=1, threads=args.threads)
        profiler = cProfile.Profile()
        for name in ("profiled", "plain"):
            spec = load_spec("imdb", [*overrides, f"name={name}"])
            t0 = time.perf_counter()
            if name == "profiled":
                profiler.enable()
            run_worker(spec, url, trials=1, threads=args.threads)
            if name == "profiled":
                profiler.disable()
            walls[name] = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    wall = walls["profiled"]

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"# {shlex.join(['python', *sys.argv])}",
             f"# {os.cpu_count()} cores, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} torch threads",
             f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"# one trial, {args.epochs} epochs, spec imdb + {' '.join(overrides)}",
             f"wall: {walls['plain']:.1f} s without the profiler, {wall:.1f} s with it", "",
             f"{'phase':<24} {'seconds':>8} {'share':>6}"]
    accounted = 0.0
    for phase, suffix, func, caller in PHASES:
        sec = _cumulative(stats, suffix, func, caller)
        accounted += sec
        lines.append(f"{phase:<24} {sec:>8.2f} {sec / wall:>6.1%}")
    lines.append(f"{'the rest':<24} {wall - accounted:>8.2f} {(wall - accounted) / wall:>6.1%}")
    fwd_bwd = sum(_cumulative(stats, s, f, c) for p, s, f, c in PHASES[:2])
    training = sum(_cumulative(stats, s, f, c) for p, s, f, c in PHASES[:4])
    lines += ["", f"forward + backward: {fwd_bwd / wall:.1%} of the trial's wall time; "
                  f"with the optimizer step and clipping: {training / wall:.1%}"]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
