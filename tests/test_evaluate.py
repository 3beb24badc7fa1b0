"""Retrieval metrics and twin accuracy on hand-made score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from fastslow_cli.eval.metrics import (
    evaluate_scores,
    find_twins,
    ranks_of_truth,
    retrieval_metrics,
    twin_accuracy,
)


def test_ranks_and_recalls() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # own item 0 first
            [0.9, 0.8, 0.7, 0.0],  # own item 2 third
            [0.1, 0.2, 0.3, 0.4],  # own item 1 third
        ]
    )
    gt = [0, 2, 1]
    assert ranks_of_truth(scores, np.array(gt)).tolist() == [1, 3, 3]
    m = retrieval_metrics(scores, gt)
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@5"] == 100.0 and m["median_rank"] == 3.0
    assert m["queries"] == 3 and m["items"] == 4


def test_ties_rank_the_truth_last() -> None:
    """A constant scorer must not look perfect."""
    scores = np.zeros((5, 5))
    m = retrieval_metrics(scores, list(range(5)))
    assert m["R@1"] == 0.0 and m["median_rank"] == 5.0


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 3)), [0])


def test_twins_are_same_words_other_order_of_other_items() -> None:
    texts = [
        "a red circle left of a blue square",  # 0 -> item 0
        "a blue square left of a red circle",  # 1 -> item 1: twin of 0
        "A red circle left of a blue square.",  # 2 -> item 2: same words, same order: a duplicate, no twin
        "a red circle above a blue square",  # 3 -> item 3: other words
        "a blue square left of a red circle",  # 4 -> item 1 again (second caption of item 1)
    ]
    gt = [0, 1, 2, 3, 1]
    twins = find_twins(texts, gt)
    assert (0, 1) in twins and (1, 0) in twins and (2, 1) in twins and (1, 2) in twins
    assert (4, 0) in twins
    assert all(q != 3 for q, _ in twins)
    assert all(gt[q] != j for q, j in twins)
    assert (0, 2) not in twins  # identical word order is a paraphrase, not a twin


def test_twin_accuracy_counts_wins_and_half_ties() -> None:
    scores = np.array([[0.9, 0.1], [0.5, 0.5]])
    gt = [0, 1]
    twins = [(0, 1), (1, 0)]
    assert twin_accuracy(scores, gt, twins) == pytest.approx(75.0)
    assert twin_accuracy(scores, gt, []) is None


def test_evaluate_scores_reports_twins() -> None:
    texts = ["red left of blue", "blue left of red", "green"]
    scores = np.eye(3)
    out = evaluate_scores(scores, texts, [0, 1, 2])
    assert out["R@1"] == 100.0 and out["twin_acc"] == 100.0 and out["twins"] == 2


def _eval_rows(slow_ms: float, rerank_ms: float) -> list[dict]:
    metrics = {"R@1": 10.0, "R@5": 50.0, "R@10": 90.0, "median_rank": 5, "queries": 4, "items": 9}
    return [
        {"method": "slow", **metrics, "ms_per_query": slow_ms},
        {"method": "rerank", **metrics, "ms_per_query": rerank_ms, "K": 5, "speedup_vs_slow": round(slow_ms / rerank_ms, 1)},
    ]


@pytest.mark.parametrize(
    "slow_ms, rerank_ms, says",
    [(12.0, 1.0, "12.0x faster than"), (0.3, 1.0, "3.3x slower than"), (1.0, 1.01, "about as fast as"), (0.0, 2.0, "slower than")],
)
def test_eval_footer_says_slower_when_rerank_is_slower(slow_ms: float, rerank_ms: float, says: str) -> None:
    """Issue 9: a small set gave 'rerank ... is 0.3x faster than Slow alone'."""
    from io import StringIO

    from rich.console import Console

    from fastslow_cli.cli.render import render_eval

    out = StringIO()
    render_eval(_eval_rows(slow_ms, rerank_ms), "test", Console(file=out, width=200))
    footer = out.getvalue().strip().splitlines()[-1]
    assert footer == f"rerank (Fast top 5 re-scored by Slow) is {says} Slow alone per query"
