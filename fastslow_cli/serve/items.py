"""Opaque item keys, and the one rule for which files the server may send.

URLs never carry file paths: each indexed item gets a stable key (a hash of its id), and a
key that is not in the index is unknown. A key's file is served only when it is still the
file that was indexed: the stored path (a resolved absolute path, as `extract` records it)
must still resolve to itself, so a symlink put at an indexed path since indexing (pointing
anywhere, e.g. outside the indexed folders) is refused, and it must be a regular file. An
item at a URL (s3://...) is fetched into the server's own temporary folder and sent from there
(serve/fetched.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fastslow_cli.errors import FastslowError, one_line
from fastslow_cli.media.location import is_url
from fastslow_cli.serve.fetched import FetchedMedia

KEY_PATTERN = r"^[0-9a-f]{20}$"


def item_key(item_id: str) -> str:
    """The opaque, stable URL key of an item id (blake2b-80 of the id, 20 hex digits)."""
    return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


class MediaRefused(FastslowError):
    """An indexed item's file cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    label: int
    id: str
    path: str
    kind: str
    timestamps: tuple[float, ...]


class ItemTable:
    """The index's items by key (and by id), read once from the index's item table."""

    def __init__(self, items: dict[str, list]) -> None:
        self.by_key: dict[str, Item] = {}
        self.by_id: dict[str, Item] = {}
        for label, item_id in enumerate(items["id"]):
            item = Item(label, item_id, items["path"][label], items["kind"][label], tuple(items["timestamps"][label] or ()))
            self.by_key[item_key(item_id)] = item
            self.by_id[item_id] = item
        self._fetched = FetchedMedia()  # copies of items at URLs, its folder made on the first one

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, key: str) -> Item | None:
        return self.by_key.get(key)

    def media_path(self, item: Item, update_hint: str = "fastslow index update") -> Path:
        """The file to send for `item`, or `MediaRefused` (404 when gone, 403 when no longer the indexed file)."""
        path = item.path
        if is_url(path):
            return self._fetch(item, update_hint)
        if not os.path.lexists(path):
            raise MediaRefused(
                f"the media file of item {item_key(item.id)} is gone since the index was built: run "
                f"`fastslow extract` where it moved to, then `{update_hint}`", 404,
            )
        if os.path.realpath(path) != os.path.abspath(path):
            raise MediaRefused(
                f"the media file of item {item_key(item.id)} is now a symbolic link (or under one): not served; "
                f"replace it with the file itself and run `{update_hint}`", 403,
            )
        if not os.path.isfile(path):
            raise MediaRefused(f"the media path of item {item_key(item.id)} is no longer a regular file: not served", 403)
        return Path(path)

    def _fetch(self, item: Item, update_hint: str) -> Path:
        """A local copy of an item that is an object at a URL (serve/fetched.py)."""
        try:
            return self._fetched.get(item_key(item.id), item.path)
        except FileNotFoundError:
            raise MediaRefused(
                f"the media object of item {item_key(item.id)} is gone since the index was built: run "
                f"`fastslow extract` over its folder, then `{update_hint}`", 404,
            ) from None
        except (OSError, FastslowError) as exc:
            raise MediaRefused(f"could not fetch the media object of item {item_key(item.id)}: {one_line(exc)}", 502) from None
