"""store/published.py: a feature set published at a URL (file:// through pyarrow.fs) reads back
row for row, publishing again uploads only what changed, and the copy is read-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import file_url, run_cli
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.store.published import PublishedFeatures, publish


def assert_same_rows(store: FeatureStore, copy: PublishedFeatures) -> None:
    assert copy.fingerprint() == store.fingerprint()
    assert copy.entries() == store.entries()
    a, b = store.load(), copy.load()
    assert (a.ids, a.paths, a.kinds, a.timestamps) == (b.ids, b.paths, b.kinds, b.timestamps)
    assert (a.frames == b.frames).all() and all(x.tobytes() == y.tobytes() for x, y in zip(a.levels, b.levels))


def test_a_published_set_reads_back_row_for_row(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=12)
    store.record_error("bad.mp4", "/media/bad.mp4", "empty file", ["pillow: empty file"])
    url = file_url(tmp_path / "bucket" / "features" / "test")
    summary = publish(store, url + "/")
    assert (summary.parts, summary.uploaded, summary.deleted) == (1, 1, 0) and summary.bytes > 0
    copy = PublishedFeatures(url)
    assert_same_rows(store, copy)
    some = sorted(store.entries())[3:7][::-1]
    assert copy.load(some).ids == some and all(
        x.tobytes() == y.tobytes() for x, y in zip(store.load(some).levels, copy.load(some).levels))
    assert [e["id"] for e in copy.errors()] == ["bad.mp4"]
    manifest = json.loads((tmp_path / "bucket" / "features" / "test" / "manifest.json").read_text())
    assert manifest["parts"] == [p.name for p in store.parts()] and manifest["published_from"] == str(store.directory)


def test_publishing_again_uploads_only_new_parts_and_deletes_replaced_ones(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=9)
    url = file_url(tmp_path / "copy")
    publish(store, url)
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(3, first=9), seed=1)
    index_kit.edit_item(store, tmp_path / "media", "item000.png", like="item001.png")
    again = publish(store, url)
    assert (again.parts, again.uploaded, again.deleted) == (3, 2, 0)
    assert_same_rows(store, PublishedFeatures(url))
    before = {p.name for p in store.parts()}
    store.compact(["item004.png"])  # a new part replaces the parts holding superseded or removed rows
    after = {p.name for p in store.parts()}
    third = publish(store, url)
    assert (third.parts, third.uploaded, third.deleted) == (len(after), len(after - before), len(before - after))
    assert third.deleted >= 1
    assert sorted(p.name for p in (tmp_path / "copy" / "parts").iterdir()) == [p.name for p in store.parts()]
    assert_same_rows(store, PublishedFeatures(url))
    assert publish(store, url).uploaded == 0


def test_any_parquet_reader_opens_the_copy(index_kit, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    store = index_kit.make_store(tmp_path, count=8)
    publish(store, file_url(tmp_path / "copy"))
    rows = duckdb.sql(f"select id, kind from read_parquet('{tmp_path}/copy/parts/*.parquet') order by id").fetchall()
    assert rows == sorted((e.id, e.kind) for e in store.entries().values())


def test_the_copy_is_read_only_and_errors_are_one_line(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=4)
    with pytest.raises(UsageError, match="give a URL"):
        publish(store, str(tmp_path / "copy"))
    with pytest.raises(FastslowError, match="no published feature set at .*--publish"):
        PublishedFeatures(file_url(tmp_path / "nothing")).manifest()
    publish(store, file_url(tmp_path / "copy"))
    copy = PublishedFeatures(file_url(tmp_path / "copy"))
    with pytest.raises(UsageError, match="read-only"):
        copy.append([])
    with pytest.raises(UsageError, match="read-only"):
        copy.lock()


def test_cli_extract_publishes_after_the_run(tmp_path: Path, good_media: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(good_media["png"].read_bytes())
    url = file_url(tmp_path / "copy")
    out = run_cli("extract", str(src), "-w", str(tmp_path / "ws"), "--publish", url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["published"] == {"url": url, "parts": 1, "uploaded": 1, "deleted": 0,
                                                    "bytes": json.loads(out.stdout)["published"]["bytes"]}
    assert f"published to {url}" in out.stderr
    assert PublishedFeatures(url).entries() == FeatureStore(tmp_path / "ws" / "features" / "default").entries()
    bad = run_cli("extract", str(src), "-w", str(tmp_path / "ws"), "--publish", str(tmp_path / "plain"))
    assert bad.returncode == 2 and "give a URL" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
