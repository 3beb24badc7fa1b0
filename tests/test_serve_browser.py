"""`fastslow serve`'s page and `search --html`'s export in a real browser (Debian's chromium
through Playwright): results load with their images, re-ranking shows the Fast ranks,
heat maps overlay a card (whole query or one word), a video result plays from its
moment, the export works with the network off (heat maps included).

The server is the real `fastslow serve` in a subprocess over `served_workspace` (real
synthetic images and H.264 clips, random-init models). Screenshots land in each test's
tmp dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, serving

pytestmark = pytest.mark.slow

QUERY = "a red circle moving left"
VIEWPORT = {"width": 1400, "height": 2400}  # tall enough that every lazy-loaded card is on screen


@pytest.fixture(scope="module")
def server(served_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(served_workspace, tmp_path_factory.mktemp("serve_log") / "stderr.txt") as url:
        yield url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def search(page: Any, url: str, query: str) -> None:
    """Type `query` into the search box and submit it as a user does."""
    page.goto(url)
    page.fill("#q", query)
    with page.expect_navigation():
        page.press("#q", "Enter")


def cards(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(".result-card", """cards => cards.map(c => ({
        rank: Number(c.dataset.rank), fast_rank: Number(c.dataset.fastRank), kind: c.dataset.kind,
        key: c.dataset.key, timestamp: c.dataset.timestamp}))""")


def wait_images_loaded(page: Any, selector: str) -> None:
    """Every image under `selector` finished loading with pixels (naturalWidth > 0)."""
    page.wait_for_function(
        f"""() => {{ const imgs = [...document.querySelectorAll({selector!r})];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }}""", timeout=30_000)


def test_query_shows_cards_with_their_thumbnails_and_frame_strips(page: Any, server: str, tmp_path: Path) -> None:
    search(page, server, QUERY)
    shown = cards(page)
    health = page.request.get(server + "api/health").json()
    assert len(shown) == health["items"] == 15  # k=24 over 15 items: all of them, in rank order
    assert [c["rank"] for c in shown] == list(range(1, 16))
    assert {c["kind"] for c in shown} == {"image", "video"}
    wait_images_loaded(page, ".result-card img.thumb")
    wait_images_loaded(page, ".result-card .frames img")
    overlays = page.query_selector_all(".result-card img.heatmap")
    assert overlays and not any(o.is_visible() for o in overlays), "a heat-map overlay hides a thumbnail before its toggle"
    for video in page.query_selector_all(".result-card[data-kind=video]"):
        titles = video.eval_on_selector_all(".frames img", "imgs => imgs.map(i => i.title)")
        assert len(titles) > 1 and all(t.endswith("s") for t in titles), titles  # each sampled frame with its time
    page.screenshot(path=tmp_path / "results.png", full_page=True)


def test_rerank_slider_shows_fast_ranks_the_api_agrees_with(page: Any, server: str, tmp_path: Path) -> None:
    search(page, server, QUERY)
    with page.expect_navigation():  # the slider re-runs the search on change
        page.eval_on_selector("#rerank", "s => { s.value = 10; s.dispatchEvent(new Event('change')); }")
    assert page.input_value("#rerank") == "10"
    shown = cards(page)
    api = page.request.get(server + "api/search", params={"q": QUERY, "k": 24, "rerank": 10}).json()["results"]
    assert [(c["key"], c["rank"], c["fast_rank"]) for c in shown] == [(r["key"], r["rank"], r["fast_rank"]) for r in api]
    top = shown[:10]  # re-ranking permutes the Fast top 10 and leaves the rest in Fast order
    assert sorted(c["fast_rank"] for c in top) == list(range(1, 11))
    assert any(c["fast_rank"] != c["rank"] for c in top), "the Slow model moved nothing: the test shows nothing"
    assert all(c["fast_rank"] == c["rank"] for c in shown[10:])
    moved = page.inner_text(".result-card .moved")
    assert moved.startswith(f"Fast {top[0]['fast_rank']}"), moved
    wait_images_loaded(page, ".result-card img.thumb")
    page.screenshot(path=tmp_path / "reranked.png", full_page=True)


def show_heatmap(page: Any, card: str) -> str:
    """Toggle `card`'s heat map on; the overlay's source once it loaded."""
    page.click(f"{card} button.heatmap-toggle")
    assert page.get_attribute(f"{card} button.heatmap-toggle", "aria-pressed") == "true"
    wait_images_loaded(page, f"{card} img.heatmap")
    assert page.is_visible(f"{card} img.heatmap")
    return page.get_attribute(f"{card} img.heatmap", "src")


def test_heatmap_toggle_overlays_the_whole_query_then_one_word(page: Any, server: str, tmp_path: Path) -> None:
    search(page, server, QUERY)
    with page.expect_navigation():
        page.eval_on_selector("#rerank", "s => { s.value = 10; s.dispatchEvent(new Event('change')); }")
    first = ".result-card[data-rank='1']"
    assert page.is_hidden(f"{first} img.heatmap")
    with page.expect_response(lambda r: "/heatmap" in r.url) as answer:
        whole = show_heatmap(page, first)
    assert answer.value.status == 200 and answer.value.headers["content-type"] == "image/png"
    words = page.eval_on_selector_all(f"{first} select.heatmap-word option", "os => os.map(o => o.textContent)")
    assert words[0] == "whole query" and "red" in words  # one option per query word
    with page.expect_response(lambda r: "/heatmap" in r.url) as answer:
        page.select_option(f"{first} select.heatmap-word", label="red")
    assert answer.value.status == 200
    wait_images_loaded(page, f"{first} img.heatmap")
    assert page.get_attribute(f"{first} img.heatmap", "src") != whole
    page.screenshot(path=tmp_path / "heatmap.png", full_page=True)
    page.click(f"{first} button.heatmap-toggle")
    assert page.is_hidden(f"{first} img.heatmap")


def test_clicking_a_video_plays_it_from_its_moment(page: Any, server: str, tmp_path: Path) -> None:
    search(page, server, QUERY)
    wait_images_loaded(page, ".result-card img.thumb")
    video = next(c for c in cards(page) if c["kind"] == "video" and float(c["timestamp"]) > 0)
    moment = float(video["timestamp"])
    page.click(f".result-card[data-key='{video['key']}'] img.thumb")
    page.wait_for_function(
        "() => { const v = document.getElementById('player'); return v.readyState >= 2 && !v.seeking && v.currentTime > 0; }",
        timeout=30_000)
    state = page.eval_on_selector("#player", "v => ({time: v.currentTime, error: v.error && v.error.code, "
                                             "open: document.getElementById('viewer').open})")
    assert state["error"] is None and state["open"]
    assert moment - 0.05 <= state["time"] <= moment + 1.0, (moment, state)  # from the moment on (it may play a little)
    page.screenshot(path=tmp_path / "player.png")


def test_saved_results_open_offline_with_inlined_images(
        browser: Any, served_workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.html"
    ran = run_cli("search", "-w", str(served_workspace), QUERY, "--rerank", "5", "--html", str(out))
    assert ran.returncode == 0, ran.stderr[-2000:]
    context = browser.new_context(viewport=VIEWPORT)
    context.set_offline(True)
    refused: list[str] = []

    def only_files(route: Any) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    try:
        page.goto(out.as_uri())
        shown = cards(page)
        assert len(shown) == 10 and [c["rank"] for c in shown] == list(range(1, 11))  # search's default k
        pictures = ".result-card img.thumb, .result-card .frames img"
        wait_images_loaded(page, pictures)
        sources = page.eval_on_selector_all(pictures, "imgs => imgs.map(i => i.src)")
        assert all(s.startswith("data:image/") for s in sources)
        inline = show_heatmap(page, ".result-card[data-rank='1']")
        assert inline.startswith("data:image/")
        assert refused == [], f"the export asked the network for {refused}"
        page.screenshot(path=tmp_path / "offline.png", full_page=True)
    finally:
        context.close()
