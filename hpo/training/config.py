"""The training loop's configuration, and the one that a trial's knob values give.

:class:`TrainConfig` is every knob of one run, explicit; :func:`train_config` turns a spec and one
trial's values (sampled or fixed) into it.

Example::

    cfg = TrainConfig(lrs={"embedding": 1e-3, "encoder": 1e-3, "head": 3e-3}, clip_norm=1.0,
                      cycle_len=2, max_epochs=4)
    cfg = train_config(spec, {"lr_head": 3e-3, "lr_div": 10.0, "clip_norm": 1.0, ...})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hpo.spec import Spec
from hpo.spec.knobs import cycle_epochs, group_lrs


@dataclass(frozen=True)
class TrainConfig:
    lrs: Mapping[str, float]  # peak learning rate per layer group
    clip_norm: float  # global gradient norm limit; 0 disables clipping
    cycle_len: int  # SGDR: epochs in the first cycle
    max_epochs: int
    cycle_mult: int = 1  # each cycle this many times longer than the one before
    lr_min_ratio: float = 0.01  # floor of each cycle, as a fraction of the peak
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's; the seed's notebook used (0.7, 0.99)
    unfreeze_every: int = 0  # gradual unfreezing: 0 off; k: each group below the head joins k epochs later
    batch_size: int = 64
    bucket_batches: int = 50
    precision: str = "fp32"  # "bf16" autocast, or "auto": bf16 where the hardware runs it natively
    seed: int = 0
    telemetry_every: int = 0  # step telemetry every k steps; 0: k for at most ~200 samples an epoch; -1: off


def trial_seed(spec: Spec, values: Mapping[str, Any]) -> int:
    """A trial's seed: its ``seed`` knob when the space has one, else ``train.seed``."""
    return int(values.get("seed", spec.train.seed))


def train_config(spec: Spec, values: Mapping[str, Any], precision: str | None = None,
                 groups: Sequence[str] | None = None) -> TrainConfig:
    """The training loop's configuration for one trial's knob ``values`` (sampled or fixed).

    ``precision``: what the machine's calibration chose for ``train.precision = "auto"``.
    ``groups``: the model's layer groups, bottom to top (:func:`hpo.training.models.groups_of`);
    needed for a model factory's model, whose groups the spec cannot know.
    """
    t = spec.train
    cycle_len = int(values["cycle_len"])
    groups = groups if groups is not None else spec.model.groups
    if groups is None:
        raise ValueError("train_config: a model factory's layer groups come from the model: pass groups=")
    return TrainConfig(
        lrs=group_lrs(values, groups),
        clip_norm=float(values["clip_norm"]),
        cycle_len=cycle_len,
        cycle_mult=t.cycle_mult,
        lr_min_ratio=t.lr_min_ratio,
        max_epochs=cycle_epochs(cycle_len, t.cycle_mult, t.cycles, t.max_epochs),
        weight_decay=float(values["weight_decay"]),
        optimizer=t.optimizer,
        betas=(t.adam_beta1, t.adam_beta2),
        unfreeze_every=t.unfreeze_every,
        batch_size=spec.data.batch_size,
        bucket_batches=spec.data.bucket_batches,
        precision=precision or t.precision,
        seed=trial_seed(spec, values),
        telemetry_every=t.telemetry_every,
    )
