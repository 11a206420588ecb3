import multiprocessing
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import hpo.data.cache as cache
from hpo.data import (
    PAD, UNK, build_vocab, drop_duplicates, iter_batches, load_dataset, numericalize, pad_batch,
    padding_fraction, read_packaged, stratified_split, tokenize,
)
from hpo.errors import HpoError
from hpo.spec import DataSpec


def test_tokenizer_strips_html_and_splits_punctuation():
    text = "This movie was GREAT!<br /><br />I'd see it again... 10/10 &amp; more"
    assert tokenize(text) == [
        "this", "movie", "was", "great", "!", "i'd", "see", "it", "again", ".", ".", ".",
        "10", "/", "10", "&", "more",
    ]
    assert "<" not in tokenize("a<br />b") and tokenize("a<br />b") == ["a", "b"]


def test_packaged_reviews_are_the_imdb_training_set_without_importing_pandas(tmp_path):
    reviews = read_packaged()
    assert len(reviews) == 25_000
    assert Counter(y for _, y in reviews) == {0: 12_500, 1: 12_500}
    assert any("<br />" in t for t, _ in reviews[:200])
    assert len(drop_duplicates(reviews)) == 25_000 - 96
    # In a fresh interpreter: other tests (scikit-learn, optuna-dashboard) import pandas in this one.
    code = "import sys; from hpo.data import read_packaged; read_packaged(); print('pandas' in sys.modules)"
    # cwd: away from the repository root, whose source folder `python -c` would import instead of the installed hpo
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.strip() == "False"


def test_labels_mean_positive_is_one():
    reviews = read_packaged()
    pos = Counter(w for t, y in reviews if y == 1 for w in tokenize(t))
    neg = Counter(w for t, y in reviews if y == 0 for w in tokenize(t))
    assert pos["excellent"] > 2 * neg["excellent"] and neg["worst"] > 2 * pos["worst"]


def test_split_is_stratified_disjoint_and_stable():
    labels = [i % 2 for i in range(1000)]
    a = stratified_split(labels, [0.8, 0.1], seed=0)
    b = stratified_split(labels, [0.8, 0.1], seed=0)
    assert a == b
    assert [len(p) for p in a] == [800, 100, 100]
    assert sorted(i for p in a for i in p) == list(range(1000))
    assert all(sum(labels[i] for i in p) * 2 == len(p) for p in a)
    assert stratified_split(labels, [0.8, 0.1], seed=1) != a


@pytest.fixture(scope="module")
def full(data_cache_dir):
    return load_dataset(DataSpec(cache_dir=data_cache_dir))


def _texts(split, vocab):
    return {tuple(split.tokens[s:e].tolist()) for s, e in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist())}


def test_dataset_splits_have_no_duplicates_across_them(full):
    assert (len(full.train), len(full.valid), len(full.test)) == (19_924, 2_490, 2_490)
    for split in (full.train, full.valid, full.test):
        assert abs(float(split.labels.float().mean()) - 0.5) < 0.002  # stratified: the data's own balance
    # numericalized (truncated) reviews can coincide by chance, raw texts cannot: compare raw
    reviews = drop_duplicates(read_packaged())
    idx = stratified_split([y for _, y in reviews], [0.8, 0.1], 0)
    sets = [{reviews[i][0] for i in part} for part in idx]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert full.vocab[:2] == ["<pad>", "<unk>"] and full.vocab_size == 30_000


def test_second_load_comes_from_the_cache(full, data_cache_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("rebuilt instead of reading the cache")

    monkeypatch.setattr(cache, "_build", boom)
    again = load_dataset(DataSpec(cache_dir=data_cache_dir))
    assert torch.equal(again.train.tokens, full.train.tokens) and again.vocab == full.vocab
    # a setting that changes the tensors is a different cache entry
    with pytest.raises(AssertionError, match="rebuilt"):
        load_dataset(DataSpec(cache_dir=data_cache_dir, max_len=77))


def test_subsets_are_seeded_and_stratified(full, data_cache_dir):
    small = load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=400, max_valid=100))
    assert (len(small.train), len(small.valid)) == (400, 100)
    assert int(small.train.labels.sum()) == 200
    again = load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=400, max_valid=100))
    assert torch.equal(small.train.tokens, again.train.tokens)
    assert len(small.test) == len(full.test)  # the test split is whole unless max_test says otherwise
    quick = load_dataset(DataSpec(cache_dir=data_cache_dir, max_train=400, max_valid=100, max_test=300))
    assert len(quick.test) == 300 and int(quick.test.labels.sum()) == 150
    assert torch.equal(quick.train.tokens, small.train.tokens) and torch.equal(quick.valid.tokens, small.valid.tokens)


def test_bucketed_batches_cover_each_review_once_with_little_padding(full):
    batches = list(iter_batches(full.train, 64, shuffle=True, seed=3))
    assert sum(len(b.labels) for b in batches) == len(full.train)
    assert sorted(int(n) for b in batches for n in b.lengths) == sorted(full.train.lengths.tolist())
    random_order = torch.randperm(len(full.train), generator=torch.Generator().manual_seed(0)).tolist()
    naive = [pad_batch(full.train, random_order[i : i + 64]) for i in range(0, len(random_order), 64)]
    assert padding_fraction(full.train, batches) < 0.05 < padding_fraction(full.train, naive)
    first = [b.lengths.tolist() for b in iter_batches(full.train, 64, shuffle=True, seed=4)][:5]
    assert first != [b.lengths.tolist() for b in batches][:5]  # a fresh order every epoch
    b = batches[0]
    assert b.tokens.shape == (len(b.labels), int(b.lengths.max()))
    assert (b.tokens[0, int(b.lengths[0]):] == PAD).all() and (b.tokens[0, : int(b.lengths[0])] != PAD).all()


def _build_in_process(args):
    folder, max_len = args
    ds = load_dataset(DataSpec(cache_dir=folder, max_len=max_len))
    return ds.cache_key, int(ds.train.tokens.sum())


@pytest.mark.e2e
def test_concurrent_workers_build_one_consistent_cache(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.map(_build_in_process, [(str(tmp_path), 50)] * 3)
    assert len(set(results)) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix not in (".pt", ".lock")]
    assert leftovers == [] and len(list(tmp_path.glob("*.pt"))) == 1


def _write_aclimdb(root: Path) -> None:
    reviews = {
        "train": {"pos": ["a great great film", "great acting , lovely", "lovely great story"],
                  "neg": ["a bad bad film", "awful acting", "bad story , awful"]},
        "test": {"pos": ["great zebra"], "neg": ["bad zebra"]},
    }
    for split, by_label in reviews.items():
        for label, texts in by_label.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i, text in enumerate(texts):
                (folder / f"{i}_7.txt").write_text(text)


@pytest.mark.parametrize("as_tarball", [False, True])
def test_aclimdb_directory_or_tarball_keeps_its_own_test_split(tmp_path, as_tarball):
    _write_aclimdb(tmp_path / "src")
    path = tmp_path / "src"
    if as_tarball:
        path = tmp_path / "aclImdb_v1.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(tmp_path / "src" / "aclImdb", arcname="aclImdb")
    ds = load_dataset(DataSpec(path=str(path), cache_dir=str(tmp_path / "cache"), valid_fraction=0.34, min_freq=1))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (4, 2, 2)
    assert "zebra" not in ds.vocab  # vocabulary from train only
    assert sorted(ds.test.labels.tolist()) == [0, 1]
    assert UNK in ds.test.tokens.tolist()


def test_bad_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(HpoError, match="does not exist"):
        load_dataset(DataSpec(path=str(tmp_path / "nope"), cache_dir=str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HpoError, match="aclImdb layout"):
        load_dataset(DataSpec(path=str(tmp_path / "empty"), cache_dir=str(tmp_path)))


def test_vocab_and_numericalize():
    vocab = build_vocab([["a", "b", "a"], ["a", "c", "b"]], min_freq=2, max_size=10)
    assert vocab == ["<pad>", "<unk>", "a", "b"]
    split = numericalize([["a", "c", "b", "a"], []], [1, 0], vocab, max_len=3)
    assert split.tokens.tolist() == [2, UNK, 3, UNK] and split.lengths.tolist() == [3, 1]
    assert build_vocab([["a", "b", "a"]], min_freq=1, max_size=3) == ["<pad>", "<unk>", "a"]
