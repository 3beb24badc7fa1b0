"""Local copies of indexed objects (items at s3://, gs://, ... URLs) for `/api/items/KEY/media`.

A browser plays a video with many range requests; fetching the whole object for each would be
slow, so the server keeps the objects it fetched in a private temporary folder, the least
recently used dropped once they pass `max_bytes`, all deleted when the server stops. Only
indexed items are ever fetched (the caller passes an `Item` from the index's table).
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
        self._folder = tempfile.TemporaryDirectory(prefix="fastslow-serve-")
        self._copies: OrderedDict[str, tuple[Path, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_bytes = max_bytes

    def get(self, key: str, url: str) -> Path:
        """A local file with the bytes of `url` (FileNotFoundError when the object is gone).
        One fetch at a time: the server is for one user, and two requests for one video must
        not fetch it twice."""
        with self._lock:
            if key in self._copies:
                self._copies.move_to_end(key)
                return self._copies[key][0]
            target = Path(self._folder.name) / (key + os.path.splitext(url)[1])
            partial = target.with_name(target.name + ".part")
            try:
                with location.open_input(url) as src, open(partial, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(partial, target)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            self._copies[key] = (target, target.stat().st_size)
            self._evict()
            return target

    def _evict(self) -> None:
        total = sum(size for _, size in self._copies.values())
        while total > self.max_bytes and len(self._copies) > 1:
            _, (path, size) = self._copies.popitem(last=False)
            path.unlink(missing_ok=True)  # a response still sending it keeps its open file
            total -= size
