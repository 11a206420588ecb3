"""Where and how training runs: the device, threads, and the numeric precision.

Example::

    device = resolve_device("auto")                  # cuda when present, else cpu
    resolve_precision("auto", device)                # "bf16" where the hardware runs it natively
    with autocast(device, "bf16"):
        logits = model(tokens, lengths)
"""

from __future__ import annotations

import functools
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def configure_threads(threads: int = 0) -> int:
    """Use ``threads`` intra-op threads (0: every core this process may run on); returns the count."""
    n = threads or available_cores()
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether the device runs bf16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # oneDNN says whether the CPU has bf16 instructions (AVX512-BF16, AMX); emulated bf16 is slow
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device runs bf16 natively, else ``fp32``; ``bf16`` on a CPU
    without bf16 instructions -> ``fp32``; others unchanged (bf16 autocast trains faster where it
    is native: benchmarks/train_speed.py measures it).
    """
    if precision == "auto":
        return "bf16" if native_bf16(device.type) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not native_bf16("cpu"):
        # oneDNN's LSTM refuses bf16 on a CPU without bf16 instructions (AVX2 only: "could not
        # create a primitive descriptor"), and without oneDNN the LSTM runs in fp32 anyway
        return "fp32"
    return precision


def precision_note(precision: str, device: torch.device) -> str | None:
    """A line for the user when the precision they asked for is not the one that will run."""
    actual = resolve_precision(precision, device)
    if precision != "auto" and actual != precision:
        return (f"note: precision {precision} asked for, but this CPU has no bf16 instructions (oneDNN's LSTM "
                f"refuses bf16 here): training in {actual}")
    return None


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when ``precision`` resolves to bf16 on ``device``, else a no-op context."""
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def loss_sampling(device: torch.device) -> int:
    """How often the divergence monitor reads a step's loss: every step on CPU (free), every 16th
    on CUDA, where reading a loss forces the host to wait for the device."""
    return 1 if device.type == "cpu" else 16
