"""Spec files: built-in and local TOML studies, ``--set KEY=VALUE`` overrides, parsing into a Spec.

A spec is a TOML file with the sections ``data``, ``model``, ``train``, ``space``, ``sampler``,
``pruner`` and ``divergence``. ``--study NAME`` looks for ``./studies/NAME.toml`` first (a
local spec wins), then among the studies built into the package (the repository's
``studies/`` folder, shipped in the wheel as ``hpo.studies``); a path to a ``.toml`` file works
too. Every key may be overridden with ``KEY=VALUE`` strings whose values are TOML
(``data.max_train=400``, ``space.lr_head=0.01``, ``space.lr_head.high=0.1``; a value that is
not TOML is taken as a string).

Example::

    spec = load_spec("imdb", ["train.max_epochs=2", "space.lr_head=0.003"])
    spec.train.max_epochs            # 2
    spec.space["lr_head"]            # 0.003, a constant: the knob is fixed
    builtin_studies()                # {'imdb': 'LSTM on IMDB: ...', ...}
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from hpo.errors import HpoError
from hpo.spec.params import CategoricalParam, FloatParam, IntParam, SpaceEntry
from hpo.spec.schema import CHOICES, SECTIONS, Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BUILTIN_PACKAGE = "hpo.studies"


def _builtin_files() -> dict[str, Any]:
    try:
        folder: Any = importlib.resources.files(_BUILTIN_PACKAGE)
    except ModuleNotFoundError:
        # Imported from a source checkout that is not installed (hpo/ found on sys.path first):
        # the specs are in the repository's studies/ folder.
        folder = Path(__file__).resolve().parents[2] / "studies"
        if not folder.is_dir():
            return {}
    return {f.name[: -len(".toml")]: f for f in folder.iterdir() if f.name.endswith(".toml")}


def builtin_studies() -> dict[str, str]:
    """Name -> description of every study spec shipped with ``hpo``."""
    out = {}
    for name, resource in sorted(_builtin_files().items()):
        try:
            out[name] = str(tomllib.loads(resource.read_text(encoding="utf-8")).get("description", ""))
        except tomllib.TOMLDecodeError:
            out[name] = "(not valid TOML)"
    return out


def _read_spec_text(name_or_path: str) -> tuple[str, str]:
    """(TOML text, where it came from) for ``--study``: a path, ./studies/NAME.toml, or a built-in."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise HpoError(f"study spec file {name_or_path!r} does not exist")
        return path.read_text(encoding="utf-8"), str(path)
    local = Path.cwd() / "studies" / f"{name_or_path}.toml"
    if local.is_file():
        return local.read_text(encoding="utf-8"), str(local)
    builtin = _builtin_files()
    if name_or_path in builtin:
        return builtin[name_or_path].read_text(encoding="utf-8"), f"built-in study {name_or_path!r}"
    raise HpoError(
        f"unknown study {name_or_path!r}: no ./studies/{name_or_path}.toml and no built-in study of that name "
        f"(built-in: {', '.join(sorted(builtin)) or 'none'}; `hpo studies` lists them; or pass a path to a .toml file)"
    )


def load_spec(name_or_path: str, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Spec:
    """Read a spec, apply ``KEY=VALUE`` overrides and validate the result."""
    text, origin = _read_spec_text(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HpoError(f"study spec {origin} is not valid TOML: {exc}") from None
    raw.setdefault("name", Path(name_or_path).stem if name_or_path.endswith(".toml") else name_or_path)
    return spec_from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=toml_value`` applied in order; or, from
    Python, each ``{dotted.key: value}`` (the value as it is, not parsed)."""
    out = copy.deepcopy(dict(raw))
    if isinstance(overrides, Mapping):
        pairs = [(str(key).strip(), value) for key, value in overrides.items()]
    else:
        pairs = []
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise HpoError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_epochs=2")
            pairs.append((key.strip(), _parse_value(text.strip())))
    for key, value in pairs:
        if not key:
            raise HpoError("an override's key is empty: use a dotted key such as train.max_epochs")
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
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings such as paths need no quotes on a command line


def spec_from_dict(raw: Mapping[str, Any]) -> Spec:
    """Check the types of plain data (a parsed TOML file) and freeze it into a :class:`Spec`."""
    known = {"name", "description", "space", *SECTIONS}
    for key in raw:
        if key not in known:
            raise HpoError(f"spec: unknown section {key!r} (known: {', '.join(sorted(known))})")
    name = raw.get("name", "")
    if not isinstance(name, str) or not name:
        raise HpoError("spec: 'name' must be a non-empty string")
    sections = {sec: _build_section(sec, cls, raw.get(sec, {})) for sec, cls in SECTIONS.items()}
    space = _build_space(raw.get("space", {}))
    return Spec(name=name, description=str(raw.get("description", "")), space=space, **sections)


_RENAMED = {"pruner.n_warmup_steps": "pruner.warmup_epochs (n_warmup_steps = 1 was warmup_epochs = 0: epochs are 1-based steps)"}


def _build_section(section: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise HpoError(f"spec: [{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            hint = f"renamed: use {_RENAMED[dotted]}" if dotted in _RENAMED else f"known: {', '.join(fields)}"
            raise HpoError(f"spec: unknown key '{dotted}' ({hint})")
        kwargs[key] = _coerce(dotted, value, fields[key])
        allowed = CHOICES.get(dotted)
        if allowed and kwargs[key] not in allowed:
            raise HpoError(f"spec: {dotted} = {value!r} is not one of {', '.join(allowed)}")
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
    return {key: _build_param(f"space.{key}", entry) for key, entry in table.items()}


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
