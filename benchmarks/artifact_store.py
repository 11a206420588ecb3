"""Artifact stores compared: a folder vs the study's database, write + read of 1 MB and 50 MB blobs.

Each case runs in a fresh Python process (so its peak RSS is its own): the blob comes from a
file on disk, is written through the store's ``write`` and read back through ``open_reader``
in 1 MiB pieces (as optuna-dashboard and the checkpoint loader read), then removed. Reported:
seconds to write, seconds to read, and the process's peak RSS above what it held before the
write (the store's own memory: a streaming store stays near its chunk size, one that holds the
blob grows by the blob's size or more).

    python benchmarks/artifact_store.py                                  # folder vs SQLite file
    python benchmarks/artifact_store.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --storage mysql+pymysql://root@127.0.0.1:3306/test               # add the servers (fresh databases)

What it printed on this machine is in benchmarks/results/artifact_store.txt; the SQLite default in
:mod:`hpo.storage.artifacts.stores` (``SQLITE_CHOICE``) follows from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage_scaling import fresh_database  # noqa: E402  (the benchmarks' one scratch-database helper)

SIZES_MB = (1, 50)
REPEATS = 3


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _case(kind: str, where: str, blob: str) -> dict[str, float]:
    """One write + read + remove in this process; what it took."""
    if kind == "folder":
        from hpo.storage.artifacts.stores import FolderStore

        store = FolderStore(where)
    else:
        import sqlalchemy

        from hpo.storage.artifacts.database_store import DatabaseStore

        store = DatabaseStore(sqlalchemy.create_engine(where))
    artifact_id = f"bench-{uuid.uuid4().hex}"
    before = _rss_mib()
    t0 = time.perf_counter()
    with open(blob, "rb") as f:
        store.write(artifact_id, f)
    t1 = time.perf_counter()
    read = 0
    with store.open_reader(artifact_id) as f:
        while piece := f.read(1 << 20):
            read += len(piece)
    t2 = time.perf_counter()
    store.remove(artifact_id)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert read == os.path.getsize(blob), (read, os.path.getsize(blob))
    return {"write_s": t1 - t0, "read_s": t2 - t1, "peak_above_mib": max(0.0, peak - before)}


def _run_case(kind: str, where: str, blob: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--case", kind, where, blob], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", action="append", default=[], help="a server's URL (repeatable); a fresh database is made on it")
    args = parser.parse_args()
    from hpo.storage.database.urls import mask_url

    with tempfile.TemporaryDirectory() as tmp:
        cases = [("folder", os.path.join(tmp, "artifacts"), "folder"),
                 ("database", f"sqlite:///{os.path.join(tmp, 'hpo.db')}", "sqlite file")]
        drops = []
        for url in args.storage:
            fresh, drop = fresh_database(url)
            drops.append(drop)
            cases.append(("database", fresh, mask_url(url).split("://")[0]))
        try:
            print(f"{'store':<22} {'blob':>6} {'write s':>8} {'read s':>8} {'peak RSS above start':>21}")
            for size in SIZES_MB:
                blob = os.path.join(tmp, f"blob-{size}")
                with open(blob, "wb") as f:
                    for _ in range(size):
                        f.write(os.urandom(1_000_000))
                for kind, where, label in cases:
                    runs = [_run_case(kind, where, blob) for _ in range(REPEATS)]
                    best = {k: min(r[k] for r in runs) for k in runs[0]}
                    peak = max(r["peak_above_mib"] for r in runs)
                    print(f"{label:<22} {size:>4}MB {best['write_s']:>8.3f} {best['read_s']:>8.3f} {peak:>17.1f} MiB")
            print(f"(best of {REPEATS} fresh processes per case for the times, worst for the memory)")
        finally:
            for drop in drops:
                drop()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--case":
        print(json.dumps(_case(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        main()
