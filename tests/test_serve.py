"""`fastslow serve`'s app (through Starlette's TestClient, no socket) and `search --html`.

The workspace is the shared `index_kit` one (random-init models, media files of a few
bytes): what is checked is the API's contract, its safety rules and the shared view,
not the quality of the results.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import pytest
import schemathesis
from conftest import file_url, run_cli
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from fastslow_cli.index.folder import build_index
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.models.checkpoint import save_model
from fastslow_cli.search.retrievers import load_native
from fastslow_cli.serve.app import create_app
from fastslow_cli.serve.fetched import FetchedMedia
from fastslow_cli.serve.items import item_key
from fastslow_cli.store.thumbs import ThumbnailFiles, entry_key
from fastslow_cli.workspace import Workspace

TOKEN = "s3cret-token"


NO_THUMBS = "item010.png"  # the one item stored without thumbnails (as by an extract before they existed)


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def ws(index_kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORKSPACE with feature set `test` (12 items: 8 images, 4 videos; thumbnails for all but
    NO_THUMBS, frame f of item i coloured (10 i, 20 f, 0)), models and index `default`."""
    root = tmp_path_factory.mktemp("serve").resolve() / "ws"
    store = index_kit.make_store(root, count=12)
    for i, entry in enumerate(sorted(store.entries().values(), key=lambda e: e.id)):
        if entry.id != NO_THUMBS:
            ThumbnailFiles(store.directory).put(entry_key(entry), [jpeg((10 * i, 20 * f, 0)) for f in range(entry.frames)])
    features = {"fingerprint": store.fingerprint(), "set": "test"}
    for retriever in index_kit.make_models(store):
        save_model(root / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
    fast, slow = (load_native(root / "models" / kind, kind, "cpu") for kind in ("fast", "slow"))
    build_index(store, root / "index" / "default", fast, slow, AnnParams(M=8, ef_construction=32, ef_search=32))
    return root


@pytest.fixture(scope="module")
def searcher(ws: Path):
    return Workspace(ws).searcher(device="cpu")


@pytest.fixture(scope="module")
def client(searcher) -> TestClient:
    return TestClient(create_app(searcher), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def guarded(searcher) -> TestClient:
    return TestClient(create_app(searcher, token=TOKEN), raise_server_exceptions=False)


def error_of(response) -> str:
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


# ----------------------------------------------------------------------------- JSON API


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["items"] == 12 and body["rerank"] is True and body["index"] == "default"


def test_search_results_are_search_json_plus_ranks_and_urls(client: TestClient, searcher) -> None:
    response = client.get("/api/search", params={"q": "a red circle", "k": 6, "rerank": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "a red circle" and len(body["results"]) == 6
    expected = [r.to_json() for r in searcher.search("a red circle", k=6, rerank=4)]
    for row, want in zip(body["results"], expected, strict=True):
        assert {k: row[k] for k in want} == want  # the same fields and values as `search --json`
        assert row["key"] == item_key(row["id"]) and row["path"] not in row["thumb_url"] + row["media_url"]
        assert row["thumb_url"] == f"/api/items/{row['key']}/thumb?frame={row['best_frame']}"
        assert row["media_url"] == f"/api/items/{row['key']}/media"
        assert (len(row["frames"]) > 1) == (row["kind"] == "video")
    assert sorted(r["fast_rank"] for r in body["results"][:4]) == [1, 2, 3, 4]


def test_video_result_strip_and_best_frame(client: TestClient, searcher) -> None:
    rows = client.get("/api/search", params={"q": "a dog runs on the beach", "k": 12}).json()["results"]
    video = next(r for r in rows if r["kind"] == "video")
    times = [f["time"] for f in video["frames"]]
    assert times == searcher.index.items["timestamps"][searcher.index.items["id"].index(video["id"])]
    assert times[video["best_frame"]] == video["timestamp"]
    assert [f["title"] for f in video["frames"]] == [f"{t:.1f}s" for t in times]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"q": "a dog", "k": 0}, "k: "),
        ({"q": "a dog", "rerank": -1}, "rerank: "),
        ({"q": "a dog", "alpha": 2}, "alpha: "),
        ({"q": "a dog", "min_score": 1.5}, "min_score: "),
        ({"q": "a dog", "k": "ten"}, "k: "),
        ({"q": ""}, "has no words"),
        ({"q": "?!"}, "has no words"),
        ({}, "q: "),
    ],
)
def test_bad_parameters_are_400_json(client: TestClient, params: dict, needle: str) -> None:
    response = client.get("/api/search", params=params)
    assert response.status_code == 400
    assert needle in error_of(response)


def test_rerank_without_a_slow_model_is_400(ws: Path) -> None:
    fast_only = TestClient(create_app(Workspace(ws).searcher(rerank=False, device="cpu")))
    response = fast_only.get("/api/search", params={"q": "a dog", "rerank": 5})
    assert response.status_code == 400 and "needs a Slow model" in error_of(response)
    assert fast_only.get("/api/health").json()["rerank"] is False


def test_min_score_on_uncalibrated_models_says_how_to_calibrate(client: TestClient) -> None:
    response = client.get("/api/search", params={"q": "a dog", "min_score": 0.5})
    assert response.status_code == 409 and "fastslow calibrate" in error_of(response)


def test_unexpected_failure_is_a_one_line_500_and_logged(searcher, monkeypatch, caplog) -> None:
    app = create_app(searcher)
    monkeypatch.setattr(searcher, "search", lambda *a, **kw: 1 / 0)
    response = TestClient(app, raise_server_exceptions=False).get("/api/search", params={"q": "a dog"})
    assert response.status_code == 500 and "Traceback" not in response.text
    assert error_of(response) == "internal error: ZeroDivisionError (the server log has the details)"
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


# ----------------------------------------------------------------------------- media and safety


def keys_by_kind(searcher) -> dict[str, str]:
    items = searcher.index.items
    return {kind: item_key(next(i for i, k in zip(items["id"], items["kind"]) if k == kind)) for kind in ("image", "video")}


def test_media_is_the_indexed_file_with_ranges(client: TestClient, searcher) -> None:
    items = searcher.index.items
    key, path = item_key(items["id"][2]), Path(items["path"][2])
    whole = client.get(f"/api/items/{key}/media")
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
    part = client.get(f"/api/items/{key}/media", headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == path.read_bytes()[2:6]
    assert part.headers["content-range"] == f"bytes 2-5/{path.stat().st_size}"


def test_items_at_urls_are_indexed_and_played_from_a_fetched_copy(index_kit, tmp_path: Path) -> None:
    """An index of objects (file:// URLs, as after `extract s3://...`): every item is indexed (no
    object is checked one by one), results name the URLs, and the media route fetches the object
    once, then serves ranges from its copy until the object changes; a deleted object is a 404
    saying what to run."""
    root = tmp_path / "ws"
    store = index_kit.make_store(root, count=6, urls=True)
    features = {"fingerprint": store.fingerprint(), "set": "test"}
    for retriever in index_kit.make_models(store):
        save_model(root / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
    fast, slow = (load_native(root / "models" / kind, kind, "cpu") for kind in ("fast", "slow"))
    build_index(store, root / "index" / "default", fast, slow, AnnParams(M=8, ef_construction=32, ef_search=32))
    searcher = Workspace(root).searcher(device="cpu")
    client = TestClient(create_app(searcher), raise_server_exceptions=False)
    rows = client.get("/api/search", params={"q": "a dog", "k": 6}).json()["results"]
    assert len(rows) == 6 and all(r["path"].startswith("file://") and not r["missing"] for r in rows)
    video = next(r for r in rows if r["kind"] == "video")
    source = Path(video["path"].removeprefix("file://"))
    whole = client.get(video["media_url"])
    assert whole.status_code == 200 and whole.content == source.read_bytes()
    part = client.get(video["media_url"], headers={"Range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == whole.content[1:4]
    source.write_bytes(b"replaced after the first fetch")  # never served stale
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert client.get(video["media_url"]).content == b"replaced after the first fetch"
    image = next(r for r in rows if r["kind"] == "image")
    Path(image["path"].removeprefix("file://")).unlink()
    gone = client.get(image["media_url"])
    assert gone.status_code == 404 and "`fastslow extract` over its folder" in error_of(gone)


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/../media",
        "/api/items/%2e%2e/media",
        "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/media",
        "/api/items/..%2F..%2Fetc%2Fpasswd/media",
        "/api/items//etc/passwd/media",
        "/api/items/%2Fetc%2Fpasswd/media",
        "/api/items/0123456789abcdef0123/media",  # well formed, but no item has it
        "/api/items/ZZZZ/thumb",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/app.py",
    ],
)
def test_traversal_and_unknown_keys_are_4xx_json(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert "root:" not in response.text and "create_app" not in response.text
    error_of(response)


def test_symlink_put_at_an_indexed_path_is_not_served(client: TestClient, searcher, tmp_path: Path) -> None:
    items = searcher.index.items
    path = Path(items["path"][0])
    secret = tmp_path / "outside.txt"
    secret.write_text("secret outside the indexed folders")
    original = path.read_bytes()
    path.unlink()
    path.symlink_to(secret)
    try:
        response = client.get(f"/api/items/{item_key(items['id'][0])}/media")
        assert response.status_code == 403 and "symbolic link" in error_of(response)
        assert "secret" not in response.text
    finally:
        path.unlink()
        path.write_bytes(original)


def test_a_folder_symlinked_into_the_path_is_not_served(client: TestClient, searcher, tmp_path: Path) -> None:
    items = searcher.index.items
    path = Path(items["path"][1])
    media, moved = path.parent, path.parent.with_name("media-moved")
    media.rename(moved)
    media.symlink_to(moved)  # same bytes, but reached through a link now
    try:
        response = client.get(f"/api/items/{item_key(items['id'][1])}/media")
        assert response.status_code == 403
    finally:
        media.unlink()
        moved.rename(media)


def test_missing_media_is_404_saying_index_update(client: TestClient, searcher) -> None:
    items = searcher.index.items
    path = Path(items["path"][3])
    original = path.read_bytes()
    path.unlink()
    try:
        response = client.get(f"/api/items/{item_key(items['id'][3])}/media")
        assert response.status_code == 404 and "fastslow index update" in error_of(response)
    finally:
        path.write_bytes(original)


# ----------------------------------------------------------------------------- thumbnails and heat maps


def test_thumbnails_are_the_stored_frames(client: TestClient, searcher) -> None:
    items = searcher.index.items
    label = items["kind"].index("video")
    key = item_key(items["id"][label])
    reader = searcher.thumbnails
    for frame in (None, 0, 2):
        response = client.get(f"/api/items/{key}/thumb", params={} if frame is None else {"frame": frame})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert response.content == reader.get(items["id"][label], frame or 0)
    beyond = client.get(f"/api/items/{key}/thumb", params={"frame": items["frames"][label]})
    assert beyond.status_code == 404 and "frame" in error_of(beyond)


def test_an_item_without_thumbnails_is_404_saying_extract(client: TestClient) -> None:
    response = client.get(f"/api/items/{item_key(NO_THUMBS)}/thumb")
    assert response.status_code == 404 and "run `fastslow extract`" in error_of(response)


def test_heatmap_png_over_the_thumbnail_and_json_grid(client: TestClient, searcher) -> None:
    items = searcher.index.items
    label = items["kind"].index("video")
    key, item_id = item_key(items["id"][label]), items["id"][label]
    grid = client.get(f"/api/items/{key}/heatmap", params={"q": "a red circle", "format": "json"})
    assert grid.status_code == 200
    body = grid.json()
    expected = searcher.heatmap("a red circle", item_id)
    assert body["tokens"] == expected.tokens and body["frames"] == items["frames"][label]
    whole = client.get(f"/api/items/{key}/heatmap", params={"q": "a red circle", "frame": 1})
    word = client.get(f"/api/items/{key}/heatmap", params={"q": "a red circle", "frame": 1, "token_index": 1})
    assert whole.headers["content-type"] == word.headers["content-type"] == "image/png"
    thumb = Image.open(io.BytesIO(searcher.thumbnails.get(item_id, 1)))
    assert Image.open(io.BytesIO(whole.content)).size == thumb.size
    assert whole.content != word.content  # one word's map is not the whole query's
    for params, needle in [({"token_index": 99}, "token_index 99"), ({"frame": 99}, "frame 99"), ({"q": ""}, "no words")]:
        response = client.get(f"/api/items/{key}/heatmap", params={"q": "a red circle", **params})
        assert response.status_code == 400 and needle in error_of(response)
    no_thumb = client.get(f"/api/items/{item_key(NO_THUMBS)}/heatmap", params={"q": "a dog"})
    assert no_thumb.status_code == 404 and "format=json" in error_of(no_thumb)


def test_heatmap_without_a_slow_model_is_400(ws: Path, searcher) -> None:
    fast_only = TestClient(create_app(Workspace(ws).searcher(rerank=False, device="cpu")))
    key = item_key(searcher.index.items["id"][0])
    response = fast_only.get(f"/api/items/{key}/heatmap", params={"q": "a dog"})
    assert response.status_code == 400 and "Slow model" in error_of(response)
    assert "heatmap-toggle" not in fast_only.get("/", params={"q": "a dog"}).text


# ----------------------------------------------------------------------------- token


def test_token_required_on_every_api_call_and_the_page(guarded: TestClient, searcher) -> None:
    key = keys_by_kind(searcher)["image"]
    urls = ["/api/health", "/api/search?q=a+dog", f"/api/items/{key}/media", f"/api/items/{key}/thumb", "/"]
    for url in urls:
        response = guarded.get(url)
        assert response.status_code == 401 and "token" in error_of(response), url
        assert guarded.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        sep = "&" if "?" in url else "?"
        assert guarded.get(f"{url}{sep}token=wrong").status_code == 401
        assert guarded.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 404), url
        assert guarded.get(f"{url}{sep}token={TOKEN}").status_code in (200, 404), url
    assert guarded.get("/static/app.js").status_code == 200  # no secret in the page's own script


def test_page_passes_the_token_on(guarded: TestClient) -> None:
    html = guarded.get("/", params={"q": "a red circle", "token": TOKEN}).text
    assert f'name="token" value="{TOKEN}"' in html
    srcs = re.findall(r'<img class="thumb" src="([^"]+)"', html)
    assert srcs and all(f"token={TOKEN}" in s for s in srcs)
    row = guarded.get("/api/search", params={"q": "a dog"}, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert f"token={TOKEN}" in row["results"][0]["media_url"]


# ----------------------------------------------------------------------------- page


def test_page_has_the_search_form_sliders_and_cards(client: TestClient, searcher) -> None:
    empty = client.get("/")
    assert empty.status_code == 200 and 'id="search-form"' in empty.text and 'id="q"' in empty.text
    assert 'class="result-card"' not in empty.text
    html = client.get("/", params={"q": "a red circle", "k": 5, "rerank": 4}).text
    for needle in ('id="rerank"', 'id="min-score"', 'value="a red circle"', "/static/app.js", "/static/app.css"):
        assert needle in html
    cards = re.findall(r'<article class="result-card" data-rank="(\d+)" data-fast-rank="(\d+)" data-kind="(\w+)"', html)
    expected = searcher.search("a red circle", k=5, rerank=4)
    assert [(int(r), int(f), kind) for r, f, kind in cards] == [(r.rank, r.fast_rank, r.kind) for r in expected]
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from another host
    assert html.count('class="heatmap-toggle"') == html.count('class="heatmap"') == 5
    words = searcher.heatmap("a red circle", expected[0].id).tokens
    assert re.findall(r'<option value="(\d+)">([^<]+)</option>', html)[: len(words)] == [(str(i), w) for i, w in enumerate(words)]
    urls = re.findall(r'data-heatmap-url="([^"]+)"', html)
    assert len(urls) == 5 and all(u.startswith("/api/items/") and "q=a+red+circle" in u for u in urls)
    video = next(r for r in expected if r.kind == "video")
    assert f'data-timestamp="{video.timestamp}"' in html


def test_min_score_slider_needs_calibrated_models_and_cuts(ws: Path) -> None:
    from fastslow_cli.eval.calibration import Calibration

    searcher = Workspace(ws).searcher(device="cpu")
    plain = TestClient(create_app(searcher)).get("/", params={"q": "a dog"}).text
    assert re.search(r'id="min-score"[^>]* disabled title="the models have no calibration: run fastslow calibrate"', plain)
    middle = sorted(r.fast_score for r in searcher.search("a dog", k=12))[6]  # relevance 0.5 there
    searcher.fast.calibration = Calibration(a=50.0, b=-50.0 * middle, input="fast_score", items=12, fit_items=12,
                                            fit_queries=12)
    client = TestClient(create_app(searcher))
    page = client.get("/", params={"q": "a dog", "min_score": 0.5, "k": 12}).text
    assert re.search(r'id="min-score" name="min_score" type="range" min="0" max="1" step="0.05" value="0.5">', page)
    kept = client.get("/api/search", params={"q": "a dog", "k": 12, "min_score": 0.5}).json()["results"]
    every = client.get("/api/search", params={"q": "a dog", "k": 12}).json()["results"]
    assert [r["id"] for r in kept] == [r["id"] for r in every if r["relevance"] >= 0.5]
    assert 0 < len(kept) < len(every) and page.count('class="result-card"') == len(kept)


def test_page_shows_a_bad_query_as_a_message(client: TestClient) -> None:
    response = client.get("/", params={"q": "?!"})
    assert response.status_code == 400 and 'class="error"' in response.text and "has no words" in response.text


def test_static_files_are_served_by_the_app(client: TestClient) -> None:
    assert "currentTime" in client.get("/static/app.js").text
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")


# ----------------------------------------------------------------------------- search --html


def test_search_html_is_one_self_contained_file(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.html"
    ran = run_cli("search", "a red circle", "a dog", "-k", "5", "--rerank", "4", "--html", str(out),
                  env={"FASTSLOW_WORKSPACE": str(ws)})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("a red circle") >= 1  # the table is still printed
    html = out.read_text()
    assert html.count('class="result-card"') == 10 and "<h2>&ldquo;a dog&rdquo;</h2>" in html
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []  # every image, script and style inlined
    assert "currentTime" in html and "result-card" in html.split("<style>")[1]
    assert 'id="search-form"' not in html and 'id="player"' not in html  # no server: nothing to play
    thumbs = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([^"]+)"', html)
    placeholders = re.findall(r'<img class="thumb" src="data:image/svg\+xml;base64,', html)  # NO_THUMBS, if found
    assert len(thumbs) + len(placeholders) == 10 and len(thumbs) >= 9
    heatmaps = [json.loads(unescape(h)) for h in re.findall(r'data-heatmaps="([^"]+)"', html)]
    assert heatmaps and all(set(h) >= {"", "0"} and all(v.startswith("data:image/jpeg;base64,") for v in h.values())
                            for h in heatmaps)
    assert html.count('class="heatmap-toggle"') == len(heatmaps)
    assert str(out) in ran.stderr
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # for sharing: not the temporary file's 0600


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_search_html_to_a_bad_place_is_one_line_before_searching(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for target, code, needle in [(tmp_path / "a-file" / "r.html", 1, "is a file, not a folder"),
                                 (tmp_path, 2, "is a folder: name the page file")]:
        ran = run_cli("search", "a dog", "--html", str(target), env={"FASTSLOW_WORKSPACE": str(ws)})
        assert ran.returncode == code and needle in ran.stderr and "Traceback" not in ran.stderr
        assert ran.stdout == ""  # refused before any search


# ----------------------------------------------------------------------------- the command


def test_serve_refuses_a_public_host_without_a_token(ws: Path) -> None:
    ran = run_cli("serve", "--host", "0.0.0.0", env={"FASTSLOW_WORKSPACE": str(ws)})
    assert ran.returncode == 2 and "add --token SECRET" in ran.stderr and "Traceback" not in ran.stderr


def raw_get(port: int, target: str) -> tuple[int, str]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_serve_command_answers_on_loopback_then_stops_on_ctrl_c(ws: Path) -> None:
    """The real command: uvicorn on a free port, `serving URL` once ready, Ctrl-C stops it cleanly."""
    import signal
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "fastslow_cli", "serve", "-w", str(ws), "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        line = proc.stderr.readline()
        match = re.fullmatch(r"serving (http://127\.0\.0\.1:\d+/)\n", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(match.group(1) + "api/health", timeout=30) as response:
            assert json.load(response)["items"] == 12
        with urllib.request.urlopen(match.group(1) + "?q=a+dog", timeout=30) as response:
            assert b'class="result-card"' in response.read()
        port = int(match.group(1).rsplit(":", 1)[1].strip("/"))
        for raw in ("/static/../app.py", "/static/%2e%2e/app.py", "/api/items/../../../etc/passwd/media"):
            status, body = raw_get(port, raw)  # sent as is: HTTP clients remove `..` segments themselves
            assert status in (400, 404) and "create_app" not in body and "root:" not in body, (raw, status)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "stopped\n"


def test_serve_on_a_public_host_warns(ws: Path, monkeypatch) -> None:
    from fastslow_cli.cli import serving

    served = []
    monkeypatch.setattr(serving, "run_server", lambda app, host, port, say: served.append((host, port)))
    ran = run_cli("serve", "--host", "0.0.0.0", "--token", TOKEN, "--port", "0", env={"FASTSLOW_WORKSPACE": str(ws)})
    assert ran.returncode == 0 and served == [("0.0.0.0", 0)]
    assert "warning: listening on 0.0.0.0, not loopback" in ran.stderr


def test_serve_on_a_busy_port_is_one_line(ws: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        ran = run_cli("serve", "--port", str(busy.getsockname()[1]), env={"FASTSLOW_WORKSPACE": str(ws)})
    assert ran.returncode == 1 and "cannot listen on 127.0.0.1:" in ran.stderr and "choose another --port" in ran.stderr


# ----------------------------------------------------------------------------- imports


def test_cli_import_does_not_load_fastapi() -> None:
    code = "import sys, fastslow_cli, fastslow_cli.cli.app; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.split() == ["False", "False"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/health", "/api/search", "/api/items/{key}/thumb", "/api/items/{key}/media", "/"} <= set(spec["paths"])
    assert json.dumps(spec).count("HTTPValidationError") == 0  # errors are documented as {"error": ...}


# ----------------------------------------------------------------------------- fuzzing


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_fuzzed_from_its_openapi_spec(searcher, mode: GenerationMode) -> None:
    """Generated requests (valid, then invalid) to every route of the spec, 25 per route and
    derandomised (item routes: with random keys, and with a real one): never a 5xx, and every
    answer's status, content type and body are the spec's."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(searcher))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/search", "/api/items/{key}/media", "/api/items/{key}/heatmap"}
    items = searcher.index.items
    video = item_key(items["id"][items["kind"].index("video")])
    runs = [(op, {}) for op in operations] + [(op, {"key": video}) for op in operations if "{key}" in op.path]
    for operation, fixed in runs:  # item routes also with a real key, or they would only meet 404s

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
        @settings(max_examples=25, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def fuzz(case) -> None:
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance])

        fuzz()


def test_fetched_copies_are_dropped_least_recently_used_first(tmp_path: Path) -> None:
    fetched = FetchedMedia(max_bytes=7)
    urls = {}
    for name in "abc":
        (tmp_path / f"{name}.mp4").write_bytes(name.encode() * 3)
        urls[name] = file_url(tmp_path / f"{name}.mp4")
    a, b = fetched.get("a", urls["a"]), fetched.get("b", urls["b"])
    assert fetched.get("a", urls["a"]) == a  # a hit (same size and mtime), and now the most recent
    c = fetched.get("c", urls["c"])  # 9 bytes > 7: b goes
    assert a.read_bytes() == b"aaa" and c.read_bytes() == b"ccc" and not b.exists()
    with pytest.raises(FileNotFoundError):
        fetched.get("d", file_url(tmp_path / "d.mp4"))
    assert sorted(p.name for p in a.parent.iterdir()) == sorted([a.name, c.name])  # no partial copy left


def test_sigterm_stops_the_server_like_ctrl_c(ws: Path) -> None:
    """What a service manager sends: exit 0 and `stopped` (and its temporary files deleted), not killed."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "fastslow_cli", "serve", "-w", str(ws), "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert proc.stderr.readline().startswith("serving http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "stopped\n"
