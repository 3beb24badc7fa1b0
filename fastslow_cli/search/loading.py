"""Which engine answers queries: ONNX Runtime (no torch import) or torch.

`--engine auto` (the default) takes ONNX Runtime when every model the search needs is a
native fastslow model with a current ONNX graph and the device is `auto` or `cpu`; it
takes torch, without a word, for Hugging Face adapters and `--device cuda`/`mps` (torch
is what runs there), and with a note for a native model whose graph is missing or stale
(the fix: `fastslow models export NAME`). With `--device auto` ONNX Runtime takes its CUDA provider
where the installed build has one. `--engine onnx` refuses instead of falling back; `--engine torch` is the path every model has.

This module imports neither torch nor onnxruntime itself: only the engine chosen is
imported, so a one-shot search on ONNX never pays torch's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.models.files import is_native, query_graph, read_config

ENGINES = ("auto", "onnx", "torch")


@dataclass
class QueryModels:
    """The Fast and (optional) Slow retriever a search uses, the engine running them, and
    the note to show once when `auto` fell back to torch for want of a graph."""

    fast: Any
    slow: Any
    engine: str
    note: str | None = None


def _onnx_blocker(paths: list[str], device: str, engine: str) -> tuple[str | None, bool]:
    """(why ONNX cannot answer, whether a user should hear it): None when it can.

    `--device cuda` goes to ONNX Runtime's CUDA provider only when `--engine onnx` asks
    for it (`search.onnx.providers` refuses where onnxruntime has none)."""
    name = (device or "auto").lower()
    if name not in ("auto", "cpu") and not (engine == "onnx" and name.startswith("cuda")):
        return f"--device {device} runs on torch", False
    for path in paths:
        if not is_native(path):
            return f"{path} is not a native fastslow model (Hugging Face models run on torch)", False
        graph, why = query_graph(path, read_config(path))
        if graph is None:
            return f"model {Path(path).name} ({path}): {why}; `fastslow models export {Path(path).name}` writes it", True
    return None, False


def load_query_models(fast_path: str, slow_path: str | None, device: str = "auto", engine: str = "auto") -> QueryModels:
    """Load the models a search needs on the engine `engine` asks for (see the module docstring)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown --engine {engine!r}: use auto, onnx or torch")
    paths = [fast_path] + ([slow_path] if slow_path else [])
    note = None
    if engine != "torch":
        blocker, worth_saying = _onnx_blocker(paths, device, engine)
        if blocker is None:
            from fastslow_cli.search.onnx import load_onnx

            slow = load_onnx(slow_path, "slow", device) if slow_path else None
            return QueryModels(load_onnx(fast_path, "fast", device), slow, "onnx")
        if engine == "onnx":
            raise FastslowError(f"--engine onnx: {blocker}")
        if worth_saying:
            note = f"searching with torch, which starts slower: {blocker}"
    from fastslow_cli.search.retrievers import load_fast, load_slow

    return QueryModels(load_fast(fast_path, device), load_slow(slow_path, device) if slow_path else None, "torch", note)
