"""Text-to-visual retrieval metrics and the score matrices they are computed from.

A score matrix is (Q texts x N items); `gt[q]` is the column of text q's own item
(items may have several captions, each text has one correct item). Ranks are
1-based; ties are broken against the correct item (a model that gives every item the
same score ranks it last, not first).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.models.fast import FastModel
from fastslow_cli.models.slow import SlowModel
from fastslow_cli.text.tokenizer import TextTokenizer


class FeatureTable(Protocol):
    """What the models read from `store.FeatureTable`."""

    levels: Sequence[Any]  # (N, Tmax, H, W, C) arrays, finest first, zero-padded frames
    frame_mask: Any  # (N, Tmax) bool


class Features:
    """Batches of float32 feature tensors from a feature table, trimmed to the batch's longest item."""

    def __init__(self, table: FeatureTable, level_ids: Sequence[int]) -> None:
        self.table = table
        self.level_ids = list(level_ids)
        self.frame_mask = np.asarray(table.frame_mask, dtype=bool)
        self.frames = self.frame_mask.sum(1)
        if (self.frames == 0).any():
            raise FastslowError("the feature table has items with no frames: re-extract them")

    def level_shapes(self) -> list[list[int]]:
        return [list(np.shape(lv)[2:]) for lv in self.table.levels]

    def load(self, idx: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Levels (B, T, H, W, C) of table rows `idx` and their frame mask (B, T).

        Levels the model does not read are zero-stride placeholders of the right shape.
        """
        idx = np.asarray(idx)
        t = int(self.frames[idx].max())
        levels = []
        for i, lv in enumerate(self.table.levels):
            shape = (len(idx), t, *np.shape(lv)[2:])
            if i in self.level_ids:
                levels.append(torch.from_numpy(np.asarray(lv[idx][:, :t], dtype=np.float32)))
            else:  # not read by the model: a zero-stride view keeps shape checks honest, costs nothing
                levels.append(torch.zeros(1).expand(shape))
        return levels, torch.from_numpy(self.frame_mask[idx][:, :t].copy())

    def batches(self, items: np.ndarray, size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Positions into `items`, grouped by kind (one frame / several) and cut into batches.

        Shuffled when `rng` is given; otherwise sorted by frame count (least padding).
        """
        frames = self.frames[np.asarray(items, dtype=np.int64)]
        out: list[np.ndarray] = []
        for group in (np.flatnonzero(frames == 1), np.flatnonzero(frames > 1)):
            if rng is not None:
                group = rng.permutation(group)
            else:
                group = group[np.argsort(frames[group], kind="stable")]
            out.extend(group[i : i + size] for i in range(0, len(group), size))
        if rng is not None:
            out = [out[i] for i in rng.permutation(len(out))]
        return out


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def ranks_of_truth(scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """1-based rank of each text's own item; equal scores count as ranked above it."""
    scores = np.asarray(scores, dtype=np.float64)
    own = scores[np.arange(len(gt)), gt][:, None]
    return (scores >= own).sum(1)  # includes the item itself


def retrieval_metrics(scores: np.ndarray, gt: Sequence[int]) -> dict[str, float]:
    """R@1/5/10 in percent, median and mean rank, and the counts."""
    gt = np.asarray(gt, dtype=np.int64)
    if scores.shape[0] != len(gt) or len(gt) == 0:
        raise ValueError(f"score matrix {scores.shape} does not match {len(gt)} ground-truth items")
    ranks = ranks_of_truth(scores, gt)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    out["queries"] = int(scores.shape[0])
    out["items"] = int(scores.shape[1])
    return out


def caption_words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped: what 'the same words' means for twins."""
    return re.findall(r"\w+", text.lower())


def find_twins(texts: Sequence[str], gt: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs (text q, item j): another caption of item j != gt[q] has q's words in another order."""
    by_bag: dict[tuple[str, ...], list[int]] = defaultdict(list)
    words = [caption_words(t) for t in texts]
    for q, w in enumerate(words):
        by_bag[tuple(sorted(w))].append(q)
    pairs: set[tuple[int, int]] = set()
    for group in by_bag.values():
        for q in group:
            for other in group:
                if gt[other] != gt[q] and words[other] != words[q]:
                    pairs.add((q, int(gt[other])))
    return sorted(pairs)


def twin_accuracy(scores: np.ndarray, gt: Sequence[int], twins: Sequence[tuple[int, int]]) -> float | None:
    """Percent of twin pairs where the text's own item scores above the twin's item (ties: half)."""
    if not twins:
        return None
    q = np.array([t[0] for t in twins])
    j = np.array([t[1] for t in twins])
    own = scores[q, np.asarray(gt)[q]]
    other = scores[q, j]
    return float(100.0 * np.mean((own > other) + 0.5 * (own == other)))


def evaluate_scores(
    scores: np.ndarray, texts: Sequence[str], gt: Sequence[int], twins: Sequence[tuple[int, int]] | None = None
) -> dict[str, float | int | None]:
    """Retrieval metrics plus twin accuracy (None when the split has no twins)."""
    out: dict[str, float | int | None] = dict(retrieval_metrics(scores, gt))
    twins = find_twins(texts, gt) if twins is None else twins
    out["twin_acc"] = twin_accuracy(scores, gt, twins)
    out["twins"] = len(twins)
    return out


@torch.inference_mode()
def fast_visual_vectors(model: FastModel, features: Features, items: Sequence[int], batch: int = 256) -> torch.Tensor:
    """Vectors (N, dim) of table rows `items`, in that order."""
    items = np.asarray(items, dtype=np.int64)
    out = torch.empty(len(items), model.config.dim)
    dev = model_device(model)
    for pos in features.batches(items, batch):
        levels, frame_mask = features.load(items[pos])
        vec = model.encode_visual([lv.to(dev) for lv in levels], frame_mask.to(dev))
        out[torch.as_tensor(pos)] = vec.float().cpu()
    return out


@torch.inference_mode()
def fast_score_matrix(
    model: FastModel, tokenizer: TextTokenizer, texts: Sequence[str], visual: torch.Tensor, batch: int = 256
) -> tuple[np.ndarray, float]:
    """Exact Fast scores (Q, N) and milliseconds per query (text encoding + dot products)."""
    start = time.perf_counter()
    rows = []
    dev = model_device(model)
    visual = visual.to(dev)
    for i in range(0, len(texts), batch):
        ids, mask = tokenizer.encode_batch(texts[i : i + batch])
        rows.append(model.similarity(model.encode_text(ids.to(dev), mask.to(dev)), visual).float().cpu())
    scores = torch.cat(rows) if rows else torch.empty(0, len(visual))
    ms = 1000.0 * (time.perf_counter() - start) / max(1, len(texts))
    return scores.numpy(), ms


@torch.inference_mode()
def slow_memory(
    model: SlowModel, features: Features, items: Sequence[int], batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory (N, Lmax, width) and mask (N, Lmax) of table rows `items`, padded to the longest."""
    items = np.asarray(items, dtype=np.int64)
    chunks = []
    dev = model_device(model)
    for pos in features.batches(items, batch):
        levels, frame_mask = features.load(items[pos])
        mem, mask = model.encode_visual([lv.to(dev) for lv in levels], frame_mask.to(dev))
        chunks.append((pos, mem.float().cpu(), mask.cpu()))
    length = max((c[1].shape[1] for c in chunks), default=1)
    memory = torch.zeros(len(items), length, model.config.width)
    memory_mask = torch.zeros(len(items), length, dtype=torch.bool)
    for pos, mem, mask in chunks:
        memory[torch.as_tensor(pos), : mem.shape[1]] = mem.float()
        memory_mask[torch.as_tensor(pos), : mem.shape[1]] = mask
    return memory, memory_mask


@torch.inference_mode()
def slow_score_matrix(
    model: SlowModel,
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    pair_batch: int = 2048,
) -> tuple[np.ndarray, float]:
    """Slow scores (Q, N) for every (text, item) pair and milliseconds per query (all N items).

    Items are taken in order of memory length so short (image) and long (video) memories
    are not padded to each other.
    """
    start = time.perf_counter()
    ids, mask = tokenizer.encode_batch(list(texts))
    order = torch.argsort(memory_mask.sum(1), stable=True)
    dev = model_device(model)
    scores = model.score_matrix(
        ids.to(dev), mask.to(dev), memory[order].to(dev), memory_mask[order].to(dev), pair_batch=pair_batch
    ).cpu()
    out = torch.empty_like(scores)
    out[:, order] = scores
    ms = 1000.0 * (time.perf_counter() - start) / max(1, len(texts))
    return out.numpy(), ms
