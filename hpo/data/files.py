"""Your labelled texts from a file: CSV, TSV, JSON Lines or Parquet, read as a stream of rows.

A file is read twice and never held in memory: the first pass (:func:`plan_file`) checks every
row and keeps only its label, its split and a 16-byte digest of its text (to drop exact
duplicates, as for the packaged reviews); the second pass (:func:`iter_kept_rows`) hands the
kept rows to the tokenizer one at a time. Both passes use the ``csv`` and ``json`` modules (no
pandas); Parquet goes through ``pyarrow`` in record batches, an optional extra.

Bad data is an :class:`~hpo.errors.HpoError` naming the row and the fix, raised in the first
pass, before anything is tokenized and before a study exists.

Example::

    plan = plan_file(DataSpec(path="tickets.csv", text_column="body", label_column="team"))
    plan.classes                     # ('billing', 'bugs', 'sales'): label-id order, from the training split
    for row, text, label_id, split in iter_kept_rows(plan):
        ...
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hpo.data.splits import stratified_split
from hpo.errors import HpoError
from hpo.spec import DataSpec

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SPLIT_NAMES = ("train", "valid", "test")
DISTINCT_LIMIT = 0.8  # a label column with this share of distinct values is probably text or an id
PARQUET_INSTALL = "pip install 'hpo[parquet]'"


def file_format(path: Path) -> str | None:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet`` by the file's suffix; None for anything else."""
    return SUFFIXES.get(path.suffix.lower())


@dataclass(frozen=True)
class FilePlan:
    """What the first pass learnt: which rows are kept, their class ids and splits, the classes."""

    path: Path
    fmt: str
    spec: DataSpec
    classes: tuple[str, ...]  # label-id order: sorted, numerically when every label is an integer
    kept: dict[int, tuple[int, int]]  # data row number (1-based) -> (class id, split index 0/1/2)
    counts: dict[str, tuple[int, ...]]  # split -> rows per class

    def sizes(self) -> str:
        return ", ".join(f"{sum(c):,} {name}" for name, c in self.counts.items())


def _decoded_lines(f: io.BufferedReader, where: list[int]) -> Iterator[str]:
    # One line at a time, so a non-UTF-8 byte is reported at its line, not at a 8 kB chunk.
    for number, raw in enumerate(f, 1):
        where[0] = number
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise _NotUtf8(number, raw[exc.start]) from None


class _NotUtf8(Exception):
    def __init__(self, line: int, byte: int) -> None:
        self.line, self.byte = line, byte


def _columns_error(spec: DataSpec, key: str, name: str, columns: list[str]) -> HpoError:
    shown = ", ".join(repr(c) for c in columns) or "none"
    return HpoError(f"data.path {spec.path!r} has no column {name!r} (data.{key}); its columns are {shown}: "
                    f"--set data.{key}=NAME")


def _wanted(spec: DataSpec) -> list[tuple[str, str]]:
    keys = [("text_column", spec.text_column), ("label_column", spec.label_column)]
    return keys + ([("split_column", spec.split_column)] if spec.split_column else [])


def _check_columns(spec: DataSpec, columns: list[str]) -> None:
    for key, name in _wanted(spec):
        if name not in columns:
            raise _columns_error(spec, key, name, columns)


def iter_raw_rows(spec: DataSpec) -> Iterator[tuple[int, Any, Any, Any]]:
    """``(row, text, label, split)`` for every data row of ``data.path``, row numbers from 1.

    Values are as the file has them (strings; JSON and Parquet may give numbers or None).
    """
    path = Path(spec.path).expanduser()
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_rows(spec, path)
        return
    where = [0]
    row = 0
    with path.open("rb") as f:
        try:
            if fmt == "jsonl":
                for line in _decoded_lines(f, where):
                    if not line.strip():
                        continue
                    row += 1
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise HpoError(f"data.path {spec.path!r}: row {row} (line {where[0]}) is not JSON ({exc.msg}): "
                                       "one JSON object per line") from None
                    if not isinstance(obj, dict):
                        raise HpoError(f"data.path {spec.path!r}: row {row} (line {where[0]}) is not a JSON object")
                    if row == 1:
                        _check_columns(spec, list(obj))
                    missing = [n for _, n in _wanted(spec) if n not in obj]
                    if missing:
                        raise HpoError(f"data.path {spec.path!r}: row {row} (line {where[0]}) has no {missing[0]!r}; "
                                       f"its keys are {', '.join(repr(k) for k in obj)}")
                    yield row, obj[spec.text_column], obj[spec.label_column], obj.get(spec.split_column)
                return
            csv.field_size_limit(2**31 - 1)  # a long review is text, not a broken file (the default stops at 128 kB)
            reader = csv.reader(_decoded_lines(f, where), delimiter="\t" if fmt == "tsv" else ",")
            header = next(reader, None)
            if header is None:
                raise HpoError(f"data.path {spec.path!r} is empty: a header line naming the columns, then one row per text")
            _check_columns(spec, header)
            index = [header.index(name) for _, name in _wanted(spec)]
            for values in reader:
                if not values:
                    continue
                row += 1
                if len(values) != len(header):
                    raise HpoError(f"data.path {spec.path!r}: row {row} (line {where[0]}) has {len(values)} fields, "
                                   f"the header {len(header)} (quote fields that hold the delimiter)")
                picked = [values[i] for i in index]
                yield row, picked[0], picked[1], picked[2] if spec.split_column else None
        except _NotUtf8 as bad:
            raise HpoError(f"data.path {spec.path!r}: row {row + 1} (line {bad.line}) is not UTF-8 text "
                           f"(byte 0x{bad.byte:02x}): save the file as UTF-8") from None
        except csv.Error as exc:
            raise HpoError(f"data.path {spec.path!r}: row {row + 1} (line {where[0]}) is not valid "
                           f"{fmt.upper()}: {exc}") from None


def _parquet_rows(spec: DataSpec, path: Path) -> Iterator[tuple[int, Any, Any, Any]]:
    try:
        import pyarrow.parquet as pq  # an optional extra; only Parquet files need it
    except ModuleNotFoundError:
        raise HpoError(f"data.path {spec.path!r} is a Parquet file, which needs pyarrow: {PARQUET_INSTALL}") from None
    pf = pq.ParquetFile(path)
    _check_columns(spec, list(pf.schema_arrow.names))
    names = [n for _, n in _wanted(spec)]
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=names):
        cols = [batch.column(i).to_pylist() for i in range(len(names))]
        for values in zip(*cols):
            row += 1
            yield row, values[0], values[1], values[2] if spec.split_column else None


def _label_text(label: Any) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # JSON/Parquet 1.0 is the class 1
    return str(label).strip()


def _class_order(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def plan_file(spec: DataSpec) -> FilePlan:
    """Read ``data.path`` once: check every row, drop duplicate texts, split, count the classes."""
    path = Path(spec.path).expanduser()
    fmt = file_format(path)
    if fmt is None:
        raise HpoError(f"data.path {spec.path!r}: unknown file type {path.suffix!r}; give a .csv, .tsv, .jsonl or "
                       ".parquet file, an aclImdb directory or aclImdb_v1.tar.gz")
    if not path.is_file():
        raise HpoError(f"data.path {spec.path!r} does not exist (give a .csv, .tsv, .jsonl or .parquet file, "
                       "an aclImdb directory or aclImdb_v1.tar.gz)")
    seen: set[bytes] = set()
    # digests of the label values over every row, duplicates included: a text column taken for the
    # label makes one value per row, and its texts are duplicates of nothing but themselves
    label_values: set[bytes] = set()
    read = 0
    rows: list[int] = []
    labels: list[str] = []
    splits: list[int] = []
    for row, text, label, split in iter_raw_rows(spec):
        if not isinstance(text, str) or not text.strip():
            raise HpoError(f"data.path {spec.path!r}: row {row} has no text in {spec.text_column!r}: "
                           "fill it in or remove the row")
        if label is None or not _label_text(label):
            raise HpoError(f"data.path {spec.path!r}: row {row} has no label in {spec.label_column!r}: "
                           "fill it in or remove the row")
        part = 0
        if spec.split_column:
            value = str(split or "").strip().lower()
            if value not in SPLIT_NAMES:
                raise HpoError(f"data.path {spec.path!r}: row {row} has {split!r} in {spec.split_column!r}; "
                               "data.split_column takes train, valid or test")
            part = SPLIT_NAMES.index(value)
        read += 1
        label_values.add(hashlib.blake2b(_label_text(label).encode(), digest_size=16).digest())
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if digest in seen:
            continue  # an exact duplicate: keep the first, so no text lands in two splits
        seen.add(digest)
        rows.append(row)
        labels.append(_label_text(label))
        splits.append(part)
    del seen
    if not rows:
        raise HpoError(f"data.path {spec.path!r} has no rows: a header line naming the columns, then one row per text")
    if read >= 10 and len(label_values) >= DISTINCT_LIMIT * read:
        raise HpoError(f"data.label_column {spec.label_column!r} has {len(label_values):,} distinct values in {read:,} "
                       f"rows ({len(label_values) / read:.0%}): probably not a label; --set data.label_column=NAME "
                       "names the column of class names")
    distinct = set(labels)
    if len(distinct) < 2:
        raise HpoError(f"data.path {spec.path!r} has one class only ({next(iter(distinct))!r} in "
                       f"{spec.label_column!r}): a classifier needs two or more")
    if not spec.split_column:
        splits = _seeded_splits(spec, labels)
    names = _class_order({y for y, s in zip(labels, splits) if s == 0})
    ids = {name: i for i, name in enumerate(names)}
    counts = {name: [0] * len(names) for name in SPLIT_NAMES}
    for y, s in zip(labels, splits):
        if y not in ids:
            raise HpoError(f"data.path {spec.path!r}: class {y!r} is in the {SPLIT_NAMES[s]} split but not in train "
                           f"({spec.split_column!r}): give it training rows or remove it")
        counts[SPLIT_NAMES[s]][ids[y]] += 1
    if spec.split_column:
        for s in ("valid",):
            empty = [n for n, c in zip(names, counts[s]) if c == 0]
            if empty:
                raise HpoError(f"data.path {spec.path!r}: class {empty[0]!r} has no {s} rows ({spec.split_column!r}); "
                               "every class needs some to be measured")
    kept = {r: (ids[y], s) for r, y, s in zip(rows, labels, splits)}
    return FilePlan(path, fmt, spec, tuple(names), kept, {k: tuple(v) for k, v in counts.items()})


def _seeded_splits(spec: DataSpec, labels: list[str]) -> list[int]:
    per_class: dict[str, int] = {}
    for y in labels:
        per_class[y] = per_class.get(y, 0) + 1
    need = min_rows_per_class(spec.valid_fraction, spec.test_fraction)
    for name in _class_order(set(per_class)):
        if per_class[name] < need:
            raise HpoError(
                f"data.path {spec.path!r}: class {name!r} has {per_class[name]} row(s); the split needs at least {need} "
                f"per class (one in train, valid{' and test' if spec.test_fraction else ''} at data.valid_fraction="
                f"{spec.valid_fraction:g}, data.test_fraction={spec.test_fraction:g}): add rows or remove the class"
            )
    parts = stratified_split(labels, [1 - spec.valid_fraction - spec.test_fraction, spec.valid_fraction], spec.split_seed)
    out = [0] * len(labels)
    for s, idx in enumerate(parts):
        for i in idx:
            out[i] = s
    return out


def min_rows_per_class(valid_fraction: float, test_fraction: float) -> int:
    """The fewest rows a class needs so that the seeded split (:func:`~hpo.data.splits.stratified_split`:
    train and valid rounded, test the rest) gives it at least one row in every split."""
    for n in range(1, 100_000):
        train, valid = round(n * (1 - valid_fraction - test_fraction)), round(n * valid_fraction)
        if train >= 1 and valid >= 1 and (n - train - valid >= 1 or not test_fraction):
            return n
    return sys.maxsize


def iter_kept_rows(plan: FilePlan) -> Iterator[tuple[int, str, int, int]]:
    """The second pass: ``(row, text, class id, split index)`` of every kept row, in file order."""
    for row, text, _, _ in iter_raw_rows(plan.spec):
        hit = plan.kept.get(row)
        if hit is not None:
            yield row, text, hit[0], hit[1]
