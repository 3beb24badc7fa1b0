"""Thumbnails of a feature set: a small JPEG per image and per sampled video frame.

```
features/<set>/thumbs/<k[:2]>/<k>-<frame>.jpg     k = the item's content hash
```

Stored beside the features, never in them: a web page shows an item without decoding
its media again. Files are keyed by the item's `content_hash` (blake2b of its bytes), not
by its id, so nothing can be served stale: a renamed file keeps its thumbnails with its
features, a changed file has a new hash and gets new ones, and the reader maps an id to a
hash through the live rows of the store. `prune` (run by `extract` after compaction)
deletes the thumbnails no live row names. A file whose thumbnails could not be made
(decoding failed when only thumbnails were asked for) gets an empty `<k>-failed` marker
instead, so it is not retried on every run. A row without a content hash (its file could
not be read when it was stored) is keyed by a hash of its id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from fastslow_cli.atomic import atomic_write_bytes
from fastslow_cli.store.parquet import FeatureStore, StoreEntry

FOLDER = "thumbs"
SUFFIX = ".jpg"
MIME = "image/jpeg"


def thumb_key(content_hash: str, item_id: str) -> str:
    """The file key of an item's thumbnails: its content hash (or a hash of its id)."""
    if content_hash:
        return content_hash
    return "id-" + hashlib.blake2b(item_id.encode(), digest_size=16).hexdigest()


def entry_key(entry: StoreEntry) -> str:
    return thumb_key(entry.content_hash, entry.id)


class ThumbnailFiles:
    """The thumbnail folder of one feature set, by key (reading and writing)."""

    def __init__(self, feature_set_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(feature_set_dir) / FOLDER

    def path(self, key: str, frame: int) -> Path:
        return self.directory / key[:2] / f"{key}-{frame}{SUFFIX}"

    def put(self, key: str, thumbnails: Sequence[bytes]) -> None:
        """Write one item's thumbnails, frame by frame, each renamed into place whole.

        Not fsynced (`atomic.py` is, for the store): they are a cache any `extract` can
        rebuild, and two fsyncs per small file doubled the extract time of small images.
        A file a power cut left empty counts as missing (`has`, `get`), so it is made again.
        """
        (self.directory / key[:2]).mkdir(parents=True, exist_ok=True)
        for frame, data in enumerate(thumbnails):
            target = self.path(key, frame)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)

    def has(self, key: str) -> bool:
        """Thumbnails stored, or tried and failed (not retried on every run)."""
        return _nonempty(self.path(key, 0)) or self._failed(key).is_file()

    def _failed(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}-failed"

    def mark_failed(self, key: str) -> None:
        """Remember that this content could not be decoded for thumbnails."""
        (self.directory / key[:2]).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._failed(key), b"")

    def count(self, key: str) -> int:
        """Frames 0, 1, ... stored for `key` (stops at the first missing one)."""
        n = 0
        while _nonempty(self.path(key, n)):
            n += 1
        return n

    def missing(self, entries: Iterable[StoreEntry]) -> list[StoreEntry]:
        """The entries with no thumbnail and no failed try (e.g. stored before thumbnails existed)."""
        return [e for e in entries if not self.has(entry_key(e))]

    def prune(self, live: Collection[str]) -> int:
        """Delete the thumbnails of every key not in `live`; returns the files deleted."""
        if not self.directory.is_dir():
            return 0
        deleted = 0
        for sub in self.directory.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                key = f.name.rsplit("-", 1)[0]
                if key not in live:
                    f.unlink(missing_ok=True)
                    deleted += 1
        return deleted


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


class Thumbnails:
    """Reads a feature set's thumbnails by item id, e.g. for a web page.

    The id -> content hash map comes from the store's live rows and is read again when
    the store's parts change (an `extract` ran meanwhile), so a long-running server never
    serves the thumbnail of a file's old content.
    """

    mime = MIME

    def __init__(self, feature_set_dir: str | os.PathLike[str]) -> None:
        self.store = FeatureStore(Path(feature_set_dir))
        self.files = ThumbnailFiles(feature_set_dir)
        self._parts: list[Path] | None = None
        self._keys: dict[str, str] = {}

    def _key(self, item_id: str) -> str | None:
        parts = self.store.parts() if self.store.parts_dir.is_dir() else []
        if parts != self._parts:
            entries = self.store.entries() if parts else {}
            self._keys = {i: entry_key(e) for i, e in entries.items()}
            self._parts = parts
        return self._keys.get(item_id)

    def get(self, item_id: str, frame: int = 0) -> bytes | None:
        """The JPEG of frame `frame` of item `item_id`; None when none is stored."""
        key = self._key(item_id)
        if key is None or frame < 0:
            return None
        try:
            data = self.files.path(key, frame).read_bytes()
        except FileNotFoundError:
            return None
        return data or None

    def count(self, item_id: str) -> int:
        """How many frames of `item_id` have a thumbnail (0: unknown item or none stored)."""
        key = self._key(item_id)
        return 0 if key is None else self.files.count(key)
