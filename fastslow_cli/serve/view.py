"""The result view shared by the page (`GET /`) and the static export (`search --html`).

One template set (`templates/`), one card builder: the page links its images to the API
and its script and style to `/static/`; the export inlines all of them (images as data:
URIs), so the file opens offline. A card holds the result's `search --json` fields plus
its Fast rank, its opaque key, the best frame's thumbnail and, for videos, the strip of
sampled frames with their times.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastslow_cli.serve.items import Item, ItemTable, item_key

if TYPE_CHECKING:
    from fastslow_cli.search.searcher import Result, Searcher

# Shown where an item has no stored thumbnail (a store extracted before thumbnails existed).
NO_THUMB = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" fill="#ddd"/>'
    b'<text x="80" y="64" font-size="12" text-anchor="middle" fill="#555">no thumbnail</text></svg>'
).decode()


def best_frame(item: Item, timestamp: float | None) -> int:
    """The sampled frame shown for a result: the one at its best timestamp (0 for images)."""
    if timestamp is None or not item.timestamps:
        return 0
    return min(range(len(item.timestamps)), key=lambda i: abs(item.timestamps[i] - timestamp))


class ServerLinks:
    """Card links into the running app's API (`?token=` appended when the app has one)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def url(self, path: str, **params: Any) -> str:
        query = {k: v for k, v in params.items() if v is not None}
        if self.token:
            query["token"] = self.token
        return path + ("?" + urlencode(query) if query else "")

    def thumb(self, item: Item, frame: int) -> str:
        return self.url(f"/api/items/{item_key(item.id)}/thumb", frame=frame)

    def media(self, item: Item) -> str:
        return self.url(f"/api/items/{item_key(item.id)}/media")

    def heatmap(self, item: Item, query: str, frame: int) -> str:
        return self.url(f"/api/items/{item_key(item.id)}/heatmap", q=query, frame=frame)


class InlineLinks:
    """Card images as data: URIs read from the thumbnail store (the static export)."""

    def __init__(self, thumbnails: Any) -> None:
        self.thumbnails = thumbnails

    def thumb(self, item: Item, frame: int) -> str:
        data = self.thumbnails.get(item.id, frame)
        if data is None:
            return NO_THUMB
        return f"data:{self.thumbnails.mime};base64,{base64.b64encode(data).decode()}"

    def media(self, item: Item) -> None:
        return None  # no server: the video cannot be played, the strip shows its frames

    def heatmap(self, item: Item, query: str, frame: int) -> None:
        return None  # inlined per word by `export_html` instead


def card(result: Result, item: Item, links: ServerLinks | InlineLinks) -> dict[str, Any]:
    """One result as the page and the API show it."""
    best = best_frame(item, result.timestamp)
    frames = [
        {"frame": i, "time": t, "title": f"{t:.1f}s", "thumb_url": links.thumb(item, i)}
        for i, t in enumerate(item.timestamps)
    ] if item.kind == "video" else []
    return {
        **result.to_json(),
        "name": os.path.basename(result.path),
        "key": item_key(item.id),
        "thumb_url": links.thumb(item, best),
        "media_url": links.media(item),
        "best_frame": best,
        "frames": frames,
        "heatmap_url": links.heatmap(item, result.query, best),
    }


@dataclass
class SearchView:
    """One query's section of the page: its cards, or the error to show instead."""

    query: str
    cards: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    tokens: list[str] | None = None  # the query's words for the heat-map chooser; None: no heat maps


def _asset(name: str) -> str:
    return resources.files("fastslow_cli.serve").joinpath("static", name).read_text(encoding="utf-8")


def render(
    searches: Sequence[SearchView], *, params: dict[str, Any], items: int, static: bool, token: str | None = None,
    slow: bool = True, calibrated: bool = False,
) -> str:
    """The page (static=False: scripts and styles linked under /static/) or the offline export (inlined)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("fastslow_cli.serve"), autoescape=True, undefined=StrictUndefined)
    return env.get_template("results.html.j2").render(
        searches=searches, params=params, items=items, static=static, token=token, slow=slow, calibrated=calibrated,
        css=_asset("app.css") if static else None, js=_asset("app.js") if static else None,
    )


def export_html(
    searcher: Searcher, results: Sequence[Sequence[Result]], path: str | os.PathLike[str], *, params: dict[str, Any],
    queries: Sequence[str] | None = None,
) -> None:
    """Write `search --html FILE`: every query's results in one self-contained page (atomic write,
    mode as for any new file: it is for sharing)."""
    from fastslow_cli.atomic import atomic_write_shared_text

    table = ItemTable(searcher.index.items)
    thumbnails = searcher.thumbnails
    links = InlineLinks(thumbnails)
    views = []
    for i, res in enumerate(results):
        query = res[0].query if res else (queries[i] if queries else "")
        view = SearchView(query, [card(r, table.by_id[r.id], links) for r in res])
        if res and searcher.draws_heatmaps:
            for c in view.cards:
                maps = searcher.heatmap(c["query"], c["id"])
                view.tokens = list(maps.tokens)
                c["heatmaps"] = inline_heatmaps(maps, thumbnails.get(c["id"], c["best_frame"]), c["best_frame"])
        views.append(view)
    atomic_write_shared_text(path, render(views, params=params, items=len(table), static=True))


def inline_heatmaps(maps: Any, thumbnail: bytes | None, frame: int) -> dict[str, str] | None:
    """The heat maps of one card as data: URIs, keyed as the word chooser's values ("" is the whole query).

    JPEG, not the API's PNG: a page of k results carries k x (words + 1) pictures.
    """
    import io

    from PIL import Image

    from fastslow_cli.search.heatmap import overlay_png

    if thumbnail is None:
        return None
    grids = {"": maps.query_map[frame], **{str(t): maps.maps[frame, t] for t in range(maps.maps.shape[1])}}
    out = {}
    for value, grid in grids.items():
        buffer = io.BytesIO()
        with Image.open(io.BytesIO(overlay_png(thumbnail, grid))) as img:
            img.convert("RGB").save(buffer, format="JPEG", quality=80)
        out[value] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return out


def check_html_target(path: str | os.PathLike[str]) -> None:
    """Before searching: `--html FILE` must name a file in a folder that can be written."""
    from pathlib import Path

    from fastslow_cli.atomic import check_writable
    from fastslow_cli.errors import UsageError

    if Path(path).is_dir():
        raise UsageError(f"--html {path} is a folder: name the page file, e.g. {Path(path) / 'results.html'}")
    check_writable(Path(path).parent)



