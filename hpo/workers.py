"""Run a worker on a study until the study as a whole has its budget of finished trials.

``trials`` is the study's total, not this call's: a study with 60 finished trials (COMPLETE or
PRUNED; FAILed ones do not count and are re-run) and a budget of 100 runs 40 more.

Example::

    outcome = run_worker(spec, "sqlite:///hpo.db", trials=20, log=print)
    outcome.tally.best.value
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.data import load_dataset
from hpo.objective import Objective
from hpo.spec import Spec
from hpo.storage import open_storage
from hpo.study import Tally, is_diverged, open_study, tally
from hpo.train import configure_threads, resolve_device

Log = Callable[[str], None]


@dataclass(frozen=True)
class WorkerOutcome:
    study_name: str
    tally: Tally
    ran: int  # trials this worker ran


class _Progress:
    """Prints one line per finished trial and stops the study once the budget is reached."""

    def __init__(self, budget: int, log: Log) -> None:
        self.budget = budget
        self.log = log
        self.ran = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.ran += 1
        t = tally(study)
        if trial.state == TrialState.COMPLETE:
            what = f"COMPLETE  val acc {trial.value:.4f}"
        elif is_diverged(trial):
            what = f"PRUNED    diverged ({trial.user_attrs.get('divergence_reason')} at epoch {trial.user_attrs.get('diverged_epoch')})"
        elif trial.state == TrialState.PRUNED:
            what = f"PRUNED    underperforming at epoch {trial.last_step}"
        else:
            what = trial.state.name
        best = f"best {t.best.value:.4f} (trial {t.best.number})" if t.best else "no complete trial yet"
        self.log(f"trial {trial.number} {what} | {t.finished}/{self.budget} finished, {best}")
        if t.finished >= self.budget:
            study.stop()


def run_worker(
    spec: Spec,
    storage_url: str,
    trials: int,
    timeout: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    log: Log = lambda m: None,
) -> WorkerOutcome:
    """Optimize ``spec``'s study in this process until it has ``trials`` finished trials."""
    storage = open_storage(storage_url)
    study = open_study(spec, storage, seed)
    done = tally(study).finished
    if done >= trials:
        log(f"study {spec.name!r} already has {done} finished trials (budget {trials}): nothing to run")
        return WorkerOutcome(spec.name, tally(study), 0)
    n_threads = configure_threads(spec.train.threads if threads is None else threads)
    device = resolve_device(spec.train.device)
    data = load_dataset(spec.data, log)
    log(
        f"study {spec.name!r}: {done} finished, running {trials - done} more on {device} ({n_threads} threads); "
        f"data {len(data.train):,} train / {len(data.valid):,} valid / {len(data.test):,} test, vocab {data.vocab_size:,}"
    )
    progress = _Progress(trials, log)
    study.optimize(
        Objective(spec, data, device, log),
        n_trials=trials - done,
        timeout=timeout,
        callbacks=[progress],
        gc_after_trial=False,
    )
    return WorkerOutcome(spec.name, tally(study), progress.ran)
