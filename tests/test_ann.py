"""The HNSW layer, modelled on hnswlib's tests/python/bindings_test_recall.py: recall
against brute force, identical results after save/load; plus the known traps (k > count,
ef < k, damaged files) and bad input."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from fastslow_cli.index.hnsw import AnnIndex, AnnParams, exact_search, recall_at_k
from fastslow_cli.errors import FastslowError


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray, AnnIndex]:
    data, queries = unit(5000, 64, seed=1), unit(200, 64, seed=2)
    return data, queries, AnnIndex.build(data, AnnParams())


@pytest.fixture
def small() -> tuple[np.ndarray, AnnIndex]:
    data = unit(300, 16, seed=3)
    return data, AnnIndex.build(data, AnnParams(M=8, ef_construction=64))


def one_line_rebuild_error(exc: pytest.ExceptionInfo[FastslowError], path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path / "hnsw.bin") in message
    assert "fastslow index build" in message


def test_recall_against_brute_force(big: tuple[np.ndarray, np.ndarray, AnnIndex]) -> None:
    data, queries, index = big
    exact_labels, exact_scores = exact_search(data, queries, 10)
    labels, scores = index.query(queries, 10, ef=128)
    assert labels.shape == scores.shape == (200, 10)
    assert labels.dtype == np.int64 and scores.dtype == np.float32
    assert recall_at_k(labels, exact_labels) >= 0.98
    # Scores are inner products (higher = better), sorted best first, equal to brute force's.
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, data[labels]), atol=1e-5)
    hits = labels[:, 0] == exact_labels[:, 0]
    np.testing.assert_allclose(scores[hits, 0], exact_scores[hits, 0], atol=1e-5)
    # A larger beam cannot do worse than a tiny one.
    assert recall_at_k(index.query(queries, 10, ef=10)[0], exact_labels) <= recall_at_k(labels, exact_labels)


def test_identical_after_save_load(big: tuple[np.ndarray, np.ndarray, AnnIndex], tmp_path: Path) -> None:
    _, queries, index = big
    info = index.save(tmp_path)
    path = tmp_path / "hnsw.bin"
    assert info["file"] == "hnsw.bin" and info["space"] == "ip"
    assert info["bytes"] == path.stat().st_size
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info["dim"], info["count"], info["M"], info["ef_construction"], info["ef_search"]) == (64, 5000, 32, 200, 256)
    assert [p.name for p in tmp_path.iterdir()] == ["hnsw.bin"]  # no temporary file left behind
    loaded = AnnIndex.load(tmp_path, info)
    assert (loaded.count, loaded.dim, loaded.params) == (5000, 64, index.params)
    for ef in (None, 16, 128):
        before, after = index.query(queries, 10, ef=ef), loaded.query(queries, 10, ef=ef)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])


def test_builds_are_reproducible(small: tuple[np.ndarray, AnnIndex], tmp_path: Path) -> None:
    data, index = small
    again = AnnIndex.build(data, index.params)
    assert index.save(tmp_path / "a")["sha256"] == again.save(tmp_path / "b")["sha256"]


def test_vectors_are_normalised(small: tuple[np.ndarray, AnnIndex]) -> None:
    data, index = small
    scaled = AnnIndex.build(data * np.linspace(0.1, 50, len(data), dtype=np.float32)[:, None], index.params)
    labels, scores = scaled.query(3.0 * data[:5], 1)
    np.testing.assert_array_equal(labels[:, 0], np.arange(5))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_add_then_query_finds_new_items(small: tuple[np.ndarray, AnnIndex], tmp_path: Path) -> None:
    data, index = small
    # Reload first: a loaded index has exactly `count` capacity, so adding must grow it.
    index = AnnIndex.load(tmp_path, index.save(tmp_path))
    new = unit(500, 16, seed=4)
    index.add(new, np.arange(300, 800))
    assert index.count == 800
    labels, scores = index.query(new, 1)
    np.testing.assert_array_equal(labels[:, 0], np.arange(300, 800))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.query(data[:10], 1)[0][:, 0].tolist() == list(range(10))
    # An existing label gets its vector replaced, not a second entry.
    index.add(new[:1], np.array([0]))
    assert index.count == 800
    assert set(index.query(new[:1], 2)[0][0].tolist()) == {0, 300}
    # The grown index round-trips.
    again = AnnIndex.load(tmp_path / "grown", index.save(tmp_path / "grown"))
    np.testing.assert_array_equal(again.query(new, 3)[0], index.query(new, 3)[0])


def test_add_and_query_from_two_threads(small: tuple[np.ndarray, AnnIndex]) -> None:
    _, index = small
    new = unit(400, 16, seed=5)
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(0, 400, 20):
                index.add(new[start : start + 20], np.arange(300 + start, 320 + start))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        labels, _ = index.query(new[:8], 5)
        assert labels.min() >= 0 and labels.max() < 700
    thread.join()
    assert not failures
    assert index.count == 700
    np.testing.assert_array_equal(index.query(new, 1)[0][:, 0], np.arange(300, 700))


def test_k_capped_at_count_and_ef_below_k() -> None:
    index = AnnIndex.build(unit(5, 8), AnnParams(M=4, ef_construction=16, ef_search=2))
    labels, scores = index.query(unit(3, 8, seed=9), 10)
    assert labels.shape == scores.shape == (3, 5)
    assert all(sorted(row) == [0, 1, 2, 3, 4] for row in labels.tolist())
    data = unit(400, 16, seed=6)
    index = AnnIndex.build(data, AnnParams(M=8, ef_construction=64, ef_search=4))
    labels, _ = index.query(data[:4], 50, ef=1)
    assert labels.shape == (4, 50) and all(len(set(row)) == 50 for row in labels.tolist())
    np.testing.assert_array_equal(exact_search(data, data[:4], 50)[0][:, 0], labels[:, 0])


def test_empty_index(tmp_path: Path) -> None:
    index = AnnIndex.build(np.zeros((0, 12), np.float32), AnnParams())
    assert (index.count, index.dim) == (0, 12)
    labels, scores = index.query(unit(2, 12), 5)
    assert labels.shape == scores.shape == (2, 0)
    loaded = AnnIndex.load(tmp_path, index.save(tmp_path))
    assert loaded.count == 0 and loaded.query(unit(1, 12), 3)[0].shape == (1, 0)
    loaded.add(unit(3, 12, seed=7), np.array([0, 1, 2]))
    assert loaded.query(unit(3, 12, seed=7), 5)[0][:, 0].tolist() == [0, 1, 2]
    labels, scores = exact_search(np.zeros((0, 12)), unit(2, 12), 4)
    assert labels.shape == (2, 0)
    assert recall_at_k(labels, labels) == 1.0


@pytest.mark.parametrize(
    ("vectors", "words"),
    [
        (np.ones((3, 17), np.float32), "dimension 17 but the index has 16"),
        (np.full((2, 16), np.nan, np.float32), "NaN or infinite"),
        (np.full((2, 16), np.inf, np.float32), "NaN or infinite"),
        (np.zeros((2, 16), np.float32), "row 0 is all zeros"),
        (np.ones((2, 4, 4), np.float32), "expected a (rows, dim) matrix"),
        (np.array([["a"] * 16]), "expected real numbers"),
    ],
)
def test_bad_vectors_refused(small: tuple[np.ndarray, AnnIndex], vectors: np.ndarray, words: str) -> None:
    _, index = small
    for call in (lambda: index.query(vectors, 3), lambda: index.add(vectors, np.arange(1000, 1000 + len(vectors)))):
        with pytest.raises(FastslowError, match=r"^[^\n]*$") as exc:
            call()
        assert words in str(exc.value)
    assert index.count == 300


def test_bad_build_input_and_arguments(small: tuple[np.ndarray, AnnIndex]) -> None:
    data, index = small
    with pytest.raises(FastslowError, match="NaN"):
        AnnIndex.build(np.array([[1.0, np.nan]]), AnnParams())
    with pytest.raises(FastslowError, match="duplicates"):
        AnnIndex.build(data[:3], AnnParams(), labels=np.array([1, 1, 2]))
    with pytest.raises(FastslowError, match="non-negative"):
        index.add(data[:2], np.array([-1, 5000]))
    with pytest.raises(FastslowError, match="one per vector"):
        index.add(data[:2], np.array([5000]))
    with pytest.raises(FastslowError, match="k=0"):
        index.query(data[:1], 0)
    with pytest.raises(FastslowError, match="ef=0"):
        index.query(data[:1], 3, ef=0)
    with pytest.raises(FastslowError, match="M=1"):
        AnnParams(M=1)
    assert index.count == 300


def corrupt_flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("truncate", "bytes, the manifest says"),
        ("truncate-consistent", "shorter than its header says"),
        ("flip-data", "sha256 does not match"),
        ("flip-header", "header does not match"),
        ("wrong-sha", "sha256 does not match"),
        ("garbage", "header does not match"),
        ("tiny", "shorter than an hnswlib header"),
        ("wrong-dim", "header does not match"),
        ("wrong-count", "header does not match"),
        ("missing-key", "lacks sha256"),
        ("bad-space", "space 'l2'"),
        ("bad-sizes", "implausible sizes"),
        ("missing-file", "is missing"),
    ],
)
def test_damaged_file_refused(small: tuple[np.ndarray, AnnIndex], tmp_path: Path, damage: str, words: str) -> None:
    _, index = small
    info = index.save(tmp_path)
    path = tmp_path / "hnsw.bin"
    size = path.stat().st_size
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "truncate-consistent":  # a sidecar written for the truncated file
        path.write_bytes(path.read_bytes()[: size // 2])
        info |= {"bytes": size // 2, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    elif damage == "flip-data":
        corrupt_flip(path, size - 7)
    elif damage == "flip-header":  # with a matching sha: only the header check stands in the way
        corrupt_flip(path, 24)
        info |= {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    elif damage == "wrong-sha":
        info |= {"sha256": "0" * 64}
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(size))
        info |= {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    elif damage == "tiny":
        path.write_bytes(b"\x00" * 10)
        info |= {"bytes": 10, "sha256": hashlib.sha256(b"\x00" * 10).hexdigest()}
    elif damage == "wrong-dim":
        info |= {"dim": 32}
    elif damage == "wrong-count":
        info |= {"count": 301}
    elif damage == "missing-key":
        del info["sha256"]
    elif damage == "bad-space":
        info |= {"space": "l2"}
    elif damage == "bad-sizes":
        info |= {"dim": -3}
    elif damage == "missing-file":
        path.unlink()
    with pytest.raises(FastslowError) as exc:
        AnnIndex.load(tmp_path, info)
    assert words in str(exc.value)
    if damage != "missing-file":
        one_line_rebuild_error(exc, tmp_path)


def test_failed_save_keeps_previous_file(
    small: tuple[np.ndarray, AnnIndex], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, index = small
    info = index.save(tmp_path)
    before = (tmp_path / "hnsw.bin").read_bytes()
    index.add(unit(10, 16, seed=12), np.arange(300, 310))

    def interrupted(path: Path) -> str:
        raise KeyboardInterrupt  # after hnswlib wrote the temporary file, before the rename

    monkeypatch.setattr("fastslow_cli.index.hnsw.file_sha256", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "hnsw.bin").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["hnsw.bin"]
    assert AnnIndex.load(tmp_path, info).count == 300


def test_exact_search_and_recall() -> None:
    data, queries = unit(50, 8, seed=10), unit(7, 8, seed=11)
    labels, scores = exact_search(data * 4.0, queries, 60)
    assert labels.shape == (7, 50)
    sims = queries @ data.T
    np.testing.assert_array_equal(labels, np.argsort(-sims, axis=1, kind="stable"))
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1], atol=1e-6)
    top3 = exact_search(data, queries, 3)[0]
    np.testing.assert_array_equal(top3, labels[:, :3])
    assert recall_at_k(top3, top3) == 1.0
    assert recall_at_k(top3[:, ::-1], top3) == 1.0  # order inside the top-k does not matter
    shifted = top3.copy()
    shifted[:, 0] = 99
    assert recall_at_k(shifted, top3) == pytest.approx(2 / 3)
    with pytest.raises(FastslowError, match="same queries"):
        recall_at_k(top3[:2], top3)
