"""hpo's divergence rules in a PyTorch Lightning ``Trainer``: :class:`DivergenceCallback`.

Optional: it needs the ``lightning`` package (``pip install 'hpo[lightning]'``); importing this
module without it is an :class:`~hpo.errors.HpoError` that says so.

The callback drives a :class:`~hpo.divergence.DivergenceMonitor`, as hpo's own loop does:

* every training step's loss goes to the step guard (NaN/inf at once, an explosion from the
  second epoch on), read from what ``training_step`` returns;
* each optimizer step's per-group gradient norms are measured before clipping (Lightning calls
  ``on_before_optimizer_step`` before it clips), by the parameter groups' ``"name"`` entries
  (else ``group0``, ``group1``...: :func:`hpo.training.step.param_groups`);
* after each epoch that validated, the epoch rules judge the mean of the epoch's step losses,
  the validation loss you log (``self.log("val_loss", ...)``; another name: ``val_loss=``) and
  the epoch's largest gradient norm.

On the first verdict it sets ``trainer.should_stop`` (with the rules' ``action = "record"`` only
for NaN, as hpo's loop does), keeps the verdict in :attr:`DivergenceCallback.verdict` and prints
one line (Lightning's info log); Lightning stops after the current step. Epochs in the verdict count from 1, as hpo's
do; Lightning's own numbers start at 0. The monitor's state travels in Lightning checkpoints.

Example::

    callback = DivergenceCallback(DivergenceSpec(threshold=0.5))
    trainer = lightning.Trainer(max_epochs=20, callbacks=[callback])
    trainer.fit(model, train_loader, val_loader)
    callback.verdict        # None, or Verdict(reason='jump', epoch=9, ratio=2.4)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from hpo.divergence import DivergenceMonitor
from hpo.errors import HpoError
from hpo.record import Verdict
from hpo.spec.schema import DivergenceSpec
from hpo.training.step import group_norms, param_groups

try:  # the one import of the optional package
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_info
except ImportError:  # pragma: no cover - the test skips without it
    raise HpoError("hpo.training.lightning needs the lightning package: pip install 'hpo[lightning]'") from None


class DivergenceCallback(pl.Callback):
    """Stops a Lightning run that diverged, by hpo's rules; see the module docstring."""

    def __init__(self, rules: DivergenceSpec | None = None, val_loss: str = "val_loss", sample_every: int = 1) -> None:
        self.rules = rules or DivergenceSpec()
        self.val_loss = val_loss
        self.sample_every = sample_every
        self.monitor: DivergenceMonitor | None = None
        self._saved: Mapping[str, Any] | None = None  # a checkpoint's monitor, loaded before fit starts
        self._loss_sum = 0.0
        self._loss_count = 0
        self._norm_max = 0.0
        self._validated: float | None = None  # this epoch's validation loss

    @property
    def verdict(self) -> Verdict | None:
        return self.monitor.verdict if self.monitor is not None else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.num_training_batches
        steps = int(steps) if math.isfinite(steps) else self.rules.step_warmup
        self.monitor = DivergenceMonitor(self.rules, steps_per_epoch=max(1, steps), sample_every=self.sample_every)
        if self._saved is not None:
            self.monitor.load_state_dict(dict(self._saved))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._loss_count, self._norm_max, self._validated = 0.0, 0, 0.0, None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        norms = group_norms(param_groups(optimizer))
        self._norm_max = max(self._norm_max, float(norms.max())) if len(norms) else self._norm_max

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.monitor is None or not isinstance(loss, torch.Tensor):
            return  # a skipped step (training_step returned None)
        value = float(loss.detach())
        self._loss_sum += value
        self._loss_count += 1
        if self.monitor.wants(batch_idx):
            self._judge(trainer, self.monitor.on_step(trainer.current_epoch + 1, batch_idx, value))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.val_loss)
        if not trainer.sanity_checking and value is not None:
            self._validated = float(value)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates before this hook; an epoch without validation is not judged.
        if self.monitor is None or self._validated is None or not self._loss_count:
            return
        train_loss = self._loss_sum / self._loss_count
        self._judge(trainer, self.monitor.on_epoch(trainer.current_epoch + 1, train_loss, self._validated,
                                                   self._norm_max))

    def _judge(self, trainer: pl.Trainer, verdict: Verdict | None) -> None:
        if verdict is None or self.monitor is None:
            return
        stops = self.monitor.stops(verdict)
        rank_zero_info(f"hpo DivergenceCallback: {verdict.describe()} (hpo's epoch count; Lightning's epoch "
              f"{verdict.epoch - 1}){': stopping' if stops else ''}")
        if stops:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict()} if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("monitor")
