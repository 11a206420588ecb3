"""Text to token ids: the tokenizer, the vocabulary, and numericalized splits.

Example::

    tokenize("A <br />great film!")                 # ['a', 'great', 'film', '!']
    vocab = build_vocab(token_lists, min_freq=2, max_size=30000)
    split = numericalize(token_lists, labels, vocab, max_len=800)
"""

from __future__ import annotations

import html
import re
from collections import Counter
from typing import Mapping, Sequence

import torch

from hpo.data.tensors import Split

PAD, UNK = 0, 1
TOKENIZER_VERSION = 1  # bump when tokenize() changes, so caches are rebuilt
_HTML_TAG = re.compile(r"<[^>]+>")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lowercase, drop HTML tags such as ``<br />``, split into words and punctuation marks."""
    text = html.unescape(_HTML_TAG.sub(" ", text.lower()))
    return _TOKEN.findall(text)


def build_vocab(token_lists: Sequence[Sequence[str]], min_freq: int, max_size: int) -> list[str]:
    """Index -> token; ``<pad>`` and ``<unk>`` first, then by frequency (ties alphabetical)."""
    return vocab_from_counts(Counter(tok for toks in token_lists for tok in toks), min_freq, max_size)


def vocab_from_counts(counts: Mapping[str, int], min_freq: int, max_size: int) -> list[str]:
    """:func:`build_vocab` from token counts already made (a data file counts as it streams)."""
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return ["<pad>", "<unk>", *ranked[: max(0, max_size - 2)]]


def numericalize(token_lists: Sequence[Sequence[str]], labels: Sequence[int], vocab: Sequence[str], max_len: int) -> Split:
    stoi = {t: i for i, t in enumerate(vocab)}
    ids = [[stoi.get(t, UNK) for t in toks[:max_len]] or [UNK] for toks in token_lists]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    tokens = torch.tensor([i for x in ids for i in x], dtype=torch.int32)
    return Split(tokens, offsets, torch.tensor(list(labels), dtype=torch.long))
