"""Start-up calibration: measure the fastest way to train on this machine instead of assuming it.

Which precision is faster depends on the CPU and on the model: on a 2-core AMD EPYC with
AVX512-BF16 bf16 autocast trained the default model 1.36x faster than fp32, on a 2-core Xeon with
AMX 14% slower, while there a 2-layer 256-wide language model ran 1.3x faster in bf16
(``benchmarks/results/train_speed-*.txt``). So the first run on a machine times a handful of real batches of the study's own data for each candidate
(fp32, and bf16 where the hardware has it; oneDNN's fused LSTM on and off), in one process with
every core, then the best of them in one process per core at the same time, and keeps the
fastest: its precision, and how many worker processes ``--jobs auto`` starts.

The answer is cached per hardware and software fingerprint (CPU model and flags, cores, torch
version) and model shape in the user's cache (``calibration.json`` in ``$HPO_CACHE_DIR`` or
``~/.cache/hpo``; ``$HPO_CALIBRATION_FILE`` to put it elsewhere), so it costs seconds once and
nothing after. Explicit settings always win: ``train.precision`` other than
``auto``, ``--jobs N``.

Example::

    calibration = ensure_calibration(spec, data, log=print)
    calibration.precision, calibration.jobs, calibration.tokens_per_second
    calibration.describe()   # 'bf16, 2 processes x 1 thread: 131k tokens/s (...)'
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import pickle
import platform
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hpo.data import Dataset, cache_dir, iter_batches
from hpo.spec import Spec, factory_name
from hpo.storage.database.locks import file_lock
from hpo.training.config import TrainConfig
from hpo.training.device import available_cores, native_bf16, resolve_device
from hpo.training.models import build_model, groups_of
from hpo.training.step import classifier_loss, make_optimizer, update

Log = Callable[[str], None]
FORMAT = 1
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BUSY_LOAD = 0.75  # load average per core above which the CPU is too busy to time candidates
_SECONDS_PER_CANDIDATE = 1.5  # after warm-up; at least MIN_BATCHES batches
_MIN_BATCHES = 3


@dataclass(frozen=True)
class Candidate:
    precision: str  # fp32 | bf16
    threads: int
    mkldnn: bool = True  # oneDNN's fused LSTM (PyTorch's default on CPU)

    @property
    def label(self) -> str:
        return f"{self.precision}, {self.threads} thread{'s' if self.threads > 1 else ''}" + ("" if self.mkldnn else ", no oneDNN")


@dataclass(frozen=True)
class Calibration:
    """The fastest setting measured on this machine for one model shape."""

    key: str
    precision: str
    mkldnn: bool
    jobs: int  # worker processes for --jobs auto
    threads: int  # per process
    tokens_per_second: float  # of all processes together
    measured: dict[str, float] = field(default_factory=dict)  # label -> real tokens/s
    seconds: float = 0.0  # what the calibration cost
    when: str = ""
    cached: bool = False
    busy: float = 0.0  # the load average that kept it from measuring (the defaults, not cached); 0: measured

    def describe(self) -> str:
        how = f"{self.jobs} processes x {self.threads} thread{'s' if self.threads > 1 else ''}" if self.jobs > 1 \
            else f"1 process x {self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.busy:
            return (f"{self.precision}, {how}: the defaults, not measured: other work keeps the cores busy (load "
                    f"average {self.busy:.1f}), and timings taken now would describe it; a later quiet start measures")
        others = "; ".join(f"{label} {tps / 1000:.0f}k" for label, tps in self.measured.items())
        source = f"cached from {self.when}" if self.cached else f"measured in {self.seconds:.1f} s"
        return (f"{self.precision}{'' if self.mkldnn else ' without oneDNN'}, {how}: "
                f"{self.tokens_per_second / 1000:.0f}k tokens/s ({others}; {source})")


def cpu_info() -> tuple[str, set[str]]:
    """(the processor's model name, its feature flags), from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), name)
    flags = next((set(l.split(":", 1)[1].split()) for l in lines if l.startswith("flags")), flags)
    return name, flags


def fingerprint(device: torch.device) -> dict[str, Any]:
    """What the answer depends on, besides the model: the processor, its cores, the software."""
    cpu, flags = cpu_info()
    out = {"cpu": cpu, "flags": sorted(f for f in _FLAGS if f in flags), "cores": available_cores(),
           "torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def calibration_key(spec: Spec, device: torch.device) -> str:
    m, d = spec.model, spec.data
    shape = {"model": [m.embedding_dim, m.hidden_size, m.num_layers, m.bidirectional], "batch": d.batch_size,
             "max_len": d.max_len, "format": FORMAT}
    if not m.builtin:  # another model: its own timing (the built-in LSTM's keys stay as they were)
        shape["factory"] = [factory_name(m.factory), dict(m.options)]
    blob = json.dumps({"machine": fingerprint(device), "shape": shape}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_file(spec: Spec) -> Path:
    """``$HPO_CALIBRATION_FILE``, else ``calibration.json`` in the data cache folder."""
    return Path(os.environ.get("HPO_CALIBRATION_FILE") or cache_dir(spec.data) / "calibration.json")


def candidates(device: torch.device, cores: int) -> list[Candidate]:
    precisions = ["fp32", "bf16"] if native_bf16(device.type) else ["fp32"]
    out = [Candidate(p, cores) for p in precisions]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        out += [Candidate(p, cores, mkldnn=False) for p in precisions]
    return out


def _batches(data: Dataset, batch_size: int, n: int = 12) -> list:
    """Real batches of typical length: a random sample of the training split, bucketed as in training."""
    batches = list(iter_batches(data.train, batch_size, True, seed=0))
    random.Random(0).shuffle(batches)
    return batches[:n]


def measure(spec: Spec, data: Dataset, candidate: Candidate, device: torch.device,
            seconds: float = _SECONDS_PER_CANDIDATE) -> float:
    """Real tokens per second of forward, backward and AdamW steps under ``candidate``."""
    torch.set_num_threads(candidate.threads)
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = candidate.mkldnn
    try:
        model = build_model(spec, data.vocab_size, 0.1, seed=0, num_classes=data.num_classes).to(device)
        groups = groups_of(model)
        cfg = TrainConfig(lrs=dict.fromkeys(groups, 1e-3), clip_norm=0.0, cycle_len=1, max_epochs=1)
        optimizer = make_optimizer(model, cfg)
        batches = _batches(data, spec.data.batch_size)
        tokens, done, start = 0, 0, None
        for i in range(len(batches) * 10):
            batch = batches[i % len(batches)].to(device)
            _, loss = classifier_loss(model, batch, device, candidate.precision)
            update(loss, optimizer, groups, cfg.clip_norm)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i == 1:  # two warm-up steps: oneDNN picks its kernels on first use of a shape
                start = time.perf_counter()
                continue
            if start is not None:
                tokens += int(batch.lengths.sum())
                done += 1
                elapsed = time.perf_counter() - start
                # enough batches for a stable figure, or enough time: a slow setting is not worth more
                if (done >= _MIN_BATCHES and elapsed >= seconds) or elapsed >= 3 * seconds:
                    break
        return tokens / (time.perf_counter() - start)
    finally:
        torch.backends.mkldnn.enabled = previous


def _measure_in_child(spec: Spec, data: Dataset, candidate: Candidate, barrier: Any, out: Any) -> None:
    barrier.wait(timeout=120)
    out.put(measure(spec, data, candidate, torch.device("cpu")))


def measure_parallel(spec: Spec, data: Dataset, candidate: Candidate, processes: int) -> float:
    """Real tokens per second of ``processes`` 1-thread processes training at the same time."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    one = dataclasses.replace(candidate, threads=1)
    procs = [ctx.Process(target=_measure_in_child, args=(spec, data, one, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        return sum(out.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)


def crosses_processes(spec: Spec) -> bool:
    """Whether other processes can rebuild this spec's model: a factory given as a Python object
    from a module they cannot import (a file loaded by path, a notebook cell) cannot."""
    try:
        pickle.dumps(spec)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _parallel_measurable(spec: Spec, log: Log) -> bool:
    if not crosses_processes(spec):
        log(f"calibration: one process only: worker processes cannot import the model factory "
            f"{factory_name(spec.model.factory)!r}; name it as 'package.module:function' to measure several")
        return False
    return True


def calibrate(spec: Spec, data: Dataset, device: torch.device, log: Log = lambda m: None) -> Calibration:
    """Measure every candidate; the fastest, with the number of processes that runs it fastest."""
    start = time.perf_counter()
    cores = available_cores() if device.type == "cpu" else 1
    threads_before = torch.get_num_threads()
    measured: dict[Candidate, float] = {}
    try:
        for candidate in candidates(device, cores):
            measured[candidate] = measure(spec, data, candidate, device)
    finally:
        torch.set_num_threads(threads_before)
    best = max(measured, key=measured.__getitem__)
    jobs, threads, total = 1, best.threads, measured[best]
    labels = {c.label: tps for c, tps in measured.items()}
    if device.type == "cpu" and cores > 1 and _parallel_measurable(spec, log):
        together = measure_parallel(spec, data, best, cores)
        labels[f"{best.precision}, {cores} processes x 1 thread"] = together
        if together > total:
            jobs, threads, total = cores, 1, together
    seconds = time.perf_counter() - start
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return Calibration(calibration_key(spec, device), best.precision, best.mkldnn, jobs, threads, total, labels, seconds, when)


def load_average() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def defaults(spec: Spec, device: torch.device, busy: float) -> Calibration:
    """What runs when nothing was measured: bf16 where native, oneDNN on, one 1-thread process per core."""
    cores = available_cores() if device.type == "cpu" else 1
    precision = "bf16" if native_bf16(device.type) else "fp32"
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return Calibration(calibration_key(spec, device), precision, True, cores, 1, 0.0, {}, 0.0, when, busy=busy)


def ensure_calibration(spec: Spec, data: Dataset, device: torch.device | None = None, log: Log = lambda m: None,
                       load: Callable[[], float] = load_average) -> Calibration:
    """The cached calibration for this machine and model shape, measured (once, under a file lock) when missing.

    Not on a busy CPU (a load average above ``BUSY_LOAD`` per core): with other work on the cores
    a candidate's timing says more about that work than about the candidate (one measured under
    load here put oneDNN's LSTM at 1.7k tokens/s, 1.4x *faster* than without it when timed fairly),
    and a cached choice would last. Then the defaults run, uncached, and a later quiet start measures.
    """
    device = device or resolve_device(spec.train.device)
    key = calibration_key(spec, device)
    path = cache_file(spec)
    found = _read(path).get(key)
    busy = load() if found is None and device.type == "cpu" else 0.0
    if busy > BUSY_LOAD * available_cores():
        return defaults(spec, device, busy)
    if found is None:
        with file_lock(path.with_suffix(".lock")):
            found = _read(path).get(key)  # another worker may have measured while we waited
            if found is None:
                log("calibration: timing a few real batches of this study's data per setting (once per machine and model)")
                result = calibrate(spec, data, device, log)
                _write(path, {**_read(path), key: dataclasses.asdict(result)})
                return result
    return Calibration(**{**found, "cached": True})


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)
