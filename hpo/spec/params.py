"""The values a ``[space]`` knob takes: a distribution to sample, or a constant.

Example::

    FloatParam(1e-4, 1e-1, log=True)          # lr_head = { type = "float", low = 1e-4, high = 1e-1, log = true }
    CategoricalParam((1, 2, 3))                # cycle_len = { type = "categorical", choices = [1, 2, 3] }
    entry_to_dict(FloatParam(0.1, 10.0))       # back to plain data, as stored with a study
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class CategoricalParam:
    choices: tuple[Any, ...]


Param = Union[FloatParam, IntParam, CategoricalParam]
SpaceEntry = Union[Param, float, int, str, bool]


def entry_to_dict(entry: SpaceEntry) -> Any:
    if isinstance(entry, FloatParam):
        out = {"type": "float", "low": entry.low, "high": entry.high, "log": entry.log}
        if entry.step is not None:
            out["step"] = entry.step
        return out
    if isinstance(entry, IntParam):
        return {"type": "int", "low": entry.low, "high": entry.high, "log": entry.log, "step": entry.step}
    if isinstance(entry, CategoricalParam):
        return {"type": "categorical", "choices": list(entry.choices)}
    return entry
