"""Length-bucketed batches: little padding, yet a fresh random order every epoch.

Example::

    for batch in iter_batches(ds.train, batch_size=64, shuffle=True, seed=0):
        batch.tokens.shape   # (64, longest review in the batch)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from hpo.data.tensors import Split
from hpo.data.text import PAD


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (batch, longest) int64, right-padded with PAD
    lengths: torch.Tensor  # (batch,) int64
    labels: torch.Tensor  # (batch,) float32 class ids (binary cross-entropy takes them as they are)

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.tokens, self.lengths, self.labels)))


def pad_batch(split: Split, indices: Sequence[int]) -> Batch:
    """The reviews at ``indices`` as one batch, right-padded to the longest of them."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    lengths = split.lengths[idx]
    out = torch.full((len(idx), int(lengths.max())), PAD, dtype=torch.long)
    for row, (start, n) in enumerate(zip(split.offsets[idx].tolist(), lengths.tolist())):
        out[row, :n] = split.tokens[start : start + n]
    return Batch(out, lengths, split.labels[idx].float())


def iter_batches(
    split: Split,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    bucket_batches: int = 50,
) -> Iterator[Batch]:
    """Length-bucketed batches: little padding, yet a fresh random order every epoch.

    With ``shuffle``: reviews are shuffled, cut into chunks of ``bucket_batches`` batches, each
    chunk sorted by length and cut into batches, and the batch order shuffled again. Without:
    everything is sorted by length (evaluation order does not matter, padding does).
    """
    lengths = split.lengths.tolist()
    order = list(range(len(split)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        rng = random.Random(seed)
        rng.shuffle(order)
        chunk = batch_size * bucket_batches
        groups = []
        for c in range(0, len(order), chunk):
            part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
            groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        rng.shuffle(groups)
    for group in groups:
        yield pad_batch(split, group)


def padding_fraction(split: Split, batches: Sequence[Batch]) -> float:
    """Share of padded positions across ``batches`` (a benchmark and test helper)."""
    total = sum(b.tokens.numel() for b in batches)
    return 1 - sum(int(b.lengths.sum()) for b in batches) / max(total, 1)
