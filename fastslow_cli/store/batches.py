"""The one batcher: rows of a feature table -> float32 tensors for the models.

Retrievers (index, search, eval), training, validation and distillation all batch
through `Batcher`, so every place that encodes items reads them the same way:

- `ordered(rows, size)`: batches of items with equal frame counts (no padding work, so an
  item's vector does not depend on what it was batched with), for encoding.
- `shuffled(rows, size, rng)`: training batches of one kind (single-frame images, or
  multi-frame videos padded to the batch's longest), in random order.
- `load(rows)`: the levels (B, T, H, W, C) and frame mask (B, T) of rows, trimmed to
  their longest item; levels the model does not read are zero-stride placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from fastslow_cli.errors import FastslowError


class Levels(Protocol):
    """What the batcher reads of a feature table (`store.parquet.FeatureTable`)."""

    levels: Sequence[Any]  # (N, Tmax, H, W, C) arrays, finest first, zero-padded frames
    frame_mask: Any  # (N, Tmax) bool


class Batcher:
    """Batches of table rows as tensors, reading only the levels in `read` (default: all)."""

    def __init__(self, table: Levels, read: Sequence[int] | None = None) -> None:
        self.table = table
        self.read = set(range(len(table.levels)) if read is None else read)
        self.frame_mask = np.asarray(table.frame_mask, dtype=bool)
        self.frames = self.frame_mask.sum(1)
        if (self.frames == 0).any():
            raise FastslowError("the feature table has items with no frames: re-extract them")

    def level_shapes(self) -> list[list[int]]:
        """(H, W, C) of each level: what a model is built for."""
        return [list(np.shape(lv)[2:]) for lv in self.table.levels]

    def load(self, rows: np.ndarray, device: torch.device | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Levels (B, T, H, W, C) and frame mask (B, T) of table rows `rows`, T their longest."""
        rows = np.asarray(rows)
        t = int(self.frames[rows].max())
        levels = []
        for i, lv in enumerate(self.table.levels):
            if i in self.read:
                x = torch.from_numpy(np.asarray(lv[rows][:, :t], dtype=np.float32))
                levels.append(x if device is None else x.to(device))
            else:  # not read by the model: a zero-stride view keeps shape checks honest, costs nothing
                levels.append(torch.zeros(1, device=device).expand((len(rows), t, *np.shape(lv)[2:])))
        mask = torch.from_numpy(self.frame_mask[rows][:, :t].copy())
        return levels, mask if device is None else mask.to(device)

    def ordered(self, rows: np.ndarray, size: int) -> list[np.ndarray]:
        """Positions into `rows` in batches of at most `size` items with equal frame counts."""
        frames = self.frames[np.asarray(rows, dtype=np.int64)]
        order = np.argsort(frames, kind="stable")
        out: list[np.ndarray] = []
        start = 0
        while start < len(order):
            end = start
            while end < len(order) and frames[order[end]] == frames[order[start]] and end - start < size:
                end += 1
            out.append(order[start:end])
            start = end
        return out

    def shuffled(self, rows: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Positions into `rows`, grouped by kind (one frame / several), shuffled, cut into batches."""
        frames = self.frames[np.asarray(rows, dtype=np.int64)]
        out: list[np.ndarray] = []
        for group in (np.flatnonzero(frames == 1), np.flatnonzero(frames > 1)):
            group = rng.permutation(group)
            out.extend(group[i : i + size] for i in range(0, len(group), size))
        return [out[i] for i in rng.permutation(len(out))]
