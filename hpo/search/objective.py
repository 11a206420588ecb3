"""The Optuna objective: sample -> train -> record.

This is the only module where Optuna meets the training loop. A trial samples the spec's knobs,
trains with a :class:`~hpo.divergence.DivergenceMonitor`, and after every epoch writes the
trial's epoch rows (one user attribute, one storage write: see :mod:`hpo.record`) and reports
validation accuracy. Divergence is decided by the monitor, in this process: on its verdict the
trial stops and ends PRUNED carrying it. Otherwise ``trial.should_prune()`` asks the study's
pruner (median by default), which judges underperformance only. When the trial ends, its
:class:`~hpo.record.Outcome` is written once.

After every epoch, the last one too, the trial saves a checkpoint in the study's artifact store
(:mod:`hpo.training.checkpoints`), before the epoch is recorded or announced; a trial re-run after its
worker died or was interrupted carries the same ``checkpoint`` key, resumes after the last saved
epoch (one stopped after its last epoch, while it scored and drew its figures, trains no more), records ``resumed_at_epoch``, and reports the epochs it resumes from as its own (a re-run
inherits no reported steps: one that starts over reports each step once).

Everything else a worker does around a trial (progress lines, figures, deleting checkpoints,
the study's budget) lives in :mod:`hpo.search.callbacks`, registered by the worker: Optuna callbacks for
what follows a trial, and :class:`TrialListener` s for what happens while it runs (a finished
trial can no longer take artifacts, so its figure is drawn as it ends).

Example::

    objective = Objective(spec, load_dataset(spec.data))
    study.optimize(objective, n_trials=20)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import optuna
import torch

from hpo import record
from hpo.data import Dataset
from hpo.divergence import DivergenceMonitor
from hpo.record import EpochRecord, Outcome, StudyRecord, TrialRecord, Verdict
from hpo.spec import CategoricalParam, FloatParam, IntParam, SpaceEntry, Spec, lr_param, trial_model
from hpo.storage.artifacts.keys import checkpoint_key, trial_of_key, weights_id
from hpo.storage.artifacts.retention import may_keep
from hpo.storage.artifacts.stores import artifact_store, upload_bytes
from hpo.training import telemetry
from hpo.training.checkpoints import TrialCheckpoints, save_weights
from hpo.training.config import train_config, trial_seed
from hpo.training.device import loss_sampling, resolve_device, resolve_precision
from hpo.training.loop import Checkpoint, TrainResult, evaluate, load_best, train
from hpo.training.models import build_model, groups_of
from hpo.training.pretrain import PretrainedEncoder

logger = logging.getLogger(__name__)
# A constraint violated by a trial that diverged: TPE learns where not to sample, most of all when
# pruned trials fill its good group (successive halving, divergence.action = "record":
# benchmarks/results/constraint_synthetic.txt).
DIVERGED_CONSTRAINT = "diverged"


class TrialListener:
    """What a worker hears from inside a running trial; Optuna's callbacks only see it finished.

    Override what you need; the defaults do nothing. A listener must not fail the trial: the
    objective lets its exceptions through, so a listener that may fail catches its own.
    """

    def trial_started(self, trial: optuna.Trial, rerun_of: int | None, resumed_at: int | None) -> None:
        """``rerun_of``: the trial this one re-runs (its worker died or was interrupted)."""

    def epoch_finished(self, trial: optuna.Trial, row: EpochRecord, max_epochs: int, verdict: Verdict | None) -> None:
        """After each epoch's record is written and reported."""

    def trial_ending(self, trial: optuna.Trial, ending: TrialRecord) -> None:
        """Just before the trial finishes as ``ending.state``, while it can still take artifacts."""


def sample_params(trial: optuna.Trial, space: Mapping[str, SpaceEntry]) -> dict[str, Any]:
    """Suggest each distribution in ``space``; constants pass through unsampled."""
    values: dict[str, Any] = {}
    for name, entry in space.items():
        if isinstance(entry, FloatParam):
            values[name] = trial.suggest_float(name, entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, IntParam):
            values[name] = trial.suggest_int(name, entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, CategoricalParam):
            values[name] = trial.suggest_categorical(name, list(entry.choices))
        else:
            values[name] = entry
    return values


def _resumed_rows(resume: Checkpoint, trial: optuna.Trial) -> list[EpochRecord]:
    """The epochs a resumed trial has behind it: the checkpoint's own history, which the trial's
    record may lack (the worker stopped between saving an epoch and recording it); a checkpoint
    written before checkpoints carried it: the record, up to the checkpoint's epoch."""
    if resume.history is not None:
        return [EpochRecord.from_attr(row) for row in resume.history]
    return record.epochs_of(trial)[: resume.epoch]


def _may_be_best(trial: optuna.Trial, value: float) -> bool:
    """Whether this trial, about to complete with ``value``, is at least the study's best so far.

    Only such a trial can end up as the reported best, so only it is evaluated on the test split:
    on the whole split that costs about one validation pass, which pruned, diverged and beaten
    trials would spend for nothing. Two workers finishing at once may both evaluate; none misses.
    """
    try:
        return value >= trial.study.best_value
    except ValueError:  # no complete trial yet
        return True


class Objective:
    """Callable objective for ``study.optimize``; returns the best validation accuracy."""

    def __init__(self, spec: Spec, data: Dataset, device: torch.device | None = None,
                 listeners: Sequence[TrialListener] = (), store: Any = None,
                 encoder: PretrainedEncoder | None = None, precision: str | None = None) -> None:
        self.spec = spec
        self.data = data
        # train.precision, or for "auto" what this machine's calibration chose (hpo.training.calibrate)
        self.precision = precision if spec.train.precision == "auto" and precision else spec.train.precision
        self.encoder = encoder  # fine-tune from it; None: train from scratch
        self.device = device or resolve_device(spec.train.device)
        self.listeners = list(listeners)
        self.store = store  # the study's artifact store; read from the study on first use when None

    def checkpoints(self, trial: optuna.Trial | optuna.trial.FrozenTrial, study: optuna.Study) -> TrialCheckpoints:
        """A trial's checkpoints; a retry inherits the ``checkpoint`` key of the trial it re-runs."""
        if self.store is None:
            self.store = artifact_store(study)
        key = record.checkpoint_of(trial)
        if key is None:
            key = checkpoint_key(StudyRecord.of(study).key, trial.number)
            record.write_checkpoint(trial, key)
        return TrialCheckpoints(self.store, key)

    def __call__(self, trial: optuna.Trial) -> float:
        values = sample_params(trial, self.spec.space)
        dropout = float(values["dropout"]) if "dropout" in values else None  # a factory's model may keep its own
        model = build_model(self.spec, self.data.vocab_size, dropout, self.encoder, trial_seed(self.spec, values),
                            num_classes=self.data.num_classes, model=trial_model(self.spec.model, values))
        cfg = train_config(self.spec, values, self.precision, groups=list(groups_of(model)))
        rerun_of = trial_of_key(record.checkpoint_of(trial))
        record.write_lr_groups(trial, cfg.lrs)
        if self.encoder is not None:
            record.write_pretrained(trial, self.encoder.describe())
        checkpoints = self.checkpoints(trial, trial.study)
        resume = checkpoints.load()
        rows: list[EpochRecord] = []
        if resume is not None:
            rows = _resumed_rows(resume, trial)
            record.write_resumed_at(trial, resume.epoch + 1)
            record.write_epochs(trial, rows)
            for row in rows:  # the curve so far, as this trial's own (a re-run inherits no reported steps)
                trial.report(row.val_accuracy, row.epoch)
        for listener in self.listeners:
            listener.trial_started(trial, rerun_of, resume.epoch + 1 if resume else None)
        pruned_at: int | None = None

        def on_epoch(row: EpochRecord, verdict: Verdict | None) -> bool:
            nonlocal pruned_at
            rows.append(row)
            record.write_epochs(trial, rows)
            trial.report(row.val_accuracy, row.epoch)
            for listener in self.listeners:
                listener.epoch_finished(trial, row, cfg.max_epochs, verdict)
            # A diverged trial stops on its verdict (or, with divergence.action = "record",
            # trains on and is never pruned for underperformance). After the last epoch there is
            # nothing left to save: a trial that ran every epoch COMPLETEs, so its value counts
            # and it joins the wrapped pruner's reference pool.
            if verdict is None and monitor.verdict is None and row.epoch < cfg.max_epochs and trial.should_prune():
                pruned_at = row.epoch
            return pruned_at is not None

        steps = -(-len(self.data.train) // cfg.batch_size)
        monitor = DivergenceMonitor(self.spec.divergence, steps, loss_sampling(self.device), self.data.num_classes)
        result = train(model, self.data, cfg, self.device, on_epoch, resume=resume,
                       on_checkpoint=checkpoints.save, monitor=monitor)
        value = max((r.val_accuracy for r in rows), default=0.0)
        complete = result.verdict is None and pruned_at is None
        if hasattr(trial, "set_constraint"):  # Optuna 5: the sampler ranks diverged trials after every feasible one
            trial.set_constraint(DIVERGED_CONSTRAINT, 1.0 if result.verdict is not None else 0.0)
        outcome = self._outcome(model, result, pruned_at, test=complete and _may_be_best(trial, value))
        record.write_outcome(trial, outcome)
        if complete and result.best_state is not None and may_keep(trial.study, value, self.spec.artifacts.keep_best):
            self._keep_weights(trial, result)
        ending = TrialRecord(
            number=trial.number, state=record.COMPLETE if complete else record.PRUNED, params=trial.params,
            distributions=trial.distributions, accuracy=value if rows else None, epochs=tuple(rows), outcome=outcome,
            lrs={lr_param(g): lr for g, lr in cfg.lrs.items()}, steps=result.telemetry,
        )
        if result.telemetry is not None:
            self._upload_telemetry(trial, result.telemetry)
        for listener in self.listeners:
            listener.trial_ending(trial, ending)
        if result.verdict is not None:
            raise optuna.TrialPruned(f"diverged: {result.verdict.describe()}")
        if pruned_at is not None:
            raise optuna.TrialPruned(f"pruned by {type(trial.study.pruner).__name__} at epoch {pruned_at}")
        return value

    def _keep_weights(self, trial: optuna.Trial, result: TrainResult) -> None:
        """The trial's best-epoch weights, while it may join the top ``artifacts.keep_best``
        (:mod:`hpo.storage.artifacts.retention`): recorded first, so no file goes unaccounted; a
        broken store costs a warning, never the trial."""
        artifact_id = weights_id(StudyRecord.of(trial.study).key, trial.number)
        classes = tuple(self.data.classes)
        try:
            record.write_weights(trial, artifact_id)
            save_weights(self.store, artifact_id, result.best_state, self.data.vocab, classes, result.best_epoch)
        except Exception as exc:
            logger.warning("trial %d: best weights not kept: %s", trial.number, exc)

    def _upload_telemetry(self, trial: optuna.Trial, steps: telemetry.StepTelemetry) -> None:
        """One compressed artifact per trial (a few tens of kB); a broken store costs a warning, never the trial."""
        try:
            upload_bytes(steps.to_bytes(), telemetry.artifact_name(trial.number), trial, self.store, telemetry.MIMETYPE)
        except Exception as exc:
            logger.warning("trial %d: step telemetry not stored: %s", trial.number, exc)

    def _outcome(self, model: torch.nn.Module, result: TrainResult, pruned_at: int | None, test: bool) -> Outcome:
        test_accuracy = None
        if test and result.best_state is not None:
            best = load_best(model, result)
            test_accuracy = evaluate(best, self.data.test, self.device, self.spec.data.batch_size * 2,
                                     self.precision, self.data.num_classes)[1]
        return Outcome(
            verdict=result.verdict,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            steps_per_epoch=result.steps_per_epoch,
            precision=resolve_precision(self.precision, self.device),
            test_accuracy=test_accuracy,
            pruned_epoch=pruned_at,
        )
