"""Trials per second on a shared database with 1, 2 and 4 worker processes, hpo against plain Optuna.

The objective is synthetic and cheap (no training): it samples seven parameters, as the IMDB
space does, then for three "epochs" stores a user attribute and reports an intermediate value,
as the real objective's per-epoch bookkeeping does. So the time per trial is all sampler and
storage. Both sides run it with a RandomSampler (TPE's cost grows with the study and would
hide the storage), in the same database, in the same run:

* plain Optuna: ``RDBStorage`` + ``study.optimize`` with ``MaxTrialsCallback`` counting
  COMPLETE and PRUNED trials (the closest plain equivalent of a global budget);
* hpo: ``open_storage(grace_period=60)`` (retrying storage, heartbeat thread per trial) +
  ``hpo.workers.work`` (counts the study before every trial, records the worker per trial).

The difference per trial at one worker is hpo's storage overhead.

Usage::

    .venv/bin/python benchmarks/storage_scaling.py                       # local PostgreSQL 'test'
    .venv/bin/python benchmarks/storage_scaling.py --storage sqlite:////tmp/bench.db --trials 200
    HPO_STORAGE=postgresql+psycopg://user@host/db .venv/bin/python benchmarks/storage_scaling.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EPOCHS = 3


def objective(trial) -> float:
    x = [trial.suggest_float(f"p{i}", 1e-4, 1e-1, log=True) for i in range(7)]
    value = sum(x)
    for epoch in range(1, EPOCHS + 1):
        trial.set_user_attr("val_loss", [value] * epoch)
        trial.report(value * epoch, epoch)
    return value


def _worker(mode: str, url: str, name: str, budget: int, start_at: float, out) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler()
    if mode == "hpo":
        from hpo.storage.resilient import open_storage
        from hpo.workers import work

        study = optuna.load_study(study_name=name, storage=open_storage(url, grace_period=60), sampler=sampler)
        time.sleep(max(0.0, start_at - time.time()))
        work(study, objective, budget, poll_s=0.05)
    else:
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url), sampler=sampler)
        time.sleep(max(0.0, start_at - time.time()))
        stop = MaxTrialsCallback(budget, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(objective, callbacks=[stop])
    out.put(time.time())


def run(mode: str, url: str, budget: int, workers: int) -> tuple[float, int]:
    """(seconds from the common start to the last worker's end, finished trials)."""
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.resilient import open_storage

    name = f"bench-{mode}-{workers}-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    optuna.create_study(study_name=name, storage=storage)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0 + workers  # every process has imported and connected by then
    procs = [ctx.Process(target=_worker, args=(mode, url, name, budget, start_at, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    ends = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    study = optuna.load_study(study_name=name, storage=storage)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    optuna.delete_study(study_name=name, storage=storage)
    return max(ends) - start_at, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=os.environ.get("HPO_STORAGE") or DEFAULT_URL)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()

    from hpo.storage.urls import mask_url

    print(f"storage {mask_url(args.storage)}, {args.trials} trials per run, {os.cpu_count()} CPUs, "
          f"synthetic objective ({EPOCHS} epochs of bookkeeping), RandomSampler")
    print(f"{'workers':>7}  {'plain optuna':>22}  {'hpo':>22}  {'hpo overhead':>13}  finished (plain/hpo)")
    for n in [int(w) for w in args.workers.split(",")]:
        plain_s, plain_n = run("plain", args.storage, args.trials, n)
        hpo_s, hpo_n = run("hpo", args.storage, args.trials, n)
        overhead_ms = (hpo_s / hpo_n - plain_s / plain_n) * 1000 * n  # per trial, per worker
        print(
            f"{n:>7}  {plain_n / plain_s:>8.1f} trials/s ({plain_s / plain_n * 1000 * n:>5.1f} ms)"
            f"  {hpo_n / hpo_s:>8.1f} trials/s ({hpo_s / hpo_n * 1000 * n:>5.1f} ms)"
            f"  {overhead_ms:>+10.1f} ms  {plain_n}/{hpo_n}",
            flush=True,
        )
    print("ms = wall time per trial in one worker (workers x wall / trials); the overhead is hpo's minus plain's.")


if __name__ == "__main__":
    main()
