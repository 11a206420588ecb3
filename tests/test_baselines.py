"""The raw-text splits the baselines use, and the baselines themselves (benchmarks/baselines.py)."""

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from hpo.data import UNK, load_dataset, split_reviews, tokenize
from hpo.errors import HpoError
from hpo.spec import DataSpec

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "baselines.py"


@pytest.fixture(scope="module")
def baselines():
    """benchmarks/baselines.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("baselines", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baselines"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["baselines"]


def test_split_reviews_are_the_reviews_load_dataset_numericalizes(small_spec):
    spec = small_spec().data  # max_train 600, max_valid 300, max_test 300, max_len 120: subsets and truncation
    ds = load_dataset(spec)
    parts = split_reviews(spec)
    assert {k: len(v) for k, v in parts.items()} == {"train": 600, "valid": 300, "test": 300}
    stoi = {t: i for i, t in enumerate(ds.vocab)}
    for name in ("train", "valid", "test"):
        split = getattr(ds, name)
        assert [y for _, y in parts[name]] == split.labels.tolist(), name
        # Every review (1,200, under a second): a sample could miss two swapped reviews.
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


def test_log_count_ratio_by_hand_and_on_reviews(baselines):
    x = sp.csr_matrix([[1, 0], [1, 1], [0, 1]])
    r = baselines.log_count_ratio(x, np.array([1, 1, 0]))
    assert r == pytest.approx([math.log((3 / 5) / (1 / 3)), math.log((2 / 5) / (2 / 3))])

    train = split_reviews(DataSpec(max_train=2000))["train"]
    vectorizer = CountVectorizer(analyzer=baselines.ngrams, min_df=2, binary=True)
    x = vectorizer.fit_transform([t for t, _ in train])
    r = baselines.log_count_ratio(x, np.array([y for _, y in train]))
    vocab = vectorizer.vocabulary_
    assert r[vocab["great"]] > 0.3 and r[vocab["excellent"]] > 0.3
    assert r[vocab["worst"]] < -0.3 and r[vocab["waste of"]] < -0.3  # a bigram, tokenized like hpo's


def test_both_baselines_learn_from_2000_reviews(baselines):
    parts = split_reviews(DataSpec(max_train=2000, max_valid=1000))
    for fit in (baselines.tfidf_lr, baselines.nbsvm):
        result = fit(parts["train"], parts["valid"], parts["test"])
        assert result.val_accuracy > 0.85 and result.test_accuracy > 0.85, result  # measured: 0.88-0.89
        assert result.val_accuracy == max(acc for _, _, acc in result.grid)  # chosen on valid, not test
        assert (result.C, result.beta) in {(C, beta) for C, beta, _ in result.grid}
    assert len(result.grid) == len(baselines.NBSVM_C) * len(baselines.BETAS)


def test_baselines_need_both_labels_to_train(baselines):
    parts = split_reviews(DataSpec(max_train=2000, max_valid=100))
    positives = [r for r in parts["train"] if r[1] == 1]
    with pytest.raises(HpoError, match="both labels"):
        baselines.tfidf_lr(positives, parts["valid"], parts["test"])
