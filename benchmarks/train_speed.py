"""Training throughput: hpo's data path and loop against a naive loop, in the same run.

Each variant trains the same model (1-layer LSTM, embedding 100, hidden 128, max_len 400,
batch 64, AdamW, clipping) on the same randomly drawn reviews, in a fresh subprocess so that peak
memory is its own:

* ``naive``: random batches padded to the batch maximum, ``clip_grad_norm_``, a ``loss.item()``
  every step: what a first training script does;
* ``hpo``: ``hpo.training.loop.train`` on ``hpo.data``'s length-bucketed batches (fp32);
* ``hpo-bf16``: the same under bf16 autocast (``train.precision = "bf16"``);
* ``hpo-nodnn``, ``hpo-bf16-nodnn``: fp32 and bf16 with oneDNN off (PyTorch's own LSTM kernels);
* ``hpo-foreach``, ``hpo-fused``: fp32 with AdamW's multi-tensor (``foreach``) or fused
  implementation instead of the per-parameter loop PyTorch picks on CPU;
* ``calibrated``: what ``hpo.training.calibrate`` picks on this machine for this model (measured afresh
  in the same run, its cost printed): the setting ``hpo optimize`` trains with;
* ``hpo-bf16-compile``: that, with the model wrapped in ``torch.compile`` (its compile time
  included: a trial pays it once per model);
* ``hpo-bf16-bucket200``: that, with length buckets of 200 batches instead of 50 (less padding,
  less shuffling). Not run by default: pass ``--variants`` with them to try.
* ``hpo-notelemetry`` / ``hpo-bf16-notelemetry``: ``hpo`` / ``hpo-bf16`` with the step telemetry
  off (``train.telemetry_every = -1``). The ``hpo`` variants sample every k steps with the k a
  full epoch of the whole training split gets (``auto_every``: 2 for ~22k reviews), not the k
  of the shortened run; ``hpo-telemetry1`` samples every step (the worst case). Name a variant
  twice to run it twice: ``--variants hpo,hpo-notelemetry,hpo,hpo-notelemetry`` runs the A/B
  interleaved and prints the telemetry's cost from the means.

``--telemetry-ab ROUNDS`` measures the step telemetry's cost alone, in one process: ROUNDS
rounds of the ``hpo`` loop with telemetry on and off, in alternating order (on-off, off-on, ...),
each round on the same batches from the same weights, timing wall clock and the process's CPU
time. On a machine shared with other work the CPU time is the steadier measure; the median of
the per-round ratios is printed with every round.

It prints the CPU model and the flags that matter (AVX-512, bf16, AMX), real (non-pad) tokens per
second, the speed-up over ``naive``, the share of padding, and peak memory (RSS on CPU,
allocated memory on CUDA). ``--save`` also writes the table to
``benchmarks/results/train_speed-<cpu model>.txt``: one results file per CPU kind.

    python benchmarks/train_speed.py                 # 120 batches per variant (~5 min on 2 cores)
    python benchmarks/train_speed.py --batches 0     # one full epoch per variant
    python benchmarks/train_speed.py --batches 20 --telemetry-ab 6 --threads 1   # telemetry on vs off
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hpo.data import Dataset, iter_batches, load_dataset, pad_batch, padding_fraction
from hpo.training.models import LSTMClassifier
from hpo.spec import DataSpec
import hpo.training.loop
from hpo.training.calibrate import _FLAGS, calibrate, cpu_info
from hpo.training.step import group_norms, make_optimizer
from hpo.training.telemetry import StepRecorder, auto_every
from hpo.training.config import TrainConfig
from hpo.training.device import configure_threads, resolve_device
from hpo.training.loop import train

VARIANTS = ("naive", "hpo", "hpo-bf16", "hpo-nodnn", "hpo-bf16-nodnn", "hpo-foreach", "hpo-fused", "calibrated")
EXTRA = ("hpo-bf16-compile", "hpo-bf16-bucket200", "hpo-notelemetry", "hpo-bf16-notelemetry", "hpo-telemetry1")
LR = 2e-3


def _data(batches: int, batch_size: int) -> tuple[Dataset, int]:
    """The reviews a variant trains on, and how many the whole training split has."""
    full = load_dataset(DataSpec(max_len=400))
    n = len(full.train) if batches <= 0 else min(len(full.train), batches * batch_size)
    chosen = random.Random(0).sample(range(len(full.train)), n)
    return Dataset(full.train.subset(chosen), full.valid.subset(range(batch_size)), full.test, full.vocab, full.source,
                   full.cache_key), len(full.train)


def _model(vocab_size: int) -> LSTMClassifier:
    torch.manual_seed(0)
    return LSTMClassifier(vocab_size, 100, 128, dropout=0.2)


def _naive(data: Dataset, device: torch.device, batch_size: int) -> dict:
    model = _model(data.vocab_size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    order = list(range(len(data.train)))
    random.Random(1).shuffle(order)
    batches = [pad_batch(data.train, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    t0 = time.perf_counter()
    tokens = 0
    for b in batches:
        b = b.to(device)
        loss = F.binary_cross_entropy_with_logits(model(b.tokens, b.lengths), b.labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        tokens += int(b.lengths.sum())
        loss.item()
    seconds = time.perf_counter() - t0
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "padding": padding_fraction(data.train, batches)}


def _hpo(data: Dataset, device: torch.device, batch_size: int, precision: str, compiled: bool = False,
         bucket_batches: int = 50, telemetry_every: int = 0) -> dict:
    cfg = TrainConfig(
        lrs={"embedding": LR, "encoder": LR, "head": LR}, clip_norm=5.0, cycle_len=1, max_epochs=1,
        batch_size=batch_size, precision=precision, bucket_batches=bucket_batches, telemetry_every=telemetry_every,
    )
    model = _model(data.vocab_size)
    if compiled:
        model = torch.compile(model, dynamic=True)  # review lengths differ per batch
    result = train(model, data, cfg, device)
    stats = result.history[0]
    batches = list(iter_batches(data.train, batch_size, shuffle=True, seed=1, bucket_batches=bucket_batches))
    return {"tokens_per_second": stats.tokens_per_second, "seconds": stats.seconds, "padding": padding_fraction(data.train, batches)}


def _adamw(impl: str) -> None:
    """Make hpo's loop build AdamW with ``foreach=True`` or ``fused=True`` (this process only)."""
    make = hpo.training.loop.make_optimizer

    def patched(model, cfg):
        opt = make(model, cfg)
        return torch.optim.AdamW(opt.param_groups, betas=cfg.betas, weight_decay=cfg.weight_decay, **{impl: True})

    hpo.training.loop.make_optimizer = patched


def _calibrated(device: torch.device) -> tuple[str, bool, str, float]:
    """(precision, oneDNN on, the calibration's description, its cost in s), measured afresh."""
    from hpo.spec import load_spec

    spec = load_spec("imdb")  # the benchmark's model is the default study's
    result = calibrate(spec, load_dataset(spec.data), device)
    configure_threads(0)
    return result.precision, result.mkldnn, result.describe(), result.seconds


def _telemetry_ab(rounds: int, batches: int, batch_size: int, precision: str, threads: int) -> None:
    """Alternate telemetry on/off in this process (see the module docstring); prints each round."""
    configure_threads(threads)
    device = resolve_device()
    data, full_reviews = _data(batches, batch_size)
    every = auto_every(math.ceil(full_reviews / batch_size))
    cfg = lambda k: TrainConfig(  # noqa: E731
        lrs={"embedding": LR, "encoder": LR, "head": LR}, clip_norm=5.0, cycle_len=1, max_epochs=1,
        batch_size=batch_size, precision=precision, telemetry_every=k)

    def timed(k: int) -> tuple[float, float]:
        model = _model(data.vocab_size)
        wall, cpu = time.perf_counter(), time.process_time()
        train(model, data, cfg(k), device)
        return time.perf_counter() - wall, time.process_time() - cpu

    timed(-1)  # warm-up: allocator, oneDNN kernels
    ratios_wall, ratios_cpu = [], []
    print(f"telemetry A/B, {precision}, {len(data.train)} reviews ({batches} batches) per run, every {every} steps "
          f"(what a full epoch of {full_reviews:,} reviews gets); seconds wall / CPU")
    for r in range(rounds):
        order = (every, -1) if r % 2 == 0 else (-1, every)
        got = {k: timed(k) for k in order}
        on, off = got[every], got[-1]
        ratios_wall.append(on[0] / off[0])
        ratios_cpu.append(on[1] / off[1])
        print(f"  round {r + 1} ({'on first' if r % 2 == 0 else 'off first'}): on {on[0]:.1f} / {on[1]:.1f}  "
              f"off {off[0]:.1f} / {off[1]:.1f}  -> cost wall {ratios_wall[-1] - 1:+.1%}, CPU {ratios_cpu[-1] - 1:+.1%}")
    print(f"telemetry cost, median of {rounds} rounds: wall {statistics.median(ratios_wall) - 1:+.1%}, "
          f"CPU time {statistics.median(ratios_cpu) - 1:+.1%}")
    _recorder_count(data.vocab_size, every)


def _recorder_count(vocab_size: int, every: int, repeats: int = 20) -> None:
    """The recorder's own CPU time per step, counted directly around a real AdamW step (gradients
    drawn at random): steadier than any A/B on a busy machine."""
    model = _model(vocab_size)
    cfg = TrainConfig(lrs={"embedding": LR, "encoder": LR, "head": LR}, clip_norm=5.0, cycle_len=1, max_epochs=1)
    optimizer, groups = make_optimizer(model, cfg), model.param_groups()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    recorder = StepRecorder(list(groups), 300, 1)
    loss, clipped = torch.tensor(0.5), torch.tensor(False)

    def step(sampled: bool) -> None:
        norms = group_norms(groups)
        recorder.observe(loss, norms, groups, sampled)
        optimizer.step()
        if sampled:
            recorder.record(0, 1, [LR] * 3, loss, norms, clipped, groups)

    times = {}
    for sampled in (False, True, False, True):
        t0 = time.process_time()
        for _ in range(repeats):
            step(sampled)
        times.setdefault(sampled, []).append((time.process_time() - t0) / repeats * 1000)
    plain, sampled = min(times[False]), min(times[True])
    print(f"recorder, counted directly: optimizer step + norms {plain:.1f} ms CPU, on a sampled step {sampled:.1f} ms "
          f"-> {sampled - plain:.1f} ms per sampled step, {(sampled - plain) / every:.1f} ms per step at every {every}")


def _run_variant(variant: str, batches: int, batch_size: int) -> dict:
    threads = configure_threads(0)
    device = resolve_device()
    data, full_reviews = _data(batches, batch_size)
    extra: dict = {}
    if variant == "naive":
        out = _naive(data, device, batch_size)
    else:
        precision = "bf16" if variant.startswith("hpo-bf16") else "fp32"
        torch.backends.mkldnn.enabled = not variant.endswith("-nodnn")
        if variant in ("hpo-foreach", "hpo-fused"):
            _adamw(variant.split("-")[1])
        if variant == "calibrated":
            precision, torch.backends.mkldnn.enabled, extra["choice"], extra["calibration_s"] = _calibrated(device)
        every = -1 if variant.endswith("-notelemetry") else 1 if variant.endswith("-telemetry1") else \
            auto_every(math.ceil(full_reviews / batch_size))
        out = _hpo(data, device, batch_size, precision, compiled=variant.endswith("-compile"),
                   bucket_batches=200 if variant.endswith("-bucket200") else 50, telemetry_every=every)
        out["telemetry_every"] = every
    out.update(extra)
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(variant=variant, device=str(device), threads=threads, reviews=len(data.train))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=120, help="batches per variant (0: a full epoch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS + EXTRA)}")
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results/train_speed-<cpu model>.txt")
    parser.add_argument("--telemetry-ab", type=int, default=0, metavar="ROUNDS",
                        help="only the telemetry on/off A/B, interleaved in one process, ROUNDS rounds")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="for --telemetry-ab")
    parser.add_argument("--threads", type=int, default=0,
                        help="for --telemetry-ab (0: every core); 1 keeps CPU time steady on a busy machine")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.telemetry_ab:
        print(f"torch {torch.__version__}, {configure_threads(args.threads)} threads, device {resolve_device()}")
        _telemetry_ab(args.telemetry_ab, args.batches, args.batch_size, args.precision, args.threads)
        return
    if args._one:
        print(json.dumps(_run_variant(args._one, args.batches, args.batch_size)))
        return
    load_dataset(DataSpec(max_len=400))  # build the cache once, outside the timings
    cpu, flags = cpu_info()
    lines = [f"# python benchmarks/train_speed.py --batches {args.batches} --variants {args.variants}",
             f"torch {torch.__version__}, {cpu} ({', '.join(f for f in _FLAGS if f in flags) or 'no AVX-512/AMX'}), "
             f"{configure_threads(0)} threads, device {resolve_device()}"]
    print("\n".join(lines), flush=True)
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--_one", variant, "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    base = next((r["tokens_per_second"] for r in rows if r["variant"] == "naive"), rows[0]["tokens_per_second"])
    lines.append(f"{'variant':<19} {'reviews':>8} {'tokens/s':>10} {'vs naive':>9} {'padding':>8} {'seconds':>8} {'peak MiB':>9}")
    for r in rows:
        lines.append(f"{r['variant']:<19} {r['reviews']:>8} {r['tokens_per_second']:>10,.0f} {r['tokens_per_second'] / base:>8.2f}x "
                     f"{r['padding']:>7.1%} {r['seconds']:>8.1f} {r['peak_mib']:>9.0f}")
    for r in rows:
        if "choice" in r:
            lines.append(f"calibrated choice: {r['choice']}; the calibration took {r['calibration_s']:.1f} s")
    for on, off in (("hpo", "hpo-notelemetry"), ("hpo-bf16", "hpo-bf16-notelemetry"), ("hpo-telemetry1", "hpo-notelemetry")):
        a = [r["tokens_per_second"] for r in rows if r["variant"] == on]
        b = [r["tokens_per_second"] for r in rows if r["variant"] == off]
        if a and b:
            every = next(r["telemetry_every"] for r in rows if r["variant"] == on)
            lines.append(f"telemetry cost ({on}, every {every} steps, vs {off}): {1 - statistics.fmean(a) / statistics.fmean(b):+.1%} "
                         f"of tokens/s (means of {len(a)} and {len(b)} runs; per run: "
                         f"{', '.join(f'{x:,.0f}' for x in a)} vs {', '.join(f'{x:,.0f}' for x in b)})")
    print("\n".join(lines[2:]))
    if args.save:
        slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*", "", cpu.lower())).strip("-")
        path = Path(__file__).parent / "results" / f"train_speed-{slug}.txt"
        path.write_text("\n".join(lines) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
