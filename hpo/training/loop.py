"""One training loop: per-group learning rates, global-norm clipping, SGDR, per-epoch telemetry.

It knows nothing of Optuna. After every epoch it calls ``on_epoch(record, verdict)`` with the
epoch's :class:`~hpo.record.EpochRecord`; a callback that returns True stops training (that is
how the objective prunes). With a :class:`~hpo.divergence.DivergenceMonitor` it also stops on
the monitor's verdict: inside an epoch when the train loss turns NaN/inf or explodes, after an
epoch when the epoch rules say the run diverged; the verdict is in the result. With
``on_checkpoint`` it hands over a :class:`Checkpoint` after every epoch (the last too: a trial
stopped while it scores and draws its figures finishes from it without training again; not after
an epoch whose divergence verdict stops the run), before ``on_epoch`` hears of that epoch, and
``resume=checkpoint`` continues from it exactly as if training had never stopped (a killed
worker's trial resumes).

Per epoch it records train loss, validation loss and accuracy, and per layer group the gradient
norm before clipping (mean and max over steps) and the fraction of steps that were clipped, so a
study can show how the gradients behaved over time. Every few steps it also samples the step
itself (loss, rate, pre-clip norm, clipping and update-to-weight ratio per group:
:mod:`hpo.training.telemetry`, ``TrainConfig.telemetry_every``) into ``TrainResult.telemetry``; a
checkpoint carries the samples so far, so a resumed run keeps them. Telemetry stays on the device
as tensors and is read once per epoch: no per-step host synchronisation on CUDA.

Example::

    cfg = TrainConfig(lrs={"embedding": 1e-3, "encoder": 1e-3, "head": 3e-3}, clip_norm=1.0,
                      cycle_len=2, max_epochs=4)
    result = train(model, dataset, cfg, on_epoch=lambda row, verdict: print(row.epoch, row.val_accuracy) or False)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from hpo.data import Dataset, Split, iter_batches
from hpo.divergence import DivergenceMonitor
from hpo.record import EpochRecord, Verdict
from hpo.training.config import TrainConfig
from hpo.training.device import resolve_device
from hpo.training.models import groups_of
from hpo.training.schedule import sgdr_factor
from hpo.training.step import classifier_loss, make_optimizer, predictions, update
from hpo.training.telemetry import StepRecorder, StepTelemetry

EpochCallback = Callable[[EpochRecord, "Verdict | None"], bool]


@dataclass
class Checkpoint:
    """Everything :func:`train` needs to carry on after ``epoch`` as if it had never stopped.

    The batch order and dropout masks are seeded per epoch, so weights, optimizer moments, the
    best epoch so far and the divergence monitor's state are all there is. The tensors handed to
    ``on_checkpoint`` are the live ones: save them (``torch.save``) during the call.

    Example::

        saved = []
        train(model, data, cfg, on_checkpoint=lambda c: saved.append(copy.deepcopy(c)))
        result = train(fresh_model, data, cfg, resume=saved[1])   # continues at epoch 3
    """

    epoch: int  # the last finished epoch
    model: dict[str, torch.Tensor]
    optimizer: dict
    best_epoch: int | None
    best_accuracy: float
    best_state: dict[str, torch.Tensor] | None
    monitor: dict | None
    telemetry: dict | None = None  # StepRecorder.state_dict(): the earlier epochs' sampled steps
    history: list[dict] | None = None  # every epoch's EpochRecord.to_attr() up to ``epoch``; None: unknown (older file)


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None  # by validation accuracy
    best_state: dict[str, torch.Tensor] | None = None
    stopped_by_callback: bool = False
    verdict: Verdict | None = None  # the monitor's, when the run diverged
    steps_per_epoch: int = 0
    start_epoch: int = 1  # later than 1 when resumed from a checkpoint
    cut_mid_epoch: bool = False  # the monitor stopped it inside an epoch
    telemetry: StepTelemetry | None = None  # sampled steps, resumed epochs included; None when off

    @property
    def epochs_run(self) -> int:
        """Epochs trained in all, resumed ones included; a partial epoch cut short counts."""
        return self.start_epoch - 1 + len(self.history) + int(self.cut_mid_epoch)


def first_epochs(group_names: list[str], unfreeze_every: int) -> dict[str, int]:
    """The epoch each layer group starts to train in: gradual unfreezing from the top.

    The head (last) trains from epoch 1; each group below joins ``unfreeze_every`` epochs after
    the one above it (ULMFiT: 1). ``unfreeze_every = 0``: everything from epoch 1.
    """
    depth = {name: len(group_names) - 1 - i for i, name in enumerate(group_names)}
    return {name: 1 + depth[name] * unfreeze_every for name in group_names}


def _freeze(groups: Mapping[str, list[torch.nn.Parameter]], starts: Mapping[str, int], epoch: int) -> None:
    # A frozen group computes no gradients at all (its backward is skipped, and AdamW skips
    # parameters without a gradient, moments included), so it is exactly as it was.
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(epoch >= starts[name])


@dataclass(frozen=True)
class Evaluation:
    """A split's mean loss, accuracy and confusion matrix (``confusion[true][predicted]``, counts)."""

    loss: float
    accuracy: float
    confusion: list[list[int]]

    def class_accuracy(self, classes: Sequence[str]) -> dict[str, float]:
        """Per class, the share of its rows predicted right (its recall); classes without rows left out."""
        return {name: row[i] / sum(row) for i, (name, row) in enumerate(zip(classes, self.confusion)) if sum(row)}

    @property
    def macro_f1(self) -> float:
        """The unweighted mean of the per-class F1 scores, over classes that have rows or predictions:
        unlike accuracy it drops when a small class is never predicted."""
        k = len(self.confusion)
        scores = []
        for i in range(k):
            tp = self.confusion[i][i]
            support, predicted = sum(self.confusion[i]), sum(self.confusion[j][i] for j in range(k))
            if support or predicted:
                scores.append(2 * tp / (support + predicted))
        return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 128,
                   precision: str = "fp32", num_classes: int = 2) -> Evaluation:
    """Loss, accuracy and confusion matrix over a split, counted on the device (one read at the end)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    for batch in iter_batches(split, batch_size, shuffle=False):
        batch = batch.to(device)
        logits, loss = classifier_loss(model, batch, device, precision, reduction="sum")
        loss_sum += loss
        confusion += torch.bincount(batch.labels.long() * num_classes + predictions(logits),
                                    minlength=num_classes * num_classes)
    n = max(len(split), 1)
    matrix = confusion.view(num_classes, num_classes).tolist()
    return Evaluation(loss_sum.item() / n, sum(matrix[i][i] for i in range(num_classes)) / n, matrix)


def evaluate(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 128,
             precision: str = "fp32", num_classes: int = 2) -> tuple[float, float]:
    """(mean loss, accuracy) over a split."""
    result = evaluate_split(model, split, device, batch_size, precision, num_classes)
    return result.loss, result.accuracy


def train(
    model: torch.nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    monitor: DivergenceMonitor | None = None,
) -> TrainResult:
    device = device or resolve_device()
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    groups = groups_of(model)
    group_names = list(groups)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    starts = first_epochs(group_names, cfg.unfreeze_every)
    result = TrainResult(steps_per_epoch=steps_per_epoch)
    best_acc = -1.0
    recorder = None
    if cfg.telemetry_every >= 0:
        meta = {"cycle_len": cfg.cycle_len, "cycle_mult": cfg.cycle_mult, "clip_norm": cfg.clip_norm,
                "max_epochs": cfg.max_epochs, "lrs": dict(cfg.lrs)}
        recorder = StepRecorder(group_names, steps_per_epoch, cfg.telemetry_every, meta,
                                resume.telemetry if resume is not None else None)
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if monitor is not None and resume.monitor is not None:
            monitor.load_state_dict(resume.monitor)
        best_acc, result.best_epoch, result.best_state = resume.best_accuracy, resume.best_epoch, resume.best_state
        result.start_epoch = resume.epoch + 1

    for epoch in range(result.start_epoch, cfg.max_epochs + 1):
        model.train()
        _freeze(groups, starts, epoch)
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout masks: reproducible per epoch
        loss_sum = torch.zeros((), device=device)
        norm_sum = torch.zeros(len(groups), device=device)
        norm_max = torch.zeros(len(groups), device=device)
        clipped = torch.zeros((), device=device)
        tokens = 0
        start_lrs = {}
        batches = iter_batches(data.train, cfg.batch_size, True, cfg.seed * 1_000 + epoch, cfg.bucket_batches)
        for step, batch in enumerate(batches):
            factor = sgdr_factor(epoch - 1 + step / steps_per_epoch, cfg.cycle_len, cfg.cycle_mult, cfg.lr_min_ratio)
            for g in optimizer.param_groups:
                g["lr"] = cfg.lrs[g["name"]] * factor
            if step == 0:
                start_lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
            tokens += int(batch.lengths.sum())  # before the copy: no device sync
            batch = batch.to(device)
            _, loss = classifier_loss(model, batch, device, cfg.precision)
            if monitor is not None and monitor.wants(step):
                verdict = monitor.on_step(epoch, step, loss.item())
                if verdict is not None:
                    result.verdict = verdict
                    if monitor.stops(verdict):
                        result.cut_mid_epoch = True
                        if recorder is not None:  # the steps up to the blow-up are the ones that matter
                            result.telemetry = recorder.result()
                        return result
            sampled = recorder is not None and recorder.wants(step)
            stats = update(loss, optimizer, groups, cfg.clip_norm,
                           before_step=(lambda norms: recorder.observe(loss, norms, groups, sampled)) if recorder else None)
            if stats.clipped is not None:
                clipped += stats.clipped.float()
            norm_sum += stats.norms
            norm_max = torch.maximum(norm_max, stats.norms)
            if sampled:
                recorder.record(step, epoch, [g["lr"] for g in optimizer.param_groups], loss, stats.norms,
                                stats.clipped if stats.clipped is not None else torch.zeros((), device=device), groups)
            loss_sum += loss.detach()
        steps = max(steps_per_epoch, 1)
        if recorder is not None:
            recorder.end_epoch()
        evaluation = evaluate_split(model, data.valid, device, cfg.batch_size * 2, cfg.precision, data.num_classes)
        val_loss, val_acc = evaluation.loss, evaluation.accuracy
        seconds = time.perf_counter() - t0
        row = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum.item() / steps,
            val_loss=val_loss,
            val_accuracy=val_acc,
            grad_norm_mean=dict(zip(group_names, (norm_sum / steps).tolist())),
            grad_norm_max=dict(zip(group_names, norm_max.tolist())),
            clipped_fraction=clipped.item() / steps,
            lr=start_lrs,
            seconds=seconds,
            tokens_per_second=tokens / seconds,
            val_class_accuracy=evaluation.class_accuracy(data.classes),
            val_macro_f1=evaluation.macro_f1,
        )
        result.history.append(row)
        if val_acc > best_acc:
            best_acc = val_acc
            result.best_epoch = epoch
            result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        verdict = monitor.on_epoch(epoch, row.train_loss, val_loss, row.max_grad_norm) if monitor else None
        stops = verdict is not None and monitor is not None and monitor.stops(verdict)
        # Saved before the epoch is announced: once a worker has printed or reported it, no signal loses it.
        if on_checkpoint is not None and not stops:
            on_checkpoint(Checkpoint(
                epoch, model.state_dict(), optimizer.state_dict(), result.best_epoch, best_acc,
                result.best_state, monitor.state_dict() if monitor else None,
                recorder.state_dict() if recorder is not None else None,
                None if resume is not None and resume.history is None else
                [*(resume.history if resume is not None else []), *(r.to_attr() for r in result.history)],
            ))
        stop = on_epoch(row, verdict) if on_epoch is not None else False
        if verdict is not None:
            result.verdict = verdict
            if stops:
                break
        if stop:
            result.stopped_by_callback = True
            break
    if recorder is not None:
        result.telemetry = recorder.result()
    return result


def load_best(model: torch.nn.Module, result: TrainResult) -> torch.nn.Module:
    """A copy of ``model`` with the weights of its best epoch."""
    best = copy.deepcopy(model)
    if result.best_state is not None:
        best.load_state_dict(result.best_state)
    for module in best.modules():
        if isinstance(module, torch.nn.RNNBase):
            # A deep copy's weights are separate tensors: cuDNN warns on every call and copies them
            # into one chunk each time (seen on the lent GPU, benchmarks/ensemble.py). A no-op on CPU.
            module.flatten_parameters()
    return best
