"""Torch set-up: the `--device` a model runs on, and (for the CLI only) the thread count.

The core calls `resolve_device` and never changes global torch state; the command line
calls `use_all_cores` once per run. Imported lazily (it imports torch).
"""

from __future__ import annotations

import os

import torch

from fastslow_cli.errors import UsageError


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def use_all_cores() -> None:
    """Every core this process may use for intra-op work (what a command-line run wants)."""
    torch.set_num_threads(cpu_count())


def resolve_device(device: str | None = None) -> torch.device:
    """The torch device for `--device`: `auto` means CUDA if present.

    A device this machine does not have is a usage error naming the fix, not a torch
    traceback at the first tensor.
    """
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown --device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for, but no CUDA GPU is visible: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device} asked for, but this torch build has no Apple GPU (MPS): use --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev
