"""Text-to-visual retrieval metrics and the score matrices they are computed from.

`fast_score_matrix` and `slow_score_matrix` are the one way each model kind scores a
split: `fastslow eval` and training's per-epoch validation both use them.

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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever
    from fastslow_cli.store.parquet import FeatureTable


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


def fast_score_matrix(fast: FastRetriever, table: FeatureTable, texts: Sequence[str]) -> tuple[np.ndarray, float]:
    """(Q, N) exact Fast scores of `texts` against every row of `table`, and the query-side
    seconds (item vectors are an index's job, so they are not timed)."""
    items = fast.encode_items(table)
    start = time.perf_counter()
    scores = fast.encode_texts(texts) @ items.T
    return scores, time.perf_counter() - start


def slow_score_matrix(
    slow: SlowRetriever, table: FeatureTable, texts: Sequence[str], memory_dtype: str | None = None
) -> tuple[np.ndarray, float]:
    """(Q, N) Slow scores of every (text, row) pair; memories are computed first and not
    timed (as an index caches them). With `memory_dtype` the memories are first stored and
    read back as an index with `--memory memory_dtype` would (index/memory.py)."""
    memories = slow.encode_items(table)
    if memory_dtype is not None:
        from fastslow_cli.index.memory import as_stored

        memories = [as_stored(m, memory_dtype) for m in memories]
    start = time.perf_counter()
    scores = slow.score(texts, memories)
    return scores, time.perf_counter() - start
