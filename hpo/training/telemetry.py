"""Step-level telemetry: what the gradients, rates and updates did, every few steps of a trial.

Per-epoch means average away the few dozen steps in which a run blows up (usually just after a
warm restart). Every ``every`` steps the training loop records, through a :class:`StepRecorder`:

* ``loss``: that step's train loss, and ``loss_mean``: the mean over the steps since the last sample;
* ``lr``: each layer group's learning rate at the step;
* ``grad_norm``: each group's pre-clip gradient norm at the step, and ``grad_norm_max``: its
  maximum over the steps since the last sample (a spike between two samples is not lost);
* ``clipped``: whether the step's global norm was clipped;
* ``update_ratio``: each group's ``|delta w| / |w|`` for the step (about 1e-3 is healthy; far
  above it, the group's rate is too high). Only sampled steps pay for it: the group's weights are
  copied before ``optimizer.step()`` on those steps only.

Values stay on the device as tensors and are copied to the host once per epoch (one
synchronisation), so the loop does not wait on the device every step. The result is a
:class:`StepTelemetry`: numpy arrays, one row per sample, stored per trial as one compressed
``.npz`` artifact (:meth:`StepTelemetry.to_bytes`, a few tens of kB).

This module imports neither Optuna nor the training loop.

Example::

    recorder = StepRecorder(["embedding", "encoder", "head"], steps_per_epoch=390, every=0)   # every=2
    ...  # inside train(): recorder.wants(step), recorder.snapshot(...), recorder.record(...)
    telemetry = recorder.result()
    telemetry.steps, telemetry.grad_norm[:, telemetry.groups.index("head")]

In your own loop, :func:`hpo.training.step.param_groups` names your optimizer's groups and
:func:`hpo.training.step.update` measures them before clipping, as hpo's loop does
(``examples/own_loop.py``)::

    groups = param_groups(optimizer)                    # {"embedding": [...], "head": [...]}
    recorder = StepRecorder(list(groups), steps_per_epoch=len(loader))
    for step, batch in enumerate(loader):
        loss = ...
        sampled = recorder.wants(step)
        stats = update(loss, optimizer, groups, clip_norm,
                       before_step=lambda _: recorder.snapshot(groups) if sampled else None)
        recorder.track(loss, stats.norms)
        if sampled:
            recorder.record(step, epoch, [g["lr"] for g in optimizer.param_groups], loss, stats.norms,
                            stats.clipped, groups)
    recorder.end_epoch()
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hpo.errors import HpoError

MAX_POINTS_PER_EPOCH = 200
FORMAT = "hpo-steps-1"  # written into every artifact; a reader refuses others
MIMETYPE = "application/x-npz"

_GROUP_FIELDS = ("lr", "grad_norm", "grad_norm_max", "update_ratio")  # shape (n, groups)
_ROW_FIELDS = ("step", "epoch", "loss", "loss_mean", "clipped")  # shape (n,)


def auto_every(steps_per_epoch: int, max_points: int = MAX_POINTS_PER_EPOCH) -> int:
    """The sampling interval that gives an epoch at most ``max_points`` samples: 390 steps -> 2."""
    return max(1, math.ceil(steps_per_epoch / max_points))


@dataclass(frozen=True)
class StepTelemetry:
    """One trial's sampled steps, oldest first. ``step`` counts from 0 over the whole run."""

    groups: tuple[str, ...]
    every: int
    steps_per_epoch: int
    step: np.ndarray  # int64 (n,)
    epoch: np.ndarray  # int32 (n,), 1-based
    loss: np.ndarray  # float32 (n,)
    loss_mean: np.ndarray  # float32 (n,)
    clipped: np.ndarray  # bool (n,)
    lr: np.ndarray  # float32 (n, groups)
    grad_norm: np.ndarray
    grad_norm_max: np.ndarray
    update_ratio: np.ndarray
    meta: Mapping[str, Any] = field(default_factory=dict)  # cycle_len, cycle_mult, clip_norm...

    def __len__(self) -> int:
        return len(self.step)

    def column(self, name: str, group: str) -> np.ndarray:
        """One group's series: ``column("update_ratio", "head")``."""
        return getattr(self, name)[:, self.groups.index(group)]

    def to_bytes(self) -> bytes:
        """A compressed ``.npz``: the arrays as float32, the rest as a JSON header."""
        header = {"format": FORMAT, "groups": list(self.groups), "every": self.every,
                  "steps_per_epoch": self.steps_per_epoch, "meta": dict(self.meta)}
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.array(json.dumps(header)),
                            **{name: getattr(self, name) for name in _ROW_FIELDS + _GROUP_FIELDS})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "StepTelemetry":
        """Read :meth:`to_bytes`; an HpoError for anything else (no pickles are loaded)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                arrays = {name: z[name] for name in _ROW_FIELDS + _GROUP_FIELDS}
        except Exception as exc:
            raise HpoError(f"not a step telemetry file: {exc}") from None
        if header.get("format") != FORMAT:
            raise HpoError(f"step telemetry format {header.get('format')!r} is not {FORMAT!r}; upgrade hpo")
        return cls(tuple(header["groups"]), int(header["every"]), int(header["steps_per_epoch"]),
                   meta=header.get("meta") or {}, **arrays)


class StepRecorder:
    """Collects sampled steps on the device; one host copy per epoch (:meth:`end_epoch`).

    The training loop calls, on a sampled step (``wants(step)``): :meth:`snapshot` before
    ``optimizer.step()`` and :meth:`record` after it; on every step :meth:`track` (a running
    maximum of the gradient norms and the loss sum, on the device). ``state`` carries the host
    rows over a checkpoint, so a resumed trial keeps its earlier epochs.
    """

    def __init__(self, groups: Sequence[str], steps_per_epoch: int, every: int = 0,
                 meta: Mapping[str, Any] | None = None, state: Mapping[str, Any] | None = None) -> None:
        self.groups = tuple(groups)
        self.steps_per_epoch = steps_per_epoch
        self.every = every if every > 0 else auto_every(steps_per_epoch)
        self.meta = dict(meta or {})
        self._host: dict[str, list] = {name: [] for name in _ROW_FIELDS + _GROUP_FIELDS}
        if state is not None:
            for name in self._host:
                self._host[name] = list(state[name])
        self._epoch_rows: list[torch.Tensor] = []  # per sample, on the device: see _pack
        self._epoch_steps: list[tuple[int, int, list[float]]] = []  # (step, epoch, lrs): known on the host
        self._win_max: torch.Tensor | None = None
        self._win_loss: torch.Tensor | None = None
        self._win_count = 0
        self._before: list[list[torch.Tensor]] | None = None  # weights before a sampled step; reused

    def wants(self, step: int) -> bool:
        """Whether step ``step`` of an epoch (0-based) is sampled: every ``every``-th, the first included."""
        return step % self.every == 0

    def track(self, loss: torch.Tensor, norms: torch.Tensor) -> None:
        """Every step: fold the step into the window's running maximum and loss sum (device ops only)."""
        if self._win_max is None:
            self._win_max = norms.detach().clone()
            self._win_loss = loss.detach().float().clone()
        else:
            torch.maximum(self._win_max, norms, out=self._win_max)
            self._win_loss += loss.detach().float()
        self._win_count += 1

    def observe(self, loss: torch.Tensor, norms: torch.Tensor, groups: Mapping[str, list[torch.nn.Parameter]],
                sampled: bool) -> None:
        """Every step, after clipping and before ``optimizer.step()``: :meth:`track`, and on a sampled
        step :meth:`snapshot` (what :func:`hpo.training.step.update` calls as ``before_step``)."""
        self.track(loss, norms)
        if sampled:
            self.snapshot(groups)

    @torch.no_grad()
    def snapshot(self, groups: Mapping[str, list[torch.nn.Parameter]]) -> None:
        """Copy each group's weights before ``optimizer.step()`` (sampled steps only)."""
        if self._before is None:
            self._before = [[p.detach().clone() for p in params] for params in groups.values()]
            return
        # Reuse the buffers: a fresh copy of the embedding (12 MB) on every sampled step costs
        # page faults on CPU, about a third of the recorder's time.
        for buffers, params in zip(self._before, groups.values()):
            if buffers:
                torch._foreach_copy_(buffers, [p.detach() for p in params])

    @torch.no_grad()
    def record(self, step: int, epoch: int, lrs: Sequence[float], loss: torch.Tensor, norms: torch.Tensor,
               clipped: torch.Tensor, groups: Mapping[str, list[torch.nn.Parameter]]) -> None:
        """After ``optimizer.step()`` on a sampled step: the row, kept on the device."""
        ratios = []
        for before, params in zip(self._before or [], groups.values()):
            if not params:
                ratios.append(torch.zeros((), device=norms.device))
                continue
            now = [p.detach() for p in params]
            torch._foreach_sub_(before, now)  # in place: the snapshot becomes -dw, no second copy
            dw = torch.nn.utils.get_total_norm(before)
            w = torch.nn.utils.get_total_norm(now)
            ratios.append(dw / w.clamp_min(1e-12))
        win_max = self._win_max if self._win_max is not None else norms
        win_mean = (self._win_loss / max(self._win_count, 1)) if self._win_loss is not None else loss.detach().float()
        self._epoch_rows.append(torch.cat([
            loss.detach().float().reshape(1), win_mean.reshape(1), clipped.float().reshape(1),
            norms.detach().float(), win_max.float(), torch.stack(ratios).float().to(norms.device),
        ]))
        self._epoch_steps.append(((epoch - 1) * self.steps_per_epoch + step, epoch, list(lrs)))
        self._win_max, self._win_loss, self._win_count = None, None, 0

    def end_epoch(self) -> None:
        """Copy the epoch's samples to the host: one synchronisation. Also called when a run stops mid-epoch."""
        if not self._epoch_rows:
            return
        rows = torch.stack(self._epoch_rows).cpu().numpy()
        g = len(self.groups)
        for (step, epoch, lrs), row in zip(self._epoch_steps, rows):
            self._host["step"].append(step)
            self._host["epoch"].append(epoch)
            self._host["loss"].append(float(row[0]))
            self._host["loss_mean"].append(float(row[1]))
            self._host["clipped"].append(bool(row[2] > 0))
            self._host["lr"].append(lrs)
            self._host["grad_norm"].append(row[3:3 + g].tolist())
            self._host["grad_norm_max"].append(row[3 + g:3 + 2 * g].tolist())
            self._host["update_ratio"].append(row[3 + 2 * g:3 + 3 * g].tolist())
        self._epoch_rows, self._epoch_steps = [], []

    def state_dict(self) -> dict[str, list]:
        """The host rows so far, as plain lists (a checkpoint loads them with ``weights_only=True``)."""
        return {name: list(values) for name, values in self._host.items()}

    def result(self) -> StepTelemetry:
        """Everything recorded, host-side (flushes the current epoch first)."""
        self.end_epoch()
        g = len(self.groups)
        h = self._host

        def grid(name: str) -> np.ndarray:
            return np.asarray(h[name], dtype=np.float32).reshape(-1, g)

        return StepTelemetry(
            groups=self.groups, every=self.every, steps_per_epoch=self.steps_per_epoch,
            step=np.asarray(h["step"], dtype=np.int64), epoch=np.asarray(h["epoch"], dtype=np.int32),
            loss=np.asarray(h["loss"], dtype=np.float32), loss_mean=np.asarray(h["loss_mean"], dtype=np.float32),
            clipped=np.asarray(h["clipped"], dtype=bool), lr=grid("lr"), grad_norm=grid("grad_norm"),
            grad_norm_max=grid("grad_norm_max"), update_ratio=grid("update_ratio"), meta=self.meta,
        )


def artifact_name(trial_number: int) -> str:
    """The file name a trial's telemetry is uploaded under (how readers find it among its artifacts):
    :meth:`StepTelemetry.to_bytes` as ``MIMETYPE``."""
    return f"trial-{trial_number}-steps.npz"
