"""Thumbnails: written at extract time from the decoded frames, keyed by content, following
edits, renames and removals; filled in for stores extracted before they existed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fastslow_cli.features.extract import ExtractOptions, run_extract
from fastslow_cli.media.decode import THUMB_SIZE
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.store.thumbs import FOLDER, Thumbnails
from fastslow_cli.workspace import Workspace


def _extract(src: Path, ws: Path, **kw: object):
    return run_extract([str(src)], Workspace(ws), ExtractOptions(frames=4, workers=1, **kw))


def _image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _jpegs(ws: Path) -> list[Path]:
    return sorted((ws / "features" / "default" / FOLDER).rglob("*.jpg"))


def _media(tmp_path: Path, make_clip) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    big = np.zeros((400, 600, 3), np.uint8)
    big[:, :300] = (230, 20, 20)  # left half red
    Image.fromarray(big).save(src / "wide.png")
    Image.fromarray(np.full((40, 30, 3), (20, 200, 20), np.uint8)).save(src / "small.jpg", quality=95)
    make_clip(src / "clip.mp4")
    return src


def test_extract_writes_a_thumbnail_per_image_and_frame(tmp_path: Path, make_clip) -> None:
    src = _media(tmp_path, make_clip)
    ws = tmp_path / "ws"
    _extract(src, ws)
    thumbs = Thumbnails(ws / "features" / "default")
    assert thumbs.mime == "image/jpeg"
    wide = _image(thumbs.get((src / "wide.png").resolve().as_posix()))
    assert wide.format == "JPEG" and wide.size == (THUMB_SIZE, round(THUMB_SIZE * 400 / 600))  # aspect kept
    left, right = np.asarray(wide.convert("RGB"))[:, [10, -10]].mean(axis=0)
    assert left[0] > 180 and right[0] < 60  # the picture itself, not a blank
    small = _image(thumbs.get((src / "small.jpg").resolve().as_posix()))
    assert small.size == (30, 40)  # never enlarged
    clip = (src / "clip.mp4").resolve().as_posix()
    assert thumbs.count(clip) == 4
    assert all(_image(thumbs.get(clip, f)).format == "JPEG" for f in range(4))
    assert thumbs.get(clip, 4) is None and thumbs.get("no-such-item") is None and thumbs.count("no-such-item") == 0


def test_thumbnails_follow_edits_renames_and_removals(tmp_path: Path, make_clip) -> None:
    src = _media(tmp_path, make_clip)
    ws = tmp_path / "ws"
    _extract(src, ws)
    thumbs = Thumbnails(ws / "features" / "default")  # one reader across runs, like a server
    wide = (src / "wide.png").resolve().as_posix()
    before = thumbs.get(wide)
    files = len(_jpegs(ws))
    assert files == 1 + 1 + 4

    Image.fromarray(np.full((400, 600, 3), (20, 20, 230), np.uint8)).save(src / "wide.png")  # edited: now blue
    _extract(src, ws)
    after = thumbs.get(wide)
    assert after != before and np.asarray(_image(after).convert("RGB"))[..., 2].mean() > 180
    assert len(_jpegs(ws)) == files  # the old content's thumbnail is gone

    shutil.move(src / "small.jpg", src / "renamed.jpg")
    summary = _extract(src, ws)
    assert summary.reused == 1
    assert thumbs.get((src / "renamed.jpg").resolve().as_posix()) is not None
    assert thumbs.get((src / "small.jpg").resolve().as_posix()) is None

    (src / "clip.mp4").unlink()
    _extract(src, ws)
    assert thumbs.count((src / "clip.mp4").resolve().as_posix()) == 0
    assert len(_jpegs(ws)) == 2


def test_a_store_without_thumbnails_gets_them_on_the_next_extract(tmp_path: Path, make_clip) -> None:
    src = _media(tmp_path, make_clip)
    ws = tmp_path / "ws"
    first = _extract(src, ws, thumbnails=False)
    assert first.extracted == 3 and first.thumbnailed == 0 and _jpegs(ws) == []
    parts = FeatureStore(ws / "features" / "default").parts()
    second = _extract(src, ws)
    assert (second.extracted, second.skipped_existing, second.thumbnailed) == (0, 3, 3)
    assert FeatureStore(ws / "features" / "default").parts() == parts  # features untouched
    assert len(_jpegs(ws)) == 6
    assert _extract(src, ws).thumbnailed == 0  # nothing left to do
    wide = (src / "wide.png").resolve().as_posix()
    thumb = next(f for f in _jpegs(ws) if f.read_bytes() == Thumbnails(ws / "features" / "default").get(wide))
    thumb.write_bytes(b"")  # as a power cut may leave a file that was renamed but not yet written
    assert Thumbnails(ws / "features" / "default").get(wide) is None
    assert _extract(src, ws).thumbnailed == 1 and thumb.stat().st_size > 0


def test_fill_thumbnails_as_index_update_runs_it_and_failures_are_not_retried(tmp_path: Path, make_clip) -> None:
    from fastslow_cli.features.extract import fill_thumbnails

    src = _media(tmp_path, make_clip)
    ws = tmp_path / "ws"
    _extract(src, ws, thumbnails=False)
    (src / "small.jpg").write_bytes(b"no longer a picture")  # stored, but its file cannot be decoded now
    store = FeatureStore(ws / "features" / "default")
    events: list[dict] = []
    with store.lock():
        assert fill_thumbnails(store, workers=1, progress=events.append) == 2
    assert [e["path"] for e in events if e["event"] == "warning"] == [str((src / "small.jpg").resolve())]
    assert Thumbnails(store.directory).get((src / "small.jpg").resolve().as_posix()) is None
    events.clear()
    with store.lock():
        assert fill_thumbnails(store, workers=1, progress=events.append) == 0  # the failure is remembered
    assert events == []
