"""`fastslow extract`: media files -> feature rows in the Parquet store.

discover -> skip what is stored -> reuse features of renamed files -> decode in isolated
workers -> backbone in batches (here, or on Ray actors: extract_ray.py) -> append parts ->
drop the rows of files gone from the scanned roots and compact. Rows are appended every
FLUSH_SECONDS or FLUSH_ITEMS, so an interrupted run (even `kill -9`) loses at most that
much, and rerunning completes the set with no duplicates.

Progress is reported through an optional callback of dict events (the core never prints):
`{"event": "start", "stage": "extract SET", "total": N}`, `{"event": "advance", "stage":
"extract SET", "n": k}`, `{"event": "failed", "path": ..., "reason": ...}`, `{"event":
"warning", "path": ..., "message": ...}` and `{"event": "note", "message": ...}`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.errors import UsageError
from fastslow_cli.media.pool import DecodePool, DecodeResult
from fastslow_cli.features.backbones import Backbone, load_backbone
from fastslow_cli.media.decode import THUMB_SIZE
from fastslow_cli.media.discover import MediaFile, find_media
from fastslow_cli.media.location import is_folder, is_url, known_gone, open_input
from fastslow_cli.media.location import stat as location_stat
from fastslow_cli.store.parquet import FeatureRow, FeatureStore, StoreEntry
from fastslow_cli.store.published import PublishSummary, check_url, publish
from fastslow_cli.store.thumbs import ThumbnailFiles, entry_key, thumb_key
from fastslow_cli.workspace import Workspace

# A kill -9 loses at most this much work. Measured: 5 s / 64 items add about one small
# part per flush, and the compaction at the end of the run merges them into one.
FLUSH_SECONDS = 5.0
FLUSH_ITEMS = 64


@dataclass(frozen=True)
class ExtractOptions:
    set_name: str = "default"
    backbone: str = "pixels"
    frames: int = 8
    size: int | None = None
    batch_size: int = 64
    decoder: str = "auto"
    workers: int = 2
    timeout: float = 120.0
    device: str = "auto"
    flush_items: int = FLUSH_ITEMS  # rows per appended part at most
    flush_seconds: float = FLUSH_SECONDS  # and a part at least this often while rows wait
    thumbnails: bool = True  # store a JPEG per image / sampled frame (store/thumbs.py)
    engine: str = "local"  # "local": decoder processes here; "ray": Ray Data actors (extract_ray.py)
    address: str | None = None  # ray: local (a private Ray on this machine), auto or ray://HOST:PORT
    gpus_per_worker: float = 0.0  # ray: GPUs each actor claims (its backbone then runs on CUDA)
    publish: str | None = None  # a URL to copy the set's Parquet dataset to after the run (store/published.py)


@dataclass
class ExtractSummary:
    set_name: str
    found: int = 0
    extracted: int = 0
    reused: int = 0
    skipped_existing: int = 0
    removed: int = 0  # stored items whose file is gone from a scanned root
    thumbnailed: int = 0  # stored items of earlier runs that got their missing thumbnails
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    store_dir: str = ""
    dataset: str = ""  # the folder of Parquet parts any reader opens
    published: PublishSummary | None = None  # with `publish`: what was copied there

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.set_name,
            "found": self.found,
            "extracted": self.extracted,
            "reused": self.reused,
            "skipped_existing": self.skipped_existing,
            "removed": self.removed,
            "thumbnailed": self.thumbnailed,
            "failed": len(self.failed),
            "failures": self.failed,
            "seconds": round(self.seconds, 3),
            "store": self.store_dir,
            "dataset": self.dataset,
            "published": None if self.published is None else self.published.to_json(),
        }


Progress = Callable[[dict[str, Any]], None]  # receives dict events (docs/ARCHITECTURE.md, "Events")


def file_hash(location: str | os.PathLike[str]) -> str:
    """blake2b-128 of the file bytes: lets a renamed or touched file reuse its features."""
    h = hashlib.blake2b(digest_size=16)
    with open_input(os.fspath(location)) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Objects are hashed this many at a time: each is a network stream, mostly waiting.
HASH_THREADS = 8


def _hashes(items: Sequence[MediaFile]) -> list[str | None]:
    """Each item's content hash, or None when it cannot be read (the decoder will say why)."""

    def one(item: MediaFile) -> str | None:
        try:
            return file_hash(item.path)
        except OSError:
            return None

    if not any(is_url(m.path) for m in items):
        return [one(m) for m in items]
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        return list(pool.map(one, items))


@dataclass
class Plan:
    unchanged: list[MediaFile]
    reusable: list[tuple[MediaFile, str, StoreEntry]]  # (item, its hash, stored row with that hash)
    todo: list[MediaFile]
    hashes: dict[str, str]  # item id -> content hash, for the items to decode


def plan(items: Sequence[MediaFile], entries: dict[str, StoreEntry]) -> Plan:
    """Split found items: unchanged (same id, size and mtime), reusable (same content hash
    as a stored row: a renamed or touched file) and to decode (everything else)."""
    by_hash: dict[str, StoreEntry] = {}
    for entry in entries.values():
        by_hash.setdefault(entry.content_hash, entry)
    unchanged: list[MediaFile] = []
    reusable: list[tuple[MediaFile, str, StoreEntry]] = []
    todo: list[MediaFile] = []
    hashes: dict[str, str] = {}
    changed: list[MediaFile] = []
    for item in items:
        stored = entries.get(item.id)
        if stored is not None and stored.size == item.size and stored.mtime_ns == item.mtime_ns:
            unchanged.append(item)
        else:
            changed.append(item)
    for item, digest in zip(changed, _hashes(changed)):
        if digest is None:
            todo.append(item)  # the decoder will report why it cannot read it
            continue
        source = by_hash.get(digest)
        if source is not None:  # same bytes: same features, and the stored (real) kind
            reusable.append((item, digest, source))
        else:
            todo.append(item)
            hashes[item.id] = digest
    return Plan(unchanged, reusable, todo, hashes)


def vanished(roots: Sequence[str], found: Sequence[MediaFile], entries: dict[str, StoreEntry]) -> list[str]:
    """Ids of stored items under a scanned root (a folder, or a file named directly; resolved
    paths or URLs) whose file is no longer there: deleted, or moved (found again under its new id).

    Items outside the roots are left alone, and so is a file that still exists but was not
    listed (e.g. in a folder that became unreadable): only a file that is gone is dropped.
    """
    found_ids = {m.id for m in found}
    kinds = [(root.rstrip("/"), is_folder(root)) for root in roots]
    folders = tuple(f"{root}/" for root, folder in kinds if folder)
    files = {root for root, folder in kinds if not folder}
    gone = []
    for item_id, entry in entries.items():
        if item_id in found_ids or not (entry.path in files or entry.path.startswith(folders)):
            continue
        try:
            location_stat(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            gone.append(item_id)
        except OSError:  # e.g. permission denied: it may well be there
            continue
    return gone


def _featurise(results: Sequence[DecodeResult], backbone: Backbone, hashes: dict[str, str]) -> list[FeatureRow]:
    """Run the backbone on the frames of several decoded items at once."""
    frames = np.concatenate([r.decoded.frames for r in results], axis=0)
    levels = backbone(frames)
    rows: list[FeatureRow] = []
    start = 0
    for r in results:
        t = r.decoded.frames.shape[0]
        item = r.item
        rows.append(
            FeatureRow(
                id=item.id,
                path=item.path,
                kind=r.decoded.kind,  # by content: an MP4 named .jpg is a video
                frames=t,
                timestamps=[float(x) for x in r.decoded.timestamps],
                size=item.size,
                mtime_ns=item.mtime_ns,
                content_hash=hashes.get(item.id, ""),
                levels=[lv[start : start + t] for lv in levels],
            )
        )
        start += t
    return rows


def _batches(
    results: Iterator[DecodeResult | None], frames_per_batch: int, max_wait: float
) -> Iterator[list[DecodeResult]]:
    """Group decoded items so one backbone call sees about `frames_per_batch` frames.

    Failed results are yielded alone so they are recorded at once. A batch is also yielded
    when its first item waited `max_wait` seconds, or at a tick (None) from the pool (then
    possibly empty), so rows reach the store on time even while results trickle in.
    """
    batch: list[DecodeResult] = []
    count, since = 0, 0.0
    for r in results:
        if r is None:
            yield batch
            batch, count = [], 0
            continue
        if r.decoded is None:
            yield [r]
            continue
        if not batch:
            since = time.monotonic()
        batch.append(r)
        count += r.decoded.frames.shape[0]
        if count >= frames_per_batch or time.monotonic() - since >= max_wait:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


ENGINES = ("local", "ray")


def check_engine(options: ExtractOptions) -> None:
    """Refuse bad options before any work: Ray-only options with the local engine, a
    `publish` target that is not a URL."""
    if options.engine not in ENGINES:
        raise UsageError(f"unknown --engine {options.engine!r}: use local or ray")
    if options.engine == "local":
        if options.gpus_per_worker:
            raise UsageError("--gpus-per-worker needs --engine ray (the local engine uses --device)")
        if options.address is not None:
            raise UsageError("--address needs --engine ray (the local engine runs on this machine)")
    if options.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be 0 or more, got {options.gpus_per_worker:g}")
    if options.publish is not None:
        check_url(options.publish)


def _roots(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The scanned roots as items name them: resolved absolute paths, or URLs as given."""
    return [os.fspath(p) if is_url(p) else Path(p).expanduser().resolve().as_posix() for p in paths]


def run_extract(
    paths: Sequence[str | os.PathLike[str]],
    workspace: Workspace,
    options: ExtractOptions,
    progress: Progress | None = None,
) -> ExtractSummary:
    """Extract features for every media file under `paths` into the feature set, and drop
    the items whose file is gone from those paths.

    The whole run holds the set's writer lock: a second extract into the same set fails
    at once with a clear message instead of interleaving parts. `progress` receives the
    events listed in the module docstring.
    """
    emit = progress or _ignore
    started = time.perf_counter()
    check_engine(options)
    items = find_media(paths)
    roots = _roots(paths)
    backbone = load_backbone(options.backbone, size=options.size, device=options.device)
    store = FeatureStore(workspace.features_dir(options.set_name), notify=emit)
    summary = ExtractSummary(
        set_name=options.set_name, found=len(items), store_dir=str(store.directory), dataset=str(store.parts_dir)
    )
    with store.lock():
        store.ensure(backbone.spec(), backbone.level_shapes(), options.frames)
        entries = store.entries()
        work = plan(items, entries)
        gone = vanished(roots, items, entries)
        summary.skipped_existing = len(work.unchanged)
        try:
            if work.reusable:
                store.append(_reused_rows(store, work.reusable))
                summary.reused = len(work.reusable)
            if work.todo:
                _decode_and_store(work, store, backbone, options, summary, emit)
        except BaseException:
            try:
                store.compact(gone)  # leave one row per item, as after a whole run
            except Exception as exc:  # noqa: BLE001 - the original error is the one to report
                emit({"event": "warning", "path": str(store.parts_dir), "message": f"not compacted: {exc}"})
            raise
        summary.removed = store.compact(gone)
        if options.thumbnails:
            summary.thumbnailed = fill_thumbnails(
                store, {m.id for m in items}, options.decoder, options.workers, options.timeout, emit
            )
        if options.publish is not None:
            summary.published = publish(store, options.publish, emit)
    summary.seconds = time.perf_counter() - started
    return summary


def fill_thumbnails(
    store: FeatureStore,
    only: Collection[str] | None = None,
    decoder: str = "auto",
    workers: int = 2,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> int:
    """Give the stored items without thumbnails (stored by an older fastslow, or with
    `thumbnails=False`) theirs, then delete the thumbnails no live row names (superseded
    or removed items). `only`: consider just these ids. Features are left alone: only
    media are decoded, at the set's frame size and frame count. Returns the items done.
    The caller holds the store's writer lock (an extract writes thumbnails before rows)."""
    emit = progress or _ignore
    manifest = store.manifest()
    size, frames = int(manifest["backbone"].get("input_size", THUMB_SIZE)), int(manifest["frames"])
    files = ThumbnailFiles(store.directory)
    entries = store.entries()
    todo = [e for e in files.missing(entries.values()) if (only is None or e.id in only) and not known_gone(e.path)]
    done = 0
    if todo:
        stage = f"thumbnails {store.directory.name}"
        emit({"event": "start", "stage": stage, "total": len(todo)})
        by_id = {e.id: e for e in todo}
        media = [MediaFile(id=e.id, path=e.path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns) for e in todo]
        with DecodePool(size=size, frames=frames, decoder=decoder, workers=workers, timeout=timeout, thumbnails=True) as pool:
            for r in pool.imap(media):
                if r is None:
                    continue
                if r.decoded is None or not r.decoded.thumbnails:
                    emit({"event": "warning", "path": r.item.path, "message": f"no thumbnails: {r.error}"})
                    files.mark_failed(entry_key(by_id[r.item.id]))
                else:
                    files.put(entry_key(by_id[r.item.id]), r.decoded.thumbnails)
                    done += 1
                emit({"event": "advance", "stage": stage, "n": 1})
    files.prune({entry_key(e) for e in entries.values()})
    return done


def _ignore(event: dict[str, Any]) -> None:
    """The default progress callback."""


def _reused_rows(store: FeatureStore, reusable: Sequence[tuple[MediaFile, str, StoreEntry]]) -> list[FeatureRow]:
    """Copy the stored features of renamed or touched files under their new id."""
    table = store.load([src.id for _, _, src in reusable])
    rows = []
    for i, (item, digest, _) in enumerate(reusable):
        t = int(table.frames[i])
        rows.append(
            FeatureRow(
                id=item.id,
                path=item.path,
                kind=table.kinds[i],
                frames=t,
                timestamps=list(table.timestamps[i]),
                size=item.size,
                mtime_ns=item.mtime_ns,
                content_hash=digest,
                levels=[lv[i, :t] for lv in table.levels],
            )
        )
    return rows


@dataclass
class Outcome:
    """What an engine made of one item to decode: a feature row (with its thumbnails and
    any decoder warning), or the reason it failed and every attempt made."""

    item: MediaFile
    row: FeatureRow | None = None
    thumbnails: list[bytes] | None = None
    warning: str | None = None
    error: str | None = None
    attempts: list[str] = field(default_factory=list)


def outcomes(results: Sequence[DecodeResult], backbone: Backbone, hashes: dict[str, str]) -> list[Outcome]:
    """One batch of decoded results as outcomes: the good ones through the backbone at once."""
    good = [r for r in results if r.decoded is not None]
    rows = iter(_featurise(good, backbone, hashes) if good else [])
    done: list[Outcome] = []
    for r in results:
        if r.decoded is None:
            done.append(Outcome(r.item, error=r.error or "unknown decoding error", attempts=r.attempts))
        else:
            done.append(Outcome(r.item, next(rows), r.decoded.thumbnails, r.decoded.warning, attempts=r.attempts))
    return done


def _local_outcomes(work: Plan, backbone: Backbone, options: ExtractOptions) -> Generator[list[Outcome], None, None]:
    """The local engine: decode in isolated worker processes, featurise in batches.

    Yields a group per backbone batch (a failure alone), and an empty group at a tick, so
    rows are stored on time while a slow file decodes."""
    with DecodePool(
        size=backbone.input_size,
        frames=options.frames,
        decoder=options.decoder,
        workers=options.workers,
        timeout=options.timeout,
        thumbnails=options.thumbnails,
    ) as pool:
        results = pool.imap(work.todo, tick=options.flush_seconds)
        for group in _batches(results, options.batch_size, options.flush_seconds):
            yield outcomes(group, backbone, work.hashes)


def _decode_and_store(
    work: Plan,
    store: FeatureStore,
    backbone: Backbone,
    options: ExtractOptions,
    summary: ExtractSummary,
    emit: Progress,
) -> None:
    """Decode and featurise on the chosen engine; store what comes back: thumbnails, then
    a part of rows every few seconds, failures in the errors file."""
    pending: list[FeatureRow] = []
    last_flush = time.monotonic()
    thumbs = ThumbnailFiles(store.directory)

    def flush() -> None:
        nonlocal pending, last_flush
        if pending:
            store.append(pending)
            summary.extracted += len(pending)
            pending = []
        last_flush = time.monotonic()

    if options.engine == "ray":
        from fastslow_cli.features.extract_ray import ray_outcomes

        groups = ray_outcomes(work, options)
    else:
        groups = _local_outcomes(work, backbone, options)
    stage = f"extract {options.set_name}"
    emit({"event": "start", "stage": stage, "total": len(work.todo)})
    try:
        for group in groups:
            for o in group:
                path = o.item.path
                if o.row is None:
                    reason = o.error or "unknown decoding error"
                    store.record_error(o.item.id, path, reason, o.attempts)
                    summary.failed.append({"id": o.item.id, "path": path, "reason": reason})
                    emit({"event": "failed", "path": path, "reason": reason})
                    continue
                if o.warning:
                    emit({"event": "warning", "path": path, "message": o.warning})
                if o.thumbnails:  # before the features: a row never names absent thumbnails
                    thumbs.put(thumb_key(work.hashes.get(o.item.id, ""), o.item.id), o.thumbnails)
                pending.append(o.row)
            if len(pending) >= options.flush_items or time.monotonic() - last_flush >= options.flush_seconds:
                flush()
            if group:
                emit({"event": "advance", "stage": stage, "n": len(group)})
        flush()
    except BaseException:
        try:
            flush()  # keep what was done before the interruption or failure
        except Exception as exc:  # noqa: BLE001 - the original error is the one to report
            emit({"event": "warning", "path": str(store.parts_dir), "message": f"could not save the last rows: {exc}"})
        raise
    finally:
        groups.close()  # stop the engine's workers now, not when the generator is collected
