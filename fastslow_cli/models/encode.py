"""Encoding feature-table rows with a native model, batched by `store.batches.Batcher`.

One path per model kind for the retrievers (index, search, eval), training's validation
and distillation, so an item's vector or memory is the same wherever it is computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastslow_cli.models.fast import FastModel
from fastslow_cli.models.slow import SlowModel
from fastslow_cli.store.batches import Batcher, Levels
from fastslow_cli.text.tokenizer import TextTokenizer


def fast_batcher(table: Levels) -> Batcher:
    """A batcher reading what a Fast model reads: the coarsest level."""
    return Batcher(table, [len(table.levels) - 1])


def slow_batcher(table: Levels, finest_level: int) -> Batcher:
    """A batcher reading what a Slow model reads: `finest_level` and coarser."""
    return Batcher(table, range(finest_level, len(table.levels)))


@torch.inference_mode()
def fast_item_vectors(
    model: FastModel, batcher: Batcher, rows: np.ndarray, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """Unit vectors (N, dim), float32 on `device`, of table rows `rows`, in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    out = torch.empty(len(rows), model.config.dim, device=device)
    for pos in batcher.ordered(rows, batch):
        out[torch.as_tensor(pos, device=device)] = model.encode_visual(*batcher.load(rows[pos], device)).float()
    return out


@torch.inference_mode()
def fast_text_vectors(model: FastModel, tokenizer: TextTokenizer, texts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Unit vectors (Q, dim), float32 on `device`, of `texts` (one batch)."""
    ids, mask = tokenizer.encode_batch(list(texts))
    return model.encode_text(ids.to(device), mask.to(device)).float()


@torch.inference_mode()
def slow_item_memories(
    model: SlowModel, batcher: Batcher, rows: np.ndarray, device: torch.device, batch: int = 64
) -> list[torch.Tensor]:
    """Visual memory (L_i, width) of each of table rows `rows`, in that order: its valid tokens only."""
    rows = np.asarray(rows, dtype=np.int64)
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    for pos in batcher.ordered(rows, batch):
        memory, memory_mask = model.encode_visual(*batcher.load(rows[pos], device))
        for row, m, k in zip(pos, memory, memory_mask):
            out[int(row)] = m[k]
    return out
