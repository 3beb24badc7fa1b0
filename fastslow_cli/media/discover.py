"""Finding media files: images and videos under the roots a user names, each real file once."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastslow_cli.errors import FastslowError
from fastslow_cli.media.location import check_location, is_url, list_files

IMAGE_EXTS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})


@dataclass(frozen=True)
class MediaFile:
    """One media file found; `id` is its key in the feature store and `path` where any process
    reads it (media/location.py): both the resolved absolute POSIX path of a local file, or the
    URL of an object. Two different files never share one, whichever roots they came from.
    `kind` is guessed from the extension; the decoder records the real one."""

    id: str
    path: str
    kind: str
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        """The file name (the last part of the path or URL)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def media_kind(path: str | os.PathLike[str]) -> str | None:
    """'image', 'video' or None, from the extension (case-insensitive)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


# ----------------------------------------------------------------------------- discovery


def find_media(roots: Sequence[str | os.PathLike[str]]) -> list[MediaFile]:
    """Every image and video under `roots`, in a stable order, each real file once.

    Roots are taken in the order given; inside a folder, files are sorted by their POSIX
    path relative to the root. Symlinks are followed, symlinked folders are never
    walked twice (no loops), hidden files and folders (names starting with '.') are
    skipped, and unreadable folders are skipped. A file given directly is kept only if
    its extension is a known media one. A root may be a URL (s3://bucket/videos): its
    objects are listed the same way (location.list_files).
    """
    found: list[MediaFile] = []
    seen: set[tuple[int, int]] = set()
    seen_urls: set[str] = set()
    for root in roots:
        if is_url(root):
            for m in _find_objects(os.fspath(root)):
                if m.id not in seen_urls:
                    seen_urls.add(m.id)
                    found.append(m)
            continue
        check_location(root)
        root_path = Path(root).expanduser()
        try:
            st = root_path.stat()
        except FileNotFoundError:
            raise FastslowError(f"{root}: no such file or folder: check the path") from None
        except OSError as exc:
            raise FastslowError(f"{root}: cannot read it ({exc.strerror or exc}): check the path") from None
        if stat.S_ISDIR(st.st_mode):
            candidates = _walk(root_path, (st.st_dev, st.st_ino))
        elif media_kind(root_path):
            candidates = [(root_path.name, root_path, st)]
        else:
            candidates = []
        for rel, path, fst in sorted(candidates, key=lambda c: c[0]):
            key = (fst.st_dev, fst.st_ino)
            if key in seen:
                continue
            seen.add(key)
            resolved = path.resolve()
            found.append(
                MediaFile(
                    id=resolved.as_posix(),
                    path=resolved.as_posix(),
                    kind=media_kind(path) or "",
                    size=fst.st_size,
                    mtime_ns=fst.st_mtime_ns,
                )
            )
    return found


def _find_objects(url: str) -> list[MediaFile]:
    """The media objects under a URL, sorted by their path relative to it."""
    try:
        listed = list_files(url)
    except FileNotFoundError:
        raise FastslowError(f"{url}: no such object or folder: check the URL") from None
    except OSError as exc:
        raise FastslowError(f"{url}: cannot list it ({exc}): check the URL and the credentials") from None
    return [
        MediaFile(id=u, path=u, kind=media_kind(rel) or "", size=size, mtime_ns=mtime)
        for rel, u, size, mtime in sorted(listed)
        if media_kind(rel)
    ]


def _walk(root: Path, root_key: tuple[int, int]) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat) of media files under `root`, depth first in sorted order."""
    visited_dirs = {root_key}
    out: list[tuple[str, Path, os.stat_result]] = []
    stack: list[tuple[str, str]] = [("", os.fspath(root))]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable or vanished folder: skip it, keep the rest
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    st = entry.stat()
                    if (st.st_dev, st.st_ino) not in visited_dirs:
                        visited_dirs.add((st.st_dev, st.st_ino))
                        subdirs.append((f"{prefix}{entry.name}/", entry.path))
                elif entry.is_file() and media_kind(entry.name):
                    out.append((prefix + entry.name, Path(entry.path), entry.stat()))
            except OSError:  # broken symlink or a race with deletion
                continue
        stack.extend(reversed(subdirs))
    return out


