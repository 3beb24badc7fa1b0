"""`fastslow eval`: text-to-visual retrieval over every item of a captions split.

Rows: `fast` (exact inner products over all items), `distilled` (the same for a distilled
Fast model), `slow` (the Slow model scores every (caption, item) pair) and `rerank` (the
real search path: an HNSW index over the split's items with cached Slow memory, Fast
top-K re-ranked by the Slow model). For `rerank`, the K re-ranked candidates come first
and every other item follows in exact Fast order, which gives the rank of an item the
HNSW top-K missed. ms/query includes text encoding.

`evaluate_split` also keeps the score matrices and, for `eval --html`, sweeps the
re-ranking depth K over the same temporary index (the paper's speed/accuracy trade-off)
and collects the calibrated relevance of what search returned (eval/report.py).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.data.captioned_set import CaptionedSet
from fastslow_cli.eval.calibration import pair_labels
from fastslow_cli.eval.metrics import evaluate_scores, fast_score_matrix, find_twins, slow_score_matrix
from fastslow_cli.index.memory import DEFAULT_DTYPE
from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever
from fastslow_cli.store.parquet import FeatureStore

Status = Callable[[str], None]


DEFAULT_SWEEP = (0, 5, 10, 20, 50, 100)  # re-ranking depths of `eval --html`'s speed/accuracy plots


@dataclass
class Evaluation:
    """What the report shows: the rows `eval` prints, the score matrices behind them (row q,
    column j: text q against item j, in each method's ranking order), the K sweep and the
    relevance of what the search path returned."""

    split: str
    rows: list[dict[str, Any]]
    texts: list[str]
    gt: np.ndarray
    twins: list[tuple[int, int]]
    scores: dict[str, np.ndarray]
    ids: list[str]
    paths: list[str]
    kinds: list[str]
    sweep: list[dict[str, Any]] = field(default_factory=list)
    relevance: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # population -> (P, label)
    feature_set_dir: str | None = None  # where the items' stored thumbnails are (store/thumbs.py)


def _row(method: str, scores: np.ndarray, texts: Sequence[str], gt: np.ndarray, twins: Any, seconds: float) -> dict[str, Any]:
    metrics = evaluate_scores(scores, texts, gt, twins)
    return {"method": method, **metrics, "ms_per_query": round(1000.0 * seconds / max(len(texts), 1), 3)}


@contextmanager
def split_searcher(
    store: FeatureStore, data: CaptionedSet, fast: FastRetriever, slow: SlowRetriever | None, memory_dtype: str | None = None
) -> Iterator[Any]:
    """A `Searcher` over a temporary index of the split's items: the real search path."""
    from fastslow_cli.index.folder import SearchIndex, build_index
    from fastslow_cli.search.searcher import Searcher

    with tempfile.TemporaryDirectory(prefix="fastslow-eval-") as tmp:
        directory = Path(tmp) / "eval"
        dtype = {} if memory_dtype is None else {"memory_dtype": memory_dtype}
        build_index(store, directory, fast, slow, ids=data.table.ids, **dtype)
        yield Searcher(SearchIndex.open(directory), fast, slow)


def search_scores(
    searcher: Any, data: CaptionedSet, texts: Sequence[str], exact: np.ndarray, k: int, rerank: int, alpha: float | None
) -> tuple[np.ndarray, float, list[list[Any]]]:
    """Scores whose order is the search result order (the top `k` results first, then exact
    Fast order), the seconds the searches took, and the results."""
    row_of = {item_id: r for r, item_id in enumerate(data.table.ids)}
    n = exact.shape[1]
    out = exact - exact.max() - 1.0  # everything below the results, in Fast order
    start = time.perf_counter()
    results = [searcher.search(t, k=min(k, n), rerank=min(rerank, n), alpha=alpha) for t in texts]
    seconds = time.perf_counter() - start
    for q, res in enumerate(results):
        for r in res:
            out[q, row_of[r.id]] = float(len(res) - r.rank + 1)  # results above the rest, in result order
    return out, seconds, results


def _matches(results: list[list[Any]], data: CaptionedSet, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(relevance, 1 if the result is the query's own item) of every result that has a relevance."""
    own = [data.table.ids[g] for g in gt]
    pairs = [(r.relevance, float(r.id == own[q])) for q, res in enumerate(results) for r in res if r.relevance is not None]
    return np.array([p for p, _ in pairs], dtype=np.float64), np.array([y for _, y in pairs], dtype=np.float64)


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
    return evaluate_split(
        store, data, split, fast, slow, distilled, rerank, alpha, status, max_queries, memory_dtype=memory_dtype
    ).rows


def evaluate_split(
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
    sweep: Sequence[int] | None = None,
    memory_dtype: str | None = None,
) -> Evaluation:
    """`run_eval`'s rows with what produced them; with `sweep` (re-ranking depths, 0 = Fast
    only) also the metrics and ms/query of the search path at each K (capped at the split's
    items) and the relevance of the results it returned."""
    pairs = data.pairs[split]
    if max_queries is not None and len(pairs) > max_queries:
        keep = np.sort(np.random.default_rng(0).choice(len(pairs), max_queries, replace=False))
        pairs = [pairs[i] for i in keep]
    texts = [t for t, _ in pairs]
    gt = np.array([r for _, r in pairs], dtype=np.int64)
    twins = find_twins(texts, gt)
    table = data.table
    out = Evaluation(split, [], texts, gt, twins, {}, list(table.ids), list(table.paths), list(table.kinds),
                     feature_set_dir=str(store.directory))
    say = status or (lambda _msg: None)
    methods: list[tuple[str, Callable[[], tuple[np.ndarray, float]]]] = []
    if fast is not None:
        methods.append(("fast", lambda: fast_score_matrix(fast, table, texts)))
    if distilled is not None:
        methods.append(("distilled", lambda: fast_score_matrix(distilled, table, texts)))
    if slow is not None:
        methods.append(("slow", lambda: slow_score_matrix(slow, table, texts, memory_dtype)))
    for method, compute in methods:
        say(method)
        out.scores[method], seconds = compute()
        out.rows.append(_row(method, out.scores[method], texts, gt, twins, seconds))
        if method == "slow" and memory_dtype is not None:
            out.rows[-1]["memory"] = memory_dtype
    for method, model in (("fast", fast), ("distilled", distilled), ("slow", slow)):
        calibration = getattr(model, "calibration", None)
        if method in out.scores and calibration is not None:
            out.relevance[f"{method}: all pairs"] = (calibration(out.scores[method]).ravel(),
                                                     pair_labels(out.scores[method].shape, gt).ravel())
    ranker = distilled or fast
    depths = sorted({min(int(k), len(table.ids)) for k in sweep or ()})
    if slow is None:
        depths = [k for k in depths if k == 0]  # nothing to re-rank with: the Fast-only point alone
    if ranker is None or not ((rerank and slow is not None) or depths):
        return out
    ranker_name = "distilled" if distilled is not None else "fast"
    exact = out.scores[ranker_name]
    with split_searcher(store, data, ranker, slow, memory_dtype) as searcher:
        if rerank and slow is not None:
            say(f"rerank top {rerank}")
            scores, seconds, results = search_scores(searcher, data, texts, exact, rerank, rerank, alpha)
            out.scores["rerank"] = scores
            row = _row("rerank", scores, texts, gt, twins, seconds)
            row["K"] = rerank
            row["memory"] = memory_dtype or DEFAULT_DTYPE
            row["fast_model"] = ranker_name
            slow_row = next((r for r in out.rows if r["method"] == "slow"), None)
            if slow_row and row["ms_per_query"] > 0:
                row["speedup_vs_slow"] = round(slow_row["ms_per_query"] / row["ms_per_query"], 1)
            out.rows.append(row)
            out.relevance[f"search results, rerank K={rerank}"] = _matches(results, data, gt)
        for k in depths:
            say(f"sweep: rerank top {k}" if k else "sweep: Fast only")
            top = k if k else min(10, len(table.ids))  # K = 0: the Fast top 10 straight from the index
            scores, seconds, results = search_scores(searcher, data, texts, exact, top, k, alpha)
            point = _row("rerank" if k else ranker_name, scores, texts, gt, twins, seconds)
            out.sweep.append({"K": k, **point})
            if k == 0:
                out.relevance["search results, Fast only (top 10)"] = _matches(results, data, gt)
    return out
