"""`fastslow eval`: text-to-visual retrieval over every item of a captions split.

Rows: `fast` (exact inner products over all items), `distilled` (the same for a distilled
Fast model), `slow` (the Slow model scores every (caption, item) pair) and `rerank` (the
real search path: an HNSW index over the split's items with cached Slow memory, Fast
top-K re-ranked by the Slow model). For `rerank`, the K re-ranked candidates come first
and every other item follows in exact Fast order, which gives the rank of an item the
HNSW top-K missed. ms/query includes text encoding.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.data.captioned_set import CaptionedSet
from fastslow_cli.index.memory import DEFAULT_DTYPE
from fastslow_cli.eval.metrics import evaluate_scores, fast_score_matrix, find_twins, slow_score_matrix
from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever
from fastslow_cli.store.parquet import FeatureStore

Status = Callable[[str], None]


def _row(method: str, scores: np.ndarray, texts: Sequence[str], gt: np.ndarray, twins: Any, seconds: float) -> dict[str, Any]:
    metrics = evaluate_scores(scores, texts, gt, twins)
    return {"method": method, **metrics, "ms_per_query": round(1000.0 * seconds / max(len(texts), 1), 3)}


def rerank_scores(
    store: FeatureStore,
    data: CaptionedSet,
    texts: Sequence[str],
    fast: FastRetriever,
    slow: SlowRetriever,
    k: int,
    alpha: float | None,
    memory_dtype: str | None = None,
) -> tuple[np.ndarray, float]:
    """Scores whose order is the search result order: re-ranked top-K first, then exact Fast order."""
    from fastslow_cli.index.folder import SearchIndex, build_index
    from fastslow_cli.search.searcher import Searcher

    with tempfile.TemporaryDirectory(prefix="fastslow-eval-") as tmp:
        directory = Path(tmp) / "eval"
        dtype = {} if memory_dtype is None else {"memory_dtype": memory_dtype}
        build_index(store, directory, fast, slow, ids=data.table.ids, **dtype)
        index = SearchIndex.open(directory)
        searcher = Searcher(index, fast, slow)
        row_of = {item_id: r for r, item_id in enumerate(data.table.ids)}
        exact, _ = fast_score_matrix(fast, data.table, texts)
        n = exact.shape[1]
        out = exact - exact.max() - 1.0  # everything below the re-ranked head, in Fast order
        start = time.perf_counter()
        results = [searcher.search(t, k=min(k, n), rerank=min(k, n), alpha=alpha) for t in texts]
        seconds = time.perf_counter() - start
        for q, res in enumerate(results):
            for r in res:
                out[q, row_of[r.id]] = float(len(res) - r.rank + 1)  # head above the rest, in result order
    return out, seconds


def run_eval(
    store: FeatureStore,
    data: CaptionedSet,
    split: str,
    fast: FastRetriever | None,
    slow: SlowRetriever | None,
    distilled: FastRetriever | None = None,
    rerank: int = 0,
    alpha: float | None = None,
    status: Status | None = None,
    max_queries: int | None = None,
    memory_dtype: str | None = None,
) -> list[dict[str, Any]]:
    """One metrics row per method, in the order fast, distilled, slow, rerank.

    `max_queries` evaluates a seeded random subset of the split's captions (every item is
    still ranked): the Slow row costs one decoder pass per (caption, item) pair.
    `memory_dtype` scores the Slow and rerank rows from memory stored as an index stores it
    (default: the Slow row from the model's memory as computed, rerank from the default dtype).
    """
    pairs = data.pairs[split]
    if max_queries is not None and len(pairs) > max_queries:
        keep = np.sort(np.random.default_rng(0).choice(len(pairs), max_queries, replace=False))
        pairs = [pairs[i] for i in keep]
    texts = [t for t, _ in pairs]
    gt = np.array([r for _, r in pairs], dtype=np.int64)
    twins = find_twins(texts, gt)
    rows: list[dict[str, Any]] = []
    say = status or (lambda _msg: None)
    methods: list[tuple[str, Callable[[], tuple[np.ndarray, float]]]] = []
    if fast is not None:
        methods.append(("fast", lambda: fast_score_matrix(fast, data.table, texts)))
    if distilled is not None:
        methods.append(("distilled", lambda: fast_score_matrix(distilled, data.table, texts)))
    if slow is not None:
        methods.append(("slow", lambda: slow_score_matrix(slow, data.table, texts, memory_dtype)))
    for method, compute in methods:
        say(method)
        scores, seconds = compute()
        rows.append(_row(method, scores, texts, gt, twins, seconds))
        if method == "slow" and memory_dtype is not None:
            rows[-1]["memory"] = memory_dtype
    if rerank and slow is not None:
        ranker = distilled or fast
        if ranker is not None:
            say(f"rerank top {rerank}")
            scores, seconds = rerank_scores(store, data, texts, ranker, slow, rerank, alpha, memory_dtype)
            row = _row("rerank", scores, texts, gt, twins, seconds)
            row["K"] = rerank
            row["memory"] = memory_dtype or DEFAULT_DTYPE
            row["fast_model"] = "distilled" if distilled is not None else "fast"
            slow_row = next((r for r in rows if r["method"] == "slow"), None)
            if slow_row and row["ms_per_query"] > 0:
                row["speedup_vs_slow"] = round(slow_row["ms_per_query"] / row["ms_per_query"], 1)
            rows.append(row)
    return rows
