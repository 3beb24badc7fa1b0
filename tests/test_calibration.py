"""Relevance calibration: Platt fit, the intercept correction for subsampled items, reliability, Brier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastslow_cli.eval.calibration import (
    Calibration,
    brier,
    expected_calibration_error,
    fit_platt,
    reliability,
)


def gaussian_scores(n: int, seed: int, sd: float = 0.5) -> np.ndarray:
    """(n, n) scores, text q's own item q: matches ~ N(1, sd), the rest ~ N(0, sd).

    The true P(match | s) is then logistic: a = 1 / sd^2, b = log(1 / (n - 1)) - 1 / (2 sd^2).
    """
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, sd, (n, n))
    scores[np.arange(n), np.arange(n)] = rng.normal(1.0, sd, n)
    return scores


def test_fit_recovers_the_true_logistic() -> None:
    n, sd = 300, 0.5
    cal = fit_platt(gaussian_scores(n, seed=0, sd=sd), np.arange(n), "fast_score")
    assert cal.a == pytest.approx(1 / sd**2, rel=0.15)
    assert cal.b == pytest.approx(math.log(1 / (n - 1)) - 1 / (2 * sd**2), abs=0.4)
    assert (cal.items, cal.fit_items, cal.fit_queries, cal.input) == (n, n, n, "fast_score")


def test_a_subset_of_items_fits_the_same_calibration_after_the_intercept_correction() -> None:
    """Training validates Slow models on 100 of the val items: corrected to all of them, the fit
    must agree with a fit on every item (uncorrected, b would be off by log(299 / 59) = 1.6)."""
    n = 300
    scores = gaussian_scores(n, seed=1)
    full = fit_platt(scores, np.arange(n), "slow_score")
    subset = np.sort(np.random.default_rng(2).permutation(n)[:60])
    part = fit_platt(scores[np.ix_(subset, subset)], np.arange(len(subset)), "slow_score", items=n)
    assert part.items == n and part.fit_items == 60
    assert part.b == pytest.approx(full.b, abs=0.6)
    assert part.a == pytest.approx(full.a, rel=0.3)
    grid = np.linspace(0.0, 2.0, 9)
    np.testing.assert_allclose(part(grid), full(grid), atol=0.12)


def test_relevance_is_a_probability_and_rises_with_the_score() -> None:
    cal = Calibration(a=5.0, b=-2.0, input="fast_score", items=10, fit_items=10, fit_queries=10)
    p = cal(np.array([-1e6, -1.0, 0.0, 0.4, 1.0, 1e6]))
    assert p[0] == 0.0 and p[-1] == 1.0 and np.all(np.diff(p) > 0)
    assert p[3] == pytest.approx(0.5)


def test_stored_form_round_trips_and_old_models_have_none() -> None:
    cal = Calibration(a=2.5, b=-1.0, input="slow_score", items=440, fit_items=100, fit_queries=100)
    assert Calibration.from_json(cal.to_json()) == cal
    assert Calibration.from_json(None) is None  # a config.json written before calibrations
    assert Calibration.from_json({"a": 1.0}) is None


def test_reliability_bins_and_brier() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    y = np.array([0, 0, 1, 0, 1, 1])
    rows = reliability(p, y, bins=10)
    assert [(r["low"], r["pairs"], r["observed"]) for r in rows] == [(0.0, 2, 0.0), (0.5, 2, 1.0), (0.9, 2, 0.5)]
    assert rows[1]["predicted"] == pytest.approx(0.55)
    assert brier(p, y) == pytest.approx(np.mean((p - y) ** 2))
    assert expected_calibration_error(rows) == pytest.approx((2 * 0.05 + 2 * 0.45 + 2 * 0.45) / 6)
    assert reliability(np.array([1.0]), np.array([1]))[0]["high"] == 1.0  # p = 1 falls in the last bin
