"""Captions matched to stored features: what training, distillation and evaluation read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastslow_cli.data.caption_files import Caption, load_captions, match_captions, nearest_item, written_path
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.media.location import as_path, from_path, is_url
from fastslow_cli.store.parquet import FeatureStore, FeatureTable

Pair = tuple[str, int]  # (caption, row of its item in `table`)


@dataclass(frozen=True)
class CaptionFileReport:
    """How the captions of one file of a run matched the feature set."""

    path: str
    captions: int  # read from the file
    matched: int  # paired with an item, any split
    duplicates: int  # matched, but an earlier file of the run gave the same caption, item and split
    used: dict[str, int]  # captions of each asked split the run uses (duplicates left out)

    def describe(self) -> str:
        """One line for the user: "FILE: 900 of 1,000 captions match an item; used: train 800, val 100"."""
        used = ", ".join(f"{split} {n:,}" for split, n in self.used.items())
        return (
            f"{self.path}: {self.matched:,} of {self.captions:,} captions match an item; used: {used}"
            + (f"; {self.duplicates:,} already in an earlier file, kept once" if self.duplicates else "")
        )


@dataclass
class CaptionedSet:
    """The items of the asked splits (one table) and each split's (caption, row) pairs."""

    table: FeatureTable
    pairs: dict[str, list[Pair]]
    fingerprint: str
    unmatched: int = 0
    unmatched_example: str = ""
    notes: list[str] = field(default_factory=list)  # things the user should know, one line each
    files: list[CaptionFileReport] = field(default_factory=list)  # one per captions file, in order
    media_root: str | None = None

    def provenance(self) -> dict[str, object]:
        """What a model's config records of the captions it was trained on."""
        return {"captions": [f.path for f in self.files], "media_root": self.media_root}


CaptionsPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def captioned_set(
    store: FeatureStore,
    captions: CaptionsPaths,
    splits: Sequence[str],
    media_root: str | os.PathLike[str] | None = None,
) -> CaptionedSet:
    """Load one or several captions files, match them to stored items and load the features
    of the items of `splits`.

    Several files are combined (VATEX train + validation): each keeps its own splits, and a
    caption an earlier file already gave for the same item and split is kept once.
    `media_root` is the folder the media paths of every file are relative to, when the
    captions are kept apart from their media. Captions whose media was never extracted are
    counted (and one is named) but do not stop the run; no matched caption of `splits` is
    an error naming the files and, when the set has items, an example of the mismatch.
    """
    paths = _paths(captions)
    label = _label(paths)
    loaded = [(path, load_captions(path, media_root)) for path in paths]
    if not any(c.split in splits for _, caps in loaded for c in caps):
        present = ", ".join(sorted({c.split for _, caps in loaded for c in caps}))
        raise FastslowError(
            f"{label} has no caption of split(s) {', '.join(splits)} (it has: {present}); "
            "choose one of those splits (eval: --split) or add the missing one to the file"
        )
    entries = store.entries()
    urls = any(is_url(e.path) for e in entries.values())  # items at URLs are paired in path form
    items = {i: as_path(e.path) if is_url(e.path) else e.path for i, e in entries.items()}
    seen: set[tuple[str, str, str]] = set()
    wanted: list[tuple[Caption, str]] = []
    unmatched: list[Caption] = []
    files = []
    for path, caps in loaded:
        matched, missing = match_captions(caps, items)
        fresh = [(c, item) for c, item in matched if (item, c.split, c.caption) not in seen]
        seen.update((item, c.split, c.caption) for c, item in matched)
        used = [(c, item) for c, item in fresh if c.split in splits]
        wanted += used
        unmatched += missing
        counts = {s: sum(c.split == s for c, _ in used) for s in splits}
        files.append(CaptionFileReport(str(path), len(caps), len(matched), len(matched) - len(fresh), counts))
    ids = sorted({item for _, item in wanted})
    if not ids:
        raise _no_match(label, store, items, [c for c in unmatched if c.split in splits], splits, urls)
    row = {item: r for r, item in enumerate(ids)}
    pairs: dict[str, list[Pair]] = {s: [] for s in splits}
    for c, item in wanted:
        pairs[c.split].append((c.caption, row[item]))
    return CaptionedSet(
        table=store.load(ids),
        pairs=pairs,
        fingerprint=store.fingerprint(),
        unmatched=len(unmatched),
        unmatched_example=f"{unmatched[0].source}: {unmatched[0].media}" if unmatched else "",
        files=files,
        media_root=None if media_root is None else str(media_root),
    )


def _paths(captions: CaptionsPaths) -> list[Path]:
    if isinstance(captions, (str, os.PathLike)):
        return [Path(captions)]
    if not captions:
        raise UsageError("no captions file given: pass --captions FILE (several times to combine files)")
    return [Path(p) for p in captions]


def _label(captions: CaptionsPaths) -> str:
    """The captions files, as messages name them."""
    return str(captions) if isinstance(captions, (str, os.PathLike)) else ", ".join(str(p) for p in captions)


def _no_match(
    label: str, store: FeatureStore, items: dict[str, str], unmatched: list[Caption], splits: Sequence[str],
    urls: bool,
) -> FastslowError:
    """Why no caption of `splits` matched: nothing extracted yet, or paths that differ (with an example)."""
    asked = ", ".join(splits)
    if not items:
        return FastslowError(
            f"{label}: no caption of split(s) {asked} matches an item of {store.directory}, which holds none; "
            f"extract the media it names first (`fastslow extract DIR --set {store.directory.name}`)"
        )
    cap, same, root = nearest_item(unmatched, items.values())
    shown = from_path if urls else str  # `items` holds URLs in path form: name them as URLs
    if same is None:
        has = f"the set has no file named {cap.media.name!r}, e.g. it has {shown(min(items.values()))}"
    else:
        has = f"the set has {shown(same)}"
    if not written_path(cap):
        fix = "correct the media paths in the captions"
    else:
        fix = f"pass --media-root {shown(str(root)) if root else 'DIR'} (the folder the media paths are relative to)"
    media = len({c.media for c in unmatched})
    return FastslowError(
        f"none of the {media:,} media path(s) of split(s) {asked} in {label} match an item of {store.directory} "
        f"(e.g. {cap.source} names {cap.media}; {has}): {fix}, or --set the feature set they were extracted into"
    )


def hold_out_val(data: CaptionedSet, captions: CaptionsPaths, share: float = 0.1, max_items: int = 1000) -> CaptionedSet:
    """Give a captions file without a val split one: `share` of the training items (at most
    `max_items`), with all their captions, move to val.

    Training selects its best epoch on val, and many users' files have only train (and
    test). The items are chosen by a hash of their ids, not by a seed, so that `train fast`,
    `train slow` and `distill` on the same file hold out the same items. A file with a
    val split, or too few items to spare any, is returned as it is.
    """
    train = data.pairs.get("train", [])
    if "val" not in data.pairs or data.pairs["val"] or not train:
        return data
    items = sorted({item for _, item in train})
    count = min(max_items, int(len(items) * share))
    if count < 1 or len(items) - count < 2:
        return data

    def rank(item: int) -> bytes:
        return hashlib.sha256(data.table.ids[item].encode()).digest()

    held = set(sorted(items, key=rank)[:count])
    data.pairs["val"] = [p for p in train if p[1] in held]
    data.pairs["train"] = [p for p in train if p[1] not in held]
    data.notes.append(
        f"{_label(captions)}: no val caption matches an extracted item, so {count} of {len(items)} training items "
        f"({len(data.pairs['val'])} captions) are held out for validation; add a val split to choose them"
    )
    return data
