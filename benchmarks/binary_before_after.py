"""The default (binary) study before and after a change: same seed, same data, accuracy and epoch time.

Runs ``hpo optimize --study imdb`` with one trial, a fixed sampler seed and fp32, alternately
from two source trees (``--before``: e.g. ``git archive <commit> | tar -x -C /tmp/hpo-before``;
after: this checkout), ``--repeats`` times each, every run in a fresh process on its own SQLite
file, the data cache shared (the packaged reviews' cache key did not change). It reads each
trial's record: the sampled parameters (must be equal), validation accuracy per epoch, test
accuracy, and seconds per epoch. Alternating the runs spreads the machine's other load over both.

    git archive fedfb6f | tar -x -C /tmp/hpo-before      # main just before the data branch landed
    python benchmarks/binary_before_after.py --before /tmp/hpo-before --repeats 2 \\
        --set data.max_train=2000 --set train.max_epochs=2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.record import TrialRecord  # noqa: E402


def run(tree: Path, sets: list[str], cache: str, work: Path, tag: str) -> TrialRecord:
    url = f"sqlite:///{work / f'{tag}.db'}"
    args = [sys.executable, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", "1", "--jobs", "1",
            "--seed", "0", "--storage", url]
    for s in [*sets, "train.precision=fp32", f"data.cache_dir={cache!r}"]:
        args += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(tree), "HPO_ARTIFACTS": str(work / f"{tag}-artifacts")}
    env.pop("HPO_STORAGE", None)
    done = subprocess.run(args, env=env, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{done.stdout}\n{done.stderr}")
    study = optuna.load_study(study_name="imdb", storage=url)
    return TrialRecord.from_trial(study.trials[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the source tree of the earlier commit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    sets = args.sets or ["data.max_train=2000", "train.max_epochs=2"]
    print("# python benchmarks/binary_before_after.py --before " + str(args.before) + f" --repeats {args.repeats} "
          + " ".join(f"--set {s}" for s in sets))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start; each run: hpo optimize --study imdb --trials 1 "
          "--jobs 1 --seed 0, train.precision=fp32")
    cache = os.environ.get("HPO_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "hpo-before-after-cache")
    results: dict[str, list[TrialRecord]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.repeats):
            for tag, tree in (("before", args.before), ("after", ROOT)):
                r = run(tree, sets, cache, work, f"{tag}{i}")
                results[tag].append(r)
                secs = ", ".join(f"{e.seconds:.1f}" for e in r.epochs)
                accs = ", ".join(f"{e.val_accuracy:.4f}" for e in r.epochs)
                print(f"{tag:<6} run {i + 1}: val accuracy by epoch {accs}; test {r.test_accuracy:.4f}; "
                      f"seconds by epoch {secs}", flush=True)
    print()
    b, a = results["before"][0], results["after"][0]
    same_params = all(r.params == b.params for r in results["before"] + results["after"])
    print(f"sampled parameters equal in every run: {same_params} ({', '.join(f'{k}={v:.4g}' for k, v in sorted(b.params.items()))})")
    for tag, rs in results.items():
        accs = sorted({tuple(e.val_accuracy for e in r.epochs) for r in rs})
        tests = sorted({r.test_accuracy for r in rs})
        secs = [e.seconds for r in rs for e in r.epochs]
        print(f"{tag:<6}: final val accuracy {accs[0][-1]:.4f} (distinct curves over runs: {len(accs)}), test "
              f"{', '.join(f'{t:.4f}' for t in tests)}; epoch time median {statistics.median(secs):.1f} s "
              f"(min {min(secs):.1f}, max {max(secs):.1f}, {len(secs)} epochs)")
    identical = [e.val_accuracy for e in a.epochs] == [e.val_accuracy for e in b.epochs] and \
        [e.val_loss for e in a.epochs] == [e.val_loss for e in b.epochs]
    ratio = statistics.median(e.seconds for r in results["after"] for e in r.epochs) / \
        statistics.median(e.seconds for r in results["before"] for e in r.epochs)
    print(f"after / before: validation loss and accuracy per epoch identical: {identical}; "
          f"median epoch time ratio {ratio:.2f}")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end (a shared 2-core machine: seconds move with it)")


if __name__ == "__main__":
    main()
