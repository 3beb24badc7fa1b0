"""Query -> results: Fast top-K from HNSW, then (optionally) Slow re-ranking of those K.

Re-ranking reads the K items' cached Slow memory from the index and scores the K
(query, item) pairs in one batch: K decoder passes, no visual encoding. The final score
of a re-ranked item is

    score = (1 - alpha) * z(slow) + alpha * z(fast)

where z standardises the K candidates' scores within the query (mean 0, std 1), so the
two models' different scales can be blended; alpha = 0 (the default, unless the index
records one tuned on a validation split) orders by the Slow score alone. Results below
rank K keep their Fast order and score.

A result whose media file no longer exists is still returned, flagged `missing` (one
stat per result), so a caller can say so; `fastslow index update` removes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING

import numpy as np

from fastslow_cli.errors import UsageError
from fastslow_cli.index.folder import SearchIndex

if TYPE_CHECKING:
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever

MAX_QUERY_CHARS = 1000


@dataclass
class Result:
    query: str
    rank: int
    id: str
    path: str
    kind: str
    score: float
    fast_score: float
    slow_score: float | None
    timestamp: float | None
    missing: bool = False  # the media file is gone since the index was built (`fastslow index update` drops it)

    def to_json(self) -> dict:
        return asdict(self)


def check_query(query: str) -> str:
    """Queries must say something: empty or control-character-only text is a usage error."""
    text = " ".join(query.split())
    if not text or not any(ch.isalnum() for ch in text):
        raise UsageError(f"query {query!r} has no words: type what you are looking for, e.g. \"a dog on a beach\"")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"query is {len(text)} characters long: keep it under {MAX_QUERY_CHARS}")
    return text


def zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def blend(fast: np.ndarray, slow: np.ndarray, alpha: float) -> np.ndarray:
    """The re-ranking score of K candidates (see the module docstring)."""
    if alpha <= 0.0:
        return slow.astype(np.float64)
    return (1.0 - alpha) * zscore(slow.astype(np.float64)) + alpha * zscore(fast.astype(np.float64))


class Searcher:
    """Models and index loaded once; `search` answers one query in milliseconds."""

    def __init__(self, index: SearchIndex, fast: FastRetriever, slow: SlowRetriever | None = None) -> None:
        index.check_models(fast, slow)
        self.index = index
        self.fast = fast
        self.slow = slow

    @property
    def default_alpha(self) -> float:
        return float(self.index.manifest.get("alpha", 0.0) or 0.0)

    def search(
        self, query: str, k: int = 10, rerank: int = 0, alpha: float | None = None, ef: int | None = None
    ) -> list[Result]:
        """Top `k` results for `query`; with `rerank` > 0 the Fast top-`rerank` are re-scored by the Slow model."""
        return self.search_many([query], k, rerank, alpha, ef)[0]

    def search_many(
        self, queries: Sequence[str], k: int = 10, rerank: int = 0, alpha: float | None = None, ef: int | None = None
    ) -> list[list[Result]]:
        if k < 1:
            raise UsageError(f"-k must be at least 1, got {k}")
        if rerank < 0:
            raise UsageError(f"--rerank must be 0 (off) or more, got {rerank}")
        if rerank and self.slow is None:
            raise UsageError("--rerank needs a Slow model: build the index with --slow MODEL or pass --slow")
        alpha = self.default_alpha if alpha is None else alpha
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
        texts = [check_query(q) for q in queries]
        if not texts:
            return []
        # One query per encoder call: padding a batch to its longest text changes float
        # rounding, and batch mode must give exactly what single queries give.
        qvecs = np.concatenate([self.fast.encode_texts([t]) for t in texts])
        depth = max(k, rerank)
        labels, scores = self.index.ann.query(qvecs, depth, ef=ef)
        return [self._one(q, qvecs[i], labels[i], scores[i], k, rerank, alpha) for i, q in enumerate(queries)]

    def _one(
        self, query: str, qvec: np.ndarray, labels: np.ndarray, fast_scores: np.ndarray, k: int, rerank: int, alpha: float
    ) -> list[Result]:
        labels = [int(x) for x in labels]
        fast_scores = np.asarray(fast_scores, dtype=np.float64)
        final = fast_scores.copy()
        slow_scores: list[float | None] = [None] * len(labels)
        head = min(rerank, len(labels))
        if head:
            slow = self.slow.score([check_query(query)], self.index.memories(labels[:head]))[0].astype(np.float64)
            mixed = blend(fast_scores[:head], slow, alpha)
            order = np.argsort(-mixed, kind="stable")
            labels[:head] = [labels[j] for j in order]
            final[:head] = mixed[order]
            fast_scores[:head] = fast_scores[:head][order]
            slow_scores[:head] = [float(slow[j]) for j in order]
        items = self.index.items
        out = []
        for rank, label in enumerate(labels[:k]):
            kind = items["kind"][label]
            out.append(
                Result(
                    query=query,
                    rank=rank + 1,
                    id=items["id"][label],
                    path=items["path"][label],
                    kind=kind,
                    score=float(final[rank]),
                    fast_score=float(fast_scores[rank]),
                    slow_score=slow_scores[rank],
                    timestamp=self.index.best_timestamp(label, qvec) if kind == "video" else None,
                    missing=not os.path.exists(items["path"][label]),
                )
            )
        return out
