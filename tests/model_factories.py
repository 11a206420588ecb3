"""Small model factories for the tests, importable by name (``model_factories:bag``): tests/ is on sys.path."""

from __future__ import annotations

import torch
from torch import nn


class Bag(nn.Module):
    """Mean of the real tokens' embeddings -> linear head: two layer groups, ``words`` and ``out``."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int, dropout: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()
        self.out = nn.Linear(dim, 1 if num_classes == 2 else num_classes)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"words": list(self.embedding.parameters()), "out": list(self.out.parameters())}

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mean = self.embedding(tokens).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(torch.float32)
        logits = self.out(self.drop(mean))
        return logits.squeeze(-1) if logits.size(-1) == 1 else logits


def bag(vocab_size: int, num_classes: int, model) -> Bag:
    return Bag(vocab_size, num_classes, int(model.options.get("dim", 8)), bool(model.options.get("dropout", True)))


def bag_two_logits(vocab_size: int, num_classes: int, model) -> nn.Module:
    """Two logits for two classes, as a K-way model gives: allowed."""
    net = bag(vocab_size, num_classes, model)
    net.out = nn.Linear(net.out.in_features, 2)
    net.forward = lambda tokens, lengths: net.out(net.embedding(tokens).mean(1))  # type: ignore[method-assign]
    return net


def bag_wrong_shape(vocab_size: int, num_classes: int, model) -> nn.Module:
    net = bag(vocab_size, num_classes, model)
    net.forward = lambda tokens, lengths: net.embedding(tokens).mean(1)  # type: ignore[method-assign]
    return net


def bag_half_grouped(vocab_size: int, num_classes: int, model) -> nn.Module:
    net = bag(vocab_size, num_classes, model)
    net.param_groups = lambda: {"words": list(net.embedding.parameters())}  # type: ignore[method-assign]
    return net


def bag_without_groups(vocab_size: int, num_classes: int, model) -> nn.Module:
    return nn.Sequential(nn.Embedding(vocab_size, 4))


NOT_A_FUNCTION = 3
