"""The raw-text splits the classical baselines use."""

from collections import Counter

import pytest

from hpo.data import UNK, load_dataset, split_reviews, tokenize
from hpo.errors import HpoError
from hpo.spec import DataSpec


def test_split_reviews_are_the_reviews_load_dataset_numericalizes(small_spec):
    spec = small_spec().data  # max_train 600, max_valid 300, max_len 120: subsets and truncation
    ds = load_dataset(spec)
    parts = split_reviews(spec)
    assert {k: len(v) for k, v in parts.items()} == {"train": 600, "valid": 300, "test": 2490}
    stoi = {t: i for i, t in enumerate(ds.vocab)}
    for name in ("train", "valid", "test"):
        split = getattr(ds, name)
        assert [y for _, y in parts[name]] == split.labels.tolist(), name
        # Every review (about 3,400, under a second): a sample could miss two swapped reviews.
        for i, (text, _) in enumerate(parts[name]):
            ids = [stoi.get(t, UNK) for t in tokenize(text)[: spec.max_len]] or [UNK]
            assert split.tokens[split.offsets[i] : split.offsets[i + 1]].tolist() == ids, (name, i)


def test_split_reviews_without_limits_are_the_whole_disjoint_splits():
    parts = split_reviews(DataSpec())
    assert {k: len(v) for k, v in parts.items()} == {"train": 19_924, "valid": 2_490, "test": 2_490}
    texts = [t for rows in parts.values() for t, _ in rows]
    assert len(set(texts)) == len(texts)
    counts = Counter(y for _, y in parts["valid"])  # stratified, of a pool with 96 duplicates dropped
    assert abs(counts[0] - counts[1]) <= 4


def test_split_reviews_rejects_a_missing_path(tmp_path):
    with pytest.raises(HpoError, match="neither an aclImdb directory"):
        split_reviews(DataSpec(path=str(tmp_path / "nowhere")))
