"""`fastslow eval --html`: one self-contained, offline HTML file of an `Evaluation`.

The page holds the R@K table `eval` prints, the speed/accuracy trade-off of the re-ranking
depth K (recall@1/5/10, twin accuracy and ms/query as functions of K), how well the
calibrated relevance matches the observed match rate, and twin pairs the models won and
lost. Plots are matplotlib figures inlined as SVG (built on `Figure`, never pyplot: no GUI
backend and no global figure state, so it runs headless and in a server); the page is a Jinja2
template; pictures are the thumbnails `extract` stores (store/thumbs.py; a video's middle
sampled frame), else for images a JPEG made with Pillow from the file, inlined as data
URIs. Nothing on the page loads anything from elsewhere.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.eval.calibration import brier, expected_calibration_error, reliability
from fastslow_cli.eval.metrics import caption_words
from fastslow_cli.eval.runs import Evaluation

THUMB = 128  # px, the longer side of an inlined picture
EXAMPLES = 4  # twin pairs shown won, and as many lost
METHOD_ORDER = ("fast", "distilled", "slow", "rerank")


def _svg(fig: Any, salt: str) -> str:
    """The figure as an inline <svg> element (no XML prolog), text kept as text."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    return fig, fig.add_subplot()


def sweep_plots(sweep: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, svg) of recall@1/5/10, twin accuracy and ms/query against K, and R@1 against ms/query."""
    if not sweep:
        return []
    ks = [p["K"] for p in sweep]
    plots = []
    fig, ax = _figure()
    for key, marker in (("R@1", "o"), ("R@5", "s"), ("R@10", "^")):
        ax.plot(ks, [p[key] for p in sweep], marker=marker, label=key)
    ax.set(xlabel="re-ranked K (0 = Fast only)", ylabel="recall (%)", title="Recall against K")
    ax.legend()
    ax.grid(alpha=0.3)
    plots.append(("Recall@1/5/10 against K", _svg(fig, "recall")))
    if any(p.get("twin_acc") is not None for p in sweep):
        fig, ax = _figure()
        ax.plot(ks, [np.nan if p.get("twin_acc") is None else p["twin_acc"] for p in sweep], marker="o")
        ax.axhline(50.0, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set(xlabel="re-ranked K (0 = Fast only)", ylabel="twin accuracy (%)", title="Twin accuracy against K")
        ax.legend()
        ax.grid(alpha=0.3)
        plots.append(("Twin accuracy against K", _svg(fig, "twins")))
    fig, ax = _figure()
    ax.plot(ks, [p["ms_per_query"] for p in sweep], marker="o")
    ax.set(xlabel="re-ranked K (0 = Fast only)", ylabel="ms per query", title="Time per query against K")
    ax.grid(alpha=0.3)
    plots.append(("ms/query against K", _svg(fig, "time")))
    fig, ax = _figure()
    ax.plot([p["ms_per_query"] for p in sweep], [p["R@1"] for p in sweep], marker="o")
    for p in sweep:
        ax.annotate(f"K={p['K']}", (p["ms_per_query"], p["R@1"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set(xlabel="ms per query", ylabel="R@1 (%)", title="Speed/accuracy trade-off")
    ax.grid(alpha=0.3)
    plots.append(("R@1 against ms/query", _svg(fig, "tradeoff")))
    return plots


def calibration_summary(relevance: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 10) -> list[dict[str, Any]]:
    """Per population: pairs, matches, Brier score (and that of always predicting the base
    rate), expected calibration error and the reliability bins."""
    out = []
    for name, (p, y) in relevance.items():
        if not len(p):
            continue
        rate = float(np.mean(y))
        rows = reliability(p, y, bins)
        out.append({
            "population": name, "pairs": len(p), "matches": int(np.sum(y)), "brier": brier(p, y),
            "brier_base_rate": brier(np.full(len(p), rate), y), "ece": expected_calibration_error(rows), "bins": rows,
        })
    return out


def reliability_plot(summary: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    if not summary:
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for s in summary:
        ax.plot([b["predicted"] for b in s["bins"]], [b["observed"] for b in s["bins"]], marker="o", label=s["population"])
    ax.set(xlabel="predicted relevance (bin mean)", ylabel="observed match rate", title="Reliability of relevance",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ("Reliability of relevance", _svg(fig, "reliability"))


def stored_thumbnail(feature_set_dir: str | None, item_id: str) -> str | None:
    """A data URI of the thumbnail `extract` stored for the item (a video's middle sampled
    frame), None when the set has none for it."""
    if feature_set_dir is None:
        return None
    from fastslow_cli.store.thumbs import Thumbnails

    thumbs = Thumbnails(feature_set_dir)
    data = thumbs.get(item_id, thumbs.count(item_id) // 2)
    return None if data is None else f"data:{thumbs.mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail(path: str, kind: str) -> str | None:
    """A JPEG data URI made from an image file (EXIF orientation applied), for items with no
    stored thumbnail; None for videos and unreadable files."""
    if kind != "image":
        return None
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict(scores: np.ndarray, q: int, own: int, twin: int) -> str:
    a, b = scores[q, own], scores[q, twin]
    return "own" if a > b else "twin" if b > a else "tie"


def twin_examples(ev: Evaluation, count: int = EXAMPLES) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(judge, won, lost): twin pairs the judge (the re-ranked search, else the Slow model,
    else the last method) ranked right and wrong, with every method's verdict. Won pairs
    that the first method lost come first: they show what the slower model adds."""
    methods = [m for m in METHOD_ORDER if m in ev.scores]
    if not ev.twins or not methods:
        return None, [], []
    judge = "rerank" if "rerank" in methods else "slow" if "slow" in methods else methods[-1]
    bags = [tuple(sorted(caption_words(t))) for t in ev.texts]
    won, lost = [], []
    for q, j in ev.twins:
        own = int(ev.gt[q])
        verdicts = {m: _verdict(ev.scores[m], q, own, j) for m in methods}
        twin_caption = next((ev.texts[o] for o in range(len(ev.texts)) if ev.gt[o] == j and bags[o] == bags[q]), "")
        example = {
            "query": ev.texts[q], "twin_caption": twin_caption, "verdicts": verdicts,
            "own": {"id": ev.ids[own], "path": ev.paths[own], "name": Path(ev.paths[own]).name, "kind": ev.kinds[own]},
            "twin": {"id": ev.ids[j], "path": ev.paths[j], "name": Path(ev.paths[j]).name, "kind": ev.kinds[j]},
        }
        (won if verdicts[judge] == "own" else lost).append(example)
    won.sort(key=lambda e: e["verdicts"][methods[0]] == "own")  # stable: the first method's losses first
    chosen_won, chosen_lost = won[:count], lost[:count]
    for example in chosen_won + chosen_lost:
        for side in ("own", "twin"):
            item = example[side]
            item["thumb"] = stored_thumbnail(ev.feature_set_dir, item["id"]) or thumbnail(item["path"], item["kind"])
    return judge, chosen_won, chosen_lost


def render_report(ev: Evaluation, meta: dict[str, Any] | None = None) -> str:
    """The report page as a string (see the module docstring)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined
    from markupsafe import Markup

    sizes = sorted({(r["queries"], r["items"]) for r in ev.rows})
    calibration = calibration_summary(ev.relevance)
    plots = sweep_plots(ev.sweep)
    rel_plot = reliability_plot(calibration)
    judge, won, lost = twin_examples(ev)
    env = Environment(loader=PackageLoader("fastslow_cli.eval"), autoescape=True, undefined=StrictUndefined)
    template = env.get_template("report.html.j2")
    return template.render(
        split=ev.split, scope=", ".join(f"{q} captions x {n} items" for q, n in sizes), rows=ev.rows,
        rows_json=Markup(json.dumps(ev.rows).replace("</", "<\\/")), sweep=ev.sweep,
        sweep_plots=[(title, Markup(svg)) for title, svg in plots],
        reliability_plot=None if rel_plot is None else (rel_plot[0], Markup(rel_plot[1])),
        calibration=calibration, judge=judge, won=won, lost=lost, twins=len(ev.twins),
        methods=[m for m in METHOD_ORDER if m in ev.scores], meta=meta or {}, cores=os.cpu_count(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_report(ev: Evaluation, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
    """Write the report page atomically, readable as any new file is (the umask), since it is
    meant to be shared (the atomic temporary file is created 0600); returns its path."""
    from fastslow_cli.atomic import atomic_write_text

    target = Path(path)
    atomic_write_text(target, render_report(ev, meta))
    mask = os.umask(0)
    os.umask(mask)
    target.chmod(0o666 & ~mask)
    return target
