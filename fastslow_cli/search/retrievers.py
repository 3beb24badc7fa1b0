"""The seam between models and the tools that use them (index, search, eval, distill).

`FastRetriever` and `SlowRetriever` speak strings and feature tables, not token ids, so
a native fastslow model and a pretrained Hugging Face adapter (`models/hf.py`) are used
the same way:

- Fast: `encode_texts(texts) -> (Q, dim)` and `encode_items(table) -> (N, dim)`, unit
  float32 vectors whose inner product is the retrieval score.
- Slow: `encode_items(table) -> list of (L_i, width) memories` (query-independent: the
  index caches them) and `score(texts, memories) -> (Q, K)`, every text against every
  memory, with no visual encoding; `heatmap(text, memory, timestamps) -> HeatMap`
  (search/heatmap.py), where the model looks for each word.

Native models also carry `calibration` (`eval.calibration.Calibration` from their
`config.json`, or None for models saved before one was fitted): their score -> P(match).
The Hugging Face adapters have none (a retriever without the attribute counts as None).

Native models also have `query_words(text)`: the query's words and whether their
word-level vocabulary holds each, so search can warn when it knows none (the query then
reads as [UNK] only and the results are arbitrary). The Hugging Face adapters have no
such method: their sub-word (BPE/WordPiece) tokenizers spell any word in known pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fastslow_cli.eval.calibration import Calibration
from fastslow_cli.models.encode import (
    fast_batcher,
    fast_item_vectors,
    fast_text_vectors,
    slow_batcher,
    slow_item_memories,
)
from fastslow_cli.models.files import is_native, native_identity
from fastslow_cli.store.parquet import FeatureTable

# Items padded and scored per step by `NativeSlow.score`; a multiple of `score_matrix`'s
# item chunk (64), so chunking changes no score.
SCORE_CHUNK = 1024


class FastRetriever(Protocol):
    kind: str
    dim: int
    identity: dict[str, Any]  # name, path, content_hash, fingerprint (what an index records)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_items(self, table: FeatureTable, batch_size: int = 256) -> np.ndarray: ...


class SlowRetriever(Protocol):
    kind: str
    width: int
    identity: dict[str, Any]

    def encode_items(self, table: FeatureTable, batch_size: int = 64) -> list[np.ndarray]: ...

    def score(self, texts: Sequence[str], memories: Sequence[np.ndarray]) -> np.ndarray: ...


def pad_memories(memories: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length memories (L_i, width) into (K, Lmax, width) with a mask."""
    length = max(m.shape[0] for m in memories)
    width = memories[0].shape[1]
    out = torch.zeros(len(memories), length, width, dtype=torch.float32)
    mask = torch.zeros(len(memories), length, dtype=torch.bool)
    for i, m in enumerate(memories):
        out[i, : m.shape[0]] = torch.from_numpy(np.asarray(m, dtype=np.float32))
        mask[i, : m.shape[0]] = True
    return out.to(device), mask.to(device)


class _WordVocabulary:
    tokenizer: Any

    def query_words(self, text: str) -> list[tuple[str, bool]]:
        """(word, in the vocabulary) for each word of `text` the model reads."""
        return self.tokenizer.words(text)


class NativeFast(_WordVocabulary):
    """A trained `models.fast.FastModel` with its tokenizer, as a `FastRetriever`."""

    kind = "fast"

    def __init__(self, model: Any, tokenizer: Any, identity: dict[str, Any], device: torch.device,
                 calibration: Calibration | None = None) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.calibration = calibration
        self.dim = int(model.config.dim)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return fast_text_vectors(self.model, self.tokenizer, texts, self.device).cpu().numpy()

    @torch.inference_mode()
    def encode_items(self, table: FeatureTable, batch_size: int = 256) -> np.ndarray:
        rows = np.arange(len(table.ids))
        return fast_item_vectors(self.model, fast_batcher(table), rows, self.device, batch_size).cpu().numpy()


class NativeSlow(_WordVocabulary):
    """A trained `models.slow.SlowModel` with its tokenizer, as a `SlowRetriever`."""

    kind = "slow"

    def __init__(self, model: Any, tokenizer: Any, identity: dict[str, Any], device: torch.device,
                 calibration: Calibration | None = None) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.calibration = calibration
        self.width = int(model.config.width)

    @torch.inference_mode()
    def encode_items(self, table: FeatureTable, batch_size: int = 64) -> list[np.ndarray]:
        batcher = slow_batcher(table, self.model.config.resolve_finest_level())
        memories = slow_item_memories(self.model, batcher, np.arange(len(table.ids)), self.device, batch_size)
        return [m.to(torch.float16).cpu().numpy() for m in memories]

    @torch.inference_mode()
    def score(self, texts: Sequence[str], memories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (Q, K); memories are padded `SCORE_CHUNK` at a time, so scoring every item
        of a large collection never holds more than one chunk as float32."""
        out = np.zeros((len(texts), len(memories)), dtype=np.float32)
        if not texts or not memories:
            return out
        ids, mask = self.tokenizer.encode_batch(list(texts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        by_length: dict[int, list[int]] = {}  # equal lengths together: images never padded to video length
        for j, m in enumerate(memories):
            by_length.setdefault(int(m.shape[0]), []).append(j)
        for group in by_length.values():
            for start in range(0, len(group), SCORE_CHUNK):
                cols = group[start : start + SCORE_CHUNK]
                memory, memory_mask = pad_memories([memories[j] for j in cols], self.device)
                scores = self.model.score_matrix(ids, mask, memory, memory_mask)
                out[:, cols] = scores.float().cpu().numpy()
        return out

    def heatmap(self, text: str, memory: np.ndarray, timestamps: Sequence[float]) -> Any:
        """Where the decoders look for each word of `text` in one item's memory (`search.heatmap`)."""
        from fastslow_cli.search.heatmap import native_heatmap

        config = self.model.config
        h, w = config.level_shapes[config.resolve_finest_level()][:2]
        return native_heatmap(self, text, memory, (int(h), int(w)), list(timestamps))


def load_native(path: str | Path, kind: str, device: str | None = None) -> NativeFast | NativeSlow:
    """Load a fastslow model folder of the given kind, wrapped for retrieval."""
    from fastslow_cli.models.checkpoint import load_model
    from fastslow_cli.runtime import resolve_device

    dev = resolve_device(device)
    loaded = load_model(path, kind=kind)
    wrapper = NativeFast if kind == "fast" else NativeSlow
    calibration = Calibration.from_json(loaded.config.get("calibration"))
    return wrapper(loaded.model, loaded.tokenizer, native_identity(path, loaded.config), dev, calibration)


def load_fast(path: str | Path, device: str | None = None) -> FastRetriever:
    """A Fast retriever from a fastslow model folder or a Hugging Face CLIP folder / id."""
    if is_native(path):
        return load_native(path, "fast", device)
    from fastslow_cli.models.hf import load_clip

    return load_clip(path, device)


def load_slow(path: str | Path, device: str | None = None) -> SlowRetriever:
    """A Slow retriever from a fastslow model folder or a Hugging Face BLIP ITM folder / id."""
    if is_native(path):
        return load_native(path, "slow", device)
    from fastslow_cli.models.hf import load_blip

    return load_blip(path, device)
