"""A sharded index: N ordinary index folders under one, items assigned by a hash of their id.

```
index/<name>/manifest.json     the top manifest: models, feature set, counts, and per shard
                               its folder and item count ("shards"); an empty shard has no folder
index/<name>/shard-000/        an ordinary index folder (index/folder.py), items whose
index/<name>/shard-001/        blake2b-64(id) mod N is its number
```

Each shard is its own HNSW graph, item table, frame vectors and Slow memory, so a shard
can live on its own disk or (later) its own machine, and `index update` rewrites only
the shards whose items changed: the others are hard-linked into the new folder (same
files, same inodes and mtimes), and the whole folder is still swapped in at once under
the writer lock, as an unsharded index is (`write_index`'s safety: nothing half-written
is ever read).

`ShardedIndex` offers what `Searcher` uses of `SearchIndex`. Labels are global: shard s's
local label l is `offsets[s] + l`. A query asks every shard for its top k and merges them
by score: each shard's top k holds every item of the global top k that lives in it, so
with exact search the merged list is the unsharded one; with HNSW each shard answers
within its own recall.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastslow_cli.atomic import atomic_write_json, check_writable
from fastslow_cli.errors import FastslowError
from fastslow_cli.index.folder import (
    MANIFEST,
    BuildReport,
    Encoder,
    IndexChunk,
    Progress,
    SearchIndex,
    UpdateReport,
    _new_build_dir,
    _portable_model,
    _portable_path,
    _reused_chunks,
    _swap_in,
    _unchanged,
    check_update,
    local_encoder,
    read_manifest,
    workspace_of,
    write_folder,
    writer_lock,
)
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.index.memory import DEFAULT_DTYPE, check_dtype
from fastslow_cli.media.location import known_gone
from fastslow_cli.store.parquet import FeatureStore, StoreEntry

if TYPE_CHECKING:
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever

MAX_SHARDS = 1024
HASH = "blake2b-64(id) mod shards"


def shard_of(item_id: str, shards: int) -> int:
    """The shard of an item: stable across runs, machines and Python versions (not `hash()`)."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def check_shards(shards: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise FastslowError(f"--shards {shards!r} is invalid: use a whole number from 1 to {MAX_SHARDS}")
    return shards


def shard_dir(number: int) -> str:
    return f"shard-{number:03d}"


def _split(ids: Sequence[str], shards: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(shards)]
    for item_id in ids:
        out[shard_of(item_id, shards)].append(item_id)
    return out


def _link_tree(src: Path, dst: Path) -> None:
    """`dst` as hard links to `src`'s files (same inodes): an unchanged shard is not rewritten.
    A filesystem without hard links gets copies (same content and mtimes)."""
    dst.mkdir()
    for path in sorted(src.iterdir()):
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)


def _top_manifest(
    directory: Path, shard_manifests: list[dict[str, Any] | None], params: AnnParams, base: dict[str, Any]
) -> dict[str, Any]:
    """The top manifest from the shards' own (None: an empty shard)."""
    present = [m for m in shard_manifests if m is not None]
    memories = [m["memory"] for m in present if m.get("memory")]
    first = present[0]
    return {
        **base,
        "format": first["format"],
        "name": directory.name,
        "dim": first["dim"],
        "count": sum(m["count"] for m in present),
        "images": sum(m["images"] for m in present),
        "videos": sum(m["videos"] for m in present),
        "memory": (
            {"width": memories[0]["width"], "rows": sum(m["rows"] for m in memories), "dtype": memories[0]["dtype"]}
            if memories
            else None
        ),
        "hnsw": {
            "M": params.M, "ef_construction": params.ef_construction, "ef_search": params.ef_search,
            "bytes": sum(m["hnsw"]["bytes"] for m in present),
        },
        "sharding": {"shards": len(shard_manifests), "hash": HASH},
        "shards": [
            {"dir": shard_dir(s), "count": m["count"]} if m is not None else {"dir": None, "count": 0}
            for s, m in enumerate(shard_manifests)
        ],
    }


def build_sharded_index(
    store: FeatureStore,
    directory: Path,
    fast: FastRetriever,
    slow: SlowRetriever | None,
    shards: int,
    params: AnnParams | None = None,
    progress: Progress | None = None,
    memory_dtype: str = DEFAULT_DTYPE,
    encoder: Encoder = local_encoder,
) -> BuildReport:
    """`build_index` into `shards` shards: every stored item whose media file exists, each
    encoded once (by `encoder`: one Ray job serves every shard), into the folder of its
    shard; the whole folder swapped in at once."""
    check_shards(shards)
    started = time.perf_counter()
    entries = store.entries()
    present = [i for i in sorted(entries) if not known_gone(entries[i].path)]
    if not present:
        raise FastslowError(f"feature set {store.directory} has no items to index: run `fastslow extract PATH` first")
    groups = _split(present, shards)
    with encoder(store, entries, [ids for ids in groups if ids], fast, slow) as streams:
        encoded = iter(streams)
        write_sharded_index(
            directory,
            [next(encoded) if ids else None for ids in groups],
            fast.identity, slow.identity if slow is not None else None, slow.width if slow is not None else None,
            params or AnnParams(), str(store.directory), store.fingerprint(), progress, memory_dtype=memory_dtype,
        )
    return BuildReport(len(present), len(entries) - len(present), time.perf_counter() - started, str(directory))


def write_sharded_index(
    directory: Path,
    shard_chunks: Sequence[Iterable[IndexChunk] | None],
    fast_identity: dict[str, Any],
    slow_identity: dict[str, Any] | None,
    slow_width: int | None,
    params: AnnParams,
    feature_set: str,
    feature_fingerprint: str,
    progress: Progress | None = None,
    memory_dtype: str = DEFAULT_DTYPE,
) -> int:
    """`write_index` for a sharded index: the chunks of each shard (None: an empty shard; the
    caller routes items by `shard_of`), written under the writer lock into a new folder that
    is swapped in whole; returns the item count. Benchmarks feed it precomputed chunks."""
    check_dtype(memory_dtype)
    check_writable(directory)
    with writer_lock(directory):
        root = workspace_of(directory)
        tmp = _new_build_dir(directory)
        try:
            manifests = [
                _write_shard(tmp, number, chunks, fast_identity, slow_identity, slow_width, params, feature_set,
                             feature_fingerprint, progress, memory_dtype, root, directory.name)
                if chunks is not None
                else None
                for number, chunks in enumerate(shard_chunks)
            ]
            if not any(manifests):
                raise ValueError("an index needs at least one item")
            base = _base(root, feature_set, feature_fingerprint, fast_identity, slow_identity)
            top = _top_manifest(directory, manifests, params, base)
            atomic_write_json(tmp / MANIFEST, top)
            _swap_in(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return int(top["count"])


def _base(
    root: Path, feature_set: str, fingerprint: str, fast_identity: dict[str, Any], slow_identity: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "feature_set": _portable_path(feature_set, root),
        "feature_fingerprint": fingerprint,
        "fast": _portable_model(fast_identity, root),
        "slow": _portable_model(slow_identity, root) if slow_identity is not None else None,
    }


def _write_shard(
    tmp: Path, number: int, chunks: Iterable[IndexChunk], fast_identity: dict[str, Any],
    slow_identity: dict[str, Any] | None, slow_width: int | None, params: AnnParams, feature_set: str,
    fingerprint: str, progress: Progress | None, memory_dtype: str, root: Path, name: str,
) -> dict[str, Any]:
    folder = tmp / shard_dir(number)
    folder.mkdir()
    return write_folder(
        folder, chunks, fast_identity, slow_identity, slow_width, params, feature_set, fingerprint,
        progress, None, memory_dtype, root=root, name=f"{name}/{shard_dir(number)}",
    )


def update_sharded_index(
    store: FeatureStore,
    directory: Path,
    fast: FastRetriever,
    slow: SlowRetriever | None,
    progress: Progress | None = None,
    encoder: Encoder = local_encoder,
) -> UpdateReport:
    """`update_index` for a sharded index: only the shards whose items were added, changed
    or removed are rewritten (their unchanged items copied, the rest encoded by `encoder`);
    the other shards' files are hard-linked into the new folder untouched."""
    check_writable(directory)
    with writer_lock(directory):
        started = time.perf_counter()
        index = ShardedIndex.open(directory)
        check_update(index, store, fast, slow)
        entries = store.entries()
        live = {i: e for i, e in entries.items() if not known_gone(e.path)}
        if not live:
            raise FastslowError(
                f"feature set {store.directory} has no item left whose media file exists: "
                "run `fastslow extract PATH` first, or remove the index"
            )
        plans = [_plan(shard, ids, live) for shard, ids in zip(index.shards, _split(sorted(live), index.shard_count))]
        added = sum(p["added"] for p in plans)
        updated = sum(p["updated"] for p in plans)
        removed = sum(p["removed"] for p in plans)
        if not (added or updated or removed):
            return UpdateReport(0, 0, 0, index.count, time.perf_counter() - started, str(directory))
        hnsw = index.manifest["hnsw"]
        params = AnnParams(M=hnsw["M"], ef_construction=hnsw["ef_construction"], ef_search=hnsw["ef_search"])
        root = workspace_of(directory)
        rewrite = [bool(plan["ids"]) and (shard is None or plan["changed"]) for shard, plan in zip(index.shards, plans)]
        tmp = _new_build_dir(directory)
        try:
            manifests: list[dict[str, Any] | None] = []
            groups = [plan["encode"] for plan, again in zip(plans, rewrite) if again]
            with encoder(store, live, groups, fast, slow) as streams:
                encoded = iter(streams)
                for number, (shard, plan, again) in enumerate(zip(index.shards, plans, rewrite)):
                    if not plan["ids"]:
                        manifests.append(None)
                    elif not again:
                        _link_tree(shard.directory, tmp / shard_dir(number))
                        manifests.append(shard.manifest)
                    else:
                        reused = _reused_chunks(shard, sorted(plan["keep"].values())) if shard is not None else iter(())
                        manifests.append(_write_shard(
                            tmp, number, itertools.chain(reused, next(encoded)), fast.identity,
                            slow.identity if slow is not None else None, slow.width if slow is not None else None, params,
                            str(store.directory), store.fingerprint(), progress, index.memory_dtype, root, directory.name,
                        ))
            kept = {k: index.manifest[k] for k in ("created", "alpha") if k in index.manifest}
            base = {**_base(root, str(store.directory), store.fingerprint(), fast.identity,
                            slow.identity if slow is not None else None), **kept,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            top = _top_manifest(directory, manifests, params, base)
            atomic_write_json(tmp / MANIFEST, top)
            _swap_in(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return UpdateReport(added, updated, removed, int(top["count"]), time.perf_counter() - started, str(directory))


def _plan(shard: SearchIndex | None, ids: list[str], live: dict[str, StoreEntry]) -> dict[str, Any]:
    """What an update does to one shard: items to keep (id -> local label), to encode, and counts."""
    mine = {i: live[i] for i in ids}
    keep = _unchanged(shard.items, mine) if shard is not None else {}
    known = set(shard.items["id"]) if shard is not None else set()
    encode = sorted(i for i in ids if i not in keep)
    added = sum(1 for i in encode if i not in known)
    removed = sum(1 for i in known if i not in mine)
    return {
        "ids": ids, "keep": keep, "encode": encode, "added": added, "updated": len(encode) - added,
        "removed": removed, "changed": bool(encode or removed),
    }


class ShardedAnn:
    """The shards' HNSW graphs as one: `query` fans out and merges the top k by score."""

    def __init__(self, shards: Sequence[SearchIndex | None], offsets: np.ndarray, dim: int, params: AnnParams) -> None:
        self._shards = [(s.ann, int(offsets[n])) for n, s in enumerate(shards) if s is not None]
        self.dim, self.params = dim, params
        self.count = int(offsets[-1])

    def query(self, vectors: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k global labels and scores, (Q, min(k, count)), best first; ties by label."""
        parts = [ann.query(vectors, k, ef) for ann, _ in self._shards]
        labels = np.concatenate([lab + offset for (lab, _), (_, offset) in zip(parts, self._shards)], axis=1)
        scores = np.concatenate([sc for _, sc in parts], axis=1)
        kk = min(int(k), self.count)
        order = np.lexsort((labels, -scores), axis=1)[:, :kk]
        return np.take_along_axis(labels, order, axis=1), np.take_along_axis(scores, order, axis=1)


class ShardedIndex(SearchIndex):
    """A sharded index opened for reading: what `Searcher` uses of `SearchIndex`, over global labels."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:  # no SearchIndex.__init__: no files at the top
        self.directory = directory
        self.manifest = manifest
        try:
            entries = manifest["shards"]
            self.shards: list[SearchIndex | None] = [
                SearchIndex(directory / e["dir"], read_manifest(directory / e["dir"])) if e["dir"] else None
                for e in entries
            ]
        except (KeyError, TypeError) as exc:
            raise FastslowError(f"index {directory} has a damaged manifest ({exc}): rebuild it with `fastslow index build`") from exc
        counts = [s.count if s is not None else 0 for s in self.shards]
        hashes = {(s.manifest["fast"].get("content_hash"), (s.manifest.get("slow") or {}).get("content_hash"))
                  for s in self.shards if s is not None}
        top = (manifest["fast"].get("content_hash"), (manifest.get("slow") or {}).get("content_hash"))
        if counts != [e["count"] for e in entries] or sum(counts) != manifest["count"] or hashes != {top}:
            raise FastslowError(f"index {directory} is inconsistent: rebuild it with `fastslow index build`")
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        hnsw = manifest["hnsw"]
        params = AnnParams(M=hnsw["M"], ef_construction=hnsw["ef_construction"], ef_search=hnsw["ef_search"])
        self.ann = ShardedAnn(self.shards, self.offsets, int(manifest["dim"]), params)  # type: ignore[assignment]
        present = [s for s in self.shards if s is not None]
        self.items = {name: list(itertools.chain.from_iterable(s.items[name] for s in present)) for name in present[0].items}
        self.items["label"] = list(range(self.count))
        self.memory = tuple(s.memory for s in present) if manifest.get("memory") else None  # type: ignore[assignment]

    @classmethod
    def open(cls, directory: Path) -> ShardedIndex:
        manifest = read_manifest(directory)
        if "shards" not in manifest:
            raise FastslowError(f"index {directory} is not sharded")
        return cls(directory, manifest)

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def _local(self, label: int) -> tuple[SearchIndex, int]:
        number = int(np.searchsorted(self.offsets, label, side="right")) - 1
        shard = self.shards[number]
        if not 0 <= label < self.count or shard is None:
            raise FastslowError(f"index {self.directory} has no item {label}")
        return shard, int(label - self.offsets[number])

    def memories(self, labels: Sequence[int]) -> list[np.ndarray]:
        if self.memory is None:
            raise FastslowError(f"index {self.directory} has no Slow memory: rebuild it with --slow MODEL")
        out = []
        for label in labels:
            shard, local = self._local(int(label))
            out.extend(shard.memories([local]))
        return out

    def best_timestamp(self, label: int, query_vector: np.ndarray) -> float:
        shard, local = self._local(int(label))
        return shard.best_timestamp(local, query_vector)



def footprint(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Disk and RAM of an index, in total and per item. RAM is what a searcher loads whole
    (the HNSW graphs with their vectors); the Slow memory and frame vectors are read through
    mmap, K items per query, so they cost page cache, not resident memory."""
    disk = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    ram = int(manifest["hnsw"]["bytes"])
    count = max(int(manifest["count"]), 1)
    memory_files = sum(
        p.stat().st_size for p in Path(directory).rglob("slow_memory.*") if p.is_file() and not p.name.endswith("offsets.npy")
    )
    return {
        "shards": len(manifest.get("shards", [])) or 1,
        "disk_bytes": disk,
        "disk_bytes_per_item": round(disk / count, 1),
        "ram_bytes": ram,
        "ram_bytes_per_item": round(ram / count, 1),
        "memory_bytes_per_item": round(memory_files / count, 1),
        "memory_dtype": (manifest.get("memory") or {}).get("dtype", "f16") if manifest.get("memory") else None,
    }
