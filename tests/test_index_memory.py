"""Compact Slow memory (index/memory.py): int8 with a per-token scale round-trips within its
quantisation error, an int8 index ranks like a float16 one, and the choice is recorded and
checked. Tiny random rows and models from conftest's `index_kit`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from test_index_cli import make_workspace
from test_pipeline import cli, ok

from fastslow_cli.errors import FastslowError
from fastslow_cli.index.folder import SearchIndex, build_index, update_index
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.index.memory import as_stored, bytes_per_row, dequantize_int8, quantize_int8
from fastslow_cli.search.searcher import Searcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

EXACT = AnnParams(M=8, ef_construction=64, ef_search=64)  # ef > items: HNSW search is exhaustive here


def test_int8_round_trip_is_within_half_a_step_per_token() -> None:
    rng = np.random.default_rng(0)
    # Tokens of very different magnitudes (one scale per token is the point), one all-zero token.
    rows = (rng.standard_normal((300, 48)) * rng.lognormal(0, 2, (300, 1))).astype(np.float16)
    rows[7] = 0
    q, scale = quantize_int8(rows)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (300,)
    assert np.abs(q).max(axis=1)[scale > 0].min() == 127  # every non-zero token uses the full range
    back = dequantize_int8(q, scale)
    error = np.abs(back - rows.astype(np.float32))
    bound = np.abs(rows.astype(np.float32)).max(axis=1) / 254  # s / 2 with s = max|row| / 127
    assert (error <= bound[:, None] * (1 + 1e-5) + 1e-30).all()
    assert (error.max(axis=1) > bound * 0.5)[scale > 0].mean() > 0.9  # the bound is not loose
    assert scale[7] == 0 and not back[7].any()
    # Storing what was read back changes nothing (an update copies unchanged items this way).
    q2, scale2 = quantize_int8(back)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(scale2, scale)
    np.testing.assert_array_equal(as_stored(rows, "f16"), rows)
    assert bytes_per_row("f16", 128) == 256 and bytes_per_row("int8", 128) == 132
    with pytest.raises(FastslowError, match="--memory"):
        as_stored(rows, "int4")


def test_int8_index_ranks_like_f16_and_is_half_the_size(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path)
    fast, slow = index_kit.make_models(store)
    built = {}
    for dtype in ("f16", "int8"):
        directory = tmp_path / "index" / dtype
        build_index(store, directory, fast, slow, EXACT, memory_dtype=dtype)
        built[dtype] = SearchIndex.open(directory)
        assert built[dtype].manifest["memory"]["dtype"] == built[dtype].memory_dtype == dtype
    f16, int8 = built["f16"], built["int8"]
    rows, width = f16.manifest["memory"]["rows"], slow.width
    assert (tmp_path / "index" / "f16" / "slow_memory.f16").stat().st_size == rows * width * 2
    assert (tmp_path / "index" / "int8" / "slow_memory.i8").stat().st_size == rows * width
    assert not (tmp_path / "index" / "f16" / "slow_memory.i8").exists()
    # The memory read back from the int8 index is the f16 one within each token's step.
    for a, b in zip(f16.memories(range(36)), int8.memories(range(36))):
        step = np.abs(a.astype(np.float32)).max(axis=1) / 127
        assert (np.abs(a.astype(np.float32) - b) <= step[:, None] / 2 * (1 + 1e-5)).all()
    # Re-ranked top 10: the same items, each with its Slow score within 1e-3; the order the
    # same except between items whose f16 scores are closer than that (a random-init Slow
    # model scores many items alike: 2 of 36 differ in the 5th decimal for one caption).
    searchers = {d: Searcher(i, fast, slow) for d, i in built.items()}
    swaps = 0
    for query in index_kit.captions:
        a, b = (searchers[d].search(query, k=10, rerank=20) for d in ("f16", "int8"))
        f16_score = {r.id: r.slow_score for r in a}
        assert set(f16_score) == {r.id for r in b}
        assert max(abs(f16_score[r.id] - r.slow_score) for r in b) < 1e-3
        for first, second in itertools.pairwise(b):
            if f16_score[first.id] < f16_score[second.id]:
                assert f16_score[second.id] - f16_score[first.id] < 1e-3
        swaps += sum(x.id != y.id for x, y in zip(a, b))
    assert swaps <= 2


def test_update_keeps_the_memory_dtype(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=9)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow, EXACT, memory_dtype="f16")
    before = SearchIndex.open(directory).memories(range(9))
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(3, first=9), seed=1)
    assert update_index(store, directory, fast, slow).added == 3
    after = SearchIndex.open(directory)
    assert after.memory_dtype == "f16" and (directory / "slow_memory.f16").exists()
    for a, b in zip(before, after.memories(range(9))):
        np.testing.assert_array_equal(a, b)


def test_missing_scales_is_a_clear_error(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=6)
    fast, slow = index_kit.make_models(store)
    directory = tmp_path / "index" / "main"
    build_index(store, directory, fast, slow, EXACT)
    (directory / "slow_memory.scale.npy").unlink()
    with pytest.raises(FastslowError, match=r"is damaged .*fastslow index build"):
        SearchIndex.open(directory)


def test_cli_memory_option_is_recorded_and_shown(index_kit, tmp_path: Path) -> None:
    ws, _ = make_workspace(index_kit, tmp_path, count=6)
    ok(cli(ws, "index", "build", "--memory", "f16", "--name", "half"))
    ok(cli(ws, "index", "build", "--name", "small"))
    info = {name: json.loads(ok(cli(ws, "index", "info", "--name", name, "--json")).stdout) for name in ("half", "small")}
    assert info["half"]["memory"]["dtype"] == "f16" and info["small"]["memory"]["dtype"] == "int8"
    per_item = {name: i["footprint"]["memory_bytes_per_item"] for name, i in info.items()}
    assert per_item["small"] < 0.6 * per_item["half"]
    shown = ok(cli(ws, "index", "info", "--name", "small")).stdout
    assert "int8" in shown and "bytes/item" in shown
    bad = cli(ws, "index", "build", "--memory", "int4")
    assert bad.returncode == 2 and "int4" in bad.stderr
