"""Relevance: a model score mapped to P(the item matches the query), fitted on val (Platt scaling).

`Result.score` orders results but means nothing on its own (a cosine for the tail,
1 + sigmoid of a within-query blend for the re-ranked head). A threshold needs a scale
that means the same across queries: `relevance = sigmoid(a * score + b)`, with `a`, `b`
fitted by logistic regression on the (caption, item) pairs of the validation split
(label 1 for a caption's own item, 0 for every other item), of the Fast cosine for a Fast
model and of the Slow score for a Slow model. Training does the fit once, on the best
epoch, and stores the coefficients in the model's `config.json` (`calibration`).

The probability depends on how many items compete for a query: the fit sees each val
caption with one matching item among the val split's items (`items`). Training
validates a Slow model on a random subset of those items (scoring every pair is its
cost); subsampling negatives uniformly only moves the logistic intercept, by
log(subset negatives / all negatives), so the stored `b` is corrected to all the val
items and both kinds of model share one reference. A collection of another size, or
where a query has several matches, shifts the real match rate: the scale is measured
(`reliability`, `brier`) and reported by `fastslow eval --html`.

numpy only at import; the fit imports torch (training has it loaded already).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """relevance = sigmoid(a * score + b) for scores of kind `input` ('fast_score' or 'slow_score')."""

    a: float
    b: float
    input: str
    items: int  # the reference: one matching item among this many (the val split's items)
    fit_items: int  # items and captions the fit scored
    fit_queries: int
    method: str = "platt"
    split: str = "val"

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Calibration | None:
        """The stored calibration, or None when the model has none (saved before fastslow fitted one)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: data[k] for k in ("a", "b", "input", "items", "fit_items", "fit_queries")},
                       method=str(data.get("method", "platt")), split=str(data.get("split", "val")))
        except (KeyError, TypeError):
            return None


def pair_labels(shape: tuple[int, int], gt: np.ndarray) -> np.ndarray:
    """(Q, N) 0/1 labels: 1 at each text's own item."""
    labels = np.zeros(shape, dtype=np.float64)
    labels[np.arange(shape[0]), np.asarray(gt)] = 1.0
    return labels


def fit_platt(scores: np.ndarray, gt: np.ndarray, score_kind: str, items: int | None = None) -> Calibration:
    """Maximum-likelihood logistic fit of match / no match on every (text, item) pair of a
    score matrix; `items` (default: the matrix's columns) is the item count the intercept
    is corrected to when the matrix's items are a uniform subset of them."""
    import torch
    import torch.nn.functional as F

    scores = np.asarray(scores, dtype=np.float64)
    q, n = scores.shape
    if q == 0 or n < 2:
        raise ValueError(f"a calibration needs at least one caption and two items, got a {scores.shape} score matrix")
    x = torch.from_numpy(scores.ravel())
    y = torch.from_numpy(pair_labels(scores.shape, gt).ravel())
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    xs = (x - mu) / sd  # standardised for a well-conditioned fit
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.binary_cross_entropy_with_logits(params[0] * xs + params[1], y)
        value.backward()
        return value

    opt.step(loss)
    a_std, b_std = (float(v) for v in params.detach())
    a = a_std / sd
    b = b_std - a_std * mu / sd
    total = n if items is None else int(items)
    if total > n:
        b += math.log((n - 1) / (total - 1))  # negatives subsampled uniformly: only the intercept moves
    return Calibration(a=a, b=b, input=score_kind, items=total, fit_items=n, fit_queries=q)


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of the probabilities against 0/1 outcomes (0 is perfect)."""
    p, y = np.asarray(probabilities, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    return float(np.mean((p - y) ** 2))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float | int]]:
    """Predicted vs observed match rate in equal-width probability bins (empty bins left out)."""
    p, y = np.asarray(probabilities, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows: list[dict[str, float | int]] = []
    for i in range(bins):
        inside = which == i
        if inside.any():
            rows.append({"low": i / bins, "high": (i + 1) / bins, "pairs": int(inside.sum()),
                         "predicted": float(p[inside].mean()), "observed": float(y[inside].mean())})
    return rows


def expected_calibration_error(rows: list[dict[str, float | int]]) -> float:
    """Pair-weighted mean |predicted - observed| over `reliability` bins."""
    total = sum(int(r["pairs"]) for r in rows)
    if not total:
        return float("nan")
    return float(sum(int(r["pairs"]) * abs(float(r["predicted"]) - float(r["observed"])) for r in rows) / total)
