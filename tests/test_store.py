"""The Parquet feature store: round trip, append-only parts, supersession, crashes, locking,
and files that plain pyarrow can read without fastslow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastslow_cli.store import parquet as store_module
from fastslow_cli.errors import FastslowError
from fastslow_cli.store.parquet import FeatureRow, FeatureStore

SHAPES = [(4, 4, 3), (2, 2, 5)]
SPEC = {"name": "test-backbone", "input_size": 16}
FRAMES = 8


def make_row(item_id: str, kind: str = "image", seed: int = 0, frames: int | None = None) -> FeatureRow:
    """A row whose feature values are random float16 bit patterns (NaN, inf, subnormals too)."""
    t = frames if frames is not None else (1 if kind == "image" else FRAMES)
    rng = np.random.default_rng(seed)
    levels = [rng.integers(0, 1 << 16, size=(t, *s), dtype=np.uint16).view(np.float16) for s in SHAPES]
    return FeatureRow(
        id=item_id, path=f"/media/{item_id}", kind=kind, frames=t,
        timestamps=[0.0] if kind == "image" else [0.25 + 0.5 * k for k in range(t)],
        size=100 + seed, mtime_ns=10**18 + seed, content_hash=f"hash{seed}", levels=levels,
    )


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16)


@pytest.fixture()
def fstore(tmp_path: Path) -> FeatureStore:
    s = FeatureStore(tmp_path / "features" / "default")
    s.ensure(SPEC, SHAPES, FRAMES)
    return s


def test_round_trip_is_bit_exact(fstore: FeatureStore) -> None:
    rows = [make_row("b.png", seed=1), make_row("a.mp4", "video", seed=2), make_row("c d é.jpg", seed=3)]
    fstore.append(rows)
    table = FeatureStore(fstore.directory).load([r.id for r in rows])
    assert table.ids == [r.id for r in rows]
    assert table.paths == [r.path for r in rows] and table.kinds == [r.kind for r in rows]
    assert table.frames.tolist() == [1, FRAMES, 1]
    assert table.timestamps == [r.timestamps for r in rows]
    for n, row in enumerate(rows):
        for level, expected in zip(table.levels, row.levels):
            assert level.dtype == np.float16
            assert np.array_equal(bits(level[n, : row.frames]), bits(expected))
    # default order: every item, sorted by id
    assert FeatureStore(fstore.directory).load().ids == sorted(r.id for r in rows)


def test_padding_and_mask_for_images_and_videos(fstore: FeatureStore) -> None:
    fstore.append([make_row("img.png", seed=1), make_row("vid.mp4", "video", seed=2),
                   make_row("short.mp4", "video", seed=3, frames=3)])
    table = fstore.load(["img.png", "vid.mp4", "short.mp4"])
    assert [level.shape for level in table.levels] == [(3, FRAMES, *s) for s in SHAPES]
    assert table.frame_mask.tolist() == [[True] + [False] * 7, [True] * 8, [True] * 3 + [False] * 5]
    assert not table.levels[0][0, 1:].any() and not table.levels[1][2, 3:].any()
    images = table.subset([0])
    assert images.levels[0].shape == (1, 1, *SHAPES[0])  # padding trimmed to the subset
    assert images.frame_mask.tolist() == [[True]]
    again = table.subset([2, 1])
    assert again.ids == ["short.mp4", "vid.mp4"] and again.levels[1].shape[1] == FRAMES
    assert np.array_equal(bits(again.levels[1][1]), bits(table.levels[1][1]))


def test_append_never_rewrites_old_parts(fstore: FeatureStore) -> None:
    first = fstore.append([make_row("a.png", seed=1)])
    before = first.read_bytes()
    second = fstore.append([make_row("b.png", seed=2)])
    assert (first.name, second.name) == ("part-00000.parquet", "part-00001.parquet")
    assert first.read_bytes() == before
    manifest = fstore.manifest()
    assert manifest["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert manifest["counts"] == {"items": 2, "images": 2, "videos": 0, "parts": 2}


def test_later_part_supersedes_same_id(fstore: FeatureStore) -> None:
    fstore.append([make_row("a.png", seed=1), make_row("b.png", seed=2)])
    fstore.append([make_row("a.png", "video", seed=9)])
    reader = FeatureStore(fstore.directory)
    entries = reader.entries()
    assert set(entries) == {"a.png", "b.png"}
    assert entries["a.png"].size == 109 and entries["a.png"].kind == "video"
    table = reader.load(["a.png"])
    assert np.array_equal(bits(table.levels[0][0]), bits(make_row("a.png", "video", seed=9).levels[0]))
    assert reader.manifest()["counts"]["items"] == 2


def test_entries_do_not_read_feature_columns(fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fstore.append([make_row("a.png", seed=1)])
    asked: list[list[str] | None] = []
    real = pq.read_table

    def spy(source, columns=None, **kwargs):  # noqa: ANN001, ANN202 - mirrors pyarrow
        asked.append(columns)
        return real(source, columns=columns, **kwargs)

    monkeypatch.setattr(store_module.pq, "read_table", spy)
    entry = FeatureStore(fstore.directory).entries()["a.png"]
    assert entry == store_module.StoreEntry("a.png", "/media/a.png", "image", 1, 101, 10**18 + 1, "hash1")
    assert asked and all(cols is not None and not any(c.startswith("level_") for c in cols) for cols in asked)


def test_ensure_refuses_other_features(fstore: FeatureStore) -> None:
    fstore.ensure(dict(SPEC), [tuple(s) for s in SHAPES], FRAMES)  # same options: fine
    for spec, shapes, frames, word in [
        ({**SPEC, "input_size": 32}, SHAPES, FRAMES, "backbone"),
        (SPEC, [(8, 8, 3), (4, 4, 5)], FRAMES, "levels"),
        (SPEC, SHAPES, 16, "frames"),
    ]:
        with pytest.raises(FastslowError) as info:
            FeatureStore(fstore.directory).ensure(spec, shapes, frames)
        message = str(info.value)
        assert "\n" not in message and str(fstore.directory) in message
        assert word in message and "--set" in message


def test_fingerprint_tracks_features(tmp_path: Path, fstore: FeatureStore) -> None:
    other = FeatureStore(tmp_path / "other")
    other.ensure({**SPEC, "input_size": 32}, SHAPES, FRAMES)
    same = FeatureStore(tmp_path / "same")
    same.ensure(SPEC, SHAPES, FRAMES)
    assert fstore.fingerprint() == same.fingerprint() != other.fingerprint()
    assert len(fstore.fingerprint()) == 16


def test_missing_set_and_unknown_ids(tmp_path: Path, fstore: FeatureStore) -> None:
    empty = FeatureStore(tmp_path / "features" / "nothing")
    assert not empty.exists
    with pytest.raises(FastslowError, match=r"no feature set at .*nothing: run `fastslow extract PATH --set nothing`"):
        empty.manifest()
    fstore.append([make_row("a.png")])
    with pytest.raises(FastslowError, match="'zzz.png'"):
        fstore.load(["a.png", "zzz.png"])


def test_part_opens_with_plain_pyarrow(fstore: FeatureStore) -> None:
    rows = [make_row("a.png", seed=1), make_row("v.mp4", "video", seed=2)]
    part = fstore.append(rows)
    table = pq.read_table(part)  # no fastslow code from here on
    meta = json.loads(table.schema.metadata[b"fastslow"])
    assert meta["frames"] == FRAMES and meta["backbone"] == SPEC
    assert table.schema.field("frames").type == pa.int32()
    assert table.schema.field("timestamps").type == pa.list_(pa.float64())
    assert table.schema.field("level_0").type.value_type == pa.float16()
    for n, row in enumerate(rows):
        t = table.column("frames")[n].as_py()
        for i, (h, w, c) in enumerate(meta["levels"]):
            values = table.column(f"level_{i}")[n].values.to_numpy()
            assert np.array_equal(bits(values.reshape(t, h, w, c)), bits(row.levels[i]))


def test_many_row_groups_load_correctly(fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "ROW_GROUP_VALUES", 200)  # a video row alone is 8 * 68 values
    rows = [make_row(f"{k:02d}.mp4" if k % 3 == 0 else f"{k:02d}.png", "video" if k % 3 == 0 else "image", seed=k)
            for k in range(10)]
    part = fstore.append(rows)
    assert pq.ParquetFile(part).metadata.num_row_groups > 3
    read_groups: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read_groups.append(list(groups)) or real(self, groups, **kw))
    groups = pq.ParquetFile(part).metadata.num_row_groups
    for wanted in ([r.id for r in rows][::-1], [rows[7].id, rows[1].id, rows[8].id]):  # all, reversed; a few
        read_groups.clear()
        table = FeatureStore(fstore.directory).load(wanted)
        for n, item_id in enumerate(wanted):
            row = rows[int(item_id[:2])]
            for level, expected in zip(table.levels, row.levels):
                assert np.array_equal(bits(level[n, : row.frames]), bits(expected))
        assert len(read_groups) == 1 and len(read_groups[0]) <= min(groups, len(wanted))  # only the groups holding them


def test_crash_between_part_and_manifest_is_recovered(fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fstore.append([make_row("a.png", seed=1)])
    stray = fstore.directory / ".part-00001.parquet.x1y2.tmp"
    stray.write_bytes(b"half a parquet file")

    def killed(self: FeatureStore, manifest: dict) -> None:
        raise KeyboardInterrupt("kill -9 stand-in")

    monkeypatch.setattr(FeatureStore, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        fstore.append([make_row("b.mp4", "video", seed=2)])
    monkeypatch.undo()

    after = FeatureStore(fstore.directory)
    assert json.loads(after.manifest_path.read_text())["parts"] == ["part-00000.parquet"]  # stale on disk
    assert set(after.entries()) == {"a.png", "b.mp4"}
    assert after.manifest()["counts"] == {"items": 2, "images": 1, "videos": 1, "parts": 2}
    assert after.load(["b.mp4"]).frames.tolist() == [FRAMES]
    part = after.append([make_row("c.png", seed=3)])
    assert part.name == "part-00002.parquet" and not stray.exists()
    on_disk = json.loads(after.manifest_path.read_text())
    assert on_disk["counts"]["items"] == 3 and len(on_disk["parts"]) == 3


def test_manifest_rebuilt_from_parts_when_deleted(fstore: FeatureStore) -> None:
    fstore.append([make_row("a.png")])
    fingerprint = fstore.fingerprint()
    fstore.manifest_path.unlink()
    reader = FeatureStore(fstore.directory)
    assert reader.exists and reader.fingerprint() == fingerprint
    assert reader.manifest()["counts"]["items"] == 1
    reader.ensure(SPEC, SHAPES, FRAMES)
    assert json.loads(reader.manifest_path.read_text())["parts"] == ["part-00000.parquet"]


def test_damaged_files_give_one_line_errors(fstore: FeatureStore) -> None:
    fstore.append([make_row("a.png")])
    (fstore.parts_dir / "part-00007.parquet").write_bytes(b"not parquet")
    with pytest.raises(FastslowError, match=r"part-00007\.parquet.*delete it") as info:
        FeatureStore(fstore.directory).entries()
    assert "\n" not in str(info.value)
    (fstore.parts_dir / "part-00007.parquet").unlink()
    fstore.manifest_path.write_text("{ torn")
    with pytest.raises(FastslowError, match="manifest.json"):
        FeatureStore(fstore.directory).manifest()


def test_append_checks_rows(fstore: FeatureStore) -> None:
    bad = make_row("a.png")
    bad.levels[0] = bad.levels[0][:, :2]
    with pytest.raises(ValueError, match="level shape"):
        fstore.append([bad])
    with pytest.raises(ValueError, match="timestamp"):
        fstore.append([FeatureRow(**{**make_row("b.png").__dict__, "timestamps": []})])
    assert fstore.parts() == [] and fstore.append([]) is None


def test_writer_lock_excludes_a_second_writer(fstore: FeatureStore) -> None:
    other = FeatureStore(fstore.directory)
    with fstore.lock():
        fstore.append([make_row("a.png")])  # reentrant for the holder
        with pytest.raises(FastslowError, match=r"being written by another process \(pid \d+\).*--set"):
            with other.lock():
                pass
    with other.lock():
        other.append([make_row("b.png")])
    assert len(fstore.parts()) == 2


def test_errors_log(fstore: FeatureStore) -> None:
    assert fstore.errors() == []
    fstore.record_error("bad.mp4", "/media/bad.mp4", "decord crashed (signal 11)", ["decord", "av"])
    fstore.record_error("zero.mp4", "/media/zero.mp4", "empty file", ["decord", "av"])
    with open(fstore.errors_path, "a", encoding="utf-8") as fh:
        fh.write('{"id": "torn')  # a crash mid-line
    errors = fstore.errors()
    assert [e["id"] for e in errors] == ["bad.mp4", "zero.mp4"]
    assert errors[0]["attempts"] == ["decord", "av"] and errors[0]["time"].endswith("+00:00")


# ---- one row per live item, in a folder any Parquet reader opens ----------------------------


def test_compact_leaves_one_row_per_live_item_for_every_reader(fstore: FeatureStore, plain_reads) -> None:
    fstore.append([make_row("a.png", seed=1), make_row("b.png", seed=2), make_row("v.mp4", "video", seed=3)])
    fstore.append([make_row("a.png", seed=4)])  # a changed file, extracted again
    assert sorted(pq.read_table(fstore.parts_dir).column("id").to_pylist()) == ["a.png", "a.png", "b.png", "v.mp4"]
    assert fstore.compact(gone={"b.png", "never-stored.png"}) == 1
    for reader, ids in plain_reads(fstore.parts_dir).items():
        assert sorted(ids) == ["a.png", "v.mp4"], reader
    assert sorted(p.name for p in fstore.parts_dir.iterdir()) == ["part-00001.parquet", "part-00002.parquet"]
    assert set(fstore.entries()) == {"a.png", "v.mp4"}
    table = fstore.load(["a.png", "v.mp4"])
    assert np.array_equal(bits(table.levels[1][0, :1]), bits(make_row("a.png", seed=4).levels[1]))
    assert np.array_equal(bits(table.levels[0][1]), bits(make_row("v.mp4", "video", seed=3).levels[0]))
    assert fstore.manifest()["counts"] == {"items": 2, "images": 1, "videos": 1, "parts": 2}
    assert fstore.compact() == 0 and len(fstore.parts()) == 2  # nothing left to do


def test_compact_merges_small_parts_once_there_are_many(fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_SMALL_PARTS", 3)
    for k in range(3):
        fstore.append([make_row(f"{k}.png", seed=k)])
    fstore.compact()
    assert len(fstore.parts()) == 3  # a few small parts are left as they are
    fstore.append([make_row("3.png", seed=3)])
    fstore.compact()
    assert [p.name for p in fstore.parts()] == ["part-00004.parquet"]
    assert sorted(pq.read_table(fstore.parts_dir).column("id").to_pylist()) == ["0.png", "1.png", "2.png", "3.png"]


def test_float16_features_read_the_same_in_every_reader(fstore: FeatureStore) -> None:
    import duckdb
    import pandas as pd
    import polars as pl

    row = make_row("v.mp4", "video", seed=5)
    row.levels = [np.linspace(-3, 3, level.size, dtype=np.float16).reshape(level.shape) for level in row.levels]
    fstore.append([row])
    expected = row.levels[1].reshape(-1).astype(np.float64)
    folder = fstore.parts_dir
    got = {
        "pyarrow": pq.read_table(folder).column("level_1")[0].values.to_numpy(),
        "pandas": pd.read_parquet(folder)["level_1"][0],
        "polars": pl.read_parquet(folder / "*.parquet")["level_1"][0].to_numpy(),
        "duckdb": duckdb.sql(f"select level_1 from read_parquet('{folder}/**')").fetchall()[0][0],
    }
    for reader, values in got.items():
        assert np.array_equal(np.asarray(values, dtype=np.float64), expected), reader


def test_compaction_cut_short_is_consistent_and_finished_by_the_next_writer(
    fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch, plain_reads
) -> None:
    fstore.append([make_row("a.png", seed=1), make_row("b.png", seed=2)])
    fstore.append([make_row("a.png", seed=3)])
    real_unlink = Path.unlink

    def crash_on_first_delete(self: Path, missing_ok: bool = False) -> None:
        if self.parent.name == "parts":
            raise KeyboardInterrupt("kill -9 stand-in")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", crash_on_first_delete)
    with pytest.raises(KeyboardInterrupt):
        fstore.compact(gone={"b.png"})
    monkeypatch.undo()
    assert len(list(fstore.parts_dir.iterdir())) == 3  # the new part, and both it replaces
    reader = FeatureStore(fstore.directory)
    assert set(reader.entries()) == {"a.png"}  # the replaced parts are ignored
    assert np.array_equal(bits(reader.load(["a.png"]).levels[0][0]), bits(make_row("a.png", seed=3).levels[0]))
    with FeatureStore(fstore.directory).lock():
        pass  # any writer finishes the compaction
    assert plain_reads(fstore.parts_dir)["pyarrow"] == ["a.png"]


def test_a_read_racing_a_compaction_lists_again(fstore: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fstore.append([make_row("a.png", seed=1)])
    fstore.append([make_row("a.png", seed=2), make_row("b.png", seed=3)])
    reader = FeatureStore(fstore.directory)
    real_light = FeatureStore._light
    raced = []

    def compact_first(self: FeatureStore, part: Path) -> pa.Table:
        if not raced:
            raced.append(part)
            FeatureStore(fstore.directory).compact()  # another process, between listing and reading
        return real_light(self, part)

    monkeypatch.setattr(FeatureStore, "_light", compact_first)
    entries = reader.entries()
    assert raced and not raced[0].exists()
    assert set(entries) == {"a.png", "b.png"} and entries["a.png"].size == 102


def test_format_1_set_is_upgraded_once_to_path_ids(tmp_path: Path, plain_reads) -> None:
    """A set written before parts/ and path ids: parts beside the manifest, relative ids,
    and one file stored under two ids (extracted from two roots)."""
    directory = tmp_path / "features" / "default"
    new = FeatureStore(directory)
    new.ensure(SPEC, SHAPES, FRAMES)
    a, also_a, v = make_row("x/a.png", seed=1), make_row("a.png", seed=2), make_row("v.mp4", "video", seed=3)
    also_a.path = a.path
    new.append([a, v])
    new.append([also_a])
    for part in sorted(new.parts_dir.iterdir()):
        part.rename(directory / part.name)
    new.parts_dir.rmdir()
    manifest = json.loads(new.manifest_path.read_text())
    new.manifest_path.write_text(json.dumps({**manifest, "version": 1}))

    notes: list[dict] = []
    old = FeatureStore(directory, notify=notes.append)
    entries = old.entries()
    assert set(entries) == {"/media/x/a.png", "/media/v.mp4"}
    assert all(item_id == e.path for item_id, e in entries.items())
    assert entries["/media/x/a.png"].content_hash == "hash2"  # the later row won
    assert len(notes) == 1 and notes[0]["event"] == "note" and "upgraded" in notes[0]["message"]
    assert "\n" not in notes[0]["message"]
    assert not list(directory.glob("part-*.parquet")) and len(old.parts()) == 1
    assert json.loads(old.manifest_path.read_text())["version"] == store_module.FORMAT_VERSION
    assert sorted(plain_reads(old.parts_dir)["duckdb"]) == ["/media/v.mp4", "/media/x/a.png"]
    FeatureStore(directory, notify=notes.append).entries()
    assert len(notes) == 1  # once
