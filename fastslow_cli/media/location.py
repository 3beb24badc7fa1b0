"""Where media live: a local path, or a filesystem URL (s3://, gs://, hdfs://, abfs://, file://,
or any fsspec protocol) read through pyarrow.fs.

An item's id is how any process reaches it: the resolved absolute path of a local file, or the
URL of an object (`scheme://` + the path its filesystem names it by). So a Ray worker on another
machine opens the same URL with its own credentials (the usual environment variables: AWS_*,
GOOGLE_APPLICATION_CREDENTIALS, ...) and never needs a mount. Local files keep the os calls
(symlinks, inodes, permissions); URLs go through one pyarrow `FileSystem` per scheme and host,
made once per process.

Decoders need a local file, so `local_copy` fetches an object into a per-process scratch folder
(`scratch_dir`) and deletes it after the decode; the decode pool clears a crashed worker's
folder (`clear_scratch`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

from fastslow_cli.errors import FastslowError, UsageError, one_line

if TYPE_CHECKING:
    import pyarrow.fs

# Two letters at least before "://", so a Windows drive (C:\) is a path. `s3:/b/k` is what a
# shell or Path() makes of s3://b/k: `check_location` says so.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_FOLDED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` (an object to read through pyarrow.fs), False for a path."""
    return _URL.match(os.fspath(location)) is not None


def check_location(location: str | os.PathLike[str]) -> None:
    """Refuse `s3:/bucket/key` (a URL whose `//` was folded, e.g. by a Path) unless it is a real path."""
    text = os.fspath(location)
    if _FOLDED.match(text) and not os.path.exists(text):
        fixed = _FOLDED.sub(lambda m: f"{m[1]}://", text)
        raise UsageError(f"{text}: no such file or folder; did you mean the URL {fixed}? (two slashes after the scheme)")


@dataclass(frozen=True)
class Remote:
    """A URL resolved to its filesystem and the path that filesystem names it by."""

    fs: pyarrow.fs.FileSystem
    path: str
    prefix: str  # scheme://host, to turn a filesystem path back into a URL
    base: str  # what the filesystem puts before the URL's own path (an S3 path starts with the bucket)

    def url(self, fs_path: str) -> str:
        """The URL of a path on this filesystem (e.g. one a listing returned)."""
        return self.prefix + "/" + fs_path[len(self.base) :].lstrip("/")


def remote(url: str) -> Remote:
    """The filesystem of `url` (made once per scheme and host) and the object's path on it.
    The path is taken as written (no percent-decoding), as object stores name their keys."""
    parts = urlsplit(url)
    prefix = f"{parts.scheme}://{parts.netloc}"
    with _FILESYSTEMS_LOCK:  # the driver hashes objects from several threads
        found = _FILESYSTEMS.get(prefix.lower())
        if found is None:
            found = _FILESYSTEMS[prefix.lower()] = _filesystem(parts.scheme.lower(), prefix)
    fs, base = found
    own = parts.path.rstrip("/")
    return Remote(fs, (base + own) if (base or own) else "/", prefix, base)


_FILESYSTEMS: dict[str, tuple[pyarrow.fs.FileSystem, str]] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _filesystem(scheme: str, prefix: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem for the scheme (S3, GCS, HDFS, Azure, local), else fsspec's, and
    the base its paths start with (an S3 path starts with the bucket). Resolving an S3
    bucket's region costs a request, so this runs once per scheme and host."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    root = prefix + "/"
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except pa.ArrowInvalid:  # a scheme pyarrow does not know: try fsspec
        fs, path = _fsspec(scheme, root)
    except (OSError, pa.ArrowException) as exc:
        raise FastslowError(f"{root}: cannot open its filesystem ({one_line(exc)}): check the URL and the credentials") from None
    return fs, path.rstrip("/")


def _fsspec(scheme: str, example: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"{example}: pyarrow has no filesystem for {scheme}://: install fsspec and its {scheme} package"
        ) from None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(example)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"{example}: no filesystem for {scheme}:// ({one_line(exc)}): install the fsspec package for it") from None
    return PyFileSystem(FSSpecHandler(fs)), path


def as_path(url: str) -> str:
    """A URL as an absolute path whose first folder is its scheme and host (s3://b/k/x.jpg ->
    /s3:b/k/x.jpg): lets path logic (roots, relative parts, names) pair captions with objects."""
    parts = urlsplit(url)
    return f"/{parts.scheme}:{parts.netloc}/{parts.path.lstrip('/')}".rstrip("/")


def from_path(path: str) -> str:
    """The URL that `as_path` gave `path` (or a folder above it) for."""
    head, _, rest = path.lstrip("/").partition("/")
    scheme, _, host = head.partition(":")
    return f"{scheme}://{host}/{rest}".rstrip("/")


def stat(location: str) -> tuple[int, int]:
    """(size, mtime_ns) of a file or object; FileNotFoundError when there is none."""
    if not is_url(location):
        st = os.stat(location)
        return st.st_size, st.st_mtime_ns
    import pyarrow.fs as pafs

    r = remote(location)
    info = r.fs.get_file_info(r.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(location)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(location)
    return int(info.size or 0), int(info.mtime_ns or 0)


def is_folder(location: str) -> bool:
    """A folder (a prefix holding objects, for an object store)."""
    if not is_url(location):
        return os.path.isdir(location)
    import pyarrow.fs as pafs

    r = remote(location)
    return r.fs.get_file_info(r.path).type == pafs.FileType.Directory


def known_gone(location: str) -> bool:
    """True when a local file is gone. An object is never checked here (a request per object,
    hours for a million): `fastslow extract` over its folder lists it and drops what is gone."""
    return not is_url(location) and not os.path.exists(location)


@contextmanager
def open_input(location: str) -> Iterator[BinaryIO]:
    """The bytes of a file or object, as a stream."""
    if not is_url(location):
        with open(location, "rb") as fh:
            yield fh
        return
    r = remote(location)
    with r.fs.open_input_stream(r.path) as stream:
        yield stream  # type: ignore[misc]


def list_files(url: str) -> list[tuple[str, str, int, int]]:
    """(path relative to `url`, URL, size, mtime_ns) of every object under the folder `url`
    (or of `url` itself, a single object), hidden names ('.'-prefixed) skipped; unsorted.
    FileNotFoundError when there is nothing at `url`."""
    import pyarrow.fs as pafs

    r = remote(url)
    info = r.fs.get_file_info(r.path)
    if info.type == pafs.FileType.File:
        return [(Path(r.path).name, r.url(info.path), int(info.size or 0), int(info.mtime_ns or 0))]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(url)
    root = r.path.rstrip("/") + "/"
    found = []
    for entry in r.fs.get_file_info(pafs.FileSelector(r.path, recursive=True, allow_not_found=True)):
        rel = entry.path[len(root) :] if entry.path.startswith(root) else entry.path
        if entry.type != pafs.FileType.File or any(part.startswith(".") for part in rel.split("/")):
            continue
        found.append((rel, r.url(entry.path), int(entry.size or 0), int(entry.mtime_ns or 0)))
    return found


def scratch_dir(pid: int | None = None) -> Path:
    """The folder this process (or `pid`) fetches objects into for its decoders."""
    return Path(tempfile.gettempdir()) / f"fastslow-fetch-{os.getpid() if pid is None else pid}"


def clear_scratch(pid: int) -> None:
    """Delete what a decoder process left (it crashed or was killed mid-decode)."""
    shutil.rmtree(scratch_dir(pid), ignore_errors=True)


def download(url: str, target: str | os.PathLike[str]) -> None:
    """Copy the object at `url` into the local file `target` (FileNotFoundError when it is gone)."""
    import pyarrow.fs as pafs

    r = remote(url)
    pafs.copy_files(r.path, os.fspath(target), source_filesystem=r.fs, destination_filesystem=pafs.LocalFileSystem())


@contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local file with the bytes of `location`: the path itself for a local file, else a copy
    in `scratch_dir()` (the same extension, for decoders that look at it), deleted afterwards."""
    if not is_url(location):
        yield location
        return
    folder = scratch_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=os.path.splitext(urlsplit(location).path)[1], dir=folder)
    os.close(fd)
    try:
        download(location, name)
        yield name
    finally:
        for leftover in (lambda: os.unlink(name), lambda: os.rmdir(folder)):  # the folder once empty
            try:
                leftover()
            except OSError:
                pass
