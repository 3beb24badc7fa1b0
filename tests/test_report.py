"""The eval report on a hand-made `Evaluation`: twin examples, plots, calibration summary, thumbnails.

The end-to-end report (`fastslow eval --html` on a trained workspace) is in test_pipeline.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastslow_cli.eval.report import (
    calibration_summary,
    render_report,
    sweep_plots,
    thumbnail,
    twin_examples,
    write_report,
)
from fastslow_cli.eval.runs import Evaluation

TEXTS = ["a red circle left of a blue square", "a blue square left of a red circle", "a green star", "a yellow cross"]


def evaluation(tmp_path: Path) -> Evaluation:
    """Items 0 and 1 are twins (images); item 2 a video. Fast gets the twins wrong, Slow and rerank right."""
    paths = []
    for i, colour in enumerate([(200, 20, 20), (20, 20, 200), (20, 200, 20), (200, 200, 20)]):
        path = tmp_path / f"item{i}.{'mp4' if i == 2 else 'png'}"
        if i == 2:
            path.write_bytes(b"not decoded: videos get no picture")
        else:
            Image.new("RGB", (300, 150), colour).save(path)
        paths.append(str(path))
    gt = np.arange(4)
    fast = np.array([[0.5, 0.9, 0, 0], [0.9, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    slow = np.array([[0.9, 0.5, 0, 0], [0.5, 0.9, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    rows = [{"method": m, "R@1": r1, "R@5": 100.0, "R@10": 100.0, "median_rank": 1.0, "mean_rank": 1.5, "queries": 4,
             "items": 4, "twin_acc": t, "twins": 2, "ms_per_query": ms}
            for m, r1, t, ms in (("fast", 50.0, 0.0, 0.1), ("slow", 100.0, 100.0, 3.0))]
    sweep = [{"K": k, "method": "rerank" if k else "fast", "R@1": r1, "R@5": 100.0, "R@10": 100.0, "twin_acc": t,
              "ms_per_query": ms} for k, r1, t, ms in ((0, 50.0, 0.0, 0.2), (2, 100.0, 100.0, 0.9), (4, 100.0, 100.0, 1.4))]
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 2000)
    relevance = {"fast: all pairs": (p, (rng.uniform(0, 1, 2000) < p).astype(float))}
    return Evaluation("test", rows, TEXTS, gt, [(0, 1), (1, 0)], {"fast": fast, "slow": slow, "rerank": slow.copy()},
                      [f"id{i}" for i in range(4)], paths, ["image", "image", "video", "image"], sweep, relevance)


def test_twin_examples_judged_by_rerank_with_every_methods_verdict(tmp_path: Path) -> None:
    ev = evaluation(tmp_path)
    judge, won, lost = twin_examples(ev)
    assert judge == "rerank" and lost == []
    assert [e["query"] for e in won] == TEXTS[:2]
    assert won[0]["verdicts"] == {"fast": "twin", "slow": "own", "rerank": "own"}
    assert won[0]["twin_caption"] == TEXTS[1] and won[0]["twin"]["name"] == "item1.png"
    ev.scores["rerank"][0, 1] = 1.0  # now re-ranking loses the first pair
    judge, won, lost = twin_examples(ev)
    assert [e["query"] for e in lost] == [TEXTS[0]] and [e["query"] for e in won] == [TEXTS[1]]


def test_thumbnails_are_small_jpegs_of_images_and_none_for_videos(tmp_path: Path) -> None:
    ev = evaluation(tmp_path)
    uri = thumbnail(ev.paths[0], "image")
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.size == (128, 64)  # aspect kept
    assert thumbnail(ev.paths[2], "video") is None
    assert thumbnail(str(tmp_path / "gone.png"), "image") is None


def test_sweep_plots_are_inline_svg() -> None:
    sweep = [{"K": k, "R@1": 10.0 + k, "R@5": 20.0, "R@10": 30.0, "twin_acc": 50.0 + k, "ms_per_query": 1.0 + k}
             for k in (0, 5, 10)]
    plots = sweep_plots(sweep)
    assert len(plots) == 4
    assert all(svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and "K=10" in plots[3][1] for _, svg in plots)
    assert len(sweep_plots([{**p, "twin_acc": None} for p in sweep])) == 3  # no twins: no twin plot
    assert sweep_plots([]) == []


def test_calibration_summary_scores_a_calibrated_population(tmp_path: Path) -> None:
    (summary,) = calibration_summary(evaluation(tmp_path).relevance)
    assert summary["pairs"] == 2000 and summary["brier"] < summary["brier_base_rate"]
    assert summary["ece"] < 0.05  # outcomes drawn with probability p: calibrated by construction
    assert sum(b["pairs"] for b in summary["bins"]) == 2000


def test_report_is_offline_html_with_the_rows(tmp_path: Path) -> None:
    page = render_report(evaluation(tmp_path), {"version": "9.9", "models": {"fast": "models/fast"}})
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 5
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(v.startswith(("data:image/jpeg;base64,", "#")) for v in links)  # nothing fetched
    assert "<link" not in page and "<script src" not in page
    assert page.count('<img src="data:image/jpeg;base64,') == 4  # two twin pairs, both sides images
    assert "fastslow 9.9" in page and "<code>models/fast</code>" in page
    assert "&lt;" not in TEXTS[0] and "<td>a red circle left of a blue square</td>" in page


@pytest.mark.parametrize("bad", [[-1], [2.5], []])
def test_bad_sweep_is_a_usage_error(tmp_path: Path, bad: list) -> None:
    from fastslow_cli.errors import UsageError
    from fastslow_cli.workspace import Workspace

    with pytest.raises(UsageError, match="--sweep"):
        Workspace(tmp_path).evaluate(tmp_path / "c.jsonl", html=tmp_path / "r.html", sweep=bad)


def test_the_written_report_is_readable_by_others_as_new_files_are(tmp_path: Path) -> None:
    """The atomic temporary file is created 0600; a report is meant to be shared."""
    import os

    mask = os.umask(0o022)
    try:
        path = write_report(evaluation(tmp_path), tmp_path / "out" / "r.html")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644 and path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
