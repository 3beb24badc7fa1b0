"""The HNSW vector index: hnswlib inner product over L2-normalised float32 vectors.

hnswlib is fast but unforgiving (see DESIGN.md, "Known traps"): it has no lock between
`add_items` and `knn_query` (nmslib/hnswlib #29, #100, #562), fails when `k` exceeds the
live items or `ef < k` (#93), and can crash or exhaust memory on a damaged file (#295,
#180). `AnnIndex` wraps it so none of these reach the user: one lock around every call,
`k` capped and `ef` raised, and a file checked against its sidecar info (size, sha256,
header) before hnswlib ever reads it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from fastslow_cli.atomic import atomic_path, file_sha256
from fastslow_cli.errors import FastslowError
from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M

INDEX_FILE = "hnsw.bin"
SPACE = "ip"
REBUILD = "rebuild it with `fastslow index build`"
SEED = 100
# hnswlib's saveIndex header: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel, enterpoint (int32),
# maxM, maxM0, M (size_t), mult (double), ef_construction (size_t).
_HEADER = struct.Struct("<6Qii3QdQ")
_INFO_KEYS = ("file", "sha256", "bytes", "dim", "space", "count", "M", "ef_construction", "ef_search")


@dataclass(frozen=True)
class AnnParams:
    """HNSW graph degree, build-time and query-time beam widths."""

    M: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF

    def __post_init__(self) -> None:
        for name in ("M", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FastslowError(
                    f"HNSW parameter {name}={value!r} is invalid: use a positive integer"
                )
        if self.M < 2:
            raise FastslowError(
                f"HNSW parameter M={self.M} is too small: use --M 2 or more (32 is a good default)"
            )


def _as_matrix(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """Check `vectors` (2-D, or 1-D for one row) and return them L2-normalised as float32."""
    arr = np.asarray(vectors)
    if arr.ndim == 1 and arr.size:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise FastslowError(f"{what} have shape {arr.shape}: expected a (rows, dim) matrix with dim >= 1")
    if dim is not None and arr.shape[1] != dim:
        raise FastslowError(
            f"{what} have dimension {arr.shape[1]} but the index has {dim}: "
            f"use the model the index was built with, or {REBUILD}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise FastslowError(f"{what} have dtype {arr.dtype}: expected real numbers")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise FastslowError(
            f"{what} contain NaN or infinite values: check the model that produced them"
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and not (norms > 0).all():
        bad = int(np.flatnonzero(norms[:, 0] <= 0)[0])
        raise FastslowError(
            f"{what} row {bad} is all zeros and cannot be normalised: check the model that produced it"
        )
    return np.ascontiguousarray(arr / norms) if arr.shape[0] else arr


def _as_labels(labels: np.ndarray, rows: int) -> np.ndarray:
    """Labels must be unique non-negative integers, one per row."""
    arr = np.asarray(labels)
    if arr.shape != (rows,) or (rows and not np.issubdtype(arr.dtype, np.integer)):
        raise FastslowError(
            f"labels have shape {arr.shape} and dtype {arr.dtype}: "
            f"expected {rows} integers, one per vector"
        )
    arr = arr.astype(np.int64)
    if rows and arr.min() < 0:
        raise FastslowError("labels must be non-negative integers")
    if np.unique(arr).size != rows:
        raise FastslowError("labels contain duplicates: give every vector its own label")
    return arr


class AnnIndex:
    """hnswlib inner-product index over L2-normalised float32 vectors, labels 0..n-1.

    Scores are inner products of unit vectors (cosine similarity; higher = better).
    All calls into hnswlib hold one lock, so `add` never runs during a `query` or `save`.
    """

    def __init__(self, index: hnswlib.Index, params: AnnParams, source: Path | None = None) -> None:
        self._index = index
        self.params = params
        self._source = source
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls, vectors: np.ndarray, params: AnnParams, labels: np.ndarray | None = None, *, threads: int = 1
    ) -> AnnIndex:
        """Build from `vectors` (rows = items). `threads=1` (default) is bit-reproducible;
        more threads build faster but the graph then depends on thread timing."""
        data = _as_matrix(vectors, "vectors")
        ids = _as_labels(np.arange(data.shape[0]) if labels is None else labels, data.shape[0])
        index = hnswlib.Index(space=SPACE, dim=data.shape[1])
        index.init_index(
            max_elements=max(1, data.shape[0]),
            M=params.M,
            ef_construction=params.ef_construction,
            random_seed=SEED,
        )
        if data.shape[0]:
            index.add_items(data, ids, num_threads=threads)
        return cls(index, params)

    @property
    def count(self) -> int:
        """Number of live items."""
        return int(self._index.element_count)

    @property
    def dim(self) -> int:
        return int(self._index.dim)

    def _where(self) -> str:
        return f"index file {self._source}" if self._source else "the index"

    def add(self, vectors: np.ndarray, labels: np.ndarray, *, threads: int = 1) -> None:
        """Add items without a rebuild, growing capacity as needed. A label already in the
        index has its vector replaced (a re-extracted item keeps its label)."""
        data = _as_matrix(vectors, "vectors to add", self.dim)
        ids = _as_labels(labels, data.shape[0])
        if not data.shape[0]:
            return
        with self._lock:
            needed = self.count + data.shape[0]
            capacity = self._index.max_elements
            if needed > capacity:
                self._index.resize_index(max(needed, 2 * capacity))
            self._index.add_items(data, ids, num_threads=threads)

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        """The stored (unit) vectors of `labels`, (n, dim) float32: an index update copies
        unchanged items' vectors instead of encoding them again."""
        ids = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not ids.size:
            return np.empty((0, self.dim), np.float32)
        with self._lock:
            try:
                data = self._index.get_items(ids, return_type="numpy")
            except RuntimeError as exc:  # a label the index does not hold
                raise FastslowError(f"{self._where()} lacks an item it should hold ({exc}): {REBUILD}") from exc
        return np.asarray(data, dtype=np.float32).reshape(ids.size, self.dim)

    def query(self, vectors: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels (int64) and scores (float32), each (Q, k') with k' = min(k, count),
        best first. `ef` defaults to the index's ef_search and is raised to k if smaller."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise FastslowError(f"k={k!r} is invalid: ask for at least 1 result")
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1):
            raise FastslowError(f"ef={ef!r} is invalid: use a positive integer (--ef)")
        data = _as_matrix(vectors, "query vectors", self.dim)
        with self._lock:
            kk = min(int(k), self.count)
            if kk == 0 or not data.shape[0]:
                return np.empty((data.shape[0], kk), np.int64), np.empty((data.shape[0], kk), np.float32)
            self._index.set_ef(max(int(ef if ef is not None else self.params.ef_search), kk))
            try:
                labels, distances = self._index.knn_query(data, k=kk)
            except RuntimeError as exc:  # hnswlib #93: graph too sparse to return k results
                raise FastslowError(
                    f"{self._where()} could not return {kk} results ({exc}): use a larger --ef"
                ) from exc
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def save(self, directory: Path) -> dict[str, Any]:
        """Write `directory/hnsw.bin` atomically; return the sidecar info for the manifest."""
        target = Path(directory) / INDEX_FILE
        with self._lock, atomic_path(target) as tmp:
            self._index.save_index(str(tmp))
            info = {
                "file": INDEX_FILE,
                "sha256": file_sha256(tmp),
                "bytes": tmp.stat().st_size,
                "dim": self.dim,
                "space": SPACE,
                "count": self.count,
                "M": self.params.M,
                "ef_construction": self.params.ef_construction,
                "ef_search": self.params.ef_search,
            }
        return info

    @classmethod
    def load(cls, directory: Path, info: dict[str, Any]) -> AnnIndex:
        """Open an index saved by `save`, refusing (never crashing on) a damaged file."""
        path = Path(directory) / INDEX_FILE

        def damaged(why: str) -> FastslowError:
            return FastslowError(f"index file {path} is damaged ({why}): {REBUILD}")

        missing = [key for key in _INFO_KEYS if not isinstance(info, dict) or key not in info]
        if missing:
            raise damaged("its manifest entry lacks " + ", ".join(missing))
        if info["file"] != INDEX_FILE or info["space"] != SPACE:
            raise damaged(
                f"the manifest names {info['file']!r} in space {info['space']!r}, "
                f"expected {INDEX_FILE!r} in {SPACE!r}"
            )
        sizes = {key: info[key] for key in ("bytes", "dim", "count")}
        bad_size = any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in sizes.values())
        if bad_size or sizes["dim"] < 1:
            raise damaged(f"the manifest has implausible sizes {sizes}")
        try:
            params = AnnParams(
                M=info["M"], ef_construction=info["ef_construction"], ef_search=info["ef_search"]
            )
        except FastslowError as exc:
            raise damaged(f"the manifest's parameters: {exc}") from exc
        if not path.is_file():
            raise FastslowError(f"index file {path} is missing: {REBUILD}")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise damaged(f"{size} bytes, the manifest says {info['bytes']}")
        _check_header(path, size, info["dim"], info["count"], params, damaged)
        if file_sha256(path) != info["sha256"]:
            raise damaged("sha256 does not match the manifest")
        index = hnswlib.Index(space=SPACE, dim=info["dim"])
        try:
            # max_elements = count bounds the allocation to what the checks above verified.
            index.load_index(str(path), max_elements=max(1, info["count"]))
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise damaged(f"hnswlib: {exc}") from exc
        if index.element_count != info["count"]:
            raise damaged(f"it holds {index.element_count} items, the manifest says {info['count']}")
        index.set_ef(params.ef_search)
        return cls(index, params, source=path)


def _check_header(
    path: Path, size: int, dim: int, count: int, params: AnnParams, damaged: Callable[[str], FastslowError]
) -> None:
    """Check hnswlib's header against the manifest, so hnswlib never sizes buffers from garbage."""
    with open(path, "rb") as fh:
        raw = fh.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise damaged(f"{len(raw)} bytes, shorter than an hnswlib header")
    fields = _HEADER.unpack(raw)
    offset0, _capacity, h_count, per_elem, label_off, data_off, max_level, entry = fields[:8]
    max_m, max_m0, m, _mult, ef_c = fields[8:]
    links0 = 4 * 2 * params.M + 4  # level-0 neighbour list: count + 2M neighbour ids (uint32)
    found = (offset0, h_count, m, max_m, max_m0, ef_c, data_off, label_off, per_elem)
    label_at = links0 + 4 * dim  # then the vector (dim float32), then the uint64 label
    expected = (0, count, params.M, params.M, 2 * params.M, params.ef_construction)
    expected += (links0, label_at, label_at + 8)
    if found != expected:
        raise damaged("its header does not match the manifest's dim, count, M or ef_construction")
    if count and not (0 <= entry < count and max_level >= 0):
        raise damaged("its header has an invalid entry point")
    if size < _HEADER.size + count * (per_elem + 4):
        raise damaged("truncated: shorter than its header says")


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product of L2-normalised rows: the ground truth for
    recall and the baseline for benchmarks. Labels are row positions in `vectors`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FastslowError(f"k={k!r} is invalid: ask for at least 1 result")
    base = _as_matrix(vectors, "vectors")
    qs = _as_matrix(queries, "query vectors", base.shape[1])
    kk = min(int(k), base.shape[0])
    labels = np.empty((qs.shape[0], kk), np.int64)
    scores = np.empty((qs.shape[0], kk), np.float32)
    if kk == 0:
        return labels, scores
    block = max(1, (1 << 24) // base.shape[0])  # bound the (block, N) score matrix to ~64 MB
    for start in range(0, qs.shape[0], block):
        sims = qs[start : start + block] @ base.T
        if kk < base.shape[0]:
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            top = np.broadcast_to(np.arange(kk), sims.shape)
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        labels[start : start + block] = np.take_along_axis(top, order, axis=1)
        scores[start : start + block] = np.take_along_axis(top_scores, order, axis=1)
    return labels, scores


def recall_at_k(approx_labels: np.ndarray, exact_labels: np.ndarray) -> float:
    """Fraction of the exact top-k found anywhere in the approximate top-k, over all queries
    (1.0 when there is nothing to find)."""
    approx, exact = np.asarray(approx_labels), np.asarray(exact_labels)
    if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0]:
        raise FastslowError(
            f"recall needs (Q, k) label matrices for the same queries, got {approx.shape} and {exact.shape}"
        )
    if exact.size == 0:
        return 1.0
    found = sum(np.isin(e, a).sum() for a, e in zip(approx, exact))
    return float(found) / exact.size
