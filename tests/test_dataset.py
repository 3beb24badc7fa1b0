"""captioned_set.py: captions files matched to a feature set (several files, a media root,
the messages when nothing matches), and a validation split held out when the captions have none."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import file_url

from fastslow_cli.data.captioned_set import CaptionedSet, captioned_set, hold_out_val
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.store.parquet import FeatureRow, FeatureStore

SHAPES = [(2, 2, 3)]


def _store(tmp_path: Path, *media: Path, urls: bool = False) -> FeatureStore:
    """A tiny feature set of the media files (created empty); ids unlike paths, as matching must not use them.
    With `urls` the items are recorded at their file:// URLs, as an extract from a URL does."""
    store = FeatureStore(tmp_path / "ws" / "features" / "default")
    store.ensure({"name": "test"}, SHAPES, 4)
    rows = []
    for n, path in enumerate(media):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        video = path.suffix == ".mp4"
        frames = 4 if video else 1
        rows.append(FeatureRow(
            id=f"item-{n}", path=file_url(path) if urls else os.path.realpath(path), kind="video" if video else "image", frames=frames,
            timestamps=[float(t) for t in range(frames)], size=0, mtime_ns=0, content_hash=str(n),
            levels=[np.full((frames, *SHAPES[0]), n, np.float16)],
        ))
    store.append(rows)
    return store


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _karpathy(*images: tuple[str, str, str]) -> dict[str, object]:
    return {"images": [{"filename": f, "split": s, "sentences": [{"raw": c}]} for f, s, c in images]}


def _captions(data: CaptionedSet, split: str) -> list[tuple[str, str]]:
    return [(c, Path(data.table.paths[row]).name) for c, row in data.pairs[split]]


def test_karpathy_file_apart_from_its_images_matches_with_a_media_root(tmp_path: Path) -> None:
    images = tmp_path / "photos" / "flickr30k-images"
    store = _store(tmp_path, images / "1000.jpg", images / "1001.jpg", images / "1002.jpg")
    karpathy = _write(tmp_path / "annotations" / "dataset_flickr30k.json", _karpathy(
        ("1000.jpg", "train", "a dog runs"), ("1001.jpg", "val", "a cat sleeps"), ("1002.jpg", "test", "a bird"),
    ))
    data = captioned_set(store, karpathy, ("train", "val"), media_root=tmp_path / "photos")
    assert _captions(data, "train") == [("a dog runs", "1000.jpg")]
    assert _captions(data, "val") == [("a cat sleeps", "1001.jpg")]
    assert data.provenance() == {"captions": [str(karpathy)], "media_root": str(tmp_path / "photos")}
    with pytest.raises(FastslowError):  # without it, the paths resolve next to the file: nothing matches
        captioned_set(store, karpathy, ("train", "val"))


def test_items_extracted_from_a_url_match_with_that_url_as_media_root(tmp_path: Path) -> None:
    images = tmp_path / "bucket" / "flickr30k-images"
    store = _store(tmp_path, images / "1000.jpg", images / "sub" / "1001.jpg", urls=True)
    captions = _write(tmp_path / "captions.json", [
        {"media": "flickr30k-images/1000.jpg", "caption": "a dog runs", "split": "train"},
        {"media": "1001.jpg", "caption": "a cat sleeps", "split": "train"},  # found by its name under the root
    ])
    data = captioned_set(store, captions, ("train",), media_root=file_url(tmp_path / "bucket"))
    assert _captions(data, "train") == [("a dog runs", "1000.jpg"), ("a cat sleeps", "1001.jpg")]
    assert data.table.paths == [file_url(images / "1000.jpg"), file_url(images / "sub" / "1001.jpg")]
    with pytest.raises(FastslowError, match="no such folder"):
        captioned_set(store, captions, ("train",), media_root=file_url(tmp_path / "nowhere"))
    with pytest.raises(FastslowError) as without:  # the captions file's folder is not the URL's
        captioned_set(store, captions, ("train",))
    assert f"the set has {file_url(images / '1000.jpg')}" in str(without.value)
    assert f"pass --media-root {file_url(tmp_path / 'bucket')} " in str(without.value)


def test_two_vatex_files_combined_each_with_the_split_of_its_name(tmp_path: Path) -> None:
    videos = tmp_path / "vatex" / "videos"
    store = _store(tmp_path, videos / "aaa_1_2.mp4", videos / "bbb_3_4.mp4", videos / "ccc_5_6.mp4")
    train = _write(tmp_path / "ann" / "vatex_training_v1.0.json", [
        {"videoID": "aaa_1_2", "enCap": ["A man plays.", "Someone plays"]},
        {"videoID": "bbb_3_4", "enCap": ["A dog barks."]},
        {"videoID": "zzz_0_0", "enCap": ["never downloaded"]},
    ])
    val = _write(tmp_path / "ann" / "vatex_validation_v1.0.json", [{"videoID": "ccc_5_6", "enCap": ["A cat."]}])
    data = captioned_set(store, [train, val], ("train", "val"), media_root=tmp_path / "vatex")
    assert _captions(data, "train") == [
        ("A man plays.", "aaa_1_2.mp4"), ("Someone plays", "aaa_1_2.mp4"), ("A dog barks.", "bbb_3_4.mp4"),
    ]
    assert _captions(data, "val") == [("A cat.", "ccc_5_6.mp4")]
    assert [(f.path, f.captions, f.matched, f.used) for f in data.files] == [
        (str(train), 4, 3, {"train": 3, "val": 0}), (str(val), 1, 1, {"train": 0, "val": 1}),
    ]
    assert data.files[0].describe() == f"{train}: 3 of 4 captions match an item; used: train 3, val 0"
    assert data.unmatched == 1 and "zzz_0_0" in data.unmatched_example
    assert data.provenance()["captions"] == [str(train), str(val)]


def test_a_caption_given_by_two_files_for_the_same_media_and_split_is_kept_once(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "data" / "a.png", tmp_path / "data" / "b.png")
    first = _write(tmp_path / "data" / "one.json", [
        {"media": "a.png", "caption": "a red circle"}, {"media": "a.png", "caption": "a red circle"},
        {"media": "b.png", "caption": "a blue square", "split": "val"},
    ])
    second = _write(tmp_path / "data" / "two.json", [
        {"media": "a.png", "caption": "a  red circle"},  # the same caption once whitespace is normalised
        {"media": "b.png", "caption": "a blue square"},  # same media and text, but another split
        {"media": "b.png", "caption": "a blue box", "split": "val"},
    ])
    data = captioned_set(store, [first, second], ("train", "val"))
    # within one file nothing is dropped: repeats there are the file's own choice
    assert _captions(data, "train") == [("a red circle", "a.png"), ("a red circle", "a.png"), ("a blue square", "b.png")]
    assert _captions(data, "val") == [("a blue square", "b.png"), ("a blue box", "b.png")]
    assert [f.duplicates for f in data.files] == [0, 1]
    assert data.files[1].describe().endswith("; 1 already in an earlier file, kept once")


def test_media_paths_that_match_nothing_are_explained_with_an_example(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "mnt" / "photos" / "1000.jpg", tmp_path / "mnt" / "photos" / "1001.jpg")
    karpathy = _write(tmp_path / "data" / "dataset_flickr30k.json", _karpathy(
        ("0999.jpg", "test", "never extracted"), ("1000.jpg", "test", "a dog"), ("1001.jpg", "test", "a cat"),
        ("1001.jpg", "train", "a cat again"),
    ))
    with pytest.raises(FastslowError) as info:
        captioned_set(store, karpathy, ("test",))
    message = str(info.value)
    root = Path(os.path.realpath(tmp_path))
    assert message.startswith(  # the example is the first caption whose file name the set has
        f"none of the 3 media path(s) of split(s) test in {karpathy} match an item of {store.directory} "
        f"(e.g. {karpathy}: images[1].sentences[0] names {root / 'data' / '1000.jpg'}; "
        f"the set has {root / 'mnt' / 'photos' / '1000.jpg'}): pass --media-root {root / 'mnt' / 'photos'} "
    )
    assert "extract the media" not in message and "\n" not in message
    # the root it suggests does make them match
    assert len(captioned_set(store, karpathy, ("test",), media_root=root / "mnt" / "photos").pairs["test"]) == 2


def test_vatex_ids_that_match_nothing_are_compared_by_file_stem(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "vatex" / "videos" / "aaa_1_2.mp4")
    val = _write(tmp_path / "ann" / "vatex_validation_v1.0.json", [{"videoID": "aaa_1_2", "enCap": ["A cat."]}])
    with pytest.raises(FastslowError) as info:
        captioned_set(store, val, ("val",))
    videos = os.path.realpath(tmp_path / "vatex" / "videos")
    assert f"the set has {videos}/aaa_1_2.mp4): pass --media-root {videos} " in str(info.value)


def test_no_file_of_that_name_in_the_set_and_absolute_paths(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "mnt" / "a.png")
    relative = _write(tmp_path / "data" / "c.json", [{"media": "images/x.png", "caption": "x"}])
    absolute = _write(tmp_path / "data" / "d.json", [{"media": str(tmp_path / "old" / "a.png"), "caption": "x"}])
    with pytest.raises(FastslowError) as info:
        captioned_set(store, relative, ("train",))
    assert f"the set has no file named 'x.png', e.g. it has {os.path.realpath(tmp_path / 'mnt' / 'a.png')}" in str(info.value)
    assert "pass --media-root DIR (the folder the media paths are relative to)" in str(info.value)
    with pytest.raises(FastslowError) as info:
        captioned_set(store, absolute, ("train",))
    assert "correct the media paths in the captions" in str(info.value) and "--media-root" not in str(info.value)


def test_an_empty_set_still_says_extract_first(tmp_path: Path) -> None:
    store = _store(tmp_path)
    captions = _write(tmp_path / "data" / "c.json", [{"media": "a.png", "caption": "x"}])
    with pytest.raises(FastslowError) as info:
        captioned_set(store, [captions], ("train",))
    assert "extract the media it names first (`fastslow extract DIR --set default`)" in str(info.value)


def test_a_media_root_that_is_not_a_folder(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "data" / "a.png")
    captions = _write(tmp_path / "data" / "c.json", [{"media": "a.png", "caption": "x"}])
    for root, problem in ((tmp_path / "nope", "not found"), (captions, "is not a folder")):
        with pytest.raises(FastslowError) as info:
            captioned_set(store, captions, ("train",), media_root=root)
        assert str(info.value) == f"media root {root}: {problem}; pass --media-root the folder that holds the media"


def test_the_split_check_covers_every_file(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "data" / "a.png")
    a = _write(tmp_path / "data" / "vatex_training.json", [{"videoID": "a", "enCap": ["x"]}])
    b = _write(tmp_path / "data" / "vatex_validation.json", [{"videoID": "a", "enCap": ["y"]}])
    with pytest.raises(FastslowError) as info:
        captioned_set(store, [a, b], ("test",))
    assert str(info.value).startswith(f"{a}, {b} has no caption of split(s) test (it has: train, val)")


def _data(n_items: int, captions_per_item: int = 2, val: bool = False) -> CaptionedSet:
    ids = [f"images/{i:03}.png" for i in range(n_items)]
    train = [(f"caption {c} of {i}", i) for i in range(n_items) for c in range(captions_per_item)]
    pairs = {"train": train, "val": [(f"val caption of {n_items - 1}", n_items - 1)] if val else []}
    return CaptionedSet(table=SimpleNamespace(ids=ids), pairs=pairs, fingerprint="f")


# ------------------------------------------------------------------- held-out val


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


def test_the_note_names_every_captions_file() -> None:
    data = hold_out_val(_data(50), [Path("a.json"), Path("b.json")])
    assert data.notes[0].startswith("a.json, b.json: no val caption matches")


def test_an_empty_list_of_captions_files_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pass --captions FILE"):
        captioned_set(_store(tmp_path), [], ("train",))
