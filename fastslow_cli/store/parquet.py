"""The Parquet feature store: `features/<set>/parts/part-NNNNN.parquet` + `manifest.json` + `errors.jsonl`.

- One row per media item; `level_<i>` columns are list<float16> holding the row's
  (T, H_i, W_i, C_i) values flattened in C order, finest level first. The shapes, the
  backbone spec and the frame count are in the manifest and in every part's Parquet
  schema metadata (key `fastslow`, JSON), so plain pyarrow can reshape the values.
- `parts/` holds only Parquet, so pyarrow, pandas, Polars and DuckDB open it as a dataset.
  Temporary files are written beside it (in `features/<set>/`) and renamed in.
- Parts are immutable. `append` adds one; a later part supersedes an earlier row with the
  same id. `compact` rewrites the parts holding superseded or gone rows (and merges small
  parts) into one new part whose metadata names the parts it replaces (key
  `fastslow.replaces`), then deletes them: a reader that lists both ignores the replaced
  ones, so every moment is consistent, and the next writer finishes a compaction cut short.
  At rest a plain read gives exactly one row per live item.
- The directory is the truth: parts are found by listing, so a part written just before
  a `kill -9` (before the manifest caught up) still counts.
- Writers hold an exclusive `flock` on `.lock`; readers take no lock (a part deleted
  while being read makes the reader list the folder again).
- Sets of format 1 (parts beside the manifest, ids relative to the extract root) are
  upgraded on first open: one part in `parts/`, every id its row's resolved path.

numpy + pyarrow only: no torch here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastslow_cli.atomic import append_jsonl, atomic_path, atomic_write_json, fsync_dir
from fastslow_cli.errors import FastslowError, one_line

FORMAT = "fastslow-features"
FORMAT_VERSION = 2  # 1: parts beside the manifest, ids relative to the extract root
METADATA_KEY = b"fastslow"
REPLACES_KEY = b"fastslow.replaces"
PARTS = "parts"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
LOCK = ".lock"
KINDS = ("image", "video")
LIGHT_COLUMNS = ["id", "path", "kind", "frames", "size", "mtime_ns", "content_hash"]
# Float16 values per row group (all levels): 64 MB, far below list<> int32 offsets.
ROW_GROUP_VALUES = 1 << 25
# `compact` merges small parts (under COMPACT_PART_BYTES) into parts of about that size once
# there are more than MAX_SMALL_PARTS of them, so frequent flushes do not pile up parts
# while a run that adds a few files rewrites nothing; other parts are rewritten only when
# they hold dead rows.
COMPACT_PART_BYTES = 128 << 20
MAX_SMALL_PARTS = 8
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
Notify = Callable[[dict[str, Any]], None]


@dataclass
class FeatureRow:
    """One media item to append; `levels[i]` is (frames, H_i, W_i, C_i) float16."""

    id: str
    path: str
    kind: str
    frames: int
    timestamps: list[float]
    size: int
    mtime_ns: int
    content_hash: str
    levels: list[np.ndarray]


@dataclass(frozen=True)
class StoreEntry:
    """A stored item without its features: what resume and rename detection need."""

    id: str
    path: str
    kind: str
    frames: int
    size: int
    mtime_ns: int
    content_hash: str


@dataclass
class FeatureTable:
    """Features of N items, padded over frames to the longest item, with a mask."""

    ids: list[str]
    paths: list[str]
    kinds: list[str]
    frames: np.ndarray
    timestamps: list[list[float]]
    levels: list[np.ndarray]
    frame_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int]) -> FeatureTable:
        """Rows `idx` in that order; frame padding is trimmed to the subset's longest item."""
        pick = np.asarray(idx, dtype=np.int64).reshape(-1)
        frames = self.frames[pick]
        t = max(int(frames.max()) if len(pick) else 1, 1)
        return FeatureTable(
            ids=[self.ids[i] for i in pick],
            paths=[self.paths[i] for i in pick],
            kinds=[self.kinds[i] for i in pick],
            frames=frames,
            timestamps=[self.timestamps[i] for i in pick],
            levels=[level[pick, :t] for level in self.levels],
            frame_mask=self.frame_mask[pick, :t],
        )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """Tuples become lists, as they will after a JSON round trip, so comparisons are fair."""
    return json.loads(json.dumps(obj, sort_keys=True))


def fingerprint_of(backbone: dict[str, Any], levels: list[list[int]], frames: int) -> str:
    """Short hash of what makes features interchangeable; models record it."""
    key = json.dumps({"backbone": backbone, "levels": levels, "frames": frames}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _schema(meta: dict[str, Any]) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("timestamps", pa.list_(pa.float64()), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
    ]
    fields += [pa.field(f"level_{i}", pa.list_(pa.float16()), nullable=False) for i in range(len(meta["levels"]))]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def _float16_lists(arrays: list[np.ndarray]) -> pa.ListArray:
    """A list<float16> column from per-row arrays: one concatenation, offsets by cumulative sum."""
    flat = [a.reshape(-1) for a in arrays]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([f.size for f in flat], out=offsets[1:])
    values = np.concatenate(flat).astype(np.float16, copy=False)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float16()))


class _PartVanished(FastslowError):
    """A listed part was deleted (by a compaction) before it could be read: list again."""


class FeatureStore:
    """One feature set: `features/<set>/`.

    `notify` receives one-line `{"event": "note", "message": ...}` events, e.g. when an
    old set is upgraded; the core never prints.
    """

    def __init__(self, directory: Path, notify: Notify | None = None) -> None:
        self.directory = Path(directory)
        self.notify = notify
        self._light_cache: dict[tuple[str, int, int], pa.Table] = {}  # parts are immutable
        self._meta_cache: dict[tuple[str, int, int], tuple[dict[str, Any], list[str]]] = {}
        self._where_cache: tuple[tuple[tuple[str, int, int], ...], dict[str, tuple[int, int]]] | None = None
        self._lock_depth = 0
        self._filesystem: Any = None  # pyarrow filesystem the parts are read through (None: local)

    # ---- layout -------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def errors_path(self) -> Path:
        return self.directory / ERRORS

    @property
    def parts_dir(self) -> Path:
        """The Parquet dataset: a folder any Parquet reader can open."""
        return self.directory / PARTS

    @property
    def exists(self) -> bool:
        return self.manifest_path.exists() or bool(_numbered(self.parts_dir)) or bool(_numbered(self.directory))

    def parts(self) -> list[Path]:
        """Live parts in order (oldest first): listed from `parts/`, less those a present
        part replaces (a compaction between writing its part and deleting the old ones)."""
        numbered = _numbered(self.parts_dir)
        replaced: set[str] = set()
        for path in numbered:
            replaced.update(self._part_info(path)[1])
        return [path for path in numbered if path.name not in replaced]

    def _next_part(self) -> Path:
        """A number above every part present, replaced ones included: numbers never recur,
        so a `replaces` list can never name a newer part."""
        numbered = _numbered(self.parts_dir)
        number = int(_PART.match(numbered[-1].name).group(1)) + 1 if numbered else 0
        return self.parts_dir / f"part-{number:05d}.parquet"

    # ---- writer lock ----------------------------------------------------------------
    @contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the writer lock; reentrant for this object. Taking it finishes any upgrade
        or compaction a crash cut short.

        `wait=False` fails at once with a clear message if another process writes this
        set (what a whole `extract` run should do); `append` and `ensure` wait.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fh = open(self.directory / LOCK, "a+", encoding="utf-8")
        except OSError as exc:
            raise FastslowError(
                f"cannot write to feature set {self.directory}: {one_line(exc)}; "
                "check its permissions or pass another --workspace"
            ) from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise FastslowError(
                f"feature set {self.directory} is being written by another process{who}: "
                "wait for it to finish or use another --set NAME"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._lock_depth = 1
            self._recover()
            yield
        finally:
            self._lock_depth = 0
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def _recover(self) -> None:
        """Under the lock no write is in flight: finish what a crash interrupted."""
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        old = _numbered(self.directory)
        if old and not _numbered(self.parts_dir):
            self._upgrade(old)
        else:
            for path in old:  # an upgrade finished its part, then was cut short
                path.unlink(missing_ok=True)
        live = set(self.parts())
        doomed = [path for path in _numbered(self.parts_dir) if path not in live]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_dir(self.parts_dir)

    def _open(self) -> None:
        """Readers: upgrade a format-1 set first (the one case where reading writes)."""
        if _numbered(self.directory) and not _numbered(self.parts_dir):
            with self.lock(wait=True):
                pass

    # ---- manifest -------------------------------------------------------------------
    def _missing(self) -> FastslowError:
        return FastslowError(
            f"no feature set at {self.directory}: run `fastslow extract PATH --set {self.directory.name}` first"
        )

    def _counts(self, parts: list[Path]) -> dict[str, int]:
        kinds = [e.kind for e in self._entries(parts).values()]
        return {
            "items": len(kinds),
            "images": kinds.count("image"),
            "videos": kinds.count("video"),
            "parts": len(parts),
        }

    def _stored_manifest(self) -> dict[str, Any] | None:
        """manifest.json, or one rebuilt from the newest part's schema metadata if it is gone."""
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise FastslowError(
                    f"cannot read {self.manifest_path}: {one_line(exc)}; delete it (it is rebuilt from the parts)"
                ) from exc
            if not isinstance(manifest, dict) or not {"backbone", "levels", "frames"} <= manifest.keys():
                raise FastslowError(
                    f"{self.manifest_path} is not a fastslow manifest: delete it (it is rebuilt from the parts)"
                )
            return manifest
        parts = self.parts() or _numbered(self.directory)
        if not parts:
            return None
        meta = self._part_meta(parts[-1])
        return self._new_manifest(meta["backbone"], meta["levels"], meta["frames"])

    def _new_manifest(self, backbone: dict[str, Any], levels: list[list[int]], frames: int) -> dict[str, Any]:
        now = _utc_now()
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": backbone,
            "levels": levels,
            "frames": frames,
            "dtype": "float16",
            "fingerprint": fingerprint_of(backbone, levels, frames),
            "counts": {"items": 0, "images": 0, "videos": 0, "parts": 0},
            "parts": [],
            "created": now,
            "updated": now,
        }

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def _refreshed(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest with parts and counts as the folder has them now."""
        parts = self.parts()
        names = [p.name for p in parts]
        if manifest.get("parts") != names or manifest.get("version") != FORMAT_VERSION:
            manifest = {**manifest, "version": FORMAT_VERSION, "parts": names, "counts": self._counts(parts)}
        return manifest

    def manifest(self) -> dict[str, Any]:
        """The manifest; counts are recomputed if a part landed after the last update."""
        self._open()
        stored = self._stored_manifest()
        if stored is None:
            raise self._missing()
        return _retrying(lambda: self._refreshed(stored))

    def fingerprint(self) -> str:
        m = self.manifest()
        return fingerprint_of(m["backbone"], m["levels"], m["frames"])

    def ensure(self, backbone_spec: dict[str, Any], level_shapes: list[tuple[int, int, int]], frames: int) -> None:
        """Create the set, or check that these options produce compatible features."""
        backbone, levels = _jsonable(backbone_spec), _jsonable([list(s) for s in level_shapes])
        with self.lock(wait=True):
            stored = self._stored_manifest()
            if stored is None:
                self._write_manifest(self._new_manifest(backbone, levels, frames))
                return
            differences = []
            if stored["backbone"] != backbone:
                differences.append(
                    f"backbone {_describe(stored['backbone'])} vs {_describe(backbone)}"
                )
            if stored["levels"] != levels:
                differences.append(f"levels {stored['levels']} vs {levels}")
            if stored["frames"] != frames:
                differences.append(f"frames {stored['frames']} vs {frames}")
            if differences:
                raise FastslowError(
                    f"feature set {self.directory} holds other features ({'; '.join(differences)}): "
                    "rerun with the same --backbone/--size/--frames or use another --set NAME"
                )
            if not self.manifest_path.exists():
                self._write_manifest(self._refreshed(stored))

    # ---- reading ----------------------------------------------------------------------
    def _read(self, part: Path, columns: list[str]) -> pa.Table:
        with _reading(part):
            return pq.read_table(part, columns=columns, filesystem=self._filesystem)

    def _read_rows(self, part: Path, columns: list[str], pairs: list[tuple[int, int]]) -> tuple[pa.Table, list[tuple[int, int]]]:
        """`columns` of only the row groups that hold the wanted rows, and the (pos, row) pairs
        renumbered to rows of that table: loading a chunk of a set (an index build loads it
        2,048 ids at a time) reads about the chunk's row groups, not every part it touches whole."""
        with _reading(part):
            parquet = pq.ParquetFile(part, filesystem=self._filesystem)
            starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
            group_of = np.searchsorted(starts, [row for _, row in pairs], side="right") - 1
            groups = sorted(set(group_of.tolist()))
            table = parquet.read_row_groups(groups, columns=columns)
        read_start = dict(zip(groups, np.cumsum([0] + [starts[g + 1] - starts[g] for g in groups]).tolist()))
        return table, [(pos, row - int(starts[g]) + read_start[g]) for (pos, row), g in zip(pairs, group_of.tolist())]

    def _part_info(self, part: Path) -> tuple[dict[str, Any], list[str]]:
        """(fastslow metadata, names of the parts it replaces), cached per part."""
        key = self._part_key(part)
        info = self._meta_cache.get(key)
        if info is None:
            try:
                raw = pq.read_schema(part, filesystem=self._filesystem).metadata or {}
                info = (json.loads(raw[METADATA_KEY]), json.loads(raw.get(REPLACES_KEY, b"[]")))
            except FileNotFoundError:
                raise _vanished(part) from None
            except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
                raise FastslowError(
                    f"feature part {part} has no readable fastslow metadata ({one_line(exc)}): "
                    "delete it and run `fastslow extract` again"
                ) from exc
            self._meta_cache[key] = info
        return info

    def _part_key(self, part: Path) -> tuple[str, int, int]:
        """What identifies a part's bytes (name, mtime, size): the key of the per-part caches."""
        return _file_key(part)

    def _part_meta(self, part: Path) -> dict[str, Any]:
        return self._part_info(part)[0]

    def _light(self, part: Path) -> pa.Table:
        """Every column but the features, cached per part."""
        key = self._part_key(part)  # a deleted and rewritten number is a new part
        table = self._light_cache.get(key)
        if table is None:
            table = self._read(part, [*LIGHT_COLUMNS, "timestamps"])
            self._light_cache[key] = table
        return table

    def _where(self, parts: list[Path], lights: list[pa.Table]) -> dict[str, tuple[int, int]]:
        """`_winners` of these parts, kept while the parts stay the same: an index build loads
        the set a chunk at a time and would otherwise map every id again for each chunk."""
        key = tuple(self._part_key(part) for part in parts)
        if self._where_cache is None or self._where_cache[0] != key:
            self._where_cache = (key, _winners(lights))
        return self._where_cache[1]

    def _entries(self, parts: list[Path]) -> dict[str, StoreEntry]:
        latest: dict[str, StoreEntry] = {}
        for part in parts:
            cols = self._light(part).select(LIGHT_COLUMNS).to_pydict()
            for values in zip(*(cols[c] for c in LIGHT_COLUMNS)):
                latest[values[0]] = StoreEntry(*values)
        return latest

    def entries(self) -> dict[str, StoreEntry]:
        """The live items: latest stored row per id (reads no feature columns)."""
        self._open()
        return _retrying(lambda: self._entries(self.parts()))

    def load(self, ids: Sequence[str] | None = None) -> FeatureTable:
        """Features of `ids` in that order (default: every live item, sorted by id)."""
        manifest = self.manifest()
        return _retrying(lambda: self._load(manifest, ids))

    def _load(self, manifest: dict[str, Any], ids: Sequence[str] | None) -> FeatureTable:
        shapes = [tuple(s) for s in manifest["levels"]]
        parts = self.parts()
        lights = [self._light(part) for part in parts]
        where = self._where(parts, lights)
        wanted = sorted(where) if ids is None else list(ids)
        unknown = [i for i in wanted if i not in where]
        if unknown:
            raise FastslowError(
                f"{len(unknown)} item(s) not in feature set {self.directory} (first: {unknown[0]!r}): "
                "run `fastslow extract` on them first"
            )
        by_part: dict[int, list[tuple[int, int]]] = {}
        for pos, item_id in enumerate(wanted):
            p, row = where[item_id]
            by_part.setdefault(p, []).append((pos, row))

        n = len(wanted)
        paths, kinds, timestamps = [""] * n, [""] * n, [[] for _ in range(n)]
        frames = np.zeros(n, dtype=np.int64)
        for p, pairs in by_part.items():
            cols = lights[p].select(["path", "kind", "frames", "timestamps"]).to_pydict()
            for pos, row in pairs:
                paths[pos], kinds[pos] = cols["path"][row], cols["kind"][row]
                frames[pos], timestamps[pos] = cols["frames"][row], cols["timestamps"][row]
        tmax = max(int(frames.max()) if n else 1, 1)
        levels = [np.zeros((n, tmax, *shape), dtype=np.float16) for shape in shapes]
        mask = np.arange(tmax)[None, :] < frames[:, None]

        for p, pairs in by_part.items():
            part = parts[p]
            if [list(s) for s in self._part_meta(part)["levels"]] != [list(s) for s in shapes]:
                raise FastslowError(
                    f"feature part {part} has other level shapes than {self.manifest_path}: "
                    "move it out of the set and run `fastslow extract` again"
                )
            table, pairs = self._read_rows(part, [f"level_{i}" for i in range(len(shapes))], pairs)
            for i, shape in enumerate(shapes):
                _scatter(table.column(i), pairs, frames, shape, levels[i], part)
        return FeatureTable(ids=wanted, paths=paths, kinds=kinds, frames=frames,
                            timestamps=timestamps, levels=levels, frame_mask=mask)

    # ---- writing ----------------------------------------------------------------------
    def _check_row(self, row: FeatureRow, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        if not row.id or row.kind not in KINDS or row.frames < 1 or len(row.timestamps) != row.frames:
            raise ValueError(
                f"bad feature row {row.id!r}: need an id, kind in {KINDS}, frames >= 1 "
                f"and one timestamp per frame (kind={row.kind!r}, frames={row.frames}, "
                f"timestamps={len(row.timestamps)})"
            )
        if len(row.levels) != len(shapes):
            raise ValueError(f"feature row {row.id!r} has {len(row.levels)} levels, the set has {len(shapes)}")
        levels = []
        for level, shape in zip(row.levels, shapes):
            if tuple(level.shape) != (row.frames, *shape):
                raise ValueError(
                    f"feature row {row.id!r}: level shape {tuple(level.shape)} != {(row.frames, *shape)}"
                )
            levels.append(np.ascontiguousarray(level, dtype=np.float16))
        return levels

    def _write_schema(self, stored: dict[str, Any], replaces: Sequence[str] = ()) -> pa.Schema:
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backbone": stored["backbone"],
            "levels": stored["levels"],
            "frames": stored["frames"],
            "dtype": "float16",
            "layout": "level_<i> holds the row's (frames, H, W, C) values in C order; (H, W, C) = levels[i]",
        }
        schema = _schema(meta)
        if replaces:
            schema = schema.with_metadata({**schema.metadata, REPLACES_KEY: json.dumps(list(replaces)).encode()})
        return schema

    @contextmanager
    def _part_writer(self, target: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A new part written beside `parts/` and renamed into it whole."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, tmp_dir=self.directory) as tmp:
            # No dictionary for features: it halves pixel-feature files but reads 3x slower.
            with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=["kind"]) as writer:
                yield writer

    def append(self, rows: Sequence[FeatureRow]) -> Path | None:
        """Write `rows` as one new part (atomically), then update the manifest.

        Returns the new part, or None when `rows` is empty (nothing is written).
        `ensure` must have been called on this set first.
        """
        if not rows:
            return None
        with self.lock(wait=True):
            stored = self._stored_manifest()
            if stored is None:
                raise ValueError(f"call ensure() before append() on {self.directory}")
            shapes = [tuple(s) for s in stored["levels"]]
            checked = [self._check_row(row, shapes) for row in rows]
            target = self._next_part()
            schema = self._write_schema(stored)
            with self._part_writer(target, schema) as writer:
                for start, stop in _row_groups(checked):
                    writer.write_table(_table(rows[start:stop], checked[start:stop], schema))
            self._write_manifest({**self._refreshed(stored), "updated": _utc_now()})
        return target

    def compact(self, gone: Collection[str] = ()) -> int:
        """Drop superseded rows and the rows of `gone` ids, and merge small parts.

        The parts holding a dead row are rewritten as one new part that names them in its
        metadata, then deleted; likewise groups of small parts when there are more than
        MAX_SMALL_PARTS. Each rewrite is atomic for readers. Afterwards each live item has
        exactly one row in `parts/`. Returns how many of `gone` were stored (now removed).
        """
        with self.lock(wait=True):
            stored = self._stored_manifest()
            parts = self.parts()
            if stored is None or not parts:
                return 0
            lights = [self._light(part) for part in parts]
            where = _winners(lights)
            dead = {g for g in gone if g in where}
            keep = []
            for p, light in enumerate(lights):
                ids = light.column("id").to_pylist()
                keep.append(np.array([where[i] == (p, r) and i not in dead for r, i in enumerate(ids)], dtype=bool))
            dirty = [p for p, mask in enumerate(keep) if not mask.all()]
            sizes = {p: part.stat().st_size for p, part in enumerate(parts)}
            small = [p for p in range(len(parts)) if p not in dirty and sizes[p] < COMPACT_PART_BYTES]
            groups = [dirty] if dirty else []
            if len(small) > MAX_SMALL_PARTS:
                group: list[int] = []
                for p in small:
                    group.append(p)
                    if sum(sizes[q] for q in group) >= COMPACT_PART_BYTES:
                        groups.append(group)
                        group = []
                if len(group) > 1:
                    groups.append(group)
            for group in groups:
                self._rewrite([(parts[p], keep[p]) for p in group], stored, rekey=False)
                for p in group:
                    parts[p].unlink()
                fsync_dir(self.parts_dir)
            if groups:
                self._write_manifest({**self._refreshed(stored), "updated": _utc_now()})
        return len(dead)

    def _rewrite(self, sources: list[tuple[Path, np.ndarray]], stored: dict[str, Any], rekey: bool) -> Path:
        """One new part from the kept rows of `sources` (read a row group at a time, so
        memory stays bounded); `rekey` sets each id to the row's path (the format-1 upgrade)."""
        target = self._next_part()
        schema = self._write_schema(stored, replaces=[path.name for path, _ in sources if path.parent == self.parts_dir])
        pending: list[pa.Table] = []
        with self._part_writer(target, schema) as writer:
            for path, keep in sources:
                try:
                    parquet = pq.ParquetFile(path)
                    start = 0
                    for group in range(parquet.num_row_groups):
                        table = parquet.read_row_group(group)
                        mask = keep[start : start + table.num_rows]
                        start += table.num_rows
                        table = table.filter(pa.array(mask))
                        if rekey:
                            table = table.set_column(0, "id", table.column("path"))
                        pending.append(pa.Table.from_arrays(table.columns, schema=schema))
                        if sum(t.nbytes for t in pending) >= 2 * ROW_GROUP_VALUES:
                            writer.write_table(pa.concat_tables(pending))
                            pending = []
                except (OSError, pa.ArrowException) as exc:
                    raise FastslowError(
                        f"cannot read feature part {path}: {one_line(exc)}; delete it and run `fastslow extract` again"
                    ) from exc
            if pending:
                writer.write_table(pa.concat_tables(pending))
        return target

    def _upgrade(self, old: list[Path]) -> None:
        """Format 1 -> 2, once: the live rows of the old parts become one part in `parts/`,
        each keyed by its resolved path (two roots could give two files one relative id)."""
        stored = self._stored_manifest()
        lights = [self._read(part, ["path"]) for part in old]
        where: dict[str, tuple[int, int]] = {}
        for p, light in enumerate(lights):
            for row, path in enumerate(light.column("path").to_pylist()):
                where[path] = (p, row)  # later rows win, as the old ids did
        keep = [np.zeros(light.num_rows, dtype=bool) for light in lights]
        for p, row in where.values():
            keep[p][row] = True
        self._rewrite(list(zip(old, keep)), stored, rekey=True)
        for part in old:
            part.unlink()
        fsync_dir(self.directory)
        self._write_manifest({**self._refreshed(stored), "upgraded": {"from_version": stored.get("version", 1),
                                                                      "time": _utc_now()}})
        if self.notify is not None:
            self.notify({"event": "note", "message": (
                f"feature set {self.directory} upgraded: {len(where)} items now keyed by their absolute path, "
                f"parts moved to {self.parts_dir}"
            )})

    # ---- errors -----------------------------------------------------------------------
    def record_error(self, item_id: str, path: str, reason: str, attempts: list[str]) -> None:
        """Log a file that could not be extracted (one fsync'd JSON line)."""
        append_jsonl(self.errors_path, {
            "time": _utc_now(), "id": item_id, "path": path, "reason": reason, "attempts": list(attempts),
        })

    def errors(self) -> list[dict[str, Any]]:
        """Every logged error, oldest first; a torn last line (crash mid-write) is skipped."""
        if not self.errors_path.exists():
            return []
        return parse_errors(self.errors_path.read_text(encoding="utf-8"))


def parse_errors(text: str) -> list[dict[str, Any]]:
    """The records of an errors file's text; a torn last line (crash mid-write) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _numbered(folder: Path) -> list[Path]:
    """`part-NNNNN.parquet` files in `folder`, by number."""
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        match = _PART.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return [path for _, path in sorted(found)]


def _file_key(part: Path) -> tuple[str, int, int]:
    try:
        st = part.stat()
    except FileNotFoundError:
        raise _vanished(part) from None
    return part.name, st.st_mtime_ns, st.st_size


@contextmanager
def _reading(part: Path) -> Iterator[None]:
    """A part deleted by a compaction since it was listed is `_PartVanished` (the read is
    retried); any other read failure is one line naming the part and the fix."""
    try:
        yield
    except FileNotFoundError:
        raise _vanished(part) from None
    except (OSError, pa.ArrowException) as exc:
        raise FastslowError(
            f"cannot read feature part {part}: {one_line(exc)}; delete it and run `fastslow extract` again"
        ) from exc


def _vanished(part: Path) -> _PartVanished:
    return _PartVanished(
        f"feature part {part} was removed while being read (another process compacted the set): run again"
    )


_T = TypeVar("_T")


def _retrying(read: Callable[[], _T], attempts: int = 5) -> _T:
    """Run a read again when a compaction deleted a part it had listed: its replacement is
    in place by then, so listing again gives a consistent set of parts."""
    for attempt in range(attempts):
        try:
            return read()
        except _PartVanished:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _winners(lights: list[pa.Table]) -> dict[str, tuple[int, int]]:
    """id -> (part index, row) of its latest row: later parts (and rows) win."""
    where: dict[str, tuple[int, int]] = {}
    for p, light in enumerate(lights):
        for row, item_id in enumerate(light.column("id").to_pylist()):
            where[item_id] = (p, row)
    return where


def _describe(spec: dict[str, Any]) -> str:
    """A short name for a backbone spec in one-line messages."""
    label = spec.get("model") or spec.get("name") or "?"
    return f"{label}@{fingerprint_of(spec, [], 0)[:8]}"


def _row_groups(levels: list[list[np.ndarray]]) -> Iterator[tuple[int, int]]:
    """Consecutive (start, stop) row ranges of at most ROW_GROUP_VALUES feature values."""
    start, total = 0, 0
    for i, row in enumerate(levels):
        size = sum(a.size for a in row)
        if i > start and total + size > ROW_GROUP_VALUES:
            yield start, i
            start, total = i, 0
        total += size
    if start < len(levels):
        yield start, len(levels)


def _table(rows: Sequence[FeatureRow], levels: list[list[np.ndarray]], schema: pa.Schema) -> pa.Table:
    columns = [
        pa.array([r.id for r in rows], pa.string()),
        pa.array([r.path for r in rows], pa.string()),
        pa.array([r.kind for r in rows], pa.string()),
        pa.array([r.frames for r in rows], pa.int32()),
        pa.array([[float(t) for t in r.timestamps] for r in rows], pa.list_(pa.float64())),
        pa.array([r.size for r in rows], pa.int64()),
        pa.array([r.mtime_ns for r in rows], pa.int64()),
        pa.array([r.content_hash for r in rows], pa.string()),
    ]
    n_levels = len(schema) - len(columns)
    columns += [_float16_lists([row[i] for row in levels]) for i in range(n_levels)]
    return pa.Table.from_arrays(columns, schema=schema)


def _scatter(column: pa.ChunkedArray, pairs: list[tuple[int, int]], frames: np.ndarray,
             shape: tuple[int, ...], out: np.ndarray, part: Path) -> None:
    """Copy rows of a list<float16> column into `out[pos, :frames]`, using numpy views of
    each chunk's values and offsets (one conversion per chunk, no per-row Python lists)."""
    per_frame = int(np.prod(shape))
    bounds = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
    order = sorted(pairs, key=lambda pr: pr[1])
    c, values, offsets = -1, None, None
    for pos, row in order:
        while row >= bounds[c + 1]:
            c += 1
            values, offsets = None, None
        if values is None:
            chunk = column.chunk(c)
            values = chunk.values.to_numpy(zero_copy_only=False)
            offsets = chunk.offsets.to_numpy()
        local = row - bounds[c]
        lo, hi = offsets[local], offsets[local + 1]
        t = int(frames[pos])
        if hi - lo != t * per_frame:
            raise FastslowError(
                f"feature part {part} is damaged (row {row} has {hi - lo} values, expected {t * per_frame}): "
                "delete it and run `fastslow extract` again"
            )
        out[pos, :t] = values[lo:hi].reshape(t, *shape)
