"""The learning-rate range test (Smith 2015; fastai's ``lr_find``), one layer group at a time.

For a group, a fresh model trains for a few hundred steps while that group's rate rises
exponentially from ``lr_min`` to ``lr_max`` and the other groups stay at a middle rate (the
geometric middle of their search range); every other knob is at the middle of its range, clipping
included, so the test sees the regime the study's trials train in. The loss is smoothed (an
exponential moving average with bias correction, as fastai does, with a time constant of a
twentieth of the test) and the run stops once the
smoothed loss exceeds ``blowup`` times its minimum, or turns NaN/inf.

From the curve: the *steepest* rate (where the smoothed loss falls fastest against log rate), the
*minimum* (the rate at the lowest smoothed loss) and, when it blew up, where. The suggested
search range is ``[steepest / 10, minimum]``: from well below the fastest learning up to the rate
past which the loss rises, so a study still straddles the divergence boundary.

It knows nothing of Optuna; ``hpo lr-find`` is the command.

Example::

    spec = load_spec("imdb", ["data.max_train=4000"])
    result = range_test(spec, load_dataset(spec.data), "head", steps=200)
    result.suggested()          # (3.1e-4, 2.4e-2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hpo.data import iter_batches
from hpo.errors import HpoError
from hpo.spec import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SpaceEntry,
    Spec,
    spec_from_dict,
    trial_model,
)
from hpo.training.config import train_config, trial_seed
from hpo.training.device import resolve_device
from hpo.training.models import build_model, check_model, groups_of
from hpo.training.step import classifier_loss, make_optimizer, update

MIN_STEPS = 10  # before this, a noisy start is not a blow-up


def smoothing(steps: int) -> float:
    """The moving average's beta: a time constant of steps/20 (0.9 for 200 steps). fastai's fixed
    0.98 (50 steps) would lag a blow-up in a short test by most of its length."""
    return max(0.5, 1 - 20 / steps)


@dataclass(frozen=True)
class RangeTest:
    group: str
    lrs: np.ndarray  # the rate at each step
    losses: np.ndarray  # smoothed
    raw: np.ndarray
    held: Mapping[str, float] = field(default_factory=dict)  # the other groups' rates
    blew_up: bool = False

    @property
    def steepest(self) -> float:
        """The rate where the smoothed loss falls fastest per unit of log rate (before its minimum)."""
        end = max(int(np.nanargmin(self.losses)), 2)
        slope = np.gradient(self.losses[:end + 1], np.log(self.lrs[:end + 1]))
        return float(self.lrs[int(np.nanargmin(slope[1:])) + 1]) if len(slope) > 1 else float(self.lrs[0])

    @property
    def minimum(self) -> float:
        return float(self.lrs[int(np.nanargmin(self.losses))])

    @property
    def blowup(self) -> float | None:
        return float(self.lrs[-1]) if self.blew_up else None

    def suggested(self) -> tuple[float, float]:
        """``(steepest / 10, minimum)``: the search range this test suggests for the group."""
        low, high = self.steepest / 10, self.minimum
        return (min(low, high / 3), high)

    def describe(self) -> str:
        low, high = self.suggested()
        end = f"blew up at {self.blowup:.2g}" if self.blowup is not None else f"no blow-up up to {self.lrs[-1]:.2g}"
        # The steps run are the test's cost: a study that uses its bounds pays them on top of its own epochs
        return (f"{self.group:<10} steepest {self.steepest:.2g}, minimum {self.minimum:.2g}, {end} "
                f"({len(self.lrs)} steps) "
                f"-> lr_{self.group} {low:.2g} to {high:.2g}")


def middle_value(entry: SpaceEntry) -> Any:
    """A knob's middle: geometric for a log range, arithmetic otherwise, the first choice, or the constant."""
    if isinstance(entry, FloatParam):
        return math.sqrt(entry.low * entry.high) if entry.log else (entry.low + entry.high) / 2
    if isinstance(entry, IntParam):
        return int(round(math.sqrt(entry.low * entry.high) if entry.log else (entry.low + entry.high) / 2))
    if isinstance(entry, CategoricalParam):
        return entry.choices[0]
    return entry


def check_arguments(spec: Spec, groups: Sequence[str], lr_min: float, lr_max: float,
                    model_groups: Sequence[str] | None = None) -> None:
    """An HpoError for a group the model does not have or a rate range that is not one.

    ``model_groups``: the built model's groups; without them, the spec's (None for a model
    factory's: its groups are checked once the model is built).
    """
    known = model_groups if model_groups is not None else spec.model.groups
    for group in groups:
        if known is not None and group not in known:
            raise HpoError(f"no layer group {group!r}; the groups are {', '.join(known)}")
    if not 0 < lr_min < lr_max:
        raise HpoError(f"--lr-min {lr_min} and --lr-max {lr_max}: need 0 < lr-min < lr-max")


def groups_to_test(spec: Spec, data: Any, groups: Sequence[str] = ()) -> list[str]:
    """The groups ``hpo lr-find`` tests: those asked for, else every layer group of the model."""
    known = check_model(spec, data.vocab_size, data.num_classes)
    check_arguments(spec, groups, 1.0, 2.0, known)
    return list(groups) or list(known)


def range_test(spec: Spec, data: Any, group: str, steps: int = 200, lr_min: float = 1e-6, lr_max: float = 10.0,
               blowup: float = 4.0, device: torch.device | None = None, encoder: Any = None) -> RangeTest:
    """Run the range test for ``group`` (see the module docstring)."""
    values = {name: middle_value(entry) for name, entry in spec.space.items()}
    device = device or resolve_device(spec.train.device)
    dropout = float(values["dropout"]) if "dropout" in values else None
    model = build_model(spec, data.vocab_size, dropout, encoder, trial_seed(spec, values),
                        num_classes=data.num_classes, model=trial_model(spec.model, values)).to(device)
    groups = groups_of(model)
    check_arguments(spec, [group], lr_min, lr_max, list(groups))
    cfg = train_config(spec, values, groups=list(groups))
    model.train()
    optimizer = make_optimizer(model, cfg)
    rates = lr_min * (lr_max / lr_min) ** (np.arange(steps) / max(steps - 1, 1))
    lrs, raw, smooth = [], [], []
    avg, best = 0.0, math.inf
    blew_up = False
    epoch = 0
    beta = smoothing(steps)
    while len(lrs) < steps and not blew_up:
        epoch += 1
        for batch in iter_batches(data.train, cfg.batch_size, True, cfg.seed * 1_000 + epoch, cfg.bucket_batches):
            i = len(lrs)
            if i >= steps:
                break
            for g in optimizer.param_groups:
                g["lr"] = float(rates[i]) if g["name"] == group else cfg.lrs[g["name"]]
            _, loss = classifier_loss(model, batch.to(device), device, cfg.precision)
            update(loss, optimizer, groups, cfg.clip_norm)
            value = loss.item()  # a range test reads every step: it is short, and the curve is the point
            avg = beta * avg + (1 - beta) * (value if math.isfinite(value) else 1e9)
            smoothed = avg / (1 - beta ** (i + 1))
            lrs.append(float(rates[i]))
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if i >= MIN_STEPS and (not math.isfinite(value) or smoothed > blowup * best):
                blew_up = True
                break
    held = {name: rate for name, rate in cfg.lrs.items() if name != group}
    return RangeTest(group, np.array(lrs), np.array(smooth), np.array(raw), held, blew_up)


def spec_with_ranges(spec: Spec, results: Sequence[RangeTest]) -> dict[str, Any]:
    """The spec as plain data, each tested group's ``lr_<group>`` searched over the suggested range."""
    out = spec.to_dict()
    for r in results:
        low, high = r.suggested()
        out["space"][f"lr_{r.group}"] = {"type": "float", "low": float(f"{low:.3g}"), "high": float(f"{high:.3g}"), "log": True}
    return out


def to_toml(data: Mapping[str, Any], header: str = "") -> str:
    """A spec's plain data as TOML: top-level scalars, then one table per section (inline tables inside)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + " }"
        raise HpoError(f"cannot write {v!r} as TOML")

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, Mapping) and v is not None]
    for section, table in data.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{section}]"] + [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_spec(spec: Spec, results: Sequence[RangeTest], path: str | Path, header: str = "") -> Path:
    """Write the spec with the suggested ranges; it loads back with ``--study PATH``."""
    data = spec_with_ranges(spec, results)
    spec_from_dict(data)  # what is written must load: check before writing
    out = Path(path)
    out.write_text(to_toml(data, header))
    return out
