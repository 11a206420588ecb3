"""Loading a data file: time and peak memory (RSS) against the number of rows.

Each load runs in a fresh process with an empty cache (read, check, split, tokenize,
numericalize, save the cache) and the parent reads the child's peak RSS from ``wait4``. The
baseline, measured in the same run: a process that only imports ``hpo`` and PyTorch (the floor
every load stands on), and the default source, the 25,000 packaged IMDB reviews, loaded the way
it always was (all texts and token lists in memory). The files are IMDB reviews as ``text,label``
(``benchmarks/data_files.py imdb``), written to ``--dir`` first.

    python benchmarks/data_load.py --rows 25000,100000,500000

What linear growth looks like: seconds per 1,000 rows and MB of RSS above the import floor per
1,000 rows stay about the same from row count to row count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_files import write_imdb  # noqa: E402

CHILD = """
import sys, time
t0 = time.perf_counter()
from hpo.data import load_dataset
from hpo.spec import DataSpec
import torch
imported = time.perf_counter()
if sys.argv[1] != "import-only":
    ds = load_dataset(DataSpec(path=sys.argv[1], cache_dir=sys.argv[2]), print)
    print("rows", len(ds.train) + len(ds.valid) + len(ds.test), "tokens", int(ds.train.tokens.numel() + ds.valid.tokens.numel() + ds.test.tokens.numel()))
print("seconds", time.perf_counter() - imported)
"""


def measure(source: str) -> tuple[float, float, str]:
    """(seconds after the imports, peak RSS in MB, the child's last lines) of one load in a fresh process."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, source, cache], env=env, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"load of {source} failed:\n{out}")
    seconds = float(next(line.split()[1] for line in out.splitlines() if line.startswith("seconds")))
    return seconds, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="25000,100000,500000", help="row counts, comma-separated")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "hpo-data-load")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"# python benchmarks/data_load.py --rows {args.rows}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    _, floor, _ = measure("import-only")
    print(f"import floor (hpo + torch, nothing loaded): peak RSS {floor:.0f} MB")
    rows_list = [int(x) for x in args.rows.split(",")]
    files = {}
    for n in rows_list:
        path = args.dir / f"imdb-{n}.csv"
        if not path.exists():
            write_imdb(path, n)
        files[n] = path
    print()
    print(f"{'source':<34} {'rows':>8} {'MB file':>8} {'load s':>8} {'s/1k rows':>10} {'peak MB':>8} "
          f"{'above floor':>11} {'MB/1k rows':>10}")
    seconds, rss, _ = measure("")
    above = rss - floor
    print(f"{'packaged IMDB (baseline, lists)':<34} {25000:>8,} {'-':>8} {seconds:>8.1f} {seconds / 25:>10.2f} "
          f"{rss:>8.0f} {above:>11.0f} {above / 25:>10.2f}")
    for n in rows_list:
        seconds, rss, out = measure(str(files[n]))
        above = rss - floor
        size = files[n].stat().st_size / 1e6
        print(f"{'CSV, streamed':<34} {n:>8,} {size:>8.0f} {seconds:>8.1f} {seconds / n * 1000:>10.2f} "
              f"{rss:>8.0f} {above:>11.0f} {above / n * 1000:>10.2f}", flush=True)
        progress = [line for line in out.splitlines() if "tokenized" in line]
        if progress:
            print(f"    progress lines: {len(progress)}, last: {progress[-1]}")
    print(f"\n# load average {os.getloadavg()[0]:.1f} at the end (a shared 2-core machine: seconds move with it)")


if __name__ == "__main__":
    main()
