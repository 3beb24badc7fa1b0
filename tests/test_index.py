"""The search index: build -> open round trip, `add` without a rebuild, model checks,
atomic swap and crash recovery, damaged files, per-frame vectors of videos.

Tiny random feature rows and randomly initialised models: the mechanics do not depend
on trained weights. The store and models come from conftest's `index_kit`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastslow_cli.index import folder as index_mod
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.index.memory import DEFAULT_DTYPE, as_stored
from fastslow_cli.errors import FastslowError
from fastslow_cli.index.folder import IndexChunk, SearchIndex, build_index, recover, update_index, write_index, writer_lock
from fastslow_cli.search.retrievers import NativeFast, NativeSlow
from fastslow_cli.store.parquet import FeatureStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

DEAD_PID = 99_999_999  # above Linux's pid_max: never a live process


def index_files(directory: Path) -> dict[str, bytes]:
    """Every file of an index folder (shard folders included) and its bytes."""
    return {f.relative_to(directory).as_posix(): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def built(index_kit, tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStore, NativeFast, NativeSlow, Path]:
    """A store of 36 items and an index built from it (tests must not modify it: copy first)."""
    root = tmp_path_factory.mktemp("built")
    store = index_kit.make_store(root)
    fast, slow = index_kit.make_models(store)
    build_index(store, root / "index" / "main", fast, slow, AnnParams(M=8, ef_construction=64, ef_search=64))
    return store, fast, slow, root / "index" / "main"


def copy_index(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "index" / src.name
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- round trip


def test_round_trip(built: tuple[FeatureStore, NativeFast, NativeSlow, Path]) -> None:
    store, fast, slow, directory = built
    index = SearchIndex.open(directory)
    table = store.load()
    assert index.count == len(table.ids) == 36
    assert index.items["id"] == table.ids
    assert index.items["label"] == list(range(36))
    assert index.items["kind"] == table.kinds
    assert index.items["frames"] == [int(f) for f in table.frames]
    assert index.manifest["images"] == 24 and index.manifest["videos"] == 12
    assert index.manifest["fast"]["content_hash"] == "fast-a" and index.manifest["slow"]["content_hash"] == "slow-a"
    assert index.manifest["dim"] == fast.dim and index.manifest["memory"]["width"] == slow.width
    # Cached Slow memory: exactly what the Slow model gives as the default dtype stores it
    # (int8 with a per-token scale: index/memory.py), rows trimmed to each item's frames.
    assert index.manifest["memory"]["dtype"] == index.memory_dtype == DEFAULT_DTYPE
    expected = slow.encode_items(table)
    got = index.memories(range(36))
    for item, (e, g) in enumerate(zip(expected, got)):
        assert g.shape == (int(table.frames[item]) * 4 * 4, slow.width)  # finest_level 1: 4x4 tokens per frame
        np.testing.assert_array_equal(g, as_stored(e, DEFAULT_DTYPE))
    # Every item's own Fast vector finds itself first, with score ~1.
    vectors = fast.encode_items(table)
    labels, scores = index.ann.query(vectors, 1)
    assert labels[:, 0].tolist() == list(range(36))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


def test_frame_vectors_and_best_timestamp(built: tuple[FeatureStore, NativeFast, NativeSlow, Path]) -> None:
    store, fast, _, directory = built
    index = SearchIndex.open(directory)
    table = store.load()
    vectors = fast.encode_items(table)
    assert index.frame_vectors.shape == (int(table.frames.sum()), fast.dim)
    for label in range(index.count):
        a, b = index.frame_offsets[label], index.frame_offsets[label + 1]
        frames = int(table.frames[label])
        assert b - a == frames
        if frames == 1:
            np.testing.assert_array_equal(index.frame_vectors[a], vectors[label])
            assert index.best_timestamp(label, vectors[label]) == table.timestamps[label][0]
            continue
        # A video's frame vectors are its frames encoded one by one: a query equal to
        # frame t's vector points at frame t's timestamp.
        single = table.subset([label])
        for t in range(frames):
            one = type(single)(
                ids=single.ids, paths=single.paths, kinds=["image"], frames=np.ones(1, dtype=np.int64),
                timestamps=[[single.timestamps[0][t]]], levels=[lv[:, t : t + 1] for lv in single.levels],
                frame_mask=np.ones((1, 1), dtype=bool),
            )
            frame_vector = fast.encode_items(one)[0]
            np.testing.assert_allclose(index.frame_vectors[a + t], frame_vector, atol=1e-5)
            assert index.best_timestamp(label, frame_vector) == pytest.approx(0.25 + 0.5 * t)


def test_missing_media_left_out_and_empty_set_refused(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=9)
    fast, slow = index_kit.make_models(store)
    gone = index_kit.item_specs(9)[4][0]
    (tmp_path / "media" / gone).unlink()
    report = build_index(store, tmp_path / "index" / "main", fast, None)
    assert (report.items, report.skipped_missing) == (8, 1)
    index = SearchIndex.open(tmp_path / "index" / "main")
    assert gone not in index.items["id"] and index.count == 8
    assert index.manifest["slow"] is None and index.memory is None
    with pytest.raises(FastslowError, match="no Slow memory"):
        index.memories([0])
    with pytest.raises(FastslowError, match="no Slow memory"):
        index.check_models(fast, slow)

    empty = FeatureStore(tmp_path / "features" / "empty")
    empty.ensure({"name": "test-backbone"}, index_kit.shapes, 8)
    with pytest.raises(FastslowError, match="fastslow extract"):
        build_index(empty, tmp_path / "index" / "empty", fast, slow)
    assert not (tmp_path / "index" / "empty").exists()


# ----------------------------------------------------------------------------- update


def test_update_adds_only_new_items_and_old_results_unchanged(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=30)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow, AnnParams(M=8, ef_construction=64))
    before = SearchIndex.open(directory)
    old_vectors = fast.encode_items(store.load())
    old_top = before.ann.query(old_vectors, 5)
    old_memory = before.memories(range(30))
    old_frames = np.array(before.frame_vectors)

    assert update_index(store, directory, fast, slow).added == 0  # nothing new: nothing to do

    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(12, first=30), seed=1)

    calls: list[int] = []
    original = fast.encode_items

    def counting(table, batch_size=256):  # type: ignore[no-untyped-def]
        calls.append(len(table.ids))
        return original(table, batch_size)

    fast.encode_items = counting  # type: ignore[method-assign]
    try:
        report = update_index(store, directory, fast, slow)
    finally:
        del fast.encode_items
    assert (report.added, report.updated, report.removed, report.items) == (12, 0, 0, 42)
    new_frames = sum(f for _, f in index_kit.item_specs(12, first=30) if f > 1)
    assert calls == [12, new_frames]  # new items, then the new videos' frames; no old item re-encoded

    after = SearchIndex.open(directory)
    table = store.load()
    assert after.count == 42 and after.items["id"] == table.ids  # ids are sorted: 30.. come after 0..29
    assert after.items["label"] == list(range(42))
    assert after.manifest["images"] == 28 and after.manifest["videos"] == 14
    # Old items: same labels, same memory, same frame vectors, still their own top-1.
    for e, g in zip(old_memory, after.memories(range(30))):
        np.testing.assert_array_equal(e, g)
    np.testing.assert_array_equal(np.asarray(after.frame_vectors[: len(old_frames)]), old_frames)
    labels, _ = after.ann.query(old_vectors, 1)
    assert labels[:, 0].tolist() == old_top[0][:, 0].tolist() == list(range(30))
    # New items: memory and vectors as a full encode gives them.
    new_table = store.load(table.ids[30:])
    for e, g in zip(slow.encode_items(new_table), after.memories(range(30, 42))):
        np.testing.assert_array_equal(as_stored(e, after.memory_dtype), g)
    labels, _ = after.ann.query(fast.encode_items(new_table), 1)
    assert labels[:, 0].tolist() == list(range(30, 42))


def by_id(index: SearchIndex) -> dict[str, tuple]:
    """Each item of an index as (path, kind, frames, timestamps, sources, vector, frame vectors, memory), keyed by id."""
    items, off = index.items, index.frame_offsets
    vectors = index.ann.vectors(range(index.count))
    return {
        item_id: (
            tuple(items[k][i] for k in ("path", "kind", "frames", "timestamps", "size", "mtime_ns", "content_hash")),
            vectors[i],
            np.asarray(index.frame_vectors[off[i] : off[i + 1]]),
            index.memories([i])[0],
        )
        for i, item_id in enumerate(items["id"])
    }


def test_update_follows_the_files(index_kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edited items are re-encoded, deleted and vanished ones removed, new ones added;
    nothing else is encoded, and the result is what a fresh build gives."""
    store = index_kit.make_store(tmp_path, count=30)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    media = tmp_path / "media"
    build_index(store, directory, fast, slow, AnnParams(M=8, ef_construction=64))
    before = by_id(SearchIndex.open(directory))
    ids = sorted(before)
    edited, like, deleted, vanished = ids[3], ids[0], ids[7], ids[10]  # all images
    index_kit.edit_item(store, media, edited, like)
    (media / deleted).unlink()
    index_kit.add_rows(store, media, index_kit.item_specs(4, first=30), seed=1)
    entries = store.entries()
    monkeypatch.setattr(store, "entries", lambda: {i: e for i, e in entries.items() if i != vanished})

    calls: list[int] = []
    original = fast.encode_items

    def counting(table, batch_size=256):  # type: ignore[no-untyped-def]
        calls.append(len(table.ids))
        return original(table, batch_size)

    monkeypatch.setattr(fast, "encode_items", counting)
    report = update_index(store, directory, fast, slow)
    monkeypatch.undo()
    assert (report.added, report.updated, report.removed, report.items) == (4, 1, 2, 32)
    new_videos = [f for _, f in index_kit.item_specs(4, first=30) if f > 1]
    assert calls == [5, sum(new_videos)]  # the 4 new and the edited item, then the new videos' frames

    after = by_id(SearchIndex.open(directory))
    assert deleted not in after and vanished not in after and len(after) == 32
    for item_id in set(before) - {edited, deleted, vanished}:  # copied as they were
        assert after[item_id][0] == before[item_id][0]
        for b, a in zip(before[item_id][1:], after[item_id][1:]):
            np.testing.assert_array_equal(a, b)
    # The edited item now has the content of `like`: its vector, frame vector and memory.
    for b, a in zip(before[like][1:], after[edited][1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert after[edited][0][6] == f"edited-{edited}"
    # Everything equals a fresh build of the same store.
    monkeypatch.setattr(store, "entries", lambda: {i: e for i, e in entries.items() if i != vanished})
    build_index(store, tmp_path / "index" / "fresh", fast, slow, AnnParams(M=8, ef_construction=64))
    fresh = by_id(SearchIndex.open(tmp_path / "index" / "fresh"))
    assert sorted(fresh) == sorted(after)
    for item_id, (meta, *arrays) in fresh.items():
        assert after[item_id][0] == meta
        for f, a in zip(arrays, after[item_id][1:]):
            np.testing.assert_allclose(a, f, atol=1e-5)
    manifest = SearchIndex.open(directory).manifest
    assert manifest["count"] == 32 and manifest["images"] + manifest["videos"] == 32 and "updated" in manifest

    files = index_files(directory)
    again = update_index(store, directory, fast, slow)
    assert (again.added, again.updated, again.removed, again.items) == (0, 0, 0, 32)
    assert index_files(directory) == files  # nothing changed: nothing written


def test_update_of_an_index_without_item_sources_re_encodes_it(index_kit, tmp_path: Path) -> None:
    """Indexes written before items recorded size, mtime and hash: every item counts as changed."""
    store = index_kit.make_store(tmp_path, count=9)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow)
    items = pq.read_table(directory / "items.parquet").drop_columns(["size", "mtime_ns", "content_hash"])
    pq.write_table(items, directory / "items.parquet")
    report = update_index(store, directory, fast, slow)
    assert (report.added, report.updated, report.removed, report.items) == (0, 9, 0, 9)
    index = SearchIndex.open(directory)
    assert index.items["content_hash"] == [store.entries()[i].content_hash for i in index.items["id"]]
    assert update_index(store, directory, fast, slow).updated == 0


def test_update_refuses_when_every_item_is_gone(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=3)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow)
    files = index_files(directory)
    for item_id, _ in index_kit.item_specs(3):
        (tmp_path / "media" / item_id).unlink()
    with pytest.raises(FastslowError, match="no item left") as exc:
        update_index(store, directory, fast, slow)
    assert "\n" not in str(exc.value) and str(store.directory) in str(exc.value)
    assert index_files(directory) == files


def test_update_refuses_other_models_and_missing_slow(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=9)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow)
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(3, first=9), seed=1)
    other_fast, other_slow = index_kit.make_models(store, seed=1, fast_hash="fast-b", slow_hash="slow-b")
    files = index_files(directory)
    with pytest.raises(FastslowError, match="Fast model models/fast-a"):
        update_index(store, directory, other_fast, slow)
    with pytest.raises(FastslowError, match="Slow model models/slow-a"):
        update_index(store, directory, fast, other_slow)
    with pytest.raises(FastslowError, match="--slow"):
        update_index(store, directory, fast, None)  # would leave the new items without Slow memory
    assert index_files(directory) == files



@pytest.mark.parametrize("shards", [None, 3], ids=["unsharded", "sharded"])
def test_update_entry_checks_for_both_layouts(index_kit, tmp_path: Path, shards: int | None) -> None:
    """`check_update` guards both layouts the same way: the models the index was built with, a
    Slow model when it caches Slow memory, and the feature set it was built from."""
    from fastslow_cli.index.shards import build_sharded_index

    store = index_kit.make_store(tmp_path, count=9)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    if shards is None:
        build_index(store, directory, fast, slow)
    else:
        build_sharded_index(store, directory, fast, slow, shards)
    other_fast, _ = index_kit.make_models(store, seed=1, fast_hash="fast-b")
    other_set = FeatureStore(tmp_path / "features" / "other")
    other_set.ensure({"name": "another-backbone"}, index_kit.shapes, 8)
    index_kit.add_rows(other_set, tmp_path / "media", index_kit.item_specs(3), seed=2)
    files = index_files(directory)
    with pytest.raises(FastslowError, match="Fast model models/fast-a"):
        update_index(store, directory, other_fast, slow)
    with pytest.raises(FastslowError, match=r"caches Slow memory: pass its Slow model \(--slow\)"):
        update_index(store, directory, fast, None)
    with pytest.raises(FastslowError, match="built from another feature set: rebuild it with `fastslow index build`"):
        update_index(other_set, directory, fast, slow)
    assert index_files(directory) == files  # refused before anything was written


# ----------------------------------------------------------------------------- model checks


def test_check_models_refuses_other_content_hash(index_kit, built: tuple[FeatureStore, NativeFast, NativeSlow, Path]) -> None:
    store, fast, slow, directory = built
    index = SearchIndex.open(directory)
    index.check_models(fast, slow)
    index.check_models(fast, None)
    fix = "fastslow index build --model models/fast-a --slow models/slow-a --set test --name main"
    # The same model folder with other weights: retrained or replaced since the build.
    retrained = index_kit.make_models(store)[0]
    retrained.identity = {**fast.identity, "content_hash": "fast-retrained"}
    with pytest.raises(FastslowError) as exc:
        index.check_models(retrained, slow)
    message = str(exc.value)
    assert "\n" not in message and message.count("models/fast-a") == 2  # where the model is, and in the fix
    assert f"the Fast model at models/fast-a was retrained or replaced since index {directory} was built" in message
    assert message.endswith(f"rebuild the index with `{fix}`")
    # Another model: both named, and the build that uses it.
    other_fast, other_slow = index_kit.make_models(store, fast_hash="fast-b", slow_hash="slow-b")
    with pytest.raises(FastslowError) as exc:
        index.check_models(other_fast, slow)
    message = str(exc.value)
    assert "\n" not in message and "built with Fast model models/fast-a, not models/fast-b" in message
    assert "`fastslow index build --model models/fast-b --slow models/slow-a --set test --name main`" in message
    with pytest.raises(FastslowError) as exc:
        index.check_models(fast, other_slow)
    assert "\n" not in str(exc.value) and "built with Slow model models/slow-a, not models/slow-b" in str(exc.value)


def test_model_and_feature_set_paths_are_relative_to_the_workspace(index_kit, tmp_path: Path) -> None:
    """Inside the workspace (two levels above the index): relative and marked; outside: absolute; hub ids: as given."""
    ws = tmp_path / "ws"
    store = index_kit.make_store(ws, count=3)
    fast, slow = index_kit.make_models(store)
    (ws / "models" / "fast").mkdir(parents=True)
    fast.identity = {**fast.identity, "path": str(ws / "models" / "fast")}
    slow.identity = {**slow.identity, "path": str(tmp_path / "elsewhere" / "slow")}
    directory = ws / "index" / "default"
    build_index(store, directory, fast, slow)
    index = SearchIndex.open(directory)
    assert index.manifest["feature_set"] == "features/test" and index.feature_set_dir == store.directory
    assert (index.manifest["fast"]["path"], index.manifest["fast"]["in_workspace"]) == ("models/fast", True)
    assert index.manifest["slow"]["path"] == str(tmp_path / "elsewhere" / "slow")
    assert "in_workspace" not in index.manifest["slow"]
    assert index.model_location("fast") == str(ws / "models" / "fast")
    assert index.rebuild_command(None, None) == f"fastslow index build --model fast --slow {tmp_path}/elsewhere/slow --set test"
    with pytest.raises(FastslowError) as exc:  # a model folder that is gone: say so, not "cannot load CLIPModel"
        index.model_location("slow")
    assert f"the Slow model of index {directory}, {tmp_path}/elsewhere/slow, no longer exists" in str(exc.value)
    assert "fastslow index build" in str(exc.value)
    moved = tmp_path / "moved"
    ws.rename(moved)
    index = SearchIndex.open(moved / "index" / "default")
    assert index.model_location("fast") == str(moved / "models" / "fast")
    assert index.feature_set_dir == moved / "features" / "test"
    # Hub ids (relative, not marked) stay ids.
    hub = {**index.manifest["fast"], "path": "openai/clip-vit-base-patch32"}
    del hub["in_workspace"]
    index.manifest["fast"] = hub
    assert index.model_location("fast") == "openai/clip-vit-base-patch32"


# ----------------------------------------------------------------------------- atomicity


class Crash(Exception):
    pass


def test_interrupted_build_leaves_old_index(index_kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = index_kit.make_store(tmp_path, count=30)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow)
    files = index_files(directory)
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(6, first=30), seed=1)

    monkeypatch.setattr(index_mod, "CHUNK", 8)  # several chunks, so the crash lands mid-way
    original = fast.encode_items
    seen: list[int] = []
    fail_at = [5]  # build: chunk 3's item vectors; add: the new videos' frame vectors

    def failing(table, batch_size=256):  # type: ignore[no-untyped-def]
        seen.append(len(table.ids))
        if len(seen) == fail_at[0]:
            raise Crash("encoder died")
        return original(table, batch_size)

    fast.encode_items = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            build_index(store, directory, fast, slow)
        seen.clear()
        fail_at[0] = 2
        with pytest.raises(Crash):
            update_index(store, directory, fast, slow)
    finally:
        del fast.encode_items
    assert index_files(directory) == files
    assert sorted(p.name for p in directory.parent.iterdir()) == [".main.lock", "main"]  # no temporary folder left
    index = SearchIndex.open(directory)
    assert index.count == 30
    labels, _ = index.ann.query(fast.encode_items(store.load(index.items["id"])), 1)
    assert labels[:, 0].tolist() == list(range(30))


def test_crash_between_renames_is_recovered(built: tuple[FeatureStore, NativeFast, NativeSlow, Path], tmp_path: Path) -> None:
    """`kill -9` after the live folder was moved aside, before the new one was moved in."""
    store, fast, _, src = built
    parent = tmp_path / "index"
    parent.mkdir()
    old = parent / f".main.old-{DEAD_PID}"
    shutil.copytree(src, old)
    building = parent / f".main.building-{DEAD_PID}"
    building.mkdir()
    (building / "hnsw.bin").write_bytes(b"half")
    live_other = parent / f".other.building-{os.getppid()}"  # another index, being built by a live process
    live_other.mkdir()
    files = index_files(old)

    index = SearchIndex.open(parent / "main")
    assert index.count == 36
    assert index_files(parent / "main") == files
    assert sorted(p.name for p in parent.iterdir()) == [live_other.name, "main"]
    labels, _ = index.ann.query(fast.encode_items(store.load()), 1)
    assert labels[:, 0].tolist() == list(range(36))


def test_swap_of_a_live_writer_is_left_alone(built: tuple[FeatureStore, NativeFast, NativeSlow, Path], tmp_path: Path) -> None:
    """A reader arriving between a live writer's two renames must not undo its swap."""
    _, _, _, src = built
    parent = tmp_path / "index"
    parent.mkdir()
    mid_swap = parent / f".main.old-{os.getppid()}"  # a live process that is not us
    shutil.copytree(src, mid_swap)
    with pytest.raises(FastslowError, match="no index at"):
        SearchIndex.open(parent / "main")
    assert mid_swap.exists() and not (parent / "main").exists()


def test_stale_old_folder_never_replaces_live_index(built: tuple[FeatureStore, NativeFast, NativeSlow, Path], tmp_path: Path) -> None:
    """A crash after the new folder was moved in (old one not yet deleted): the new one stays."""
    _, _, _, src = built
    directory = copy_index(src, tmp_path)
    stale = directory.parent / f".main.old-{DEAD_PID}"
    stale.mkdir()
    (stale / "manifest.json").write_text("{}")
    files = index_files(directory)
    recover(directory)
    assert not stale.exists()
    assert index_files(directory) == files


# ----------------------------------------------------------------------------- damage


@pytest.mark.parametrize("damage", ["flip_hnsw", "truncate_hnsw", "truncate_memory", "drop_items", "bad_manifest", "no_index"])
def test_damaged_index_is_a_clear_error(built: tuple[FeatureStore, NativeFast, NativeSlow, Path], tmp_path: Path, damage: str) -> None:
    _, _, _, src = built
    directory = copy_index(src, tmp_path)
    if damage == "flip_hnsw":
        data = bytearray((directory / "hnsw.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (directory / "hnsw.bin").write_bytes(bytes(data))
    elif damage == "truncate_hnsw":
        data = (directory / "hnsw.bin").read_bytes()
        (directory / "hnsw.bin").write_bytes(data[: len(data) // 3])
    elif damage == "truncate_memory":
        data = (directory / "slow_memory.i8").read_bytes()
        (directory / "slow_memory.i8").write_bytes(data[:100])
    elif damage == "drop_items":
        (directory / "items.parquet").unlink()
    elif damage == "bad_manifest":
        (directory / "manifest.json").write_text("{ not json")
    else:
        shutil.rmtree(directory)
    with pytest.raises(FastslowError) as exc:
        SearchIndex.open(directory)
    message = str(exc.value)
    assert "\n" not in message and str(directory) in message
    assert "fastslow index build" in message


def test_one_writer_at_a_time(built: tuple[FeatureStore, NativeFast, NativeSlow, Path], tmp_path: Path) -> None:
    store, fast, slow, src = built
    directory = copy_index(src, tmp_path)
    files = index_files(directory)
    with open(directory.parent / f".{directory.name}.lock", "a+") as other:  # another process's lock
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FastslowError, match="being written by another process"):
            build_index(store, directory, fast, slow)
        with pytest.raises(FastslowError, match="being written by another process"):
            update_index(store, directory, fast, slow)
        assert SearchIndex.open(directory).count == 36  # readers are not blocked
        fcntl.flock(other, fcntl.LOCK_UN)
    assert index_files(directory) == files
    with writer_lock(directory):  # this process's own lock is reentrant: update holds it through the write
        update_index(store, directory, fast, slow)
    build_index(store, tmp_path / "index" / "other", fast, None)  # other names are independent


def test_write_index_from_precomputed_chunks(tmp_path: Path) -> None:
    """The writer `build_index` uses, fed directly (as benchmarks do): labels run across chunks."""
    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    frames = np.array([1, 3, 1, 2, 1])
    vectors, frame_vectors = unit(5), unit(int(frames.sum()))
    memories = [rng.standard_normal((4 * int(f), 6)).astype(np.float16) for f in frames]
    starts = np.concatenate([[0], np.cumsum(frames)])

    def chunk(a: int, b: int, with_memory: bool = True) -> IndexChunk:
        return IndexChunk(
            ids=[f"v{i}" for i in range(a, b)],
            paths=[f"/media/v{i}" for i in range(a, b)],
            kinds=["image" if f == 1 else "video" for f in frames[a:b]],
            frames=frames[a:b],
            timestamps=[[0.5 * t for t in range(int(f))] for f in frames[a:b]],
            vectors=vectors[a:b],
            frame_vectors=frame_vectors[starts[a] : starts[b]],
            memories=memories[a:b] if with_memory else None,
            sizes=[10 + i for i in range(a, b)],
            mtimes_ns=[20 + i for i in range(a, b)],
            content_hashes=[f"h{i}" for i in range(a, b)],
        )

    directory = tmp_path / "index" / "pre"
    identity = {"path": "p", "content_hash": "h"}
    write = lambda chunks: write_index(directory, chunks, identity, identity, 6, AnnParams(M=4), "set", "fp", memory_dtype="f16")  # noqa: E731
    assert write([chunk(0, 2), chunk(2, 5)]) == 5
    index = SearchIndex.open(directory)
    assert index.items["id"] == [f"v{i}" for i in range(5)] and index.items["label"] == list(range(5))
    assert (index.manifest["images"], index.manifest["videos"], index.manifest["memory"]) == (3, 2, {"width": 6, "rows": 32, "dtype": "f16"})
    np.testing.assert_array_equal(np.asarray(index.frame_vectors), frame_vectors)
    for e, g in zip(memories, index.memories(range(5))):
        np.testing.assert_array_equal(e, g)
    assert index.ann.query(vectors, 1)[0][:, 0].tolist() == list(range(5))
    assert index.best_timestamp(1, frame_vectors[starts[1] + 2]) == 1.0

    files = index_files(directory)
    with pytest.raises(ValueError, match="memories"):
        write([chunk(0, 2), chunk(2, 5, with_memory=False)])
    with pytest.raises(ValueError, match="at least one item"):
        write([])
    assert index_files(directory) == files
    assert sorted(p.name for p in directory.parent.iterdir()) == [".pre.lock", "pre"]
