"""Language-model pretraining of the encoder: once per configuration, shared by every worker.

The classifier's encoder (embedding and LSTM layers, :class:`hpo.training.models.Encoder`) first learns to
predict the next word of the training reviews, read back to back (an end-of-review marker
between them) in windows of about ``bptt`` words whose length varies, as in AWD-LSTM, carrying the
LSTM state from window to window. The softmax over the 30k-word vocabulary is an adaptive one
(``torch.nn.AdaptiveLogSoftmaxWithLoss``, clusters at the 2,000 and 10,000 most frequent words):
on this project's CPU it is 6x faster than a full softmax. The schedule is one cycle (a linear
warm-up over the first tenth, then cosine down to 1% of the peak). Only the training split is
read (never validation or test; plus aclImdb's ``unsup/`` reviews when ``data.path`` is an
aclImdb folder), and ``pretrain.valid_fraction`` of its reviews are held out to report
perplexity after every epoch.

The result is keyed by everything that shapes it (the data and vocabulary, the encoder's
configuration, the pretraining settings) and stored in the study's artifact store, so every
worker of the study, on any machine, fine-tunes from the same weights. :func:`ensure_encoder`
computes it under a database-wide lock: the first worker that needs it trains, the others wait
and load.

Example::

    encoder = ensure_encoder(spec, study, store, storage_url, log=print)   # trains, or loads
    model.encoder.load_state_dict(encoder.state)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from hpo.data import PAD, Dataset, lm_extra_reviews, load_dataset
from hpo.spec import Spec
from hpo.storage.artifacts.keys import encoder_id
from hpo.storage.database.locks import creation_lock
from hpo.training.device import configure_threads, resolve_device, resolve_precision
from hpo.training.models import Encoder
from hpo.training.schedule import one_cycle
from hpo.training.step import update

Log = Callable[[str], None]
FORMAT = 1  # bump when the stored encoder's layout changes
LOCK_TIMEOUT_S = 24 * 3600  # a worker waits this long for another to finish pretraining


@dataclass(frozen=True)
class PretrainedEncoder:
    """An encoder's weights after language-model pretraining, and how it got there."""

    key: str
    state: dict[str, torch.Tensor] = field(repr=False)
    perplexities: tuple[float, ...]  # held-out perplexity after each epoch
    seconds: float
    tokens_per_second: float
    train_tokens: int
    precision: str

    @property
    def artifact_id(self) -> str:
        return encoder_id(self.key)

    def describe(self) -> dict[str, Any]:
        """What a trial records about the encoder it started from."""
        return {"key": self.key, "epochs": len(self.perplexities),
                "valid_perplexity": round(self.perplexities[-1], 2) if self.perplexities else None}


def encoder_key(spec: Spec, data: Dataset) -> str:
    """A hash of all that shapes the encoder: data and vocabulary, encoder, pretraining settings."""
    m = spec.model
    settings = {
        "format": FORMAT,
        "data": data.cache_key,  # the source, tokenizer, split and vocabulary settings
        "vocab": len(data.vocab),
        "encoder": [m.embedding_dim, m.hidden_size, m.num_layers],
        "pretrain": {k: v for k, v in dataclasses.asdict(spec.pretrain).items()},
        "unsup": bool(spec.data.path),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class LanguageModel(nn.Module):
    """The encoder with an adaptive softmax on top: next-word prediction."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = Encoder(vocab_size, embedding_dim, hidden_size, num_layers, False, dropout)
        cutoffs = [c for c in (2000, 10000) if c < vocab_size - 1]
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, cutoffs=cutoffs, div_value=4.0)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, states: list | None, precision: str,
                device: torch.device) -> tuple[torch.Tensor, list]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, states = self.encoder.stream(tokens, states)
        loss = self.softmax(out.float().reshape(-1, out.size(-1)), targets.reshape(-1)).loss
        return loss, [(h.detach(), c.detach()) for h, c in states]


def lm_streams(spec: Spec, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(training stream, held-out stream): reviews back to back, each followed by an end marker.

    Reviews are held out whole, a seeded ``valid_fraction`` of them, so no window of the
    perplexity measurement was seen in training.
    """
    split = data.train
    extra = lm_extra_reviews(spec.data, data.vocab)  # aclImdb's unsup/ reviews, numericalized
    lengths = split.lengths.tolist()
    starts = split.offsets[:-1].tolist()
    reviews = [split.tokens[s : s + n] for s, n in zip(starts, lengths)] + extra
    rng = random.Random(spec.pretrain.seed)
    held = set(rng.sample(range(len(reviews)), max(1, round(len(reviews) * spec.pretrain.valid_fraction))))
    marker = torch.tensor([PAD], dtype=split.tokens.dtype)

    def join(ids: list[int]) -> torch.Tensor:
        pieces = [piece for i in ids for piece in (reviews[i], marker)]
        return torch.cat(pieces).long()

    train = join([i for i in range(len(reviews)) if i not in held])
    if spec.pretrain.max_tokens:
        train = train[: spec.pretrain.max_tokens]
    return train, join(sorted(held))


def _batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(batch, steps): ``batch_size`` contiguous slices of the stream, read in parallel."""
    steps = len(stream) // batch_size
    return stream[: steps * batch_size].view(batch_size, steps)


def _windows(steps: int, bptt: int, rng: random.Random) -> list[tuple[int, int]]:
    """(start, length) of each truncated-backprop window: ~bptt long, half as long 5% of the time."""
    out, i = [], 0
    while i < steps - 1:
        base = bptt if rng.random() < 0.95 else bptt / 2
        length = min(max(5, min(int(rng.gauss(base, 5)), bptt + 20)), steps - 1 - i)
        out.append((i, length))
        i += length
    return out


@torch.no_grad()
def perplexity(model: LanguageModel, stream: torch.Tensor, spec: Spec, precision: str, device: torch.device) -> float:
    model.eval()
    data = _batchify(stream, min(spec.pretrain.batch_size, max(1, len(stream) // (spec.pretrain.bptt + 1))))
    total, count, states = 0.0, 0, None
    for i in range(0, data.size(1) - 1, spec.pretrain.bptt):
        n = min(spec.pretrain.bptt, data.size(1) - 1 - i)
        x, y = data[:, i : i + n].to(device), data[:, i + 1 : i + 1 + n].to(device)
        loss, states = model(x, y, states, precision, device)
        total += loss.item() * y.numel()
        count += y.numel()
    return math.exp(total / max(count, 1))


def pretrain(spec: Spec, data: Dataset, device: torch.device | None = None, log: Log = lambda m: None) -> PretrainedEncoder:
    """Train the language model for ``spec.pretrain.epochs`` epochs; its encoder's weights."""
    p, m = spec.pretrain, spec.model
    device = device or resolve_device(spec.train.device)
    precision = resolve_precision(p.precision, device)
    torch.manual_seed(p.seed)
    train_stream, valid_stream = lm_streams(spec, data)
    model = LanguageModel(len(data.vocab), m.embedding_dim, m.hidden_size, m.num_layers, p.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(p.adam_beta1, p.adam_beta2), weight_decay=p.weight_decay)
    groups = {"language model": list(model.parameters())}
    batches = _batchify(train_stream, p.batch_size)
    rng = random.Random(p.seed)
    plan = [_windows(batches.size(1), p.bptt, rng) for _ in range(p.epochs)]
    total_steps = sum(len(w) for w in plan)
    log(f"pretrain: language model {m.embedding_dim}/{m.hidden_size} x{m.num_layers} on {len(train_stream):,} tokens "
        f"({len(valid_stream):,} held out), {p.epochs} epochs of {len(plan[0]) if plan else 0} windows, {precision} on {device}")
    perplexities: list[float] = []
    step, start, seen = 0, time.perf_counter(), 0
    for epoch, windows in enumerate(plan, start=1):
        model.train()
        states, loss_sum, t0 = None, 0.0, time.perf_counter()
        report_every = max(1, len(windows) // 5)
        for k, (i, n) in enumerate(windows):
            # AWD-LSTM: a shorter window gets a proportionally smaller rate, so every token counts the same
            for g in optimizer.param_groups:
                g["lr"] = one_cycle(step, total_steps, p.lr) * n / p.bptt
            x, y = batches[:, i : i + n].to(device), batches[:, i + 1 : i + 1 + n].to(device)
            loss, states = model(x, y, states, precision, device)
            update(loss, optimizer, groups, p.clip_norm)
            loss_sum += loss.item()
            seen += x.numel()
            step += 1
            if (k + 1) % report_every == 0 and k + 1 < len(windows):
                rate = seen / (time.perf_counter() - start)
                left = (total_steps - step) * p.batch_size * p.bptt / rate
                log(f"  pretrain epoch {epoch}/{p.epochs}: {100 * (k + 1) // len(windows)}%, train loss {loss_sum / (k + 1):.3f}, "
                    f"{rate / 1000:.1f}k tokens/s, ~{left / 60:.0f} min left")
        perplexities.append(perplexity(model, valid_stream, spec, precision, device))
        log(f"  pretrain epoch {epoch}/{p.epochs}: train loss {loss_sum / len(windows):.3f}, held-out perplexity "
            f"{perplexities[-1]:.1f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    return PretrainedEncoder(encoder_key(spec, data), state, tuple(perplexities), seconds, seen / max(seconds, 1e-9),
                             len(train_stream), precision)


# --- stored once, shared ---------------------------------------------------------------------


def save(encoder: PretrainedEncoder, store: Any) -> None:
    buffer = io.BytesIO()
    torch.save({f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder)}, buffer)
    buffer.seek(0)
    store.write(encoder.artifact_id, buffer)


def load(key: str, store: Any) -> PretrainedEncoder | None:
    """The stored encoder of ``key``, or None when there is none (or it does not read back whole)."""
    try:
        with store.open_reader(encoder_id(key)) as f:
            blob = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        blob["perplexities"] = tuple(blob["perplexities"])
        return PretrainedEncoder(**blob)
    except Exception:
        return None


def ensure_encoder(spec: Spec, store: Any, storage_url: str | None, log: Log = lambda m: None,
                   data: Dataset | None = None, threads: int | None = None) -> PretrainedEncoder | None:
    """The study's pretrained encoder: loaded when stored, else trained (once, under a lock) and stored.

    None when the spec does not pretrain (``pretrain.epochs = 0``).
    """
    if not spec.pretrain.epochs:
        return None
    full = data if data is not None and not spec.data.max_train else load_dataset(
        dataclasses.replace(spec.data, max_train=0, max_valid=0, max_test=0), log)
    key = encoder_key(spec, full)
    found = load(key, store)
    if found is None:
        lock = creation_lock(storage_url, name=f"pretrain {key}", timeout_s=LOCK_TIMEOUT_S) if storage_url else nullcontext()
        with lock:
            found = load(key, store)  # another worker may have trained it while we waited
            if found is None:
                if threads is not None:
                    configure_threads(threads)
                found = pretrain(spec, full, log=log)
                save(found, store)
                log(f"pretrain: stored encoder {key} ({found.seconds / 60:.1f} min, "
                    f"{found.tokens_per_second / 1000:.1f}k tokens/s, held-out perplexity {found.perplexities[-1]:.1f})")
                return found
    log(f"pretrain: encoder {key} from the study's artifact store (held-out perplexity {found.perplexities[-1]:.1f} "
        f"after {len(found.perplexities)} epochs)")
    return found
