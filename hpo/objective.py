"""The Optuna objective: spec + trial -> sampled settings -> training -> report/prune -> value.

This is the only module where Optuna meets the training loop. Per epoch it stores the trial's
history as user attributes (so the :class:`~hpo.pruning.DivergencePruner`, the analysis and
optuna-dashboard all read the same numbers), reports validation accuracy for the wrapped
pruner, and stops training when the pruner says so. A diverged trial ends PRUNED with
``diverged = True`` and the reason, epoch and size of the jump.

After every epoch but the last it also saves a checkpoint in the study's artifact store
(:mod:`hpo.checkpoints`). A trial re-run after its worker died or was interrupted carries the
same ``checkpoint`` key, resumes after the last saved epoch, and records ``resumed_at_epoch``.

Example::

    objective = Objective(spec, load_dataset(spec.data))
    study.optimize(objective, n_trials=20)
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import optuna
import torch

from hpo.artifacts import artifact_store
from hpo.checkpoints import TrialCheckpoints
from hpo.data import Dataset
from hpo.divergence import Verdict
from hpo.model import LSTMClassifier
from hpo.pruning import verdict_from_attrs
from hpo.spec import CategoricalParam, FloatParam, IntParam, Spec, SpaceEntry
from hpo.train import EpochStats, TrainConfig, TrainResult, evaluate, load_best, resolve_device, resolve_precision, train

Log = Callable[[str], None]


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


def group_lrs(values: Mapping[str, Any]) -> dict[str, float]:
    """Learning rate per layer group, from explicit rates or ULMFiT's ``lr_head / lr_div**depth``."""
    head = float(values["lr_head"])
    if "lr_div" in values:
        div = float(values["lr_div"])
        return {"embedding": head / div**2, "encoder": head / div, "head": head}
    return {"embedding": float(values["lr_embedding"]), "encoder": float(values["lr_encoder"]), "head": head}


def train_config(spec: Spec, values: Mapping[str, Any]) -> TrainConfig:
    return TrainConfig(
        lrs=group_lrs(values),
        clip_norm=float(values["clip_norm"]),
        cycle_len=int(values["cycle_len"]),
        cycle_mult=spec.train.cycle_mult,
        lr_min_ratio=spec.train.lr_min_ratio,
        max_epochs=spec.train.max_epochs,
        weight_decay=float(values["weight_decay"]),
        optimizer=spec.train.optimizer,
        batch_size=spec.data.batch_size,
        bucket_batches=spec.data.bucket_batches,
        precision=spec.train.precision,
        seed=spec.train.seed,
        step_explosion=spec.divergence.step_explosion,
        step_warmup=spec.divergence.step_warmup,
    )


def build_model(spec: Spec, vocab_size: int, dropout: float) -> LSTMClassifier:
    torch.manual_seed(spec.train.seed)  # every trial starts from the same weights: less noise
    m = spec.model
    return LSTMClassifier(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.bidirectional, dropout)


class _History:
    """Per-epoch lists, stored on the trial after every epoch under the names the analysis reads."""

    def __init__(self) -> None:
        self.lists: dict[str, list[Any]] = {
            k: [] for k in ("train_loss", "val_loss", "val_accuracy", "grad_norm", "grad_norm_max",
                            "clipped_fraction", "lr", "epoch_seconds")
        }

    def add(self, s: EpochStats) -> None:
        row = {
            "train_loss": s.train_loss, "val_loss": s.val_loss, "val_accuracy": s.val_accuracy,
            "grad_norm": s.grad_norm_mean, "grad_norm_max": s.grad_norm_max,
            "clipped_fraction": s.clipped_fraction, "lr": s.lr, "epoch_seconds": round(s.seconds, 3),
        }
        for key, value in row.items():
            self.lists[key].append(value)

    def store(self, trial: optuna.Trial) -> None:
        for key, value in self.lists.items():
            trial.set_user_attr(key, value)

    def restore(self, attrs: Mapping[str, Any], epochs: int) -> None:
        """Take over the first ``epochs`` epochs recorded by the trial this one resumes."""
        for key, values in self.lists.items():
            values.extend(list(attrs.get(key, []))[:epochs])


class Objective:
    """Callable objective for ``study.optimize``; returns the best validation accuracy."""

    def __init__(self, spec: Spec, data: Dataset, device: torch.device | None = None, log: Log = lambda m: None) -> None:
        self.spec = spec
        self.data = data
        self.device = device or resolve_device(spec.train.device)
        self.log = log
        self._stores: dict[int, tuple[Any, str]] = {}  # per study: (artifact store, study uid)

    def _store(self, study: optuna.Study) -> tuple[Any, str]:
        """(artifact store, study uid), read from the study once per worker, not once per trial."""
        if id(study) not in self._stores:
            self._stores[id(study)] = (artifact_store(study), study.user_attrs.get("uid", study.study_name))
        return self._stores[id(study)]

    def _checkpoints(self, trial: optuna.Trial) -> TrialCheckpoints:
        """This trial's checkpoints; a retry inherits the ``checkpoint`` key of the trial it re-runs."""
        store, uid = self._store(trial.study)
        key = trial.user_attrs.get("checkpoint")
        if key is None:
            key = f"{uid}-trial-{trial.number}"
            trial.set_user_attr("checkpoint", key)
        return TrialCheckpoints(store, key)

    def __call__(self, trial: optuna.Trial) -> float:
        values = sample_params(trial, self.spec.space)
        cfg = train_config(self.spec, values)
        trial.set_user_attr("lr_groups", cfg.lrs)
        checkpoints = self._checkpoints(trial)
        resume = checkpoints.load()
        history = _History()
        if resume is not None:
            history.restore(trial.user_attrs, resume.epoch)
            trial.set_user_attr("resumed_at_epoch", resume.epoch + 1)
            self.log(f"  trial {trial.number} resumes at epoch {resume.epoch + 1} from its checkpoint")
        pruned = False

        def on_epoch(stats: EpochStats) -> bool:
            nonlocal pruned
            history.add(stats)
            history.store(trial)  # before report: the pruner reads these
            trial.report(stats.val_accuracy, stats.epoch)
            self.log(
                f"  trial {trial.number} epoch {stats.epoch}/{cfg.max_epochs}: train loss {stats.train_loss:.4f}"
                f"  val loss {stats.val_loss:.4f}  val acc {stats.val_accuracy:.4f}"
                f"  ({stats.seconds:.1f}s, {stats.tokens_per_second / 1000:.0f}k tok/s)"
            )
            # After the last epoch there is nothing left to save: a trial that ran every epoch is
            # COMPLETE, so its value counts and it joins the wrapped pruner's reference pool. Its
            # divergence is still judged below, on the whole history.
            pruned = stats.epoch < cfg.max_epochs and trial.should_prune()
            return pruned

        model = build_model(self.spec, self.data.vocab_size, float(values["dropout"]))
        result = train(model, self.data, cfg, self.device, on_epoch, resume=resume, on_checkpoint=checkpoints.save)
        checkpoints.remove()  # finished one way or another: nothing left to resume
        verdict = self._verdict(result, history)
        value = max(history.lists["val_accuracy"], default=0.0)
        self._store_outcome(trial, model, result, verdict, test=verdict is None and not pruned and _may_be_best(trial, value))
        self._upload_figure(trial, history, verdict)
        if verdict is not None:
            raise optuna.TrialPruned(f"diverged: {verdict.describe()}")
        if pruned:
            raise optuna.TrialPruned(f"pruned by {type(trial.study.pruner).__name__} at epoch {len(result.history)}")
        return value

    def _verdict(self, result: TrainResult, history: _History) -> Verdict | None:
        if result.explosion is not None:
            e = result.explosion
            return Verdict(e.reason, e.epoch, e.ratio)
        return verdict_from_attrs(history.lists, self.spec.divergence)

    def _upload_figure(self, trial: optuna.Trial, history: _History, verdict: Verdict | None) -> None:
        """Learning curves and gradient norms onto the trial's dashboard page; never fails the trial."""
        try:
            from hpo.analysis.plots import upload_trial_figure

            outcome = {"diverged": verdict is not None, "divergence_reason": verdict.reason if verdict else None,
                       "diverged_epoch": verdict.epoch if verdict else None}
            upload_trial_figure(trial, {**history.lists, **outcome}, store=self._store(trial.study)[0])
        except Exception as exc:  # a full disk or a broken store must not cost the trial
            logging.getLogger(__name__).warning("trial %d: figure not uploaded: %s", trial.number, exc)
            self.log(f"  warning: trial {trial.number}: figure not uploaded: {exc}")

    def _store_outcome(self, trial: optuna.Trial, model: LSTMClassifier, result: TrainResult, verdict: Verdict | None,
                       test: bool) -> None:
        attrs: dict[str, Any] = {
            "diverged": verdict is not None,
            "divergence_reason": verdict.reason if verdict else None,
            "diverged_epoch": verdict.epoch if verdict else None,
            "jump_ratio": verdict.ratio if verdict else None,
            "best_epoch": result.best_epoch,
            "epochs_run": result.start_epoch - 1 + len(result.history) + (1 if result.explosion else 0),
            "steps_per_epoch": result.steps_per_epoch,
            "precision": resolve_precision(self.spec.train.precision, self.device),
        }
        if result.explosion is not None:
            attrs["diverged_step"] = result.explosion.step
        if test and result.best_state is not None:
            best = load_best(model, result)
            attrs["test_accuracy"] = evaluate(best, self.data.test, self.device, self.spec.data.batch_size * 2, self.spec.train.precision)[1]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if verdict is not None:
            self.log(f"  trial {trial.number} diverged: {verdict.describe()}")
