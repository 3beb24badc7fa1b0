"""dataset.py: a validation split held out when the captions file has none."""

from __future__ import annotations

from types import SimpleNamespace

from fastslow_cli.data.captioned_set import CaptionedSet, hold_out_val


def _data(n_items: int, captions_per_item: int = 2, val: bool = False) -> CaptionedSet:
    ids = [f"images/{i:03}.png" for i in range(n_items)]
    train = [(f"caption {c} of {i}", i) for i in range(n_items) for c in range(captions_per_item)]
    pairs = {"train": train, "val": [(f"val caption of {n_items - 1}", n_items - 1)] if val else []}
    return CaptionedSet(table=SimpleNamespace(ids=ids), pairs=pairs, fingerprint="f")


def test_a_share_of_items_moves_to_val_with_all_their_captions() -> None:
    data = hold_out_val(_data(50), "caps.jsonl")
    val_items = {i for _, i in data.pairs["val"]}
    train_items = {i for _, i in data.pairs["train"]}
    assert len(val_items) == 5 and not val_items & train_items
    assert len(data.pairs["val"]) == 10 and len(data.pairs["train"]) == 90
    assert len(data.notes) == 1 and "caps.jsonl" in data.notes[0] and "5 of 50" in data.notes[0]


def test_the_same_items_are_held_out_whatever_the_order() -> None:
    first = hold_out_val(_data(50), "c")
    shuffled = _data(50)
    shuffled.pairs["train"].reverse()
    second = hold_out_val(shuffled, "c")
    assert {i for _, i in first.pairs["val"]} == {i for _, i in second.pairs["val"]}


def test_held_out_items_are_capped() -> None:
    data = hold_out_val(_data(300, captions_per_item=1), "c", share=0.5, max_items=20)
    assert len(data.pairs["val"]) == 20 and len(data.pairs["train"]) == 280


def test_a_val_split_or_too_few_items_leave_the_data_as_it_is() -> None:
    with_val = _data(50, val=True)
    before = {k: list(v) for k, v in with_val.pairs.items()}
    assert hold_out_val(with_val, "c").pairs == before and not with_val.notes
    tiny = _data(9)
    assert hold_out_val(tiny, "c").pairs["val"] == [] and not tiny.notes
