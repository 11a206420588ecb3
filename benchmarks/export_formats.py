"""Which file should ``hpo export`` write? A torch.save dict vs TorchScript vs torch.export, measured.

One model, the default spec's shape (vocabulary 30,000, embedding 100, hidden 128; seeded random
weights unless ``--model`` names a file from ``hpo export``), written three ways:

* ``dict``: what ``hpo export`` writes: a ``torch.save`` dict of plain containers and tensors,
  loaded with ``torch.load(weights_only=True)``, the module rebuilt from the spec
  (``hpo.load_model``);
* ``torchscript``: ``torch.jit.script``, else ``torch.jit.trace`` when scripting fails; the
  vocabulary as an extra file; ``torch.jit.load``;
* ``torch.export``: ``torch.export.export`` with a dynamic batch and length (it fails: the LSTM's
  length cannot be dynamic), then with ``Dim.AUTO``, which fixes the length, so every batch is
  padded to ``data.max_len``; ``torch.export.save`` (``.pt2``), ``torch.export.load(...).module()``.

For each: the file's size, the time to load it (median of ``--repeat`` loads, in this process),
the time to predict ``--texts`` test reviews in length-sorted batches of 128 (tokenizing
excluded: the same token ids go to every format), whether its predictions agree with the dict's,
and what broke. The baseline is the dict, measured in the same run.

    python benchmarks/export_formats.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import hpo
from hpo.data import PAD, split_reviews
from hpo.export import FORMAT, FORMAT_VERSION, hpo_version
from hpo.data.text import TOKENIZER_VERSION
from hpo.spec import load_spec
from hpo.training.models import build_model


CHOICE = [
    "Chosen: the dict. It is the only one of the three that loads with weights_only=True (TorchScript and",
    ".pt2 archives carry code or graphs that run when used), and the only one any model exports to: the",
    "module is rebuilt from the spec, so a model factory's model needs nothing of the exporter (torch.jit.script",
    "fails on the built-in LSTM already; a trace silently freezes the Python branches it took; torch.export",
    "cannot leave an LSTM's length dynamic, so every batch must be padded to data.max_len). Its load is within",
    "tens of milliseconds of TorchScript's, once per process; its predictions are the same.",
]


def payload_for(spec, vocab: list[str]) -> dict:
    torch.manual_seed(0)
    model = build_model(spec, len(vocab), 0.3)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hpo_version": hpo_version(), "study": spec.name,
        "spec": spec.to_dict(), "model": {"factory": None, "spec": spec.to_dict()["model"]},
        "tokenizer": {"version": TOKENIZER_VERSION, "max_len": spec.data.max_len, "lowercase": True},
        "vocab": "\n".join(vocab), "classes": ["negative", "positive"],
        "members": [{"trial": 0, "params": {"dropout": 0.3}, "val_accuracy": None, "test_accuracy": None,
                     "best_epoch": 1, "precision": "fp32", "state_dict": model.state_dict()}],
    }


def batches(ids: list[list[int]], size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = []
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        lengths = torch.tensor([len(ids[i]) for i in chunk])
        tokens = torch.full((len(chunk), int(lengths.max())), PAD, dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens[row, : len(ids[i])] = torch.tensor(ids[i])
        out.append((tokens, lengths))
    return out


@torch.no_grad()
def run_all(module, data) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    logits = torch.cat([module(tokens, lengths).float().reshape(-1) for tokens, lengths in data])
    return time.perf_counter() - t0, logits


def timed_loads(load, repeat: int):
    times, loaded = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        loaded = load()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a file from hpo export (default: the default spec's shape, random weights)")
    parser.add_argument("--texts", type=int, default=1000, help="test reviews to predict")
    parser.add_argument("--repeat", type=int, default=5, help="loads per format (the median is shown)")
    parser.add_argument("--out", default=None, help="folder for export_formats.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)

    folder = Path(tempfile.mkdtemp(prefix="export-formats-"))
    dict_path = folder / "model.pt"
    if args.model:
        dict_path.write_bytes(Path(args.model).read_bytes())
        spec = hpo.load_model(dict_path, "cpu").spec
    else:
        spec = load_spec("imdb")
        from hpo.data import load_dataset
        torch.save(payload_for(spec, load_dataset(spec.data).vocab), dict_path)
    reference = hpo.load_model(dict_path, "cpu")
    net = reference.networks[0]
    texts = [t for t, _ in split_reviews(spec.data)["test"][: args.texts]]
    data = batches(reference.encode(texts))
    rows, notes = [], []

    # dict (the baseline)
    load_s, model = timed_loads(lambda: hpo.load_model(dict_path, "cpu"), args.repeat)
    predict_s, base = run_all(model.networks[0], data)
    rows.append(("dict (weights_only)", dict_path.stat().st_size, load_s, predict_s, "baseline"))
    raw_s, _ = timed_loads(lambda: torch.load(dict_path, map_location="cpu", weights_only=True), args.repeat)
    notes.append(f"dict: torch.load(weights_only=True) alone takes {raw_s * 1e3:.1f} ms of its {load_s * 1e3:.1f} ms; "
                 "the rest: rebuilding the module from the spec (on the meta device, weights assigned) and indexing the vocabulary")

    # TorchScript
    ts_path = folder / "model.ts"
    example = data[len(data) // 2]
    try:
        try:
            scripted = torch.jit.script(net)
            how = "script"
        except Exception as exc:
            notes.append(f"torchscript: torch.jit.script failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:110]}); traced instead")
            scripted = torch.jit.trace(net, example, check_trace=False)
            how = "trace"
        torch.jit.save(scripted, str(ts_path), _extra_files={"vocab.txt": "\n".join(reference.vocab)})
        load_s, loaded = timed_loads(lambda: torch.jit.load(str(ts_path), _extra_files={"vocab.txt": ""}), args.repeat)
        predict_s, got = run_all(loaded, data)
        agree = ((got > 0) == (base > 0)).float().mean().item()
        rows.append((f"torchscript ({how})", ts_path.stat().st_size, load_s, predict_s,
                     f"agree {agree:.4f}, max |dlogit| {(got - base).abs().max().item():.1e}"))
    except Exception as exc:
        rows.append(("torchscript", 0, float("nan"), float("nan"), f"failed: {type(exc).__name__}"))
        notes.append(f"torchscript: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}")

    # torch.export: a dynamic length fails ("Constraints violated (length)"); with Dim.AUTO the
    # LSTM's length is specialised to the example's, so every batch is padded to data.max_len
    pt2_path = folder / "model.pt2"
    max_len = spec.data.max_len
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        length = torch.export.Dim("length", min=2, max=100_000)
        torch.export.export(net.eval(), example, dynamic_shapes=({0: batch, 1: length}, {0: batch}))
        notes.append("torch.export: a dynamic length exported (unexpected: check the fixed-length row)")
    except Exception as exc:
        first = next((line for line in str(exc).strip().splitlines() if line.strip()), type(exc).__name__)
        notes.append(f"torch.export, dynamic batch and length: {type(exc).__name__}: {first[:200]}")
    try:
        auto = torch.export.Dim.AUTO
        fixed = torch.full((example[0].size(0), max_len), PAD, dtype=torch.long)
        fixed[:, : example[0].size(1)] = example[0]
        program = torch.export.export(net.eval(), (fixed, example[1]), dynamic_shapes=({0: auto, 1: auto}, {0: auto}))
        notes.append(f"torch.export, Dim.AUTO: ranges {program.range_constraints}; a batch of another length fails "
                     f"its guard, so every batch is padded to data.max_len = {max_len} (the model ignores padding)")
        torch.export.save(program, str(pt2_path))
        load_s, loaded = timed_loads(lambda: torch.export.load(str(pt2_path)).module(), args.repeat)
        padded = []
        for tokens, lengths in data:
            full = torch.full((tokens.size(0), max_len), PAD, dtype=torch.long)
            full[:, : tokens.size(1)] = tokens
            padded.append((full, lengths))
        predict_s, got = run_all(loaded, padded)
        agree = ((got > 0) == (base > 0)).float().mean().item()
        rows.append((f"torch.export (pad {max_len})", pt2_path.stat().st_size, load_s, predict_s,
                     f"agree {agree:.4f}, max |dlogit| {(got - base).abs().max().item():.1e}"))
    except Exception as exc:
        rows.append(("torch.export", 0, float("nan"), float("nan"), f"failed: {type(exc).__name__}"))
        first = next((line for line in str(exc).strip().splitlines() if line.strip()), type(exc).__name__)
        notes.append(f"torch.export: {type(exc).__name__}: {first[:240]}")

    base_row = rows[0]
    lines = [
        f"# {shlex.join(['python', 'benchmarks/export_formats.py', *sys.argv[1:]])}",
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, 1 thread",
        f"# {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"# model: {'--model ' + args.model if args.model else 'the default spec (vocab ' + str(len(reference.vocab)) + ', embedding 100, hidden 128), random weights'}; "
        f"{len(texts):,} test reviews in {len(data)} batches of 128",
        "",
        f"{'format':<22} {'file MB':>8} {'x dict':>7} {'load ms':>8} {'x dict':>7} {'predict s':>10} {'x dict':>7}  predictions",
    ]
    for name, size, load_s, predict_s, what in rows:
        lines.append(f"{name:<22} {size / 1e6:8.2f} {size / base_row[1]:7.2f} {load_s * 1e3:8.1f} {load_s / base_row[2]:7.2f} "
                     f"{predict_s:10.2f} {predict_s / base_row[3]:7.2f}  {what}")
    lines += ["", *notes, "", *CHOICE]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "export_formats.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
