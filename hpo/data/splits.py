"""Seeded, stratified splits of labelled rows: identical across runs and machines.

Example::

    train, valid, test = stratified_split(labels, [0.8, 0.1], seed=0)
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

Row = TypeVar("Row", bound=tuple)


def drop_duplicates(reviews: Sequence[Row]) -> list[Row]:
    """Keep the first of each exact duplicate text, so no review lands in two splits."""
    seen: set[str] = set()
    out = []
    for row in reviews:
        if row[0] not in seen:
            seen.add(row[0])
            out.append(row)
    return out


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Indices split into ``len(fractions) + 1`` parts (the last takes the rest), per label.

    Seeded with Python's own ``random`` so the split is identical across runs and machines.
    """
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for y in sorted(by_label):
        idx = by_label[y]
        random.Random(f"{seed}:{y}").shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions):
            n = round(len(idx) * frac)
            parts[k].extend(idx[start : start + n])
            start += n
        parts[-1].extend(idx[start:])
    return [sorted(p) for p in parts]


def subset_indices(labels: Sequence[int], n: int, seed: int) -> list[int]:
    # One definition for the tensors and the raw texts (split_reviews): same reviews, same order.
    if n <= 0 or n >= len(labels):
        return list(range(len(labels)))
    (chosen, _) = stratified_split(labels, [n / len(labels)], seed)
    return chosen
