"""Captions matched to stored features: what training, distillation and evaluation read."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastslow_cli.data.caption_files import load_captions, match_captions
from fastslow_cli.errors import FastslowError
from fastslow_cli.store.parquet import FeatureStore, FeatureTable

Pair = tuple[str, int]  # (caption, row of its item in `table`)


@dataclass
class CaptionedSet:
    """The items of the asked splits (one table) and each split's (caption, row) pairs."""

    table: FeatureTable
    pairs: dict[str, list[Pair]]
    fingerprint: str
    unmatched: int = 0
    unmatched_example: str = ""
    notes: list[str] = field(default_factory=list)  # things the user should know, one line each


def captioned_set(store: FeatureStore, captions_path: str | Path, splits: Sequence[str]) -> CaptionedSet:
    """Load the captions, match them to stored items and load the features of the items of `splits`.

    Captions whose media was never extracted are counted (and one is named) but do not
    stop the run; a split with no matched caption is an error naming the file.
    """
    captions = load_captions(captions_path)
    if not any(c.split in splits for c in captions):
        present = ", ".join(sorted({c.split for c in captions}))
        raise FastslowError(
            f"{captions_path} has no caption of split(s) {', '.join(splits)} (it has: {present}); "
            "choose one of those splits (eval: --split) or add the missing one to the file"
        )
    entries = store.entries()
    matched, unmatched = match_captions(captions, {i: e.path for i, e in entries.items()})
    wanted = [(c, item) for c, item in matched if c.split in splits]
    ids = sorted({item for _, item in wanted})
    if not ids:
        raise FastslowError(
            f"{captions_path}: no caption of split(s) {', '.join(splits)} matches an item of {store.directory}; "
            "extract the media it names first (`fastslow extract DIR --set ...`)"
        )
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
    )


def hold_out_val(data: CaptionedSet, captions_path: str | Path, share: float = 0.1, max_items: int = 1000) -> CaptionedSet:
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
        f"{captions_path}: no val caption matches an extracted item, so {count} of {len(items)} training items "
        f"({len(data.pairs['val'])} captions) are held out for validation; add a val split to choose them"
    )
    return data
