"""The LSTM encoder and the sentiment classifier on top of it, with parameters in named layer groups.

:class:`Encoder`: embedding -> LSTM layers (dropout between them, optionally bidirectional).
:class:`LSTMClassifier`: the encoder -> concat pooling over real tokens only (last state, max,
mean) -> dropout -> linear head (one logit). The language model of :mod:`hpo.training.pretrain` uses the
same encoder, so its weights carry over to the classifier.

The layer groups (:func:`hpo.spec.layer_groups`: ``embedding``, ``encoder``, ``head``, or one
group per LSTM layer) are what get separate learning rates, separate gradient telemetry and
separate rows in the stability report.

Padding never changes a prediction. Batches are right-padded and not packed (on CPU,
``pack_padded_sequence`` ran 15x slower than length-bucketed batches with ~2% padding), so the
forward direction simply never reads past a review's end; the backward direction runs over each
review reversed *within its length*, so it starts at the review's last real token instead of
running over the padding first.

Example::

    model = LSTMClassifier(vocab_size=30000, embedding_dim=100, hidden_size=128)
    logits = model(batch.tokens, batch.lengths)      # (batch,)
    {name: len(ps) for name, ps in model.layer_groups().items()}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hpo.data import PAD
from hpo.spec import Spec, layer_groups

__all__ = ["Encoder", "LSTMClassifier", "build_model", "reverse_within_length"]


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence of ``x`` (B, T, ...) reversed over its first ``lengths`` steps; padding stays put."""
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # (1, T)
    lengths = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class Encoder(nn.Module):
    """Embedding and stacked LSTM layers; ``forward`` gives every position's top-layer output.

    Each layer is its own ``nn.LSTM`` (one per direction), so a layer can be a layer group, and
    the backward direction can see each review reversed within its length.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        sizes = [embedding_dim] + [hidden_size * directions] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.ModuleList(nn.LSTM(size, hidden_size, batch_first=True) for _ in range(directions)) for size in sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.output_size = hidden_size * directions

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(tokens))
        for i, layer in enumerate(self.layers):
            out, _ = layer[0](x)
            if self.bidirectional:
                back, _ = layer[1](reverse_within_length(x, lengths))
                out = torch.cat([out, reverse_within_length(back, lengths)], dim=-1)
            x = self.dropout(out) if i < len(self.layers) - 1 else out
        return x  # (B, T, output_size)

    def stream(self, tokens: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """Forward direction only, carrying each layer's (h, c) from the previous window: the
        language model's truncated backpropagation through a long stream of text."""
        x = self.dropout(self.embedding(tokens))
        new_states = []
        for i, layer in enumerate(self.layers):
            x, state = layer[0](x, None if states is None else states[i])
            new_states.append(state)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
        return x, new_states

    def group_params(self, per_layer: bool) -> dict[str, list[nn.Parameter]]:
        """The encoder's share of the layer groups: ``embedding`` and ``encoder`` (or ``encoder1``...)."""
        groups = {"embedding": list(self.embedding.parameters())}
        names = layer_groups(len(self.layers), per_layer)[1:-1]
        if len(names) == 1:
            groups[names[0]] = list(self.layers.parameters())
        else:
            groups.update({name: list(layer.parameters()) for name, layer in zip(names, self.layers)})
        return groups


class LSTMClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 100,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        group_per_layer: bool = False,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(vocab_size, embedding_dim, hidden_size, num_layers, bidirectional, dropout)
        self.group_per_layer = group_per_layer
        self.dropout = nn.Dropout(dropout)
        # two classes: one logit (binary cross-entropy), else one per class (cross-entropy)
        self.head = nn.Linear(3 * self.encoder.output_size, 1 if num_classes == 2 else num_classes)

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by layer group, bottom to top; together they are every parameter once."""
        return {**self.encoder.group_params(self.group_per_layer), "head": list(self.head.parameters())}

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.encoder(tokens, lengths)  # (B, T, H * dirs)
        mask = (tokens != PAD).unsqueeze(-1)  # (B, T, 1)
        last_index = (lengths - 1).clamp(min=0).to(out.device).view(-1, 1, 1).expand(-1, 1, out.size(-1))
        last = out.gather(1, last_index).squeeze(1)
        if self.encoder.bidirectional:
            # The backward direction's summary of a whole review is its state at the first token.
            half = out.size(-1) // 2
            last = torch.cat([last[:, :half], out[:, 0, half:]], dim=-1)
        neg_inf = torch.finfo(out.dtype).min
        max_pool = out.masked_fill(~mask, neg_inf).max(dim=1).values
        mean_pool = (out * mask).sum(dim=1) / lengths.clamp(min=1).to(out.device).unsqueeze(-1).to(out.dtype)
        features = torch.cat([last, max_pool, mean_pool], dim=-1)
        logits = self.head(self.dropout(features))
        return logits.squeeze(-1) if logits.size(-1) == 1 else logits


def build_model(spec: Spec, vocab_size: int, dropout: float, encoder: Any = None, seed: int | None = None,
                num_classes: int = 2) -> LSTMClassifier:
    """The spec's classifier; from a pretrained encoder's weights when given (the head is new).

    ``encoder``: a :class:`~hpo.training.pretrain.PretrainedEncoder` (its ``state``). Every trial of
    a seed starts from the same weights: less noise between trials.
    """
    torch.manual_seed(spec.train.seed if seed is None else seed)
    m = spec.model
    model = LSTMClassifier(vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, m.bidirectional, dropout,
                           m.group_per_layer, num_classes)
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state)
    return model
