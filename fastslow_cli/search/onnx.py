"""The query side of native models on ONNX Runtime: search without importing torch.

`OnnxFast` and `OnnxSlow` answer what `Searcher` asks of a `FastRetriever` /
`SlowRetriever` (`encode_texts`, `score`, `query_words`, `identity`) from the graphs
`models/export.py` writes at save time, tokenising with the model's own `tokenizer.json`
(`text/tokenizer.py`, numpy path). They encode no items: building and updating an index
stays on torch. Their identity is the one the torch path records (`native_identity`), so
an index accepts either.

Scoring follows `NativeSlow.score` step for step: memories of equal length are scored
together, `SCORE_CHUNK` at a time, as float32; with no padding anywhere the two paths
run the same arithmetic (the tests hold them to 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.atomic import file_sha256
from fastslow_cli.errors import FastslowError
from fastslow_cli.eval.calibration import Calibration
from fastslow_cli.models.files import (
    CONFIG,
    TOKENIZER,
    native_identity,
    query_graph,
    read_config,
)
from fastslow_cli.text.tokenizer import TextTokenizer

SCORE_CHUNK = 1024  # as `search.retrievers.SCORE_CHUNK` (that module imports torch)
ENGINE = "onnx"


def providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for `--device` (auto, cpu, cuda, cuda:N): CUDA where
    this onnxruntime build has it and it is asked for (auto takes it when present)."""
    import onnxruntime as ort

    name = (device or "auto").lower()
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if name.startswith("cuda"):
        if not has_cuda:
            raise FastslowError(
                f"--device {device} with --engine onnx needs onnxruntime-gpu (this onnxruntime has no CUDA provider): "
                "use --engine torch for CUDA, or --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if name not in ("auto", "cpu"):
        raise FastslowError(f"--device {device} is not available with --engine onnx: use auto, cpu or cuda")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if name == "auto" and has_cuda else ["CPUExecutionProvider"]


class _OnnxModel:
    """A model folder's graph in an inference session, with the model's tokenizer."""

    engine = ENGINE

    def __init__(self, path: str | Path, config: dict[str, Any], graph: Path, provider_names: list[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings are not for the user
        try:
            self.session = ort.InferenceSession(str(graph), sess_options=options, providers=provider_names)
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad file
            raise FastslowError(
                f"{graph} cannot be loaded ({str(exc).splitlines()[0][:200]}): "
                f"write it again with `fastslow models export {Path(path).name}`"
            ) from exc
        tokenizer = Path(path) / TOKENIZER
        if config.get("sha256", {}).get(TOKENIZER) != (file_sha256(tokenizer) if tokenizer.is_file() else None):
            raise FastslowError(f"{tokenizer} does not match {Path(path) / CONFIG} (interrupted save?): retrain the model")
        self.tokenizer = TextTokenizer.load(tokenizer)
        self.identity = native_identity(path, config)
        self.calibration = Calibration.from_json(config.get("calibration"))  # relevance, as the torch path has it
        self.max_len = int(config["architecture"].get("max_len", self.tokenizer.max_len))

    def query_words(self, text: str) -> list[tuple[str, bool]]:
        """(word, in the vocabulary) for each word of `text` the model reads."""
        return self.tokenizer.words(text)

    def _tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer.encode_batch_np(list(texts))
        return ids[:, : self.max_len], mask[:, : self.max_len]


class OnnxFast(_OnnxModel):
    """A native Fast model's text tower on ONNX Runtime (query side only)."""

    kind = "fast"

    def __init__(self, path: str | Path, config: dict[str, Any], graph: Path, provider_names: list[str]) -> None:
        super().__init__(path, config, graph, provider_names)
        self.dim = int(config["architecture"]["dim"])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self._tokens(texts)
        (vectors,) = self.session.run(None, {"ids": ids, "mask": mask})
        return np.asarray(vectors, dtype=np.float32)


class OnnxSlow(_OnnxModel):
    """A native Slow model's query scorer on ONNX Runtime: texts against cached memories."""

    kind = "slow"

    def __init__(self, path: str | Path, config: dict[str, Any], graph: Path, provider_names: list[str]) -> None:
        super().__init__(path, config, graph, provider_names)
        self.width = int(config["architecture"]["width"])

    def score(self, texts: Sequence[str], memories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (Q, K) of every text against every memory (L_i, width)."""
        out = np.zeros((len(texts), len(memories)), dtype=np.float32)
        if not texts or not memories:
            return out
        by_length: dict[int, list[int]] = {}  # equal lengths together, as the torch path groups them
        for j, m in enumerate(memories):
            by_length.setdefault(int(m.shape[0]), []).append(j)
        for q, text in enumerate(texts):
            ids, mask = self._tokens([text])
            for group in by_length.values():
                for start in range(0, len(group), SCORE_CHUNK):
                    cols = group[start : start + SCORE_CHUNK]
                    memory = np.stack([np.asarray(memories[j], dtype=np.float32) for j in cols])
                    memory_mask = np.ones(memory.shape[:2], dtype=bool)
                    feed = {"ids": ids, "mask": mask, "memory": memory, "memory_mask": memory_mask}
                    out[q, cols] = self.session.run(None, feed)[0]
        return out


def load_onnx(path: str | Path, kind: str, device: str = "auto") -> OnnxFast | OnnxSlow:
    """The ONNX retriever of a native model folder; a `FastslowError` saying why when its
    graph is missing or stale (`query_graph`)."""
    config = read_config(path)
    if config["kind"] != kind:
        raise FastslowError(f"{path} holds a {config['kind']} model, not a {kind} one: pass a {kind} model")
    graph, why = query_graph(path, config)
    if graph is None:
        raise FastslowError(f"model {path}: {why}; write it with `fastslow models export {Path(path).name}`")
    wrapper = OnnxFast if kind == "fast" else OnnxSlow
    return wrapper(path, config, graph, providers(device))
