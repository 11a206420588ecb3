"""The model a study found, as one file: exported from the study's kept weights, loaded, used.

``hpo export`` writes one self-contained file (no study database, data cache or artifact store
needed to use it): the best-epoch weights of one trial, or of the top k (an ensemble that
averages their probabilities), the vocabulary, the tokenizer's version and length limit, the
class names, the study's spec, each trial's parameters and scores, and the hpo version. It is a
``torch.save`` dict of plain containers and tensors, so it loads with
``torch.load(weights_only=True)``: reading a file from elsewhere runs no code. Measured against
TorchScript and ``torch.export`` in ``benchmarks/export_formats.py``
(benchmarks/results/export_formats.txt): the smallest file and the fastest load, the same
predictions, and the only one of the three that every model exports to.

The module is rebuilt from the spec (``build_model``, or the spec's own model factory: its module
must be importable where you predict) and the weights loaded into it.

Example::

    export_model(study, "model.pt")                   # the best trial
    export_model(study, "top3.pt", top=3)             # an ensemble of the top 3
    model = load_model("model.pt")
    model.predict(["A moving, funny film.", "Two hours I will never get back."])
    # [Prediction(label='positive', probability=0.93, ...), Prediction(label='negative', ...)]
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
import torch

from hpo.data import PAD, UNK, tokenize
from hpo.data.cache import atomic_save
from hpo.data.text import TOKENIZER_VERSION
from hpo.errors import HpoError
from hpo.record import StudyRecord, TrialRecord
from hpo.spec import BUILTIN_FACTORY, CategoricalParam, FloatParam, IntParam, Spec, spec_from_dict, trial_model
from hpo.spec.schema import factory_name
from hpo.storage.artifacts.retention import kept_trials, top_trials
from hpo.storage.artifacts.stores import artifact_location, open_location
from hpo.storage.artifacts.usage import describe_trials
from hpo.storage.optuna_private import storage_of
from hpo.training.checkpoints import load_weights
from hpo.training.device import autocast, resolve_device, resolve_precision
from hpo.training.models import build_model

FORMAT = "hpo-model"
FORMAT_VERSION = 1  # bump when a reader of this version could not use the file
OnBatch = Callable[[int, int], None]  # (texts done, texts in all)


def hpo_version() -> str:
    try:
        return version("hpo")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True)
class Prediction:
    """One text's predicted class, its probability, and every class's probability."""

    label: str
    probability: float
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Exported:
    path: str
    trials: tuple[int, ...]  # best first
    bytes: int

    def describe(self) -> str:
        kind = "ensemble of " if len(self.trials) > 1 else ""
        return f"wrote {self.path} ({kind}{describe_trials(self.trials)}, {self.bytes / 1e6:.1f} MB)"


# --- out of a study -------------------------------------------------------------------------------


def choose_trials(study: optuna.Study, kept: Mapping[int, str], trial: int | None, top: int | None) -> list[int]:
    """The trials to export: ``trial``, the top ``top``, or the best; each must have kept weights."""
    if trial is not None and top is not None:
        raise HpoError("give --trial N or --top K, not both")
    held = f"kept: {describe_trials(list(kept))}" if kept else "no trial's weights are kept"
    hint = "(artifacts.keep_best sets how many; trials that finished before hpo kept weights have none)"
    if trial is not None:
        if trial not in kept:
            raise HpoError(f"trial {trial} of study {study.study_name!r} has no kept weights ({held}) {hint}")
        return [trial]
    wanted = top_trials(study, top or 1)
    if len(wanted) < (top or 1):
        raise HpoError(f"study {study.study_name!r} has {len(wanted) or 'no'} complete trial{'s' * (len(wanted) != 1)}: "
                       f"{'nothing to export' if not wanted else f'--top {len(wanted)} at most'}")
    missing = [n for n in wanted if n not in kept]
    if missing:
        raise HpoError(f"the top {len(wanted)} trials of study {study.study_name!r} are {', '.join(map(str, wanted))}, "
                       f"and {describe_trials(missing)} {'has' if len(missing) == 1 else 'have'} no kept weights ({held}) {hint}")
    return wanted


def export_model(study: optuna.Study, out: str | os.PathLike, trial: int | None = None, top: int | None = None,
                 store: Any = None) -> Exported:
    """Write the model file of ``trial`` (default: the study's best), or of its ``top`` trials."""
    stored = StudyRecord.of(study)
    spec = stored.parsed_spec()
    if spec is None:
        raise HpoError(f"study {study.study_name!r} records no spec (made by an older hpo): it cannot be exported")
    store = store if store is not None else open_location(artifact_location(study, record=False), storage_of(study))
    kept_ids = kept_trials(study, store)
    numbers = choose_trials(study, kept_ids, trial, top)
    records = {t.number: TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False) if t.number in numbers}
    members, vocab, classes = [], None, None
    for number in numbers:
        kept = load_weights(store, kept_ids[number])
        if vocab is not None and kept["vocab"] != vocab:  # a study's data spec is fixed: never expected
            raise HpoError(f"trial {number} was trained on another vocabulary than trial {numbers[0]}: export them one by one")
        vocab, classes = kept["vocab"], kept["classes"]
        r = records[number]
        members.append({
            "trial": number, "params": dict(r.params), "val_accuracy": r.accuracy, "test_accuracy": r.test_accuracy,
            "best_epoch": kept["epoch"], "precision": r.outcome.precision if r.outcome else "fp32",
            "state_dict": kept["state_dict"],
        })
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hpo_version": hpo_version(),
        "study": study.study_name, "spec": dict(stored.spec or {}),
        "model": {"factory": factory_name(spec.model.factory), "spec": dict((stored.spec or {}).get("model", {}))},
        "tokenizer": {"version": TOKENIZER_VERSION, "max_len": spec.data.max_len, "lowercase": True},
        # one string, not a list: weights_only unpickles a 30,000-string list in ~0.2 s, a string in ~0
        "vocab": "\n".join(vocab or []), "classes": list(classes or []), "members": members,
    }
    path = Path(out)
    atomic_save(payload, path)
    return Exported(str(path), tuple(numbers), path.stat().st_size)


# --- loaded and used ------------------------------------------------------------------------------


class Model:
    """A loaded model file: one network, or an ensemble whose probabilities are averaged."""

    def __init__(self, payload: Mapping[str, Any], device: torch.device | None = None) -> None:
        self.info = {k: v for k, v in payload.items() if k not in ("vocab", "members")}
        self.members_info = [{k: v for k, v in m.items() if k != "state_dict"} for m in payload["members"]]
        self.classes = tuple(payload["classes"])
        self.vocab = payload["vocab"].split("\n")  # tokens never hold whitespace
        self.stoi = {token: i for i, token in enumerate(self.vocab)}
        self.max_len = int(payload["tokenizer"]["max_len"])
        self.spec: Spec = spec_from_dict(payload["spec"])
        self.device = device or resolve_device("auto")
        self.precisions = [resolve_precision(m.get("precision") or "fp32", self.device) for m in payload["members"]]
        self.networks = [self._network(m) for m in payload["members"]]

    def _network(self, member: Mapping[str, Any]) -> torch.nn.Module:
        # The one place a model file's module is rebuilt: the spec says which (built-in or a factory).
        dropout = member["params"].get("dropout")  # None: a model without the knob, as its factory built it
        # The built-in LSTM is built on the meta device: no random initialisation to throw away
        # (the weights replace it). A factory of yours is built as it builds itself (it may make
        # buffers that the weights do not hold).
        builtin = factory_name(self.spec.model.factory) == BUILTIN_FACTORY
        # The trial's shape: the spec's constants, then what the trial sampled (trial.params holds only that).
        fixed = {k: v for k, v in self.spec.space.items() if not isinstance(v, (FloatParam, IntParam, CategoricalParam))}
        shape = trial_model(self.spec.model, {**fixed, **member["params"]})
        # build_model seeds torch's global generator (training wants every trial to start alike);
        # a user who loads a model inside their own seeded code must not have their stream reset.
        with torch.random.fork_rng(devices=[]), (torch.device("meta") if builtin else contextlib.nullcontext()):
            net = build_model(self.spec, len(self.vocab), None if dropout is None else float(dropout),
                              num_classes=len(self.classes), model=shape)
        try:
            net.load_state_dict(member["state_dict"], assign=builtin)
        except RuntimeError as exc:
            raise HpoError(f"the weights of trial {member['trial']} do not fit the model its spec builds "
                           f"({str(exc).splitlines()[0]})") from None
        return net.to(self.device).eval()

    @property
    def trials(self) -> tuple[int, ...]:
        return tuple(m["trial"] for m in self.members_info)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, as training saw them (same tokenizer, vocabulary and length limit)."""
        ids = []
        for i, text in enumerate(texts):
            tokens = tokenize(text) if isinstance(text, str) else []
            if not tokens:
                raise HpoError(f"text {i + 1} is empty (no words): give every text some words")
            ids.append([self.stoi.get(t, UNK) for t in tokens[: self.max_len]])
        return ids

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str], batch_size: int | None = None,
                      on_batch: OnBatch | None = None) -> torch.Tensor:
        """(texts, classes) probabilities, averaged over the members, in the order given.

        Texts are batched by length (as evaluation batches a split), so a split's accuracy here is
        the one its trial recorded.
        """
        ids = self.encode(texts)
        batch_size = batch_size or self.spec.data.batch_size * 2  # evaluation's batch size
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.zeros(len(ids), len(self.classes))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            lengths = torch.tensor([len(ids[i]) for i in chunk])
            tokens = torch.full((len(chunk), int(lengths.max())), PAD, dtype=torch.long)
            for row, i in enumerate(chunk):
                tokens[row, : len(ids[i])] = torch.tensor(ids[i])
            tokens, lengths = tokens.to(self.device), lengths.to(self.device)
            total = torch.zeros(len(chunk), len(self.classes), device=self.device)
            for net, precision in zip(self.networks, self.precisions):
                with autocast(self.device, precision):
                    logits = net(tokens, lengths).float()
                total += _as_probabilities(logits)
            out[chunk] = (total / len(self.networks)).cpu()
            if on_batch is not None:
                on_batch(min(start + batch_size, len(order)), len(order))
        return out

    def predict(self, texts: Sequence[str], batch_size: int | None = None, on_batch: OnBatch | None = None) -> list[Prediction]:
        """Each text's label and its probability (the averaged one, for an ensemble)."""
        probs = self.probabilities(texts, batch_size, on_batch)
        best = probs.argmax(dim=1).tolist()
        return [Prediction(self.classes[k], float(row[k]), tuple(float(p) for p in row)) for k, row in zip(best, probs)]

    def describe(self) -> str:
        kind = f"ensemble of {len(self.networks)}" if len(self.networks) > 1 else "single model"
        return (f"{kind} from study {self.info.get('study')!r} ({describe_trials(list(self.trials))}), classes "
                f"{', '.join(self.classes)}, hpo {self.info.get('hpo_version')}")


def _as_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """One logit per text (the built-in binary head): [1 - p, p]; one per class: softmax."""
    if logits.dim() == 1 or logits.size(-1) == 1:
        p = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=-1)


def read_payload(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's contents, checked; an HpoError (one line) for anything else."""
    where = str(path)
    if not Path(where).is_file():
        raise HpoError(f"model file {where} does not exist (write one with hpo export --study S --out {where})")
    try:
        payload = torch.load(where, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HpoError(f"{where} is not an hpo model file (not a PyTorch file of plain data: {type(exc).__name__}); "
                       "write one with hpo export") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise HpoError(f"{where} is not an hpo model file (a PyTorch file of something else); write one with hpo export")
    made = payload.get("format_version")
    if not isinstance(made, int) or made > FORMAT_VERSION:
        raise HpoError(f"{where} was written by a newer hpo ({payload.get('hpo_version')}, model format {made}; this hpo "
                       f"{hpo_version()} reads format {FORMAT_VERSION}): pip install -U hpo")
    tokenizer = payload.get("tokenizer", {})
    if tokenizer.get("version") != TOKENIZER_VERSION:
        raise HpoError(f"{where} was trained on tokenizer version {tokenizer.get('version')}; this hpo tokenizes as "
                       f"version {TOKENIZER_VERSION}: predict with the hpo that wrote it ({payload.get('hpo_version')})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> Model:
    """A model file written by :func:`export_model`, ready to predict (on CUDA when there is one)."""
    if isinstance(device, str):
        try:
            device = resolve_device(device)
        except RuntimeError:
            raise HpoError(f"device {device!r}: use cpu, cuda or cuda:N") from None
    return Model(read_payload(path), device)


# --- texts in, predictions out (what `hpo predict` reads and prints) ------------------------------


def read_texts(path: str | os.PathLike, column: str) -> list[str]:
    """The ``column`` of a CSV (``.tsv``: tab-separated) file with a header row."""
    where = Path(path)
    delimiter = "\t" if where.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(2**31 - 1)
    try:
        with where.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if reader.fieldnames is None or column not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "none"
                raise HpoError(f"{where} has no column {column!r} (columns: {found}): pass --text-column NAME")
            return [row[column] or "" for row in reader]
    except OSError as exc:
        raise HpoError(f"cannot read {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HpoError(f"{where} is not UTF-8 text: save it as UTF-8 CSV") from None


def format_predictions(texts: Sequence[str], predictions: Sequence[Prediction], classes: Sequence[str], fmt: str) -> str:
    """``table`` (label, probability, the text's start), ``csv`` or ``json`` (every class's probability)."""
    if fmt == "json":
        return json.dumps([{"text": t, "label": p.label, "probability": round(p.probability, 6),
                            "probabilities": {c: round(q, 6) for c, q in zip(classes, p.probabilities)}}
                           for t, p in zip(texts, predictions)], indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["label", "probability", *(f"p_{c}" for c in classes), "text"])
        for t, p in zip(texts, predictions):
            writer.writerow([p.label, f"{p.probability:.6f}", *(f"{q:.6f}" for q in p.probabilities), t])
        return buffer.getvalue().rstrip("\n")
    width = max([len("label"), *(len(c) for c in classes)])
    lines = [f"{'label':<{width}}  probability  text"]
    for t, p in zip(texts, predictions):
        short = " ".join(t.split())
        lines.append(f"{p.label:<{width}}  {p.probability:11.4f}  {short[:60] + '...' if len(short) > 63 else short}")
    return "\n".join(lines)


def progress_printer(log: Callable[[str], None], every_s: float = 2.0) -> OnBatch:
    """An ``on_batch`` that says how far a long prediction got, at most every ``every_s`` seconds."""
    last = [time.monotonic()]

    def on_batch(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            log(f"predict: {done:,}/{total:,} texts")

    return on_batch


def accuracy(predictions: Iterable[Prediction], labels: Iterable[str]) -> float:
    """The share of predictions whose label is the given one."""
    pairs = list(zip(predictions, labels))
    return sum(p.label == y for p, y in pairs) / max(len(pairs), 1)
