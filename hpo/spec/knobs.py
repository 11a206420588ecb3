"""The tunable knobs: what may appear in ``[space]``, what values each allows, where each goes.

A knob is a name in the spec's ``[space]`` section, sampled per trial (a distribution) or fixed
(a constant). Every knob has one row here, its rule; :func:`hpo.training.config.train_config`
turns a trial's values into the training loop's configuration. Learning rates are per layer group: ``lr_<group>``
for each group of the model (``lr_embedding``, ``lr_encoder``, ``lr_head``; with
``model.group_per_layer`` ``lr_encoder1``, ``lr_encoder2``...), or ULMFiT's discriminative
rates ``lr_head`` and ``lr_div``: each group one level further from the head gets the rate
divided by ``lr_div`` once more.

The built-in LSTM's shape can be searched too: a ``[space]`` knob named like a ``[model]`` key
(``bidirectional``, ``hidden_size``, ``num_layers``, ``embedding_dim``, ``embed_dropout``) sets that
key per trial (:func:`trial_model`); the ``[model]`` value is the shape a study checks before it
starts and calibrates on.

Example::

    group_lrs({"lr_head": 1e-2, "lr_div": 10.0}, ("embedding", "encoder", "head"))
    # {'embedding': 1e-4, 'encoder': 1e-3, 'head': 1e-2}
    trial_model(ModelSpec(), {"bidirectional": True, "lr_head": 3e-3}).bidirectional   # True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from hpo.errors import HpoError
from hpo.spec.params import CategoricalParam, FloatParam, IntParam, SpaceEntry


def lr_param(group: str) -> str:
    """The knob and report column of a group's learning rate: ``head`` -> ``lr_head``."""
    return f"lr_{group}"


@dataclass(frozen=True)
class Knob:
    name: str
    check: Callable[[float], bool]
    rule: str  # what the check demands, for the error message
    integer: bool = False
    required: bool = True
    boolean: bool = False  # true or false (a categorical of both, or a constant), not a number


_RATE = ("a learning rate must be > 0", lambda v: v > 0)
STATIC_KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("lr_div", lambda v: v > 0, "the rate divisor must be > 0", required=False),
        Knob("clip_norm", lambda v: v >= 0, "a clip norm must be >= 0 (0 disables clipping)"),
        Knob("cycle_len", lambda v: v >= 1, "cycle_len is a whole number of epochs >= 1", integer=True),
        Knob("dropout", lambda v: 0 <= v < 1, "dropout must be in [0, 1)"),
        Knob("weight_decay", lambda v: v >= 0, "weight decay must be >= 0"),
        # Not a setting to tune but to replicate: each value trains the same settings anew
        # (head initialisation, dropout masks, batch order), as a sweep over seeds needs.
        Knob("seed", lambda v: v >= 0, "a seed is a whole number >= 0", integer=True, required=False),
    )
}


# The built-in LSTM's shape, per trial: each sets the [model] key of its name.
_SIZE = "a whole number >= 1"
MODEL_KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("bidirectional", bool, "true or false", required=False, boolean=True),
        Knob("hidden_size", lambda v: v >= 1, f"hidden_size is {_SIZE}", integer=True, required=False),
        Knob("num_layers", lambda v: v >= 1, f"num_layers is {_SIZE}", integer=True, required=False),
        Knob("embedding_dim", lambda v: v >= 1, f"embedding_dim is {_SIZE}", integer=True, required=False),
        Knob("embed_dropout", lambda v: 0 <= v < 1, "embed_dropout must be in [0, 1)", required=False),
    )
}
# ...of which these change the weights' shapes (a pretrained encoder has one).
SHAPE_KNOBS = ("bidirectional", "hidden_size", "num_layers", "embedding_dim")


def knobs(groups: Sequence[str]) -> dict[str, Knob]:
    """Every knob a model with these layer groups can tune."""
    rates = {lr_param(g): Knob(lr_param(g), _RATE[1], _RATE[0], required=g == "head") for g in groups}
    return {**rates, **STATIC_KNOBS, **MODEL_KNOBS}


def trial_model(model: Any, values: Mapping[str, Any]) -> Any:
    """``model`` (a :class:`~hpo.spec.ModelSpec`) with the trial's model knobs in ``values`` set."""
    shape = {k: v for k, v in values.items() if k in MODEL_KNOBS}
    for k in ("hidden_size", "num_layers", "embedding_dim"):
        if k in shape:
            shape[k] = int(shape[k])
    if "bidirectional" in shape:
        shape["bidirectional"] = bool(shape["bidirectional"])
    return dataclasses.replace(model, **shape) if shape else model


def check_model_knobs(space: Mapping[str, SpaceEntry], builtin: bool, group_per_layer: bool, pretrained: bool) -> None:
    """The model knobs of ``[space]`` fit the model: the built-in LSTM, whose layer groups stay the
    same in every trial, trained from scratch where a knob changes the weights' shapes."""
    given = [k for k in space if k in MODEL_KNOBS]
    if given and not builtin:
        raise HpoError(f"spec: {', '.join('space.' + k for k in given)} {'varies' if len(given) == 1 else 'vary'} "
                       "the built-in LSTM's [model] keys; "
                       "model.factory builds its own model: tune its settings in your factory (model.options), "
                       "or remove these knobs")
    if "num_layers" in space and group_per_layer:
        raise HpoError("spec: space.num_layers with model.group_per_layer = true would give trials different "
                       "layer groups (lr_encoder1, lr_encoder2...): fix model.num_layers, or set group_per_layer = false")
    shaped = [k for k in given if k in SHAPE_KNOBS]
    if shaped and pretrained:
        raise HpoError(f"spec: {', '.join('space.' + k for k in shaped)} {'changes' if len(shaped) == 1 else 'change'} "
                       "the encoder's shape, but pretrain.epochs "
                       "fine-tunes one pretrained encoder: fix them in [model], or set pretrain.epochs = 0")


def is_rate(key: str) -> bool:
    """Whether a ``[space]`` key is a layer group's learning rate (``lr_<group>``; ``lr_div`` is not)."""
    return key.startswith("lr_") and key != "lr_div" and len(key) > len("lr_")


def check_space(space: Mapping[str, SpaceEntry], groups: Sequence[str] | None) -> None:
    """Every ``[space]`` entry is a known knob with allowed values, and the rates match the groups.

    ``groups``: the model's layer groups; None for a model factory's, which are known only once the
    model is built: :func:`check_rates` runs then, before training. Such a model may leave
    ``dropout`` out (its own dropout stays as it built it).
    """
    for key, entry in space.items():
        knob = STATIC_KNOBS.get(key) or MODEL_KNOBS.get(key) or (Knob(key, _RATE[1], _RATE[0]) if is_rate(key) else None)
        if knob is None:
            rates = ", ".join(lr_param(g) for g in groups) if groups is not None else "lr_<group> per layer group"
            raise HpoError(f"spec: unknown key 'space.{key}' (tunable: {rates}, {', '.join(STATIC_KNOBS)}; "
                           f"the built-in LSTM's {', '.join(MODEL_KNOBS)})")
        _check_values(knob, entry)
    for knob in STATIC_KNOBS.values():
        if knob.required and knob.name not in space and not (groups is None and knob.name == "dropout"):
            raise HpoError(f"spec: space.{knob.name} is missing: give a distribution or a constant")
    if groups is not None:
        check_rates(space, groups)


def check_rates(space: Mapping[str, SpaceEntry], groups: Sequence[str], model: str = "the model") -> None:
    """The learning rates of ``[space]`` name each layer group of the model once, and nothing else:
    ``lr_<group>`` for every group, or ``lr_head`` and ``lr_div`` (ULMFiT's discriminative rates).
    A mismatch is one HpoError listing both sides: groups without a knob, knobs without a group.
    """
    given = [k for k in space if is_rate(k)]
    wanted = [lr_param(g) for g in groups]
    listed = f"the layer groups of {model} ({', '.join(groups)})"
    if "lr_div" in space:
        if "head" not in groups:
            raise HpoError(f"spec: space.lr_div divides lr_head per level below a group named 'head', not one of {listed}: "
                           f"give {', '.join('space.' + w for w in wanted)} instead")
        lower = [k for k in given if k in wanted and k != "lr_head"]
        if lower:
            raise HpoError(f"spec: space.lr_div excludes {', '.join('space.' + n for n in lower)} "
                           f"(each group below the head gets lr_head / lr_div per level)")
        wanted = ["lr_head"]
    missing = [w for w in wanted if w not in space]
    extra = [k for k in given if k not in wanted]
    if not missing and not extra:
        return
    sides = []
    if missing:
        ulmfit = "lr_div" not in space and "head" in groups and len(groups) > 1
        sides.append(f"groups without a knob: {', '.join(w[len('lr_'):] for w in missing)} "
                     f"(give {', '.join('space.' + w for w in missing)}"
                     + (", or space.lr_head and space.lr_div: each group one level further below the head at "
                        "lr_head / lr_div once more)" if ulmfit else ")"))
    if extra:
        sides.append(f"knobs without a group: {', '.join('space.' + k for k in extra)} (remove them)")
    raise HpoError(f"spec: [space]'s learning rates do not match {listed}: {'; '.join(sides)}")


def _check_values(knob: Knob, entry: SpaceEntry) -> None:
    if knob.integer and isinstance(entry, FloatParam):  # it would sample 1.37 layers, epochs...
        raise HpoError(f"spec: space.{knob.name} is a whole number: give type = 'int' (or categorical choices), not 'float'")
    if isinstance(entry, (FloatParam, IntParam)):
        values: list[Any] = [entry.low, entry.high]
    elif isinstance(entry, CategoricalParam):
        values = list(entry.choices)
    else:
        values = [entry]
    for value in values:
        if knob.boolean:
            if not isinstance(value, bool):
                raise HpoError(f"spec: space.{knob.name} = {value!r} is not {knob.rule}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HpoError(f"spec: space.{knob.name} = {value!r} is not a number ({knob.rule})")
        if not math.isfinite(value) or not knob.check(value) or (knob.integer and value != int(value)):
            raise HpoError(f"spec: space.{knob.name} allows {value!r}: {knob.rule}")


def group_lrs(values: Mapping[str, Any], groups: Sequence[str]) -> dict[str, float]:
    """Peak learning rate per layer group, from explicit rates or ``lr_head / lr_div**depth``."""
    if "lr_div" in values:
        head = float(values[lr_param("head")])
        div = float(values["lr_div"])
        depth = {g: len(groups) - 1 - i for i, g in enumerate(groups)}
        return {g: head / div ** depth[g] for g in groups}
    return {g: float(values[lr_param(g)]) for g in groups}


def cycle_epochs(cycle_len: int, cycle_mult: int, cycles: int, max_epochs: int) -> int:
    """Epochs of ``cycles`` SGDR cycles (``cycle_len``, ``cycle_len * cycle_mult``, ...), at most ``max_epochs``."""
    if not cycles:
        return max_epochs
    return min(max_epochs, sum(cycle_len * cycle_mult**i for i in range(cycles)))
