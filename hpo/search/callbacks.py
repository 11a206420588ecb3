"""What a worker does around its trials, as Optuna callbacks: progress, figures, clean-up, the budget.

The objective only samples, trains and records. Everything a worker does because a trial ran is
here, registered by :func:`hpo.search.workers.run_worker`: as ``study.optimize(callbacks=...)`` (called
after each trial, in order), and, for what happens while a trial runs, as the objective's
:class:`~hpo.search.objective.TrialListener` s:

* :class:`FigureUpload`: the trial's figures (epoch curves; step telemetry, :mod:`hpo.analysis.steps`)
  onto its dashboard page as it ends (never fails it);
* :class:`DashboardNotes`: each trial's dashboard note says what happened, the study's holds the
  report's reading and links to the top figures (throttled; never fails a trial);
* :class:`CheckpointCleanup`: a finished trial's checkpoints are deleted (a FAILed one keeps
  them: its re-run resumes from them);
* :class:`KeepBest`: after each trial, the weights of trials that left the study's top
  ``artifacts.keep_best`` are deleted (:mod:`hpo.storage.artifacts.retention`);
* :class:`Budget`: stops the study once it has its budget of finished trials;
* :class:`Progress`: one line per epoch and per trial, with estimates of the time left.

Example::

    budget = Budget(100)
    progress = Progress(budget, max_epochs=5, log=print)
    objective = Objective(spec, data, listeners=[progress, FigureUpload(store, log=print)])
    study.optimize(objective, n_trials=1, callbacks=[CheckpointCleanup(objective), budget, progress])
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from hpo import record
from hpo.analysis.notes import classes_line, save_note, study_note, top_figures, trial_note
from hpo.analysis.plots import upload_trial_figure
from hpo.analysis.report import build_report
from hpo.analysis.steps import upload_step_figure
from hpo.analysis.tensorboard import write_trial
from hpo.analysis.trials import load_study_data
from hpo.record import EpochRecord, Tally, TrialRecord, Verdict
from hpo.search.objective import TrialListener
from hpo.search.study import FINISHED, LiveTally
from hpo.storage.artifacts.retention import sweep_weights
from hpo.storage.optuna_private import storage_of
from hpo.training.checkpoints import TrialCheckpoints
from hpo.training.cores import CoreShare

Log = Callable[[str], None]
logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``, ``7300`` -> ``2h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class FigureUpload(TrialListener):
    """Draws each trial's figures as it ends (epoch curves, and the steps when there is telemetry)
    and uploads them as artifacts of the trial.

    A full disk or a broken store costs a warning, never the trial.
    """

    def __init__(self, store: Any, log: Log = lambda m: None) -> None:
        self.store = store
        self.log = log

    def trial_ending(self, trial: optuna.Trial, ending: TrialRecord) -> None:
        try:
            upload_trial_figure(ending, trial, self.store)
            if ending.steps is not None and len(ending.steps):
                upload_step_figure(ending, ending.steps, trial, self.store)
        except Exception as exc:
            logger.warning("trial %d: figure not uploaded: %s", trial.number, exc)
            self.log(f"  warning: trial {trial.number}: figure not uploaded: {exc}")


class DashboardNotes(TrialListener):
    """Writes trial notes as trials end and the study's note after they finish (throttled).

    Register it as a :class:`~hpo.search.objective.TrialListener` (``trial_ending``) and as an Optuna
    callback (``__call__``). The study's note is rewritten at most once per ``every_s`` seconds, and
    then only once the study has ``growth`` (a fraction) more finished trials than at this worker's
    last rewrite: a rewrite reads the whole study, and 1,000 workers rewriting it every minute would
    each read a 10,000-trial study 60 times an hour; this way each reads it a few dozen times in
    the study's life, and the worker's last rewrite, when it stops, brings the note up to date.
    """

    def __init__(self, every_s: float = 60.0, log: Log = lambda m: None, growth: float = 0.1) -> None:
        self.every_s = every_s
        self.growth = growth
        self.log = log
        self._last: float | None = None
        self._noted: int | None = None  # the finished trials the note read at this worker's last rewrite

    def trial_ending(self, trial: optuna.Trial, ending: TrialRecord) -> None:
        try:
            save_note(trial, trial_note(ending, ending.steps), new=True)  # written once, as the trial ends
        except Exception as exc:
            self._warn(f"trial {trial.number}: note not saved: {exc}")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._last is not None and time.monotonic() - self._last < self.every_s:
            return
        if self._noted is not None:
            finished = len(study.get_trials(deepcopy=False, states=FINISHED))  # Optuna's cache: what changed
            if finished < self._noted * (1 + self.growth):
                self._last = time.monotonic()
                return
        self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        """Rewrite the study's note now (the worker calls it once more when it stops, past the throttle)."""
        self._last = time.monotonic()
        try:
            data = load_study_data(study.study_name, storage_of(study))
            self._noted = len(data.finished)
            try:
                links = top_figures(study, data.finished, data.best)
            except Exception as exc:  # the reading is worth saving without its links
                self._warn(f"study note: figure links left out: {exc}")
                links = []
            best = data.best
            save_note(study, study_note(build_report(data).reading, len(data.finished), links,
                                        classes_line(best) if best is not None else ""))
        except Exception as exc:
            self._warn(f"study note not saved: {exc}")

    def _warn(self, message: str) -> None:
        logger.warning("%s", message)
        self.log(f"  warning: {message}")


class TensorBoardExport(TrialListener):
    """Writes each trial's step telemetry as TensorBoard scalars as it ends (:mod:`hpo.analysis.tensorboard`); never fails it."""

    def __init__(self, log_dir: str, log: Log = lambda m: None) -> None:
        self.log_dir = log_dir
        self.log = log

    def trial_ending(self, trial: optuna.Trial, ending: TrialRecord) -> None:
        if ending.steps is None:
            return
        try:
            write_trial(self.log_dir, trial.study.study_name, ending, ending.steps)
        except Exception as exc:
            logger.warning("trial %d: tensorboard run not written: %s", trial.number, exc)
            self.log(f"  warning: trial {trial.number}: tensorboard run not written: {exc}")


class ShareCores(TrialListener):
    """Re-takes this process's share of the machine's cores before each trial and after each epoch,
    so a second ``hpo optimize`` started beside this one splits the cores (:mod:`hpo.training.cores`)."""

    def __init__(self, share: CoreShare, log: Callable[[str], None]) -> None:
        self.share, self.log = share, log

    def trial_started(self, trial: optuna.Trial, rerun_of: int | None, resumed_at: int | None) -> None:
        self.share.rebalance(self.log)

    def epoch_finished(self, trial: optuna.Trial, row: EpochRecord, max_epochs: int, verdict: Verdict | None) -> None:
        self.share.rebalance(self.log)


class CheckpointCleanup:
    """Deletes a COMPLETE or PRUNED trial's checkpoints; a FAILed trial keeps them for its re-run."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        key = record.checkpoint_of(trial)
        if key is None or trial.state.name not in record.FINISHED:
            return
        store = self.objective.store
        if store is not None:
            TrialCheckpoints(store, key).remove()


class KeepBest:
    """Deletes the kept weights of finished trials outside the study's top ``keep``, after every
    trial (whichever worker ran it: the sweep is safe from any of them at any time)."""

    def __init__(self, objective: Any, keep: int) -> None:
        self.objective = objective
        self.keep = keep

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        store = self.objective.store
        if store is None:
            return
        try:
            sweep_weights(study, store, self.keep)
        except Exception as exc:  # a broken store: the next sweep (or hpo clean) tries again
            logger.warning("kept weights not swept: %s", exc)


class Budget:
    """Stops ``study.optimize`` once the study has ``budget`` finished trials (all workers together).

    The tally it reads (a :class:`~hpo.search.study.LiveTally`: what changed since the last) is kept
    in ``last`` for the worker's next decision and for :class:`Progress`.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.last: Tally | None = None
        self.tally = LiveTally()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.last = self.tally.read(study)
        if self.last.finished >= self.budget:
            study.stop()


class Progress(TrialListener):
    """One line per epoch and per finished trial, with the time left for the trial and the study.

    Estimates are measured, not assumed: the trial's from this worker's epoch times; the study's
    from this worker's wall time per epoch of a whole trial (evaluation, figures and database
    included), times the epochs a finished trial of this study has taken on average (so pruning
    shortens the estimate only as much as it has really shortened trials), divided among the
    trials running at once.
    """

    def __init__(self, budget: Budget, max_epochs: int, log: Log = lambda m: None) -> None:
        self.budget = budget
        self.max_epochs = max_epochs
        self.log = log
        self.ran = 0
        self.epoch_seconds: list[float] = []
        self.trial_seconds_per_epoch: list[float] = []
        self._started: dict[int, float] = {}

    # --- inside a trial (a TrialListener) ---

    def trial_started(self, trial: optuna.Trial, rerun_of: int | None, resumed_at: int | None) -> None:
        self._started[trial.number] = time.monotonic()
        if rerun_of is not None and rerun_of != trial.number:
            where = f"resumes at epoch {resumed_at} from its checkpoint" if resumed_at else \
                "starts from the first epoch (no checkpoint was saved)"
            if resumed_at is not None and self.max_epochs and resumed_at > self.max_epochs:
                where = f"its {self.max_epochs} epochs were done: it finishes from its checkpoint"
            self.log(f"trial {trial.number}: re-run of interrupted trial {rerun_of}, same parameters; {where}")

    def epoch_finished(self, trial: optuna.Trial, row: EpochRecord, max_epochs: int, verdict: Verdict | None) -> None:
        self.epoch_seconds.append(row.seconds)
        left = "" if verdict is not None or row.epoch >= max_epochs else \
            f" | trial left ~{format_duration((max_epochs - row.epoch) * self._seconds_per_epoch())}"
        self.log(
            f"  trial {trial.number} epoch {row.epoch}/{max_epochs}: train loss {row.train_loss:.4f}"
            f"  val loss {row.val_loss:.4f}  val acc {row.val_accuracy:.4f}"
            f"  ({row.seconds:.1f}s, {row.tokens_per_second / 1000:.0f}k tok/s){left}"
        )

    # --- after a trial (an Optuna callback) ---

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.ran += 1
        t = self.budget.last or self.budget.tally.read(study)
        r = TrialRecord.from_trial(trial)
        started = self._started.pop(trial.number, None)
        if started is not None and r.epochs_run:
            resumed = (r.resumed_at or 1) - 1
            self.trial_seconds_per_epoch.append((time.monotonic() - started) / max(1, r.epochs_run - resumed))
        if r.state == record.COMPLETE:
            what = f"COMPLETE  val acc {trial.value:.4f}"
        elif r.diverged and r.verdict is not None:
            what = f"PRUNED    diverged: {r.verdict.describe()}; {r.rates_text()}"
        elif r.pruned:
            what = f"PRUNED    underperforming at epoch {trial.last_step} (best val acc {r.accuracy or 0:.4f}); {r.rates_text()}"
        else:
            what = r.state
        best = f"best {t.best.accuracy:.4f} (trial {t.best.number})" if t.best else "no complete trial yet"
        self.log(f"trial {trial.number} {what} | {t.finished}/{self.budget.budget} finished, {best}{self._study_left(study, t)}")

    def _seconds_per_epoch(self) -> float:
        return statistics.fmean(self.epoch_seconds[-20:]) if self.epoch_seconds else 0.0

    def _study_left(self, study: optuna.Study, t: Tally) -> str:
        remaining = self.budget.budget - t.finished
        if remaining <= 0 or not self.trial_seconds_per_epoch:
            return ""
        mean = self.budget.tally.mean_epochs()
        per_trial = float(self.max_epochs) if mean is None else mean
        parallel = t.running + 1  # the trials running elsewhere, and the next one here
        per_epoch = statistics.fmean(self.trial_seconds_per_epoch[-20:])
        seconds = remaining * per_trial * per_epoch / parallel
        return (f" | study left ~{format_duration(seconds)} ({remaining} trial{'s' if remaining != 1 else ''} x "
                f"{per_trial:.1f} epochs x {per_epoch:.1f}s / {parallel} worker{'s' if parallel != 1 else ''})")
