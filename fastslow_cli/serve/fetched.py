"""Local copies of indexed objects (items at s3://, gs://, ... URLs) for `/api/items/KEY/media`.

A browser plays a video with many range requests; fetching the whole object for each would be
slow, so the server keeps the objects it fetched in a private temporary folder, the least
recently used dropped once they pass `max_bytes`, all deleted when the server stops. A copy
is used while the object keeps its size and modification time. Only indexed items are ever
fetched (the caller passes an `Item` from the index's table).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from fastslow_cli.media import location

MAX_BYTES = 2 << 30  # 2 GiB of fetched media at most (a copy bigger than that is still served, alone)


class FetchedMedia:
    """Objects fetched for serving, by item key, least recently used first."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._folder: tempfile.TemporaryDirectory[str] | None = None  # made on the first fetch
        self._copies: OrderedDict[str, tuple[Path, int, tuple[int, int]]] = OrderedDict()  # key -> (file, bytes, version)
        self._lock = threading.Lock()
        self.max_bytes = max_bytes

    def get(self, key: str, url: str) -> Path:
        """A local file with the bytes `url` has now (FileNotFoundError when the object is gone).

        Each request asks the store for the object's size and modification time (one small
        request), so an object replaced since it was fetched is fetched again, never served
        stale. One fetch at a time: the server is for one user, and two requests for one
        video must not fetch it twice."""
        with self._lock:
            version = location.stat(url)
            cached = self._copies.get(key)
            if cached is not None and cached[2] == version:
                self._copies.move_to_end(key)
                return cached[0]
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="fastslow-serve-")
            # A new name per version: a response still sending the old copy keeps its file.
            target = Path(self._folder.name) / f"{key}-{version[0]}-{version[1]}{os.path.splitext(url)[1]}"
            partial = target.with_name(target.name + ".part")
            try:
                location.download(url, partial)
                os.replace(partial, target)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            if cached is not None:
                cached[0].unlink(missing_ok=True)
            self._copies[key] = (target, target.stat().st_size, version)
            self._copies.move_to_end(key)
            self._evict()
            return target

    def _evict(self) -> None:
        total = sum(size for _, size, _ in self._copies.values())
        while total > self.max_bytes and len(self._copies) > 1:
            _, (path, size, _) = self._copies.popitem(last=False)
            path.unlink(missing_ok=True)  # a response still sending it keeps its open file
            total -= size
