"""A feature set's Parquet dataset published at a URL (s3://, gs://, ...), and read back from it.

A feature set is written in a local (or mounted) folder: its writer needs a file lock and atomic
renames, which object stores do not have. `extract --publish URL` then copies it to URL:

    URL/manifest.json        the set's manifest, plus the size and mtime of each part it lists
    URL/parts/part-*.parquet the live parts, byte for byte (any Parquet reader opens URL/parts/)
    URL/errors.jsonl         the files that failed, as in the set

Publishing again uploads only the parts that are new since the last time, then the manifest,
then deletes the parts the manifest no longer lists. Readers go by the manifest, never by a
listing, so a reader during a publish reads the old parts or the new ones, never a mix: each
part is written before the manifest that lists it, and deleted only after.

`PublishedFeatures(URL)` reads such a copy exactly as `FeatureStore` reads the folder (same
rows, same values): it is what `index build --engine ray --features-url URL` gives Ray workers
on machines that do not mount the workspace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from fastslow_cli.errors import FastslowError, UsageError, one_line
from fastslow_cli.media.location import is_url, remote
from fastslow_cli.store.parquet import ERRORS, MANIFEST, PARTS, FeatureStore, parse_errors

Progress = Callable[[dict[str, Any]], None]


@dataclass
class PublishSummary:
    url: str
    parts: int = 0  # parts the published copy lists
    uploaded: int = 0  # of which uploaded this time
    deleted: int = 0  # parts it no longer lists, deleted
    bytes: int = 0  # uploaded

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "parts": self.parts, "uploaded": self.uploaded, "deleted": self.deleted, "bytes": self.bytes}


def check_url(url: str) -> str:
    """The URL without a trailing slash; a plain path is refused (a copy belongs at a URL)."""
    if not is_url(url):
        raise UsageError(f"--publish {url}: give a URL (s3://bucket/features/SET, gs://..., file:///...), not a path")
    return url.rstrip("/")


def publish(store: FeatureStore, url: str, progress: Progress | None = None) -> PublishSummary:
    """Copy the set's live parts, manifest and errors to `url` (see the module docstring). The
    caller holds the set's writer lock, so the parts do not change meanwhile."""
    emit = progress or (lambda event: None)
    url = check_url(url)
    where = remote(url)
    fs, root = where.fs, where.path
    manifest = store.manifest()
    parts = store.parts()
    try:
        fs.create_dir(f"{root}/{PARTS}", recursive=True)  # a folder on a filesystem; nothing on an object store
        there = {Path(info.path).name: info.size for info in _listing(fs, f"{root}/{PARTS}")}
        files = part_files(parts)
        summary = PublishSummary(url, parts=len(parts))
        before = _published(fs, root)
        todo = [p for p in parts if there.get(p.name) != files[p.name][0] or before.get(p.name) != files[p.name]]
        stage = f"publish {store.directory.name}"
        emit({"event": "start", "stage": stage, "total": len(todo), "unit": "parts"})
        for part in todo:
            summary.bytes += _upload(fs, part, f"{root}/{PARTS}/{part.name}")
            summary.uploaded += 1
            emit({"event": "advance", "stage": stage, "n": 1})
        if store.errors_path.exists():
            _upload(fs, store.errors_path, f"{root}/{ERRORS}")
        published = {**manifest, "files": files, "published_from": str(store.directory),
                     "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomically(fs, f"{root}/{MANIFEST}", json.dumps(published, indent=2).encode())
        for name in sorted(set(there) - set(files)):
            fs.delete_file(f"{root}/{PARTS}/{name}")
            summary.deleted += 1
    except (OSError, FastslowError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise FastslowError(
            f"could not publish feature set {store.directory.name} to {url}: {one_line(exc)} "
            "(the set itself is intact: run the same command again)"
        ) from exc
    return summary


def part_files(parts: list[Path]) -> dict[str, list[int]]:
    """Each local part's [size, mtime_ns] by name: what a published manifest records of it."""
    out = {}
    for part in parts:
        st = part.stat()
        out[part.name] = [st.st_size, st.st_mtime_ns]
    return out


def _listing(fs: Any, folder: str) -> list[Any]:
    import pyarrow.fs as pafs

    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return [info for info in found if info.type == pafs.FileType.File and not Path(info.path).name.startswith(".")]


def _published(fs: Any, root: str) -> dict[str, list[int]]:
    """The parts the copy at `root` lists, with the size and mtime each had when uploaded."""
    manifest = _read_manifest(fs, root)
    return {} if manifest is None else dict(manifest.get("files", {}))


def _read_manifest(fs: Any, root: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST}") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def _upload(fs: Any, source: Path, target: str) -> int:
    """Copy a local file to `target`; its size. A part is written in place: nothing lists it yet."""
    import pyarrow.fs as pafs

    pafs.copy_files(str(source), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return source.stat().st_size


def _write_atomically(fs: Any, target: str, data: bytes) -> None:
    """The manifest, replaced in one step (an object store's PUT is; a filesystem renames)."""
    tmp = f"{target.rsplit('/', 1)[0]}/.{MANIFEST}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, target)


class PublishedFeatures(FeatureStore):
    """A published copy, read-only, through the same reading code as the folder it came from."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        where = remote(self.url)
        super().__init__(Path(where.path))
        self._filesystem = where.fs
        self._files: dict[str, list[int]] = {}

    def _stored_manifest(self) -> dict[str, Any] | None:
        try:
            manifest = _read_manifest(self._filesystem, str(self.directory))
        except (OSError, ValueError) as exc:
            raise FastslowError(f"cannot read {self.url}/{MANIFEST}: {one_line(exc)}: publish the set there again") from exc
        if manifest is None:
            raise FastslowError(
                f"no published feature set at {self.url}: run `fastslow extract ... --publish {self.url}` first"
            )
        self._files = {name: list(key) for name, key in manifest.get("files", {}).items()}
        return manifest

    def parts(self) -> list[Path]:
        """The parts the manifest lists (read again each time: a publish may have replaced it)."""
        manifest = self._stored_manifest() or {}
        return [self.parts_dir / name for name in manifest.get("parts", [])]

    def published_files(self) -> dict[str, list[int]]:
        """Each part's [size, mtime_ns] in the folder it was published from (read by `manifest()`)."""
        return dict(self._files)

    def _part_key(self, part: Path) -> tuple[str, int, int]:
        size, mtime = self._files.get(part.name, [0, 0])
        return part.name, mtime, size

    def _open(self) -> None:
        """Nothing to upgrade: a published copy is always in the current format."""

    @property
    def exists(self) -> bool:
        return _read_manifest(self._filesystem, str(self.directory)) is not None

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise UsageError(f"{self.url} is a published copy, read-only: write to the feature set it came from")

    lock = append = compact = ensure = record_error = _read_only  # type: ignore[assignment]

    def errors(self) -> list[dict[str, Any]]:
        try:
            with self._filesystem.open_input_stream(f"{self.directory}/{ERRORS}") as fh:
                text = fh.read().decode("utf-8")
        except FileNotFoundError:
            return []
        return parse_errors(text)
