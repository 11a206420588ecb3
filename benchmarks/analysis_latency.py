"""Latency of ``hpo report`` and ``hpo importance`` on a 1,000-trial study (target: under 10 s).

Creates a study with known structure directly through Optuna (no training) on PostgreSQL,
times each command end to end (a fresh ``hpo`` process: interpreter start, storage connection,
reading every trial, the analysis) and prints the figures next to two baselines measured in the
same run: reading the trials alone (the floor every command pays) and Optuna's default
importance (fANOVA on COMPLETE trials only, linear scale). The study is deleted afterwards.

Run::

    python benchmarks/analysis_latency.py [--storage URL] [--trials 1000] [--skip-optuna-fanova]

The storage defaults to ``$HPO_BENCH_STORAGE``, else ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # synthetic studies: test scaffolding

import synthetic  # noqa: E402
from hpo.storage.database.resilient import open_storage  # noqa: E402
from hpo.storage.database.urls import mask_url  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_S = 10.0


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cli(*args: str) -> float:
    hpo = shutil.which("hpo", path=str(Path(sys.executable).parent)) or "hpo"
    seconds, proc = _timed(lambda: subprocess.run([hpo, *args], capture_output=True, text=True))
    if proc.returncode != 0:
        raise SystemExit(f"hpo {' '.join(args[:1])} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("HPO_BENCH_STORAGE", DEFAULT_URL))
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--skip-optuna-fanova", action="store_true", help="skip the ~30 s baseline")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name = args.storage, f"bench-analysis-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    print(f"storage {mask_url(url)}, study {name}, {args.trials} trials")
    seconds, _ = _timed(lambda: synthetic.add_known_trials(
        optuna.create_study(storage=storage, study_name=name, direction="maximize"),
        synthetic.random_lr_heads(args.trials, seed=0)))
    print(f"  (created in {seconds:.1f} s)")
    try:
        rows: list[tuple[str, float]] = []
        fresh = lambda: optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()  # noqa: E731
        rows.append(("baseline: read all trials (in process)", _timed(fresh)[0]))
        if not args.skip_optuna_fanova:
            study = optuna.load_study(study_name=name, storage=storage)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append(("baseline: optuna.importance.get_param_importances (fANOVA, in process)",
                             _timed(lambda: optuna.importance.get_param_importances(study))[0]))
        common = ["--study", name, "--storage", url]
        rows.append(("hpo --version (interpreter + imports)", _cli("--version")))
        rows.append(("hpo report", _cli("report", *common)))
        rows.append(("hpo report --format json", _cli("report", *common, "--format", "json")))
        rows.append(("hpo importance (ped-anova, accuracy)", _cli("importance", *common)))
        rows.append(("hpo importance --target divergence (permutation)", _cli("importance", *common, "--target", "divergence")))
        rows.append(("hpo importance --evaluator mdi", _cli("importance", *common, "--evaluator", "mdi")))
        width = max(len(r[0]) for r in rows)
        for label, seconds in rows:
            verdict = "" if label.startswith(("baseline", "hpo --version")) else ("  ok" if seconds < TARGET_S else f"  OVER {TARGET_S:.0f} s")
            print(f"  {label:<{width}}  {seconds:6.2f} s{verdict}")
    finally:
        optuna.delete_study(study_name=name, storage=storage)


if __name__ == "__main__":
    main()
