"""Learning-rate schedules as plain functions of the (fractional) epoch or step: no PyTorch.

Example::

    sgdr_factor(1.5, cycle_len=2)          # halfway down the first cosine cycle: 0.5
    one_cycle(0, total=1000, peak=3e-3)    # warm-up from peak / 100
"""

from __future__ import annotations

import math


def sgdr_factor(epochs_done: float, cycle_len: int, cycle_mult: int = 1, min_ratio: float = 0.0) -> float:
    """SGDR multiplier at a (fractional) epoch: cosine from 1 to ``min_ratio``, then a warm restart.

    Cycles last ``cycle_len``, ``cycle_len * cycle_mult``, ``cycle_len * cycle_mult**2``... epochs.
    """
    t, length = epochs_done, float(cycle_len)
    while t >= length:
        t -= length
        length *= cycle_mult
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t / length))


def one_cycle(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first tenth of ``total`` steps, then cosine down to 1% of ``peak``
    (the language model's pretraining schedule)."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
