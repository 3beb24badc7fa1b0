"""Human-readable rendering of results (rich, on stderr). The core never prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from fastslow_cli.cli.console import err_console, out_console
from fastslow_cli.cli.progress import Events

if TYPE_CHECKING:
    from fastslow_cli.features.extract import ExtractSummary
    from fastslow_cli.search.searcher import Result
    from fastslow_cli.workspace import Workspace


def render_extract_summary(summary: ExtractSummary) -> None:
    """One table: what was found, stored, skipped and what failed (and where that is logged)."""
    table = Table(title=f"extract: feature set '{summary.set_name}'", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("media files found", str(summary.found))
    table.add_row("extracted", str(summary.extracted))
    table.add_row("reused (renamed or touched files)", str(summary.reused))
    table.add_row("already stored, skipped", str(summary.skipped_existing))
    table.add_row("removed (gone from the scanned folders)", str(summary.removed))
    if summary.thumbnailed:
        table.add_row("stored earlier, thumbnails added", str(summary.thumbnailed))
    table.add_row("failed", f"[red]{len(summary.failed)}[/]" if summary.failed else "0")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    err_console.print(table)
    if summary.published is not None:
        p = summary.published
        err_console.print(
            f"published to {p.url}: {p.uploaded} of {p.parts} part(s) uploaded ({p.bytes / 1e6:.1f} MB), {p.deleted} deleted",
            markup=False, highlight=False, soft_wrap=True,
        )
    if not summary.found:
        from fastslow_cli.media.discover import IMAGE_EXTS, VIDEO_EXTS

        err_console.print(
            f"warning: no image or video file found; extract reads {' '.join(sorted(IMAGE_EXTS))} "
            f"and {' '.join(sorted(VIDEO_EXTS))} (hidden files and folders are skipped): check the path",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if summary.failed:
        err_console.print(
            f"{len(summary.failed)} file(s) could not be decoded; reasons are in "
            f"{summary.store_dir}/errors.jsonl. Fix or remove them and rerun to add them.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def render_results(results: list[Result], console: Console = out_console, empty: str | None = None) -> None:
    """Search results as a table on stdout (the human form of `--json`); `empty` is said when there are none."""
    if not results:
        console.print(empty or "no results: the index is empty", markup=False)
        return
    reranked = any(r.slow_score is not None for r in results)
    calibrated = any(r.relevance is not None for r in results)
    table = Table(title=f"“{results[0].query}”", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if calibrated:
        table.add_column("relevance", justify="right")
    table.add_column("fast", justify="right")
    if reranked:
        table.add_column("slow", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("at", justify="right")
    for r in results:
        row = [str(r.rank), f"{r.score:.3f}"]
        if calibrated:
            row.append("" if r.relevance is None else f"{r.relevance:.2f}")
        row.append(f"{r.fast_score:.3f}")
        if reranked:
            row.append("" if r.slow_score is None else f"{r.slow_score:.3f}")
        row += [r.path + (" (file gone)" if r.missing else ""), "" if r.timestamp is None else f"{r.timestamp:.1f}s"]
        table.add_row(*row)
    console.print(table)


def render_index_info(manifest: dict) -> None:
    """The index manifest, readably (stdout: it is the command's result)."""
    table = Table(title=f"index '{manifest['name']}'", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    hnsw = manifest["hnsw"]
    slow = manifest.get("slow")
    rows = [
        ("items", f"{manifest['count']} ({manifest['images']} images, {manifest['videos']} videos)"),
        ("feature set", manifest["feature_set"]),
        ("fast model", f"{manifest['fast'].get('path')} (sha256 {str(manifest['fast'].get('content_hash'))[:12]})"),
        ("slow model", f"{slow.get('path')} (sha256 {str(slow.get('content_hash'))[:12]})" if slow else "none (no --rerank)"),
        ("dimension", str(manifest["dim"])),
        ("HNSW", f"M={hnsw['M']} ef_construction={hnsw['ef_construction']} ef={hnsw['ef_search']}, {hnsw['bytes']} bytes"),
        ("re-rank alpha", str(manifest.get("alpha", 0.0))),
        ("built", manifest.get("updated") or manifest["created"]),
    ]
    foot = manifest.get("footprint")
    if foot:
        shards = manifest.get("shards")
        rows.append(("shards", ", ".join(f"{e['count']}" for e in shards) + " items" if shards else "1 (unsharded)"))
        rows.append(("Slow memory", f"{foot['memory_dtype']}, {foot['memory_bytes_per_item']:g} bytes/item" if foot["memory_dtype"] else "none"))
        rows.append(("disk", f"{foot['disk_bytes']} bytes, {foot['disk_bytes_per_item']:g} bytes/item"))
        rows.append(("RAM (HNSW, loaded whole)", f"{foot['ram_bytes']} bytes, {foot['ram_bytes_per_item']:g} bytes/item"))
    for what, value in rows:
        table.add_row(what, value)
    out_console.print(table)


def render_eval(rows: list[dict], split: str, console: Console = out_console) -> None:
    """Eval rows as one table (stdout: it is the command's result); fits 80 columns."""
    sizes = {(r["queries"], r["items"]) for r in rows}
    scope = ", ".join(f"{q} captions x {n} items" for q, n in sorted(sizes))
    table = Table(title=f"text-to-visual retrieval, split '{split}' ({scope})")
    table.add_column("method", no_wrap=True)
    for col in ("R@1", "R@5", "R@10", "median rank", "twins %", "ms/query"):
        table.add_column(col, justify="right")
    for r in rows:
        twin = r.get("twin_acc")
        table.add_row(
            r["method"] + (f" K={r['K']}" if "K" in r else ""),
            f"{r['R@1']:.1f}",
            f"{r['R@5']:.1f}",
            f"{r['R@10']:.1f}",
            f"{r['median_rank']:g}",
            "-" if twin is None else f"{twin:.1f}",
            f"{r['ms_per_query']:.2f}",
        )
    console.print(table)
    slow = next((r for r in rows if r["method"] == "slow"), None)
    for r in rows:
        if "speedup_vs_slow" in r and slow is not None:
            console.print(
                f"rerank (Fast top {r['K']} re-scored by Slow) is "
                f"{compare_speed(slow['ms_per_query'], r['ms_per_query'])} Slow alone per query",
                markup=False,
                highlight=False,
            )


def compare_speed(slow_ms: float, rerank_ms: float) -> str:
    """'12.3x faster than', or on sets so small that scoring every pair beats an index
    search, '3.3x slower than' (a ratio below 1 read as 'faster' would say the opposite)."""
    if rerank_ms <= 0 or slow_ms <= 0:
        return "faster than" if slow_ms > rerank_ms else "slower than"
    ratio = slow_ms / rerank_ms
    if ratio >= 1.05:
        return f"{ratio:.1f}x faster than"
    if ratio <= 1 / 1.05:
        return f"{1 / ratio:.1f}x slower than"
    return "about as fast as"


class DemoEvents(Events):
    """The demo's events: a rule per step, and each step's result as the command would show it."""

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("section", "extracted", "evaluated", "searched", "onnx_checked"):
            self.close()  # the step's bars end before its result or the next step is shown
        if kind == "section":
            err_console.rule(event["title"])
        elif kind == "extracted":
            render_extract_summary(event["summary"])
        elif kind == "evaluated":
            render_eval(event["rows"], event["split"], err_console)
        elif kind == "searched":
            render_results(event["results"], err_console)
        else:
            super().__call__(event)


def onnx_check_line(check: dict[str, Any]) -> str:
    """The demo's ONNX-against-torch check as one line."""
    if not check.get("ran"):
        return f"ONNX check not run: {check.get('why')}"
    verdict = "same answers" if check["passed"] else "DIFFERENT answers"
    return (
        f"ONNX Runtime vs torch, {check['queries']} test captions, top-{check['k']} re-ranked by {check['rerank']}: "
        f"{verdict} (identical top-{check['k']} for {check['same_top_k']}/{check['queries']}, "
        f"largest score difference {check['max_score_diff']:.1e}, tolerance {check['tolerance']:.0e})"
    )


def render_demo_end(ws: Workspace, result: dict[str, Any]) -> None:
    """Where the time went, the ONNX check, and the commands to try next on the demo's index."""
    seconds = result["seconds"]
    if "onnx_check" in result:
        err_console.print(onnx_check_line(result["onnx_check"]), markup=False, highlight=False, soft_wrap=True)
    err_console.print(
        "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + f"; total {sum(seconds.values()):.0f}s",
        markup=False,
        highlight=False,
    )
    w = "" if ws.root == Path(".fastslow").resolve() else f" -w {ws.root}"
    err_console.rule("next")
    err_console.print(
        f"the demo's index '{result['index']}' is now this workspace's default; try:\n"
        f"  fastslow search{w} \"a red circle left of a blue square\" --rerank 20\n"
        f"  fastslow search{w} - --json --rerank 20 < queries.txt\n"
        f"  fastslow index info{w}\n"
        f"  fastslow eval{w} --captions {result['captions']} --set {result['feature_set']} "
        f"--fast {result['models']['fast']} --slow {result['models']['slow']} --rerank 20\n"
        "your own photos: `fastslow extract DIR`, then see the README (\"Your own photos and videos\")",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
