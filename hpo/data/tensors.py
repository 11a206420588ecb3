"""Numericalized reviews as tensors: a split is one flat token tensor plus offsets; a dataset, three splits.

Example::

    ds.train.tokens[ds.train.offsets[i]:ds.train.offsets[i + 1]]    # review i's token ids
    stratified_subset(ds.train, 2000, seed=0)                       # 2,000 reviews, same label balance
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from hpo.data.splits import subset_indices


BINARY_CLASSES = ("negative", "positive")  # the packaged IMDB reviews' and aclImdb's classes, ids 0 and 1


@dataclass(frozen=True)
class Split:
    """Numericalized reviews as one flat token tensor plus offsets (``tokens[offsets[i]:offsets[i+1]]``)."""

    tokens: torch.Tensor  # int32, all reviews back to back
    offsets: torch.Tensor  # int64, len(self) + 1
    labels: torch.Tensor  # int64 class ids, indices into Dataset.classes (IMDB: 0 negative / 1 positive)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, indices: Sequence[int]) -> "Split":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        starts, lengths = self.offsets[:-1][idx], self.lengths[idx]
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        pieces = [self.tokens[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist())]
        tokens = torch.cat(pieces) if pieces else self.tokens[:0]
        return Split(tokens, offsets, self.labels[idx])


@dataclass(frozen=True)
class Dataset:
    train: Split
    valid: Split
    test: Split
    vocab: list[str]
    source: str  # where the reviews came from, for people
    cache_key: str
    classes: tuple[str, ...] = BINARY_CLASSES  # class names in label-id order, counted on the training split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> dict[str, list[int]]:
        """Rows per class in each split, in class order: ``{"train": [9962, 9962], ...}``."""
        k = self.num_classes
        return {name: torch.bincount(split.labels, minlength=k).tolist()
                for name, split in (("train", self.train), ("valid", self.valid), ("test", self.test))}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def stratified_subset(split: Split, n: int, seed: int) -> Split:
    """A seeded subset of ``n`` reviews keeping the label balance (``n <= 0``: all)."""
    if n <= 0 or n >= len(split):
        return split
    return split.subset(subset_indices(split.labels.tolist(), n, seed))
