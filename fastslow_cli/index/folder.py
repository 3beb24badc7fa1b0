"""The search index: HNSW over Fast item vectors, the item table, and the cached Slow memory.

```
index/<name>/hnsw.bin              hnswlib index (labels = rows of items.parquet)
index/<name>/items.parquet         label, id, path, kind, frames, timestamps, and what each item
                                   was built from (size, mtime_ns, content_hash)
index/<name>/frame_vectors.npy     Fast vector of every frame (best timestamp of a video hit)
index/<name>/slow_memory.f16       Slow visual memory of every item, float16 rows (mmap), or
index/<name>/slow_memory.i8        int8 rows + slow_memory.scale.npy (index/memory.py; `--memory`)
index/<name>/slow_memory.offsets.npy   item i owns rows offsets[i]:offsets[i+1]
index/<name>/manifest.json         models (content hashes), feature set, dim, HNSW sidecar, counts
index/.<name>.lock                 writer lock (flock): one build or update at a time; readers take none
```

The Parquet features are the source of truth; an index is a rebuildable artefact. A build
and an update both write a complete new folder next to the old one (one writer,
`write_index`) and swap it in, so an interrupted write leaves the previous index usable.
An update re-encodes only new and changed items and copies the rest from the old folder.

Paths inside the workspace (models, the feature set) are recorded relative to it (the
folder two levels above the index: WORKSPACE/index/NAME), so a moved or copied workspace
uses its own models; paths outside it stay absolute, hub ids stay ids.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastslow_cli.index.hnsw import AnnIndex, AnnParams
from fastslow_cli.index.memory import DEFAULT_DTYPE, FILES as MEMORY_FILES, MemoryWriter, StoredMemory, check_dtype
from fastslow_cli.atomic import atomic_path, atomic_write_json, check_writable, fsync_dir
from fastslow_cli.errors import FastslowError
from fastslow_cli.media.location import known_gone
from fastslow_cli.store.parquet import FeatureStore, FeatureTable, StoreEntry

if TYPE_CHECKING:
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever

FORMAT = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
OFFSETS = "slow_memory.offsets.npy"
FRAME_VECTORS = "frame_vectors.npy"
FRAME_OFFSETS = "frame_vectors.offsets.npy"
CHUNK = 2048  # items encoded per step: bounds memory on large sets

Progress = Callable[[int], None]
_HELD: set[str] = set()  # index folders whose writer lock this process holds


@dataclass
class BuildReport:
    items: int
    skipped_missing: int
    seconds: float
    directory: str


@dataclass
class UpdateReport:
    """What `update_index` changed: item counts, and the index size after it."""

    added: int
    updated: int
    removed: int
    items: int
    seconds: float
    directory: str


# ----------------------------------------------------------------------------- folders


def _siblings(directory: Path, tag: str) -> list[Path]:
    return sorted(directory.parent.glob(f".{directory.name}.{tag}-*"))


def recover(directory: Path) -> None:
    """Finish or undo a swap cut short: the old index comes back if the new one is not in place.

    An old folder of a live process is left alone: that process is between its two
    renames and is about to move its new index in.
    """
    olds = _siblings(directory, "old")
    if not directory.exists() and olds and not _owned_by_live_process(olds[-1]):
        os.replace(olds[-1], directory)
        olds = olds[:-1]
    for stale in olds + _siblings(directory, "building"):
        if stale.exists() and not _owned_by_live_process(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _owned_by_live_process(path: Path) -> bool:
    try:
        pid = int(path.name.rsplit("-", 1)[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _swap_in(tmp: Path, directory: Path) -> None:
    """Replace `directory` by the finished `tmp` (two renames; `recover` covers a crash between)."""
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """One writer per index (hnswlib has no lock, and two swaps could race): a second
    build or update on the same index fails at once instead of waiting or interleaving.
    Reentrant within a process, so `update_index` can hold it from its read of the old
    index through `write_index`."""
    key = os.path.abspath(directory)
    if key in _HELD:
        yield
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FastslowError(
                f"index {directory} is being written by another process: wait for it to finish, or use another --name"
            ) from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _new_build_dir(directory: Path) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    tmp = directory.parent / f".{directory.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


# ----------------------------------------------------------------------------- workspace paths


def workspace_of(directory: Path) -> Path:
    """The workspace an index folder belongs to: WORKSPACE/index/NAME -> WORKSPACE."""
    return Path(directory).resolve().parent.parent


def _portable_path(path: str, root: Path) -> str:
    """A path inside `root` as a relative POSIX path; anything else as given."""
    if not os.path.isabs(path):
        return path
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def _portable_model(identity: dict[str, Any], root: Path) -> dict[str, Any]:
    """A model identity to record: a folder inside the workspace becomes relative to it and is
    marked `in_workspace` (a relative path could otherwise pass for a hub id)."""
    path = str(identity.get("path") or "")
    portable = _portable_path(path, root)
    return {**identity, "path": portable, "in_workspace": True} if portable != path else dict(identity)


def _resolved_model(identity: dict[str, Any], root: Path) -> str:
    """Where a recorded model is: in this workspace, an absolute folder, or a hub id."""
    path = str(identity.get("path") or "")
    return str(root / path) if identity.get("in_workspace") else path


# ----------------------------------------------------------------------------- writing


def _items_table(chunk: IndexChunk, labels: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "label": pa.array(labels, pa.int64()),
            "id": pa.array(chunk.ids, pa.string()),
            "path": pa.array(chunk.paths, pa.string()),
            "kind": pa.array(chunk.kinds, pa.string()),
            "frames": pa.array(np.asarray(chunk.frames), pa.int32()),
            "timestamps": pa.array([list(map(float, t)) for t in chunk.timestamps], pa.list_(pa.float64())),
            "size": pa.array(chunk.sizes, pa.int64()),
            "mtime_ns": pa.array(chunk.mtimes_ns, pa.int64()),
            "content_hash": pa.array(chunk.content_hashes, pa.string()),
        }
    )


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _frame_vectors(fast: FastRetriever, table: FeatureTable, item_vectors: np.ndarray) -> np.ndarray:
    """Fast vector of every frame, frame-major per item: a video's frames are encoded one by
    one (to point at the best-matching moment); an image's frame vector is its item vector."""
    frames = np.asarray(table.frames)
    rows = [(i, t) for i in range(len(frames)) if frames[i] > 1 for t in range(int(frames[i]))]
    out = np.repeat(item_vectors, np.maximum(frames, 1), axis=0).astype(np.float32)
    if rows:
        items, times = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        single = FeatureTable(
            ids=[table.ids[i] for i in items],
            paths=[table.paths[i] for i in items],
            kinds=["image"] * len(rows),
            frames=np.ones(len(rows), dtype=np.int64),
            timestamps=[[table.timestamps[i][t]] for i, t in rows],
            levels=[lv[items, times][:, None] for lv in table.levels],
            frame_mask=np.ones((len(rows), 1), dtype=bool),
        )
        starts = np.concatenate([[0], np.cumsum(np.maximum(frames, 1))[:-1]])
        out[starts[items] + times] = fast.encode_items(single)
    return out


@dataclass
class IndexChunk:
    """Consecutive items ready to be written: item metadata and what the models made of them."""

    ids: list[str]
    paths: list[str]
    kinds: list[str]
    frames: np.ndarray
    timestamps: list[list[float]]
    vectors: np.ndarray  # (n, dim) Fast item vectors
    frame_vectors: np.ndarray  # (frames.sum(), dim) Fast vector of every frame, item after item
    memories: list[np.ndarray] | None  # Slow memory (L_i, width) per item; None without a Slow model
    # What each item was built from (its store entry): `update_index` re-encodes an item when these change.
    sizes: Sequence[int]
    mtimes_ns: Sequence[int]
    content_hashes: Sequence[str]


def encode_table(table: FeatureTable, sources: Sequence[StoreEntry], fast: FastRetriever, slow: SlowRetriever | None) -> IndexChunk:
    """What the models make of one loaded table: Fast item and frame vectors, Slow memories,
    and the store entries (`sources`, one per item) the items were built from. Both engines
    call it (`_encoded_chunks` here, the Ray actors in index/encode_ray.py)."""
    vectors = fast.encode_items(table)
    return IndexChunk(
        ids=table.ids,
        paths=table.paths,
        kinds=table.kinds,
        frames=np.asarray(table.frames),
        timestamps=table.timestamps,
        vectors=vectors,
        frame_vectors=_frame_vectors(fast, table, vectors),
        memories=slow.encode_items(table) if slow is not None else None,
        sizes=[e.size for e in sources],
        mtimes_ns=[e.mtime_ns for e in sources],
        content_hashes=[e.content_hash for e in sources],
    )


def _encoded_chunks(
    store: FeatureStore,
    entries: Mapping[str, StoreEntry],
    ids: Sequence[str],
    fast: FastRetriever,
    slow: SlowRetriever | None,
) -> Iterator[IndexChunk]:
    """Load and encode `ids` CHUNK at a time (bounded memory on large sets)."""
    for start in range(0, len(ids), CHUNK):
        table = store.load(ids[start : start + CHUNK])
        yield encode_table(table, [entries[i] for i in table.ids], fast, slow)


class Encoder(Protocol):
    """Who turns id lists into `IndexChunk` streams: this process (`local_encoder`) or Ray
    actors (index/encode_ray.py). Given groups of ids (one per shard, or one), it yields one
    stream per group, in the group's id order and CHUNK-bounded; the writers consume the
    streams one after the other. Leaving the context stops whatever still runs."""

    def __call__(
        self,
        store: FeatureStore,
        entries: Mapping[str, StoreEntry],
        groups: Sequence[Sequence[str]],
        fast: FastRetriever,
        slow: SlowRetriever | None,
    ) -> AbstractContextManager[list[Iterator[IndexChunk]]]: ...


@contextmanager
def local_encoder(
    store: FeatureStore,
    entries: Mapping[str, StoreEntry],
    groups: Sequence[Sequence[str]],
    fast: FastRetriever,
    slow: SlowRetriever | None,
) -> Iterator[list[Iterator[IndexChunk]]]:
    """The default `Encoder`: each group loaded and encoded in this process, CHUNK at a time."""
    yield [_encoded_chunks(store, entries, ids, fast, slow) for ids in groups]


def _reused_chunks(index: SearchIndex, labels: Sequence[int]) -> Iterator[IndexChunk]:
    """Items of an open index as they are, CHUNK at a time: an update copies them instead of re-encoding."""
    items, f_off = index.items, index.frame_offsets
    for start in range(0, len(labels), CHUNK):
        part = list(labels[start : start + CHUNK])
        column = lambda name: [items[name][i] for i in part]  # noqa: E731
        yield IndexChunk(
            ids=column("id"),
            paths=column("path"),
            kinds=column("kind"),
            frames=np.asarray(column("frames"), dtype=np.int64),
            timestamps=column("timestamps"),
            vectors=index.ann.vectors(part),
            frame_vectors=np.concatenate([np.asarray(index.frame_vectors[f_off[i] : f_off[i + 1]]) for i in part]),
            memories=index.memories(part) if index.memory is not None else None,
            sizes=column("size"),
            mtimes_ns=column("mtime_ns"),
            content_hashes=column("content_hash"),
        )


def write_index(
    directory: Path,
    chunks: Iterable[IndexChunk],
    fast_identity: dict[str, Any],
    slow_identity: dict[str, Any] | None,
    slow_width: int | None,
    params: AnnParams,
    feature_set: str,
    feature_fingerprint: str,
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
    memory_dtype: str = DEFAULT_DTYPE,
) -> int:
    """Write a complete index from encoded chunks into a new folder and swap it in; returns the item count.

    `build_index` feeds it chunks encoded from the feature store, `update_index` chunks
    copied from the old index plus newly encoded ones, benchmarks precomputed vectors and
    memories: all write (and later read) the same format. `extra` adds manifest keys.
    If anything fails (an encoder error, Ctrl-C), the previous index is left as it was.
    A folder that cannot be written is refused before any chunk is encoded.
    """
    check_writable(directory)
    check_dtype(memory_dtype)
    with writer_lock(directory):
        tmp = _new_build_dir(directory)
        try:
            manifest = write_folder(
                tmp, chunks, fast_identity, slow_identity, slow_width, params, feature_set, feature_fingerprint,
                progress, extra, memory_dtype, root=workspace_of(directory), name=directory.name,
            )
            _swap_in(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return int(manifest["count"])


def write_folder(
    tmp: Path,
    chunks: Iterable[IndexChunk],
    fast_identity: dict[str, Any],
    slow_identity: dict[str, Any] | None,
    slow_width: int | None,
    params: AnnParams,
    feature_set: str,
    feature_fingerprint: str,
    progress: Progress | None,
    extra: dict[str, Any] | None,
    memory_dtype: str,
    root: Path,
    name: str,
) -> dict[str, Any]:
    """The files of one index folder, written into the empty folder `tmp` (no lock, no swap:
    `write_index` and the sharded writer provide those); returns its manifest."""
    vectors, frame_vecs, frame_offsets, memory_offsets, tables = [], [], [0], [0], []
    count = 0
    with open(tmp / MEMORY_FILES[memory_dtype], "wb") as mem_fh:
        memory = MemoryWriter(mem_fh, tmp, memory_dtype)
        for chunk in chunks:
            n = len(chunk.ids)
            frames = np.asarray(chunk.frames)
            if len(chunk.vectors) != n or len(chunk.frame_vectors) != int(frames.sum()):
                raise ValueError(f"index chunk of {n} items has {len(chunk.vectors)} vectors, {len(chunk.frame_vectors)} frame vectors")
            if (chunk.memories is None) != (slow_identity is None) or (chunk.memories is not None and len(chunk.memories) != n):
                raise ValueError("index chunk memories must be given, one per item, exactly when there is a Slow model")
            vectors.append(np.asarray(chunk.vectors, dtype=np.float32))
            frame_vecs.append(np.asarray(chunk.frame_vectors, dtype=np.float32))
            frame_offsets.extend((frame_offsets[-1] + np.cumsum(frames)).tolist())
            for m in chunk.memories or []:
                memory.write(m)
                memory_offsets.append(memory_offsets[-1] + m.shape[0])
            tables.append(_items_table(chunk, np.arange(count, count + n)))
            count += n
            if progress is not None:
                progress(n)
        memory.finish()
    if not count:
        raise ValueError("an index needs at least one item")
    all_vectors = np.concatenate(vectors)
    ann = AnnIndex.build(all_vectors, params, labels=np.arange(count), threads=os.cpu_count() or 1)
    hnsw_info = ann.save(tmp)
    kinds = pa.concat_tables(tables).column("kind").to_pylist()
    _write_parquet(pa.concat_tables(tables), tmp / ITEMS)
    _write_npy(np.concatenate(frame_vecs), tmp / FRAME_VECTORS)
    _write_npy(np.asarray(frame_offsets, dtype=np.int64), tmp / FRAME_OFFSETS)
    _write_npy(np.asarray(memory_offsets, dtype=np.int64), tmp / OFFSETS)
    manifest = {
        "format": FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "feature_set": _portable_path(feature_set, root),
        "feature_fingerprint": feature_fingerprint,
        "fast": _portable_model(fast_identity, root),
        "slow": _portable_model(slow_identity, root) if slow_identity is not None else None,
        "dim": int(all_vectors.shape[1]),
        "count": count,
        "images": kinds.count("image"),
        "videos": kinds.count("video"),
        "memory": (
            {"width": int(slow_width), "rows": memory_offsets[-1], "dtype": memory_dtype}
            if slow_identity is not None
            else None
        ),
        "hnsw": hnsw_info,
        **(extra or {}),
    }
    atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def build_index(
    store: FeatureStore,
    directory: Path,
    fast: FastRetriever,
    slow: SlowRetriever | None,
    params: AnnParams = AnnParams(),
    progress: Progress | None = None,
    ids: Sequence[str] | None = None,
    memory_dtype: str = DEFAULT_DTYPE,
    encoder: Encoder = local_encoder,
) -> BuildReport:
    """Encode every stored item (or `ids`) with the Fast model (and Slow memory) and write the index.

    Items whose media file no longer exists are left out (a moved file was re-extracted
    under its new id). `memory_dtype` is how the Slow memory is stored (index/memory.py).
    `encoder` is where the encoding runs (this process, or Ray: index/encode_ray.py).
    """
    started = time.perf_counter()
    entries = store.entries()
    wanted = sorted(entries) if ids is None else list(ids)
    present = [i for i in wanted if not known_gone(entries[i].path)] if ids is None else wanted
    if not present:
        raise FastslowError(f"feature set {store.directory} has no items to index: run `fastslow extract PATH` first")
    with encoder(store, entries, [present], fast, slow) as (chunks,):
        write_index(
            directory,
            chunks,
            fast_identity=fast.identity,
            slow_identity=slow.identity if slow is not None else None,
            slow_width=slow.width if slow is not None else None,
            params=params,
            feature_set=str(store.directory),
            feature_fingerprint=store.fingerprint(),
            progress=progress,
            memory_dtype=memory_dtype,
        )
    skipped = len(wanted) - len(present)
    return BuildReport(len(present), skipped, time.perf_counter() - started, str(directory))


def check_update(index: Any, store: FeatureStore, fast: FastRetriever, slow: SlowRetriever | None) -> None:
    """What an update of `index` (sharded or not) needs before it encodes anything: the models it
    was built with, a Slow model when it caches Slow memory, and the feature set it came from."""
    directory = index.directory
    index.check_models(fast, slow)
    if slow is None and index.memory is not None:
        raise FastslowError(
            f"index {directory} caches Slow memory: pass its Slow model (--slow) so new items get theirs too"
        )
    if index.manifest["feature_fingerprint"] != store.fingerprint():
        raise FastslowError(f"index {directory} was built from another feature set: rebuild it with `fastslow index build`")


def update_index(
    store: FeatureStore,
    directory: Path,
    fast: FastRetriever,
    slow: SlowRetriever | None,
    progress: Progress | None = None,
    encoder: Encoder = local_encoder,
) -> UpdateReport:
    """Bring an index in line with its feature set: add new items, re-encode changed ones
    (same id, another path, size, mtime or content hash), drop those gone from the store or from disk.

    Unchanged items are copied from the old index (vectors, frame vectors, Slow memory) and
    only added and changed ones are encoded; the HNSW graph is rebuilt from all vectors by
    the same writer a build uses (docs/ARCHITECTURE.md gives the cost). Nothing is written
    when nothing changed. An index from before items recorded their sources is re-encoded whole.
    A sharded index is updated shard by shard (`update_sharded_index`). `encoder` is where the
    encoding runs (this process, or Ray: index/encode_ray.py).
    """
    if "shards" in read_manifest(directory):
        from fastslow_cli.index.shards import update_sharded_index

        return update_sharded_index(store, directory, fast, slow, progress, encoder)
    check_writable(directory)
    with writer_lock(directory):
        started = time.perf_counter()
        index = SearchIndex.open(directory)
        check_update(index, store, fast, slow)
        live = {i: e for i, e in store.entries().items() if not known_gone(e.path)}
        keep = _unchanged(index.items, live)
        known = set(index.items["id"])
        encode = sorted(i for i in live if i not in keep)
        added = sum(1 for i in encode if i not in known)
        removed = sum(1 for i in known if i not in live)
        if not encode and not removed:
            return UpdateReport(0, 0, 0, index.count, time.perf_counter() - started, str(directory))
        if not live:
            raise FastslowError(
                f"feature set {store.directory} has no item left whose media file exists: "
                "run `fastslow extract PATH` first, or remove the index"
            )
        manifest, hnsw = index.manifest, index.manifest["hnsw"]
        kept = ("created", "alpha")  # what a rebuild would lose: when it was first built, a tuned alpha
        with encoder(store, live, [encode], fast, slow) as (encoded,):
            count = write_index(
                directory,
                itertools.chain(_reused_chunks(index, sorted(keep.values())), encoded),
                fast.identity,
                slow.identity if slow is not None else None,
                slow.width if slow is not None else None,
                AnnParams(M=hnsw["M"], ef_construction=hnsw["ef_construction"], ef_search=hnsw["ef_search"]),
                str(store.directory),
                store.fingerprint(),
                progress,
                extra={**{k: manifest[k] for k in kept if k in manifest}, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                memory_dtype=index.memory_dtype,
            )
    return UpdateReport(added, len(encode) - added, removed, count, time.perf_counter() - started, str(directory))


SOURCE_KEYS = ("path", "size", "mtime_ns", "content_hash")


def _unchanged(items: dict[str, list[Any]], live: dict[str, StoreEntry]) -> dict[str, int]:
    """id -> label of the index items still built from their current store entry (none for an
    index that did not record what its items were built from)."""
    if not all(key in items for key in SOURCE_KEYS):
        return {}
    out: dict[str, int] = {}
    for label, item_id in enumerate(items["id"]):
        entry = live.get(item_id)
        if entry is not None and all(getattr(entry, key) == items[key][label] for key in SOURCE_KEYS):
            out[item_id] = label
    return out


# ----------------------------------------------------------------------------- reading


def read_manifest(directory: Path) -> dict[str, Any]:
    """The index's manifest (after recovering from a swap cut short), checked for format."""
    recover(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise FastslowError(f"no index at {directory}: build one with `fastslow index build`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FastslowError(f"{path} is unreadable ({exc}): rebuild the index with `fastslow index build`") from exc
    if manifest.get("format") != FORMAT:
        raise FastslowError(f"{path} has format {manifest.get('format')}, expected {FORMAT}: rebuild the index")
    return manifest


class SearchIndex:
    """A built index, opened for reading: HNSW, item table, frame vectors, Slow memory (mmap)."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.ann = AnnIndex.load(directory, manifest["hnsw"])
        try:
            # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports
            # pandas (0.3 s of a one-shot search's start-up, measured here) to read one file.
            items = pq.ParquetFile(directory / ITEMS).read()
            self.items = {name: items.column(name).to_pylist() for name in items.column_names}
            self.frame_vectors = np.load(directory / FRAME_VECTORS, mmap_mode="r")
            self.frame_offsets = np.load(directory / FRAME_OFFSETS)
            self.memory_offsets = np.load(directory / OFFSETS)
            memory = manifest.get("memory")
            self.memory = (
                StoredMemory(directory, memory.get("dtype", "f16"), memory["rows"], memory["width"])
                if memory and memory["rows"]
                else None
            )
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            why = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise FastslowError(
                f"index {directory} is damaged ({why[:200]}): rebuild it with `fastslow index build`"
            ) from exc
        count = manifest["count"]
        consistent = (
            len(self.items.get("id", [])) == count
            and len(self.frame_offsets) == count + 1
            and len(self.frame_vectors) == self.frame_offsets[-1]
            and (self.memory is None or (len(self.memory_offsets) == count + 1 and self.memory_offsets[-1] == len(self.memory)))
        )
        if not consistent:
            raise FastslowError(f"index {directory} is inconsistent: rebuild it with `fastslow index build`")

    @classmethod
    def open(cls, directory: Path) -> SearchIndex:
        """The index at `directory`, sharded (a `ShardedIndex`, index/shards.py) or not."""
        manifest = read_manifest(directory)
        if "shards" in manifest:
            from fastslow_cli.index.shards import ShardedIndex

            return ShardedIndex(directory, manifest)
        return cls(directory, manifest)

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def memory_dtype(self) -> str:
        """How the Slow memory is stored ("f16" for an index from before the choice)."""
        return str((self.manifest.get("memory") or {}).get("dtype", "f16"))

    @property
    def workspace(self) -> Path:
        return workspace_of(self.directory)

    @property
    def feature_set_dir(self) -> Path:
        """The feature set the index was built from (recorded relative to the workspace)."""
        return self.workspace / self.manifest["feature_set"]  # an absolute path stays itself

    def model_location(self, kind: str) -> str | None:
        """Where to load the index's Fast or Slow model (None: no Slow model): a folder of this
        index's own workspace, so a copied workspace never uses the original's models."""
        identity = self.manifest.get(kind)
        if identity is None:
            return None
        where = _resolved_model(identity, self.workspace)
        if (identity.get("in_workspace") or os.path.isabs(where)) and not Path(where).exists():
            raise FastslowError(
                f"the {kind.capitalize()} model of index {self.directory}, {where}, no longer exists: "
                f"rebuild the index with `{self.rebuild_command(None, None)}`"
            )
        return where

    def rebuild_command(self, fast: dict[str, Any] | None, slow: dict[str, Any] | None) -> str:
        """The `fastslow index build` line that rebuilds this index (with these model identities,
        else the recorded ones), for error messages."""
        fast = fast or self.manifest["fast"]
        slow = slow or self.manifest.get("slow")
        parts = ["fastslow", "index", "build", "--model", self._model_arg(fast)]
        if slow is not None:
            parts += ["--slow", self._model_arg(slow)]
        features = self.feature_set_dir
        if features.parent == self.workspace / "features" and features.name != "default":
            parts += ["--set", features.name]
        if self.directory.name != "default":
            parts += ["--name", self.directory.name]
        return shlex.join(parts)

    def _model_arg(self, identity: dict[str, Any]) -> str:
        """A model as `--model` takes it: a name under WORKSPACE/models, else its folder or hub id."""
        where = _resolved_model(identity, self.workspace)
        return Path(where).name if os.path.isabs(where) and Path(where).parent == self.workspace / "models" else where

    def check_models(self, fast: FastRetriever, slow: SlowRetriever | None) -> None:
        """Refuse models other than those the index was built with (vectors would not match)."""
        built_slow = self.manifest.get("slow")
        if slow is not None and built_slow is None:
            raise FastslowError(
                f"index {self.directory} has no Slow memory: rebuild it with `fastslow index build --slow MODEL` to re-rank"
            )
        for kind, model, built in (("Fast", fast, self.manifest["fast"]), ("Slow", slow, built_slow)):
            if model is None or built.get("content_hash") == model.identity.get("content_hash"):
                continue
            fix = self.rebuild_command(fast.identity, slow.identity if slow is not None else None)
            recorded, given = _resolved_model(built, self.workspace), str(model.identity.get("path"))
            if recorded == given:
                raise FastslowError(
                    f"the {kind} model at {given} was retrained or replaced since index {self.directory} was built: "
                    f"rebuild the index with `{fix}`"
                )
            raise FastslowError(
                f"index {self.directory} was built with {kind} model {recorded}, not {given}: "
                f"rebuild it with `{fix}` to search it with {given}"
            )

    def memories(self, labels: Sequence[int]) -> list[np.ndarray]:
        """The cached Slow memory of these items: reads only their rows of the mmap."""
        if self.memory is None:
            raise FastslowError(f"index {self.directory} has no Slow memory: rebuild it with --slow MODEL")
        off = self.memory_offsets
        return [self.memory.rows(off[i], off[i + 1]) for i in labels]

    def best_timestamp(self, label: int, query_vector: np.ndarray) -> float:
        """The timestamp of the item's frame most similar to the query (0.0 for images)."""
        a, b = self.frame_offsets[label], self.frame_offsets[label + 1]
        sims = np.asarray(self.frame_vectors[a:b]) @ query_vector
        return float(self.items["timestamps"][label][int(np.argmax(sims))])
