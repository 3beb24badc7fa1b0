"""Sharded indexes (index/shards.py): search merges the shards' top k into exactly the
unsharded result, `index update` rewrites only the shards that change, empty shards,
damage, and the CLI. Tiny random rows and models from conftest's `index_kit`; at ef above
the item count HNSW search is exhaustive here, so "exact" is checked against brute force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_index_cli import make_workspace
from test_pipeline import cli, ok

from fastslow_cli.errors import FastslowError
from fastslow_cli.index.folder import SearchIndex, build_index, update_index
from fastslow_cli.index.hnsw import AnnParams, exact_search
from fastslow_cli.index.shards import (
    ShardedIndex,
    build_sharded_index,
    shard_of,
    update_sharded_index,
)
from fastslow_cli.search.searcher import Searcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

EXACT = AnnParams(M=8, ef_construction=64, ef_search=64)


def file_stats(directory: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under `directory`, by relative path."""
    return {p.relative_to(directory).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_shard_of_is_stable_and_spreads() -> None:
    assert shard_of("item000.png", 4) == shard_of("item000.png", 4)
    assert [shard_of(f"item{i:03d}.png", 4) for i in range(6)] == [shard_of(f"item{i:03d}.png", 4) for i in range(6)]
    counts = np.bincount([shard_of(f"x{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900  # about 1000 each
    assert shard_of("héllo/ünïcode.jpg", 7) in range(7)


def test_sharded_search_equals_unsharded_exact_search(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path)
    fast, slow = index_kit.make_models(store)
    build_index(store, tmp_path / "index" / "one", fast, slow, EXACT)
    build_sharded_index(store, tmp_path / "index" / "three", fast, slow, 3, EXACT)
    one, three = SearchIndex.open(tmp_path / "index" / "one"), SearchIndex.open(tmp_path / "index" / "three")
    assert isinstance(three, ShardedIndex) and three.shard_count == 3 and three.count == one.count == 36
    assert sorted(three.items["id"]) == one.items["id"] and three.items["label"] == list(range(36))
    assert [len(s.items["id"]) for s in three.shards] == [e["count"] for e in three.manifest["shards"]]
    for shard_number, shard in enumerate(three.shards):
        assert {shard_of(i, 3) for i in shard.items["id"]} == {shard_number}
    # ANN level: every shard's top k merged = brute force over all items (ids and scores).
    table = store.load()
    vectors = fast.encode_items(table)
    queries = np.concatenate([fast.encode_texts([c]) for c in index_kit.captions] + [vectors[:5]])
    truth, truth_scores = exact_search(vectors, queries, 12)
    labels, scores = three.ann.query(queries, 12)
    ids = np.array(three.items["id"])
    assert (ids[labels] == np.array(table.ids)[truth]).all()
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    assert three.ann.query(queries, 100)[0].shape == (len(queries), 36)  # k above the count: all items
    # Searcher level: identical results with and without re-ranking (memories, timestamps).
    for query in index_kit.captions:
        for rerank in (0, 20):
            a = Searcher(one, fast, slow).search(query, k=10, rerank=rerank)
            b = Searcher(three, fast, slow).search(query, k=10, rerank=rerank)
            assert [(r.id, r.kind, r.timestamp) for r in a] == [(r.id, r.kind, r.timestamp) for r in b]
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-6)


def test_update_rewrites_only_the_shards_that_change(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=24)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_sharded_index(store, directory, fast, slow, 4, EXACT)
    before = file_stats(directory)
    assert update_sharded_index(store, directory, fast, slow).added == 0
    assert file_stats(directory) == before  # nothing changed: nothing written
    new_id, frames = index_kit.item_specs(1, first=24)[0]
    index_kit.add_rows(store, tmp_path / "media", [(new_id, frames)], seed=1)
    (tmp_path / "media" / "item001.png").unlink()
    changed = {shard_of(new_id, 4), shard_of("item001.png", 4)}
    assert len(changed) < 4
    report = update_index(store, directory, fast, slow)  # the one entry point: it delegates to the sharded update
    assert (report.added, report.updated, report.removed, report.items) == (1, 0, 1, 24)
    after = file_stats(directory)
    for number in range(4):
        prefix = f"shard-{number:03d}/"
        old = {k: v for k, v in before.items() if k.startswith(prefix)}
        new = {k: v for k, v in after.items() if k.startswith(prefix)}
        if number in changed:
            assert old.keys() == new.keys() and all(old[k][0] != new[k][0] for k in old)  # rewritten
        else:
            assert new == old  # the same files: same inodes, same mtimes
    index = SearchIndex.open(directory)
    assert "item001.png" not in index.items["id"] and new_id in index.items["id"]
    new_vector = fast.encode_items(store.load([new_id]))
    labels, _ = index.ann.query(new_vector, 1)
    assert index.items["id"][int(labels[0, 0])] == new_id
    assert not list(directory.parent.glob(".main.*-*"))  # no build or old folder left behind


def test_empty_shards_and_damage(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=3)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_sharded_index(store, directory, fast, slow, 8, EXACT)
    index = SearchIndex.open(directory)
    empty = [e for e in index.manifest["shards"] if e["count"] == 0]
    assert len(empty) >= 5 and all(e["dir"] is None for e in empty)
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == sorted(
        e["dir"] for e in index.manifest["shards"] if e["dir"]
    )
    assert len(Searcher(index, fast, slow).search("a dog", k=10, rerank=5)) == 3
    broken = tmp_path / "index" / "broken"
    shutil.copytree(directory, broken)
    shutil.rmtree(broken / next(e["dir"] for e in index.manifest["shards"] if e["dir"]))
    with pytest.raises(FastslowError, match=r"no index at .*shard-.*fastslow index build"):
        SearchIndex.open(broken)
    shutil.rmtree(broken)
    shutil.copytree(directory, broken)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"][0]["count"] += 1  # the top manifest no longer matches its shards
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FastslowError, match="inconsistent"):
        SearchIndex.open(broken)


def test_cli_build_search_update_info_sharded(index_kit, tmp_path: Path) -> None:
    ws, store = make_workspace(index_kit, tmp_path, count=12)
    ok(cli(ws, "index", "build", "--name", "flat"))
    ok(cli(ws, "index", "build", "--shards", "3"))
    args = ("search", "a dog runs on the beach", "--json", "-k", "5", "--rerank", "8")
    flat = [json.loads(x)["id"] for x in ok(cli(ws, *args, "--index", "flat")).stdout.splitlines()]
    sharded = [json.loads(x)["id"] for x in ok(cli(ws, *args)).stdout.splitlines()]
    assert flat == sharded
    info = json.loads(ok(cli(ws, "index", "info", "--json")).stdout)
    assert info["sharding"]["shards"] == 3 and sum(e["count"] for e in info["shards"]) == 12 == info["count"]
    foot = info["footprint"]
    assert foot["shards"] == 3 and foot["disk_bytes"] > foot["ram_bytes"] > 0 and foot["disk_bytes_per_item"] > 0
    shown = ok(cli(ws, "index", "info")).stdout
    assert "shards" in shown and "bytes/item" in shown
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(2, first=12), seed=3)
    report = json.loads(ok(cli(ws, "index", "update", "--json")).stdout)
    assert (report["added"], report["items"]) == (2, 14)
    bad = cli(ws, "index", "build", "--shards", "0")
    assert bad.returncode == 2 and "--shards" in bad.stderr
