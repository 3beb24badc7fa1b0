"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader (or a crash, even `kill -9`) then sees either the old file or the new one,
never half of one. `file_sha256` gives the checksums written beside such files so a
damaged one is refused before it is parsed. `check_writable` lets a long command fail
before its work rather than when it saves the result.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastslow_cli.errors import FastslowError


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is untouched. `tmp_dir` (same
    file system) keeps the temporary file out of a folder that must hold only finished files.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=tmp_dir or target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace `path` with UTF-8 `text`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_shared_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_text` for a file meant to be shared (an HTML page): it gets the mode any
    new file gets under the umask, not the 0600 of the atomic temporary file."""
    atomic_write_text(path, text)
    mask = os.umask(0)
    os.umask(mask)
    Path(path).chmod(0o666 & ~mask)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically replace `path` with `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], obj: Any) -> None:
    """Append one JSON line and fsync; a torn last line is skipped by readers."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(target: str | os.PathLike[str]) -> None:
    """Raise a one-line `FastslowError` now if the folder `target` could not be written later.

    A probe file is created and removed in the nearest existing folder of `target`
    (nothing else is created). A real write, not `os.access`: root passes `os.access` on
    any mode bits, and a write is what the command will need.
    """
    target = Path(target)
    folder = target
    while not folder.is_dir():
        if folder.exists():
            raise FastslowError(f"cannot write {target}: {folder} is a file, not a folder; move it away or pass --workspace DIR")
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastslow-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_failure(exc, target, folder) from None


WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)  # only a write meets these
ACCESS_ERRNOS = (errno.EACCES, errno.EPERM)


def write_failure(exc: OSError, target: str | os.PathLike[str] | None = None, folder: str | os.PathLike[str] | None = None) -> FastslowError:
    """The one-line error for a read-only disk, a full one or missing permissions."""
    where = target or exc.filename or "a file"
    place = f" (in {folder})" if folder is not None and str(folder) != str(where) else ""
    verb = "write" if target is not None or exc.errno in WRITE_ERRNOS else "open"
    if exc.errno == errno.EROFS:
        reason, fix = "read-only file system", "remount it read-write"
    elif exc.errno in ACCESS_ERRNOS:
        reason, fix = "permission denied", "check its permissions"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason, fix = "no space left on the disk", "free some space"
    else:
        reason, fix = exc.strerror or type(exc).__name__, "fix that"
    return FastslowError(
        f"cannot {verb} {where}{place}: {reason}; {fix}, or pass --workspace (or FASTSLOW_WORKSPACE) a writable folder"
    )
