"""Step telemetry as TensorBoard scalars (``hpo optimize --tensorboard DIR``), the tool most
PyTorch users already open. Optional: it needs the ``tensorboard`` package (``pip install
'hpo[tensorboard]'``), which ``torch.utils.tensorboard`` writes through.

Each trial is one run, ``DIR/<study>/trial-<N>``, written as the trial ends: per sampled step
``loss/train`` and ``loss/train_mean``, and per group ``lr/<group>``, ``grad_norm/<group>``,
``grad_norm_max/<group>``, ``update_ratio/<group>``, plus ``clipped``; per epoch, at the epoch's
last step, ``epoch/val_loss`` and ``epoch/val_accuracy``.

Example::

    tensorboard --logdir DIR      # then open http://localhost:6006
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.record import TrialRecord
from hpo.training.telemetry import StepTelemetry


def require_tensorboard() -> None:
    """An HpoError, said before any trial runs, when the optional package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise HpoError("--tensorboard needs the tensorboard package: pip install 'hpo[tensorboard]'") from None


def write_trial(log_dir: str | Path, study: str, trial: TrialRecord, t: StepTelemetry) -> Path:
    """Write one trial's telemetry and epoch rows as a TensorBoard run; returns the run's folder."""
    from torch.utils.tensorboard import SummaryWriter

    run = Path(log_dir) / study / f"trial-{trial.number}"
    writer: Any = SummaryWriter(str(run))
    try:
        for i, step in enumerate(t.step.tolist()):
            writer.add_scalar("loss/train", float(t.loss[i]), step)
            writer.add_scalar("loss/train_mean", float(t.loss_mean[i]), step)
            writer.add_scalar("clipped", float(t.clipped[i]), step)
            for g, group in enumerate(t.groups):
                for name in ("lr", "grad_norm", "grad_norm_max", "update_ratio"):
                    writer.add_scalar(f"{name}/{group}", float(getattr(t, name)[i, g]), step)
        for row in trial.epochs:
            at = row.epoch * t.steps_per_epoch - 1
            writer.add_scalar("epoch/val_loss", row.val_loss, at)
            writer.add_scalar("epoch/val_accuracy", row.val_accuracy, at)
    finally:
        writer.close()
    return run
