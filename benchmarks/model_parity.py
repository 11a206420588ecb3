"""The default study, trained by two checkouts of hpo: the same numbers, and how long an epoch takes.

A change to how the model is built (the built-in LSTM as one model factory among others) must not
change what the default study trains: with the same seed, every epoch's losses and accuracy must
be the same, and an epoch must not take longer. This runs one trial of the default ``imdb`` study
(sampler seed 0: the same sampled settings in both) with the checkout under test and with a
baseline checkout (``--before``, e.g. ``git archive main | tar -x -C /tmp/hpo-main``), in turn,
``--rounds`` times each (alternating, so machine load hits both alike), each in a fresh process
on a fresh SQLite study, one thread, through ``hpo.search.workers.run_worker`` (in both).

It prints every epoch of both, whether their numbers are identical, and the median epoch time of
each with their ratio.

    git archive main | (mkdir -p /tmp/hpo-main && tar -x -C /tmp/hpo-main)
    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/model_parity.py --before /tmp/hpo-main
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ["data.max_train=4000", "data.max_valid=1000", "data.max_test=1000", "train.max_epochs=2"]

# Runs in the child, with PYTHONPATH naming one checkout: only names both checkouts have.
CHILD = r"""
import json, sys
import optuna
from hpo.spec import load_spec
from hpo.search.workers import run_worker, quiet_optuna_logging
quiet_optuna_logging()
spec = load_spec("imdb", json.loads(sys.argv[1]))
outcome = run_worker(spec, "sqlite:///parity.db", trials=1, seed=0)
trial = optuna.load_study(study_name=spec.name, storage="sqlite:///parity.db").trials[0]
from hpo.record import TrialRecord
r = TrialRecord.from_trial(trial)
print("RESULT " + json.dumps({
    "params": trial.params, "state": r.state,
    "test_accuracy": r.outcome.test_accuracy if r.outcome else None,
    "epochs": [{"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss,
                "val_accuracy": e.val_accuracy, "seconds": e.seconds} for e in r.epochs],
}))
"""


def run_one(checkout: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("HPO_ARTIFACTS", None)
    env.pop("HPO_STORAGE", None)
    with tempfile.TemporaryDirectory(prefix="hpo-parity-") as tmp:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides)], cwd=tmp, env=env,
                              capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{checkout}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def numbers(result: dict) -> list[tuple]:
    return [(e["train_loss"], e["val_loss"], e["val_accuracy"]) for e in result["epochs"]] + [(result["test_accuracy"],)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=Path, help="The baseline checkout (a folder holding hpo/).")
    parser.add_argument("--after", default=ROOT, type=Path, help="The checkout under test (default: this one).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="Also write the output to this file.")
    args = parser.parse_args()
    overrides = [*(args.overrides or DEFAULT_SET), "train.threads=1", "name=parity"]
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    say(f"# python benchmarks/model_parity.py --before {args.before} --rounds {args.rounds} "
        + " ".join(f"--set {o}" for o in args.overrides or []))
    say(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} at the start; {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    say(f"# default imdb study, sampler seed 0, 1 thread; overrides: {' '.join(overrides)}")
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for label, checkout in (("before", args.before), ("after", args.after)):
            result = run_one(checkout, overrides)
            runs[label].append(result)
            for e in result["epochs"]:
                say(f"round {i + 1} {label:<6} epoch {e['epoch']}: train loss {e['train_loss']:.6f}  val loss "
                    f"{e['val_loss']:.6f}  val acc {e['val_accuracy']:.4f}  {e['seconds']:.1f} s")
            say(f"round {i + 1} {label:<6} test accuracy {result['test_accuracy']}, {result['state']}")
    first = runs["before"][0]
    say(f"sampled: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(first["params"].items())))
    same = all(numbers(r) == numbers(first) for r in runs["before"] + runs["after"])
    say(f"identical losses, accuracies and test accuracy in every run: {'yes' if same else 'NO'}")
    median = {k: statistics.median(e["seconds"] for r in v for e in r["epochs"]) for k, v in runs.items()}
    say(f"median epoch: before {median['before']:.1f} s, after {median['after']:.1f} s "
        f"(after/before {median['after'] / median['before']:.3f})")
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
