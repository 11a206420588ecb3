"""One training step, shared by the training loop, the range test, pretraining and the speed benchmark.

:func:`classifier_loss` is the classifier's forward pass and loss under the run's precision;
:func:`update` is everything after it: gradients, each layer group's pre-clip norm, global-norm
clipping, the optimizer step. Keeping them in one place keeps what a study measures (norms,
clipping) identical to what the range test and the benchmark run.

Example::

    optimizer = make_optimizer(model, cfg)
    groups = groups_of(model)
    logits, loss = classifier_loss(model, batch, device, cfg.precision)
    stats = update(loss, optimizer, groups, cfg.clip_norm)      # stats.norms: per group, before clipping
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from hpo.data import Batch
from hpo.errors import HpoError
from hpo.training.config import TrainConfig
from hpo.training.device import autocast
from hpo.training.models import groups_of

Groups = Mapping[str, list[torch.nn.Parameter]]


@dataclass(frozen=True)
class StepStats:
    """What one update did, as tensors on the device (reading them forces no host sync)."""

    norms: torch.Tensor  # per layer group, before clipping
    total: torch.Tensor  # the global norm, before clipping
    clipped: torch.Tensor | None  # whether the global norm was clipped; None without clipping


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One parameter group per layer group (named, at its peak rate), AdamW or SGD with momentum."""
    groups = [
        {"params": params, "lr": cfg.lrs[name], "name": name}
        for name, params in groups_of(model).items()
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, betas=cfg.betas, weight_decay=cfg.weight_decay)


def param_groups(optimizer: torch.optim.Optimizer) -> Groups:
    """An optimizer's parameter groups by name, in its order (:func:`make_optimizer`'s inverse): what
    :func:`update`, :func:`group_norms` and :class:`~hpo.training.telemetry.StepRecorder` take, so
    your own loop and optimizer get hpo's per-group norms and telemetry (``examples/own_loop.py``).

    A group's name is its ``"name"`` entry (``{"params": ..., "lr": 1e-3, "name": "head"}``; the
    PyTorch optimizers keep extra keys), else ``group0``, ``group1``...; an HpoError for a name
    used twice.
    """
    out: dict[str, list[torch.nn.Parameter]] = {}
    for i, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", f"group{i}"))
        if name in out:
            raise HpoError(f"two parameter groups are named {name!r}: give each group its own 'name'")
        out[name] = list(group["params"])
    return out


def classifier_loss(model: torch.nn.Module, batch: Batch, device: torch.device, precision: str,
                    reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits in fp32, loss) of a classifier on a batch already on ``device``.

    Logits of shape (B,) are one logit per text, two classes: binary cross-entropy against the
    label ids 0/1. Logits of shape (B, K): cross-entropy over K classes. Either way a model that
    guesses evenly scores ln K (:func:`hpo.divergence.chance_loss`).
    """
    with autocast(device, precision):
        logits = model(batch.tokens, batch.lengths).float()
    if logits.dim() == 1:
        return logits, F.binary_cross_entropy_with_logits(logits, batch.labels, reduction=reduction)
    return logits, F.cross_entropy(logits, batch.labels.long(), reduction=reduction)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class ids from :func:`classifier_loss`'s logits: a positive logit is class 1; else the largest."""
    return (logits > 0).long() if logits.dim() == 1 else logits.argmax(dim=-1)


def group_norms(groups: Groups) -> torch.Tensor:
    """Pre-clip gradient norm per layer group, as one tensor (no host sync)."""
    return torch.stack([
        torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) for params in groups.values()
    ])


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, groups: Groups, clip_norm: float,
           before_step: Callable[[torch.Tensor], None] | None = None) -> StepStats:
    """Backward, per-group norms, clipping to ``clip_norm`` (0: none), then the optimizer step.

    ``before_step(norms)`` runs after clipping and before the weights change (telemetry copies
    the weights it will compare against there).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norms = group_norms(groups)
    total = torch.linalg.vector_norm(norms)
    clipped = None
    if clip_norm > 0:
        clipped = total > clip_norm
        torch.nn.utils.clip_grads_with_norm_([p for ps in groups.values() for p in ps], clip_norm, total)
    if before_step is not None:
        before_step(norms)
    optimizer.step()
    return StepStats(norms, total, clipped)
