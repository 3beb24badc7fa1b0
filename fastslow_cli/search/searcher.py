"""Query -> results: Fast top-K from HNSW, then (optionally) Slow re-ranking of those K.

Re-ranking reads the K items' cached Slow memory from the index and scores the K
(query, item) pairs in one batch: K decoder passes, no visual encoding. The K are
ordered by their blend

    b = (1 - alpha) * z(slow) + alpha * z(fast)

where z standardises the K candidates' scores within the query (mean 0, std 1), so the
two models' different scales can be mixed; alpha = 0 (the default, unless the index
records one tuned on a validation split) orders by the Slow score alone. Results below
rank K keep their Fast order.

`Result.score` is one scale on which the results are always in order (it never rises
with the rank, whatever k, K and alpha):

- a result the Slow model did not re-score has its Fast cosine similarity, in [-1, 1];
- a re-ranked result has 1 + sigmoid(b), in (1, 2): above every Fast-only result, and
  1.5 where its blend is the mean of the K candidates'.

So `score > 1` means "re-scored by the Slow model". The raw model scores stay in
`fast_score` (the cosine) and `slow_score` (the Slow model's score, e.g. a mean token
log-likelihood, or None when not re-ranked), for thresholds and analysis.

`Result.relevance` is calibrated: P(the item matches the query), in [0, 1], from the
model's Platt scaling fitted on val at training time (`eval/calibration.py`): the Slow
calibration of `slow_score` for the re-ranked head, the Fast one of `fast_score` for the
tail; None when that model has no calibration (saved before one was fitted, or a Hugging
Face model). `min_score` keeps the results whose relevance is at least that (so fewer
than k may come back); the others keep their rank, order and fields. Relevance is not
`score`: it need not fall with the rank across the head/tail boundary.

A query none of whose words a native model knows reads as `[UNK]` alone and gets
confident but arbitrary results: `vocabulary_warning` says so, for the caller to show.
Hugging Face models are not checked (their sub-word tokenizers know every word in pieces).

A result whose media file no longer exists is still returned, flagged `missing` (one
stat per result), so a caller can say so; `fastslow index update` removes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING, Any

import numpy as np

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.eval.calibration import Calibration
from fastslow_cli.index.folder import SearchIndex
from fastslow_cli.media.location import known_gone

if TYPE_CHECKING:
    from fastslow_cli.search.heatmap import HeatMap
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever
    from fastslow_cli.store.thumbs import Thumbnails

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
    relevance: float | None = None  # calibrated P(match) in [0, 1]; None without a calibration (see the module docstring)
    fast_rank: int | None = None  # its rank in the Fast order, before re-ranking (equal to `rank` when not re-ranked)

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
    """The re-ranking order value b of K candidates (see the module docstring)."""
    return (1.0 - alpha) * zscore(slow.astype(np.float64)) + alpha * zscore(fast.astype(np.float64))


def rank_candidates(fast: np.ndarray, slow: np.ndarray | None, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Order and `Result.score` of candidates given in Fast order, the first len(slow) re-ranked.

    Returns (order, score): `order[i]` is the candidate at rank i + 1 and `score` is
    non-increasing (see the module docstring for the scale).
    """
    fast = np.asarray(fast, dtype=np.float64)
    order = np.arange(len(fast))
    score = np.clip(fast, -1.0, 1.0)  # unit vectors: only float rounding leaves [-1, 1]
    head = 0 if slow is None else min(len(slow), len(fast))
    if head:
        b = blend(fast[:head], np.asarray(slow[:head], dtype=np.float64), alpha)
        top = np.argsort(-b, kind="stable")
        order[:head] = top
        score[:head] = 1.0 + 0.5 * (1.0 + np.tanh(b[top] / 2.0))  # 1 + sigmoid(b), without overflow
    return order, score


class Searcher:
    """Models and index loaded once; `search` answers one query in milliseconds."""

    def __init__(
        self, index: SearchIndex, fast: FastRetriever, slow: SlowRetriever | None = None, engine: str = "torch"
    ) -> None:
        index.check_models(fast, slow)
        self.index = index
        self.fast = fast
        self.slow = slow
        self.engine = engine  # what runs the models: "onnx" (ONNX Runtime) or "torch"
        self._thumbnails: Thumbnails | None = None
        self._labels: dict[str, int] | None = None
        self._attention: Any = None  # the torch Slow model heat maps come from, when `slow` runs on ONNX

    @property
    def thumbnails(self) -> Thumbnails:
        """The thumbnails of the index's feature set (`store/thumbs.py`), opened once."""
        if self._thumbnails is None:
            from fastslow_cli.store.thumbs import Thumbnails

            self._thumbnails = Thumbnails(self.index.feature_set_dir)
        return self._thumbnails

    def label(self, item_id: str) -> int:
        """The index row of `item_id`; a UsageError naming it when the index does not hold it."""
        if self._labels is None:
            self._labels = {item: i for i, item in enumerate(self.index.items["id"])}
        if item_id not in self._labels:
            raise UsageError(f"item {item_id!r} is not in index {self.index.directory}: pass an id a search returned")
        return self._labels[item_id]

    def heatmap(self, query: str, item_id: str) -> HeatMap:
        """Where the index's Slow model looks for each word of `query` in item `item_id`,
        per frame (`search/heatmap.py`). Needs an index built with a Slow model."""
        if self.slow is None:
            raise UsageError("heat maps need a Slow model: build the index with --slow MODEL (and search with re-ranking on)")
        label = self.label(item_id)
        memory = self.index.memories([label])[0]
        return self._attention_model().heatmap(check_query(query), memory, self.index.items["timestamps"][label])

    @property
    def draws_heatmaps(self) -> bool:
        """Whether `heatmap` can answer: a Slow model with attention weights, or a native one
        on ONNX (its torch twin is loaded on first use)."""
        return self.slow is not None and (hasattr(self.slow, "heatmap") or getattr(self.slow, "engine", None) == "onnx")

    def _attention_model(self) -> Any:
        """The Slow model with attention weights: itself on torch; on ONNX (whose graph
        returns scores only) the same weights loaded on torch once, on first use."""
        if hasattr(self.slow, "heatmap"):
            return self.slow
        if getattr(self.slow, "engine", None) != "onnx":
            raise UsageError(f"the Slow model {self.slow.identity.get('name')} cannot draw heat maps")
        if self._attention is None:
            from fastslow_cli.search.retrievers import load_slow

            self._attention = load_slow(self.slow.identity["path"], "cpu")
        return self._attention

    @property
    def default_alpha(self) -> float:
        return float(self.index.manifest.get("alpha", 0.0) or 0.0)

    def vocabulary_warning(self, query: str, rerank: int = 0) -> str | None:
        """One line when no word of `query` is known to the Fast model (or, with `rerank`, the
        Slow one): its results are then arbitrary. None when some word is known, or the model
        cannot tell (Hugging Face)."""
        text = check_query(query)
        models = [("Fast", self.fast)] + ([("Slow", self.slow)] if rerank and self.slow is not None else [])
        blind = []
        for what, model in models:
            words = model.query_words(text) if hasattr(model, "query_words") else []
            if words and not any(known for _, known in words):
                blind.append(what)
        if not blind:
            return None
        who = "the Fast and Slow models (they know" if len(blind) > 1 else f"the {blind[0]} model (it knows"
        return f"no word of {query!r} is known to {who} only words of the training captions): results are arbitrary"

    def search(
        self, query: str, k: int = 10, rerank: int = 0, alpha: float | None = None, ef: int | None = None,
        min_score: float | None = None,
    ) -> list[Result]:
        """Top `k` results for `query`; with `rerank` > 0 the Fast top-`rerank` are re-scored by the Slow model;
        with `min_score` only those whose `relevance` is at least that."""
        return self.search_many([query], k, rerank, alpha, ef, min_score)[0]

    def calibrations(self, rerank: int = 0) -> tuple[Calibration | None, Calibration | None]:
        """The (Fast, Slow) calibrations relevance is computed with (Slow only when re-ranking)."""
        fast = getattr(self.fast, "calibration", None)
        slow = getattr(self.slow, "calibration", None) if rerank and self.slow is not None else None
        return fast, slow

    def check_min_score(self, min_score: float, rerank: int = 0) -> None:
        """A usage error for a cut-off out of [0, 1]; an error naming the model when one it needs has no calibration."""
        if not 0.0 <= min_score <= 1.0:
            raise UsageError(f"--min-score is a probability between 0 and 1, got {min_score}")
        fast, slow = self.calibrations(rerank)
        models = [("Fast", self.fast, fast)] + ([("Slow", self.slow, slow)] if rerank else [])
        for what, model, calibration in models:
            if calibration is None:
                where = model.identity.get("path") or model.identity.get("name") or "?"
                raise FastslowError(
                    f"--min-score needs calibrated models, but the {what} model {where} has none (saved before "
                    f"fastslow fitted one at training, or a Hugging Face model): run `fastslow calibrate "
                    f"{Path(str(where)).name} --captions FILE` (its training captions), or search without --min-score"
                )

    def search_many(
        self, queries: Sequence[str], k: int = 10, rerank: int = 0, alpha: float | None = None, ef: int | None = None,
        min_score: float | None = None,
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
        if min_score is not None:
            self.check_min_score(min_score, rerank)
        texts = [check_query(q) for q in queries]
        if not texts:
            return []
        # One query per encoder call: padding a batch to its longest text changes float
        # rounding, and batch mode must give exactly what single queries give.
        qvecs = np.concatenate([self.fast.encode_texts([t]) for t in texts])
        depth = max(k, rerank)
        labels, scores = self.index.ann.query(qvecs, depth, ef=ef)
        results = [self._one(q, qvecs[i], labels[i], scores[i], k, rerank, alpha) for i, q in enumerate(queries)]
        if min_score is None:
            return results
        return [[r for r in res if r.relevance is not None and r.relevance >= min_score] for res in results]

    def _one(
        self, query: str, qvec: np.ndarray, labels: np.ndarray, fast_scores: np.ndarray, k: int, rerank: int, alpha: float
    ) -> list[Result]:
        labels = [int(x) for x in labels]
        head = min(rerank, len(labels))
        slow = None
        if head:
            slow = self.slow.score([check_query(query)], self.index.memories(labels[:head]))[0].astype(np.float64)
        order, final = rank_candidates(fast_scores, slow, alpha)
        fast_scores = np.asarray(fast_scores, dtype=np.float64)[order]
        labels = [labels[j] for j in order]
        slow_scores: list[float | None] = [float(slow[j]) if slow is not None and j < head else None for j in order]
        items = self.index.items
        fast_cal, slow_cal = self.calibrations(rerank)
        out = []
        for rank, label in enumerate(labels[:k]):
            kind = items["kind"][label]
            calibration, raw = (slow_cal, slow_scores[rank]) if slow_scores[rank] is not None else (fast_cal, fast_scores[rank])
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
                    missing=known_gone(items["path"][label]),
                    relevance=None if calibration is None else float(calibration(raw)),
                    fast_rank=int(order[rank]) + 1,
                )
            )
        return out
