"""`extract` end to end: good files land, bad ones are reported, runs resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_set, file_url, run_cli

from fastslow_cli.features.extract import ExtractOptions, run_extract
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.workspace import Workspace


def _extract(paths: list[Path], ws: Path, progress=None, **kw: object):
    return run_extract([str(p) for p in paths], Workspace(ws), ExtractOptions(**kw), progress=progress)


def _id(path: Path) -> str:
    """Item ids are resolved absolute POSIX paths."""
    return path.resolve().as_posix()


def test_good_files_land_bad_ones_reported(media_dir: Path, good_media: dict, broken_media: dict, tmp_path: Path) -> None:
    summary = _extract([media_dir], tmp_path / "ws", frames=4)
    store = FeatureStore(tmp_path / "ws" / "features" / "default")
    entries = store.entries()
    good_ids = {_id(p) for p in good_media.values()}
    bad_ids = {_id(p) for p in broken_media.values()}
    assert good_ids <= set(entries)
    assert not bad_ids & set(entries)
    assert {f["id"] for f in summary.failed} == bad_ids
    assert summary.extracted == len(entries)
    logged = {e["id"] for e in store.errors()}
    assert logged == bad_ids
    assert all(e["reason"] for e in store.errors())
    table = store.load()
    for i, kind in enumerate(table.kinds):
        assert table.frames[i] == (1 if kind == "image" else min(4, table.frames[i]))
        assert np.isfinite(table.levels[0][i, : table.frames[i]].astype(np.float32)).all()


def test_rerun_skips_and_rename_reuses(tmp_path: Path, make_clip, good_media: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "a.png")
    make_clip(src / "clip.mp4")
    ws = tmp_path / "ws"
    first = _extract([src], ws)
    assert (first.extracted, first.skipped_existing) == (2, 0)
    second = _extract([src], ws)
    assert (second.extracted, second.skipped_existing, second.reused) == (0, 2, 0)
    store = FeatureStore(ws / "features" / "default")
    before = store.load([_id(src / "clip.mp4")])
    (src / "clip.mp4").rename(src / "moved.mp4")
    third = _extract([src], ws)
    assert (third.extracted, third.reused, third.skipped_existing, third.removed) == (0, 1, 1, 1)
    assert set(store.entries()) == {_id(src / "a.png"), _id(src / "moved.mp4")}  # the old id is gone
    after = store.load([_id(src / "moved.mp4")])
    for old, new in zip(before.levels, after.levels):
        assert np.array_equal(old, new)


def test_changed_file_is_extracted_again(tmp_path: Path, good_media: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "x.png")
    ws = tmp_path / "ws"
    _extract([src], ws)
    before = FeatureStore(ws / "features" / "default").load([_id(src / "x.png")]).levels[0].copy()
    shutil.copy(good_media["jpeg"], src / "x.png")  # new content, same name
    os.utime(src / "x.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = _extract([src], ws)
    assert summary.extracted == 1
    after = FeatureStore(ws / "features" / "default").load([_id(src / "x.png")]).levels[0]
    assert not np.array_equal(before, after)
    assert len(FeatureStore(ws / "features" / "default").entries()) == 1


def test_incompatible_options_refused(tmp_path: Path, good_media: dict) -> None:
    from fastslow_cli.errors import FastslowError

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "a.png")
    _extract([src], tmp_path / "ws")
    with pytest.raises(FastslowError, match="--set"):
        _extract([src], tmp_path / "ws", size=32)


BLOCKING_DECODER = """
import time
from fastslow_cli.media.decode import decode

def decode_or_block(item, size, frames, decoder):
    while item.name.startswith("zz-block"):  # a decode that never ends
        time.sleep(0.5)
    return decode(item, size, frames, decoder)
"""

KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import blocking_decoder
import fastslow_cli.features.extract as extract_mod
from fastslow_cli.workspace import Workspace

real_pool = extract_mod.DecodePool
extract_mod.DecodePool = lambda **kw: real_pool(decode_fn=blocking_decoder.decode_or_block, **kw)
if __name__ == "__main__":
    extract_mod.run_extract([sys.argv[1]], Workspace(Path(sys.argv[2])), extract_mod.ExtractOptions(workers=1))
"""


def test_kill_9_keeps_the_items_flushed_on_time(tmp_path: Path, good_media: dict) -> None:
    """Six images, then a file whose decode never ends: with the default options the six
    reach a part within FLUSH_SECONDS although no further result arrives; `kill -9` then
    keeps them, and a rerun completes the set with no duplicate."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"img{i}.png").write_bytes(good_media["png"].read_bytes() + bytes([i]))  # distinct hashes
    shutil.copy(good_media["jpeg"], src / "zz-block.jpg")
    (tmp_path / "blocking_decoder.py").write_text(BLOCKING_DECODER)
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    ws = tmp_path / "ws"
    parts = ws / "features" / "default" / "parts"
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(ws), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not list(parts.glob("part-*.parquet")):  # the observable condition: a part landed
            assert proc.poll() is None, "extract ended before the blocking file"
            assert time.monotonic() < deadline, "no part within 60 s: rows are not flushed on time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = FeatureStore(ws / "features" / "default").entries()
    assert set(kept) == {_id(src / f"img{i}.png") for i in range(6)}
    summary = _extract([src], ws)
    assert (summary.skipped_existing, summary.extracted) == (6, 1)
    ids = pq.read_table(parts, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 7  # no duplicates, nothing lost


def test_decoder_crash_costs_one_file(tmp_path: Path, good_media: dict, monkeypatch) -> None:
    """A decoder that kills its process on one file: the run goes on and stores the rest."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(good_media["png"], src / f"{name}.png")
    Path(src / "crash.png").write_bytes((src / "a.png").read_bytes() + b"!")  # distinct content
    import fastslow_cli.features.extract as extract_mod

    real_pool = extract_mod.DecodePool

    def crashing_pool(**kw):
        return real_pool(decode_fn=_crash_on_name, **kw)

    monkeypatch.setattr(extract_mod, "DecodePool", crashing_pool)
    summary = _extract([src], tmp_path / "ws")
    assert summary.extracted == 3
    assert [f["id"] for f in summary.failed] == [_id(src / "crash.png")]
    assert "crash" in summary.failed[0]["reason"].lower()


def _crash_on_name(item, size, frames, decoder):
    from fastslow_cli.media.decode import decode

    if "crash" in item.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode(item, size, frames, decoder)


def test_cli_extract_json_and_exit_codes(tmp_path: Path, good_media: dict, broken_media: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "ok.png")
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(tmp_path / "ws")}
    ok = subprocess.run([sys.executable, "-m", "fastslow_cli", "extract", str(src), "--json"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["extracted"] == 1
    shutil.copy(broken_media["text_as_mp4"], src / "bad.mp4")
    partial = subprocess.run([sys.executable, "-m", "fastslow_cli", "extract", str(src), "--json"], capture_output=True, text=True, env=env)
    assert partial.returncode == 3
    out = json.loads(partial.stdout)
    assert (out["skipped_existing"], out["failed"], out["removed"]) == (1, 1, 0)
    assert out["dataset"] == str((tmp_path / "ws" / "features" / "default" / "parts").resolve())
    assert "Traceback" not in partial.stderr and "bad.mp4" in partial.stderr


def test_two_roots_with_the_same_file_name_give_two_items(tmp_path: Path, good_media: dict) -> None:
    for name, source in (("a", "png"), ("b", "jpeg")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        shutil.copy(good_media[source], tmp_path / "photos" / name / "x.png")
    ws = tmp_path / "ws"
    _extract([tmp_path / "photos" / "a"], ws)
    second = _extract([tmp_path / "photos" / "b"], ws)
    assert (second.extracted, second.removed) == (1, 0)  # photos/a is outside this root: left alone
    entries = FeatureStore(ws / "features" / "default").entries()
    assert set(entries) == {_id(tmp_path / "photos" / n / "x.png") for n in ("a", "b")}
    assert all(item_id == e.path for item_id, e in entries.items())
    again = _extract([tmp_path / "photos"], ws)  # the parent root: the same two ids
    assert (again.skipped_existing, again.extracted, again.removed) == (2, 0, 0)


def test_edit_delete_and_move_then_reextract_leaves_exactly_the_live_rows(
    tmp_path: Path, good_media: dict, make_clip, plain_reads
) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    shutil.copy(good_media["png"], src / "edit.png")
    shutil.copy(good_media["jpeg"], src / "delete.jpg")
    make_clip(src / "move.mp4")
    shutil.copy(good_media["png"], other / "outside.png")
    ws = tmp_path / "ws"
    store = FeatureStore(ws / "features" / "default")
    _extract([src], ws)
    _extract([other], ws)
    old_edit = store.entries()[_id(src / "edit.png")]

    (src / "edit.png").write_bytes(good_media["gif"].read_bytes())  # new content, same name
    os.utime(src / "edit.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    (src / "delete.jpg").unlink()
    (src / "sub").mkdir()
    (src / "move.mp4").rename(src / "sub" / "moved.mp4")
    (other / "outside.png").unlink()  # gone too, but `other` is not scanned this time
    summary = _extract([src], ws)
    assert (summary.extracted, summary.reused, summary.removed, summary.skipped_existing) == (1, 1, 2, 0)

    live = {_id(src / "edit.png"), _id(src / "sub" / "moved.mp4"), _id(other / "outside.png")}
    entries = store.entries()
    assert set(entries) == live
    new_edit = entries[_id(src / "edit.png")]
    assert (new_edit.size, new_edit.content_hash) != (old_edit.size, old_edit.content_hash)
    assert entries[_id(src / "sub" / "moved.mp4")].kind == "video"
    for reader, ids in plain_reads(store.parts_dir).items():
        assert sorted(ids) == sorted(live), reader  # one row per live item, in every reader
    assert sorted(store.load().ids) == sorted(live)


def test_progress_events_and_no_printing(tmp_path: Path, good_media: dict, broken_media: dict, capfd) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "ok.png")
    shutil.copy(broken_media["text_as_mp4"], src / "bad.mp4")
    events: list[dict] = []
    _extract([src], tmp_path / "ws", progress=events.append)
    assert events[0] == {"event": "start", "stage": "extract default", "total": 2}
    assert sum(e["n"] for e in events if e["event"] == "advance") == 2
    failed = [e for e in events if e["event"] == "failed"]
    assert [e["path"] for e in failed] == [str(_id(src / "bad.mp4"))] and failed[0]["reason"]
    assert capfd.readouterr() == ("", "")  # the core never prints


def test_content_decides_the_kind_not_the_extension(tmp_path: Path, good_media: dict, make_clip) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_clip(tmp_path / "clip.mp4").rename(src / "clip.jpg")  # an MP4 named .jpg
    shutil.copy(good_media["png"], src / "still.mp4")  # a PNG named .mp4
    summary = _extract([src], tmp_path / "ws", frames=4)
    assert summary.extracted == 2 and not summary.failed
    table = FeatureStore(tmp_path / "ws" / "features" / "default").load([_id(src / "clip.jpg"), _id(src / "still.mp4")])
    assert table.kinds == ["video", "image"]
    assert table.frames.tolist() == [4, 1]


def test_a_url_root_gives_the_features_of_its_path(media_dir: Path, tmp_path: Path) -> None:
    """The same media read as file:// objects (through pyarrow.fs, fetched by each decoder):
    the same rows bit for bit, thumbnails and failures, under URL ids."""
    by_path = _extract([media_dir], tmp_path / "a", frames=4)
    by_url = run_extract([file_url(media_dir)], Workspace(tmp_path / "b"), ExtractOptions(frames=4))
    a, b = (FeatureStore(tmp_path / w / "features" / "default") for w in ("a", "b"))
    assert (by_url.found, by_url.extracted) == (by_path.found, by_path.extracted) and by_path.extracted >= 10
    ea, eb = a.entries(), b.entries()
    assert sorted(eb) == sorted("file://" + i for i in ea)  # café clip ü.mp4 included, as written
    assert all(e.path == e.id for e in eb.values())
    assert_same_set(a.directory, b.directory, prefix="file://")  # every column, levels as raw bits, thumbnails, errors


def test_url_items_resume_reuse_renames_and_drop_deletes(tmp_path: Path, good_media: dict) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, key in {"a.png": "png", "sub/c.jpg": "jpeg", "clip.mp4": "short_clip"}.items():
        shutil.copy(good_media[key], src / name)
    ws = tmp_path / "ws"

    def run() -> Any:
        return run_extract([file_url(src)], Workspace(ws), ExtractOptions())

    first = run()
    assert (first.extracted, first.skipped_existing) == (3, 0)
    assert (run().extracted, run().skipped_existing) == (0, 3)
    (src / "a.png").rename(src / "b.png")
    (src / "sub" / "c.jpg").unlink()
    third = run()
    assert (third.extracted, third.reused, third.removed, third.skipped_existing) == (0, 1, 2, 1)
    assert sorted(FeatureStore(ws / "features" / "default").entries()) == [
        file_url(src / "b.png"), file_url(src / "clip.mp4")]


def test_cli_extract_takes_urls_and_refuses_a_url_workspace(tmp_path: Path, good_media: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "a.png")
    out = run_cli("extract", file_url(src), "-w", str(tmp_path / "ws"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["extracted"] == 1
    refused = run_cli("extract", str(src), "-w", "s3://bucket/ws")
    assert refused.returncode == 2 and "a workspace is a folder, not a URL" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
