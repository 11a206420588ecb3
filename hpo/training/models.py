"""The models a study trains: the built-in LSTM classifier, and yours through a model factory.

A model comes from a *factory*, ``model.factory`` in the spec (``"package.module:function"``, or
from Python the function itself): ``factory(vocab_size, num_classes, model_spec)`` returns a torch
module whose ``forward(tokens, lengths)`` gives logits, shape (B,) (one logit, two classes) or
(B, K), and whose ``param_groups()`` names its layer groups, ``{name: [parameters]}``, bottom to
top. Each group gets its own learning rate (the ``lr_<name>`` knob), its own gradient telemetry
and its own rows in the stability report. :func:`check_model` builds the spec's model once before
a study starts, so that a group without a knob, a knob without a group or a wrong output shape is
one clear error, not a failed trial.

The built-in factory is :func:`lstm`: :class:`Encoder` (embedding -> word dropout -> LSTM layers,
dropout between them, optionally bidirectional) -> :class:`LSTMClassifier`: concat pooling over real tokens only
(last state, max, mean) -> dropout -> linear head (one logit for two classes, else one per
class). The language model of :mod:`hpo.training.pretrain` uses the same encoder, so its weights
carry over to the classifier. Its layer groups (:func:`hpo.spec.layer_groups`) are ``embedding``,
``encoder``, ``head``, or one group per LSTM layer.

Padding never changes a prediction. Batches are right-padded and not packed (on CPU,
``pack_padded_sequence`` ran 15x slower than length-bucketed batches with ~2% padding), so the
forward direction simply never reads past a review's end; the backward direction runs over each
review reversed *within its length*, so it starts at the review's last real token instead of
running over the padding first.

Example::

    model = build_model(spec, vocab_size=30000, dropout=0.2)      # the spec's factory, seeded
    logits = model(batch.tokens, batch.lengths)                   # (batch,) for two classes
    {name: len(ps) for name, ps in groups_of(model).items()}     # {'embedding': 1, 'encoder': 4, 'head': 2}
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable, Mapping

import torch
from torch import nn

from hpo.data import PAD
from hpo.errors import HpoError
from hpo.spec import ModelSpec, Spec, check_rates, factory_name, layer_groups

__all__ = ["Encoder", "LSTMClassifier", "ModelFactory", "build_model", "check_model", "groups_of", "lstm",
           "resolve_factory", "reverse_within_length"]

ModelFactory = Callable[[int, int, ModelSpec], nn.Module]
_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence of ``x`` (B, T, ...) reversed over its first ``lengths`` steps; padding stays put."""
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # (1, T)
    lengths = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class WordDropout(nn.Module):
    """While training, drop each word of the vocabulary with probability ``p`` for one batch: every
    occurrence of a dropped word in the batch embeds as zeros, the rest are scaled by 1 / (1 - p).

    AWD-LSTM's embedding dropout, applied to the looked-up vectors (a mask over the vocabulary,
    gathered per token) so the embedding's gradient stays as sparse as the batch. Not an
    ``nn.Dropout``: the trial's ``dropout`` knob sets those, ``model.embed_dropout`` sets this one.

    Example::

        drop = WordDropout(0.1).train()
        drop(tokens, embedding(tokens), embedding.num_embeddings)   # a word zeroed wherever it occurs in the batch
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, tokens: torch.Tensor, embedded: torch.Tensor, vocab_size: int) -> torch.Tensor:
        if not self.training or not self.p:
            return embedded
        keep = embedded.new_empty(vocab_size).bernoulli_(1 - self.p) / (1 - self.p)
        return embedded * keep[tokens].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Encoder(nn.Module):
    """Embedding and stacked LSTM layers; ``forward`` gives every position's top-layer output.

    Each layer is its own ``nn.LSTM`` (one per direction), so a layer can be a layer group, and
    the backward direction can see each review reversed within its length.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, embed_dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.word_dropout = WordDropout(embed_dropout)
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        sizes = [embedding_dim] + [hidden_size * directions] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.ModuleList(nn.LSTM(size, hidden_size, batch_first=True) for _ in range(directions)) for size in sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.output_size = hidden_size * directions

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.word_dropout(tokens, self.embedding(tokens), self.embedding.num_embeddings)
        return self.dropout(x)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
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
        x = self.embed(tokens)
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
        embed_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(vocab_size, embedding_dim, hidden_size, num_layers, bidirectional, dropout, embed_dropout)
        self.group_per_layer = group_per_layer
        self.dropout = nn.Dropout(dropout)
        # two classes: one logit (binary cross-entropy), else one per class (cross-entropy)
        self.head = nn.Linear(3 * self.encoder.output_size, 1 if num_classes == 2 else num_classes)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
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


def lstm(vocab_size: int, num_classes: int, model: ModelSpec) -> LSTMClassifier:
    """The built-in model factory (``model.factory = "hpo.training.models:lstm"``, the default):
    the LSTM classifier of ``[model]``'s shape. Its dropout is the trial's ``dropout`` knob, set by
    :func:`build_model` like any model's; its word dropout is ``model.embed_dropout``."""
    return LSTMClassifier(vocab_size, model.embedding_dim, model.hidden_size, model.num_layers, model.bidirectional,
                          0.0, model.group_per_layer, num_classes, model.embed_dropout)


def resolve_factory(factory: str | ModelFactory) -> ModelFactory:
    """The function behind ``model.factory``: imported from ``"package.module:function"``, or as given.

    A module is looked up as Python looks it up, then in the current folder, as ``python -m``
    would (the ``hpo`` command does not put it on ``sys.path`` itself).
    """
    if callable(factory):
        return factory
    module_name, _, attribute = factory.partition(":")
    try:
        target: Any = _import(module_name)
    except ModuleNotFoundError as exc:
        raise HpoError(f"model.factory = {factory!r}: no module named {exc.name!r} (the module must be importable "
                       f"where hpo runs: in the current folder, installed, or its folder on PYTHONPATH)") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise HpoError(f"model.factory = {factory!r}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise HpoError(f"model.factory = {factory!r} is a {type(target).__name__}, not a function")
    return target


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # after everything else: nothing installed is shadowed
        importlib.invalidate_caches()
        return importlib.import_module(module_name)


def groups_of(model: nn.Module, name: str = "the model") -> dict[str, list[nn.Parameter]]:
    """The model's layer groups, from its ``param_groups()``, checked: named ``[A-Za-z0-9_]+`` (each is
    an ``lr_<name>`` knob), none empty, and every trainable parameter in exactly one of them (a
    parameter in none would never train; in two, the optimizer refuses it)."""
    if not callable(getattr(model, "param_groups", None)):
        raise HpoError(f"{name} ({type(model).__name__}) has no param_groups(): give it a method that returns its "
                       f"layer groups, e.g. {{'embedding': list(self.embedding.parameters()), 'head': [...]}}")
    raw = model.param_groups()
    if not isinstance(raw, Mapping) or not raw:
        raise HpoError(f"{name}: param_groups() must return a non-empty dict of group name -> parameters")
    groups = {str(k): list(v) for k, v in raw.items()}
    bad = [g for g in groups if not _GROUP_NAME.fullmatch(g) or g == "div"]
    if bad:
        raise HpoError(f"{name}: layer group names {', '.join(map(repr, bad))} cannot be knobs lr_<name>: "
                       "use letters, digits and _ (and not 'div': lr_div is ULMFiT's rate divisor)")
    empty = [g for g, ps in groups.items() if not ps]
    if empty:
        raise HpoError(f"{name}: layer groups {', '.join(empty)} have no parameters")
    owner: dict[int, str] = {}
    twice = []
    for group, params in groups.items():
        for p in params:
            if id(p) in owner:
                twice.append(f"{owner[id(p)]} and {group}")
            owner[id(p)] = group
    if twice:
        raise HpoError(f"{name}: a parameter is in two layer groups ({'; '.join(sorted(set(twice)))}): "
                       "give each parameter one group")
    names = {id(p): n for n, p in model.named_parameters()}
    left = [names[id(p)] for p in model.parameters() if p.requires_grad and id(p) not in owner]
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise HpoError(f"{name}: parameters in no layer group would never train ({shown}): "
                       "put each in one group of param_groups(), or set requires_grad=False")
    return groups


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the rate of every ``nn.Dropout`` of ``model`` to ``p`` (the trial's ``dropout`` knob); how many."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in dropouts:
        m.p = p
    return len(dropouts)


def build_model(spec: Spec, vocab_size: int, dropout: float | None = None, encoder: Any = None,
                seed: int | None = None, num_classes: int = 2, model: ModelSpec | None = None) -> nn.Module:
    """The spec's classifier from its model factory, seeded; from a pretrained encoder's weights
    when given (the head is new).

    ``dropout``: the trial's ``dropout`` knob, the rate of every ``nn.Dropout`` module of the model
    (None: as the factory built them). ``model``: the trial's ``[model]``, with its model knobs
    (:func:`hpo.spec.trial_model`); None: the spec's. ``encoder``: a
    :class:`~hpo.training.pretrain.PretrainedEncoder` (its ``state``; the built-in LSTM only).
    Every trial of a seed starts from the same weights: less noise between trials.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise TypeError(f"build_model: num_classes = {num_classes!r} must be a whole number >= 2")
    torch.manual_seed(spec.train.seed if seed is None else seed)
    factory = resolve_factory(spec.model.factory)
    net = factory(vocab_size, num_classes, model or spec.model)
    if not isinstance(net, nn.Module):
        raise HpoError(f"model.factory {factory_name(spec.model.factory)!r} returned a {type(net).__name__}, "
                       "not a torch.nn.Module")
    if dropout is not None:
        set_dropout(net, dropout)
    if encoder is not None:
        net.encoder.load_state_dict(encoder.state)
    return net


def check_model(spec: Spec, vocab_size: int, num_classes: int = 2) -> tuple[str, ...]:
    """Build the spec's model once, on the CPU, and check it before a study trains it; its layer groups.

    One HpoError for: a factory that cannot be imported or returns no module, layer groups that
    do not partition the parameters, ``[space]``'s learning rates against the groups (both sides
    listed), a ``dropout`` knob for a model without ``nn.Dropout``, or logits of the wrong shape
    for two texts: (2,) or (2, 2) for two classes, (2, K) for K.
    """
    name = "the model" if spec.model.builtin else f"model.factory {factory_name(spec.model.factory)!r}"
    model = build_model(spec, vocab_size, None, seed=spec.train.seed, num_classes=num_classes)
    groups = tuple(groups_of(model, name))
    check_rates(spec.space, groups, name)
    if "dropout" in spec.space and not set_dropout(model, 0.0):
        raise HpoError(f"spec: space.dropout sets the rate of every nn.Dropout of {name}, which has none: "
                       "remove space.dropout (or add nn.Dropout layers)")
    tokens = torch.tensor([[min(2, vocab_size - 1)] * 3, [min(3, vocab_size - 1), PAD, PAD]])
    model.eval()
    with torch.no_grad():
        logits = model(tokens, torch.tensor([3, 1]))
    shape = tuple(getattr(logits, "shape", ()))
    allowed = [(2,), (2, 2)] if num_classes == 2 else [(2, num_classes)]
    if shape not in allowed:
        want = "(B,) one logit per text, or (B, 2)" if num_classes == 2 else f"(B, {num_classes}), one logit per class"
        raise HpoError(f"{name}: forward(tokens, lengths) gave logits of shape {shape} for B = 2 texts; "
                       f"{num_classes} classes need {want}")
    return groups
