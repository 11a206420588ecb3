"""Best-so-far validation accuracy against training epochs spent, read from `hpo optimize` logs.

For comparing studies whose databases are gone but whose logs are kept under benchmarks/results/:
every ``trial N epoch k/K`` line is an epoch spent, every ``trial N COMPLETE val acc A`` line may
raise the best (pruned and diverged trials never count, as in ``hpo report``).

    python benchmarks/best_so_far.py benchmarks/results/imdb-20-trials.txt benchmarks/results/ulmfit-small-20-trials.txt
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

EPOCH = re.compile(r"trial \d+ epoch \d+/\d+: .*\(([0-9.]+)s")
COMPLETE = re.compile(r"trial \d+ COMPLETE\s+val acc ([0-9.]+)")
FINISHED = re.compile(r"trial \d+ (COMPLETE|PRUNED|DIVERGED)")


def curve(lines: list[str]) -> tuple[list[tuple[int, float]], list[float]]:
    """(epochs spent, best so far) at each finished trial, in log order; and each epoch's seconds."""
    epochs, best, points, seconds = 0, 0.0, [], []
    for line in lines:
        if m := EPOCH.search(line):
            epochs += 1
            seconds.append(float(m.group(1)))
        if m := COMPLETE.search(line):
            best = max(best, float(m.group(1)))
        if FINISHED.search(line):
            points.append((epochs, best))
    return points, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--at", type=int, nargs="+", default=[20, 30, 40, 50, 60, 70])
    args = parser.parse_args()
    print(f"{'log':40} {'trials':>6} {'epochs':>6} " + " ".join(f"{e:>7}" for e in args.at) + "   s/epoch min-median-max")
    for path in args.logs:
        points, seconds = curve(path.read_text().splitlines())
        best_at = [max([b for e, b in points if e <= budget] or [0.0]) for budget in args.at]
        spread = f"{min(seconds):.0f}-{statistics.median(seconds):.0f}-{max(seconds):.0f}" if seconds else "-"
        print(f"{path.name:40} {len(points):>6} {points[-1][0] if points else 0:>6} "
              + " ".join(f"{b:7.4f}" for b in best_at) + f"   {spread}")


if __name__ == "__main__":
    main()
