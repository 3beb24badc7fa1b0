"""Caption files in every supported format, their errors, path resolution and matching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fastslow_cli.data.caption_files import Caption, load_captions, match_captions, normalise_split
from fastslow_cli.errors import FastslowError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _error(path: Path) -> str:
    with pytest.raises(FastslowError) as info:
        load_captions(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------ JSON Lines


def test_jsonl_resolves_media_against_the_file_folder(tmp_path: Path) -> None:
    elsewhere = _write(tmp_path / "other" / "x.png", b"")
    path = _jsonl(
        tmp_path / "data" / "captions.jsonl",
        [
            {"media": "images/a.png", "caption": "a red  circle\n", "split": "train"},
            {"media": "../b.png", "caption": "a blue square", "split": "Validation"},
            {"media": str(elsewhere), "caption": "absolute", "extra": 1},
        ],
    )
    caps = load_captions(str(path))
    data = Path(os.path.realpath(tmp_path / "data"))
    assert [c.media for c in caps] == [data / "images/a.png", data.parent / "b.png", elsewhere.resolve()]
    assert [c.caption for c in caps] == ["a red circle", "a blue square", "absolute"]
    assert [c.split for c in caps] == ["train", "val", "train"]  # alias; missing split is train
    assert caps[1].source == f"{path}:2"
    assert all(c.root == data for c in caps)


def test_jsonl_skips_blank_lines_and_reads_a_byte_order_mark(tmp_path: Path) -> None:
    text = '\ufeff{"media": "a.png", "caption": "one"}\n\n   \n{"media": "b.png", "caption": "two"}'
    caps = load_captions(_write(tmp_path / "c.jsonl", text))
    assert [c.caption for c in caps] == ["one", "two"]
    assert caps[1].source.endswith("c.jsonl:4")


def test_media_through_a_symlinked_folder_resolves_to_the_real_file(tmp_path: Path) -> None:
    real = _write(tmp_path / "real" / "a.png", b"")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    path = _jsonl(tmp_path / "data" / "c.jsonl", [{"media": "link/a.png", "caption": "x"}])
    assert load_captions(path)[0].media == real.resolve()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"media": "a.png", "caption": "x",}', "c.jsonl:2: not valid JSON ("),
        ('["a.png", "x"]', "c.jsonl:2: expected an object, found list"),
        ('{"caption": "x"}', 'c.jsonl:2: missing "media"'),
        ('{"media": "a.png"}', 'c.jsonl:2: missing "caption"'),
        ('{"media": "a.png", "caption": "  "}', "c.jsonl:2: empty caption"),
        ('{"media": "a.png", "caption": 3}', "c.jsonl:2: caption is not text"),
        ('{"media": "a.png", "caption": "x", "split": 1}', "c.jsonl:2: split is not text"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = _write(tmp_path / "c.jsonl", '{"media": "ok.png", "caption": "fine"}\n' + line + "\n")
    message = _error(path)
    assert expected in message
    assert '{"media": ..., "caption": ..., "split": ...}' in message


# ------------------------------------------------------------------------------- CSV


def test_csv_with_quotes_and_optional_split(tmp_path: Path) -> None:
    text = 'caption,media,note\n"a red circle, left of a cross",imgs/a.png,x\n\n"two\nlines",b.png,y\n'
    caps = load_captions(_write(tmp_path / "c.csv", text))
    assert [c.caption for c in caps] == ["a red circle, left of a cross", "two lines"]
    assert [c.media.name for c in caps] == ["a.png", "b.png"]
    assert [c.split for c in caps] == ["train", "train"]
    assert caps[1].source.endswith("c.csv:5")  # the row ends on line 5


@pytest.mark.parametrize(("name", "sep"), [("c.tsv", "\t"), ("c.csv", ";")])
def test_csv_tab_and_semicolon(tmp_path: Path, name: str, sep: str) -> None:
    text = sep.join(["media", "caption", "split"]) + "\n" + sep.join(["a.png", "x y", "test"]) + "\n"
    caps = load_captions(_write(tmp_path / name, text))
    assert [(c.media.name, c.caption, c.split) for c in caps] == [("a.png", "x y", "test")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file,text\na.png,x\n", "c.csv:1: the header must name the columns media and caption (found 'file', 'text')"),
        ("media,caption,split\na.png,x,train\nb.png\n", "c.csv:3: found 1 of 3 fields"),
        ("media,caption,split\na.png,x,train\nb.png,,val\n", "c.csv:3: empty caption"),
        ("media,caption\n,x\n", "c.csv:2: empty media"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(_write(tmp_path / "c.csv", text))


# -------------------------------------------------------------------------- Karpathy


KARPATHY = {
    "dataset": "coco",
    "images": [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_1.jpg",
            "split": "restval",
            "sentences": [{"raw": "A man riding a horse. ", "tokens": ["a"]}, {"raw": "A rider."}],
        },
        {"filename": "2.jpg", "split": "test", "sentences": [{"tokens": ["a", "dog", "runs"]}]},
    ],
}


def test_karpathy_split_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "coco" / "dataset_coco.json", json.dumps(KARPATHY, indent=1))
    caps = load_captions(path)
    root = Path(os.path.realpath(tmp_path / "coco"))
    assert [(c.media, c.caption, c.split) for c in caps] == [
        (root / "val2014" / "COCO_val2014_1.jpg", "A man riding a horse.", "train"),
        (root / "val2014" / "COCO_val2014_1.jpg", "A rider.", "train"),
        (root / "2.jpg", "a dog runs", "test"),
    ]
    assert caps[1].source == f"{path}: images[0].sentences[1]"


def test_a_media_root_replaces_the_file_folder(tmp_path: Path) -> None:
    images = _write(tmp_path / "photos" / "val2014" / "COCO_val2014_1.jpg", b"")
    path = _write(tmp_path / "annotations" / "dataset_coco.json", json.dumps(KARPATHY))
    caps = load_captions(path, media_root=tmp_path / "photos")
    root = Path(os.path.realpath(tmp_path / "photos"))
    assert [c.media for c in caps] == [root / "val2014" / "COCO_val2014_1.jpg"] * 2 + [root / "2.jpg"]
    assert all(c.root == root for c in caps)
    pairs, unmatched = match_captions(caps, {"x": os.path.realpath(images)})
    assert [i for _, i in pairs] == ["x", "x"] and [c.caption for c in unmatched] == ["a dog runs"]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"split": "val", "sentences": [{"raw": "x"}]}, 'images[1]: missing "filename"'),
        ({"filename": "b.jpg", "split": "val", "sentences": []}, 'images[1]: no "sentences"'),
        ({"filename": "b.jpg", "sentences": [{"raw": " "}]}, "images[1].sentences[0]: empty caption"),
        ({"filename": "b.jpg", "sentences": [{"id": 3}]}, "images[1].sentences[0]: no caption text"),
    ],
)
def test_karpathy_errors(tmp_path: Path, image: dict[str, object], expected: str) -> None:
    data = {"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "ok"}]}, image]}
    assert expected in _error(_write(tmp_path / "dataset_x.json", json.dumps(data)))


# ----------------------------------------------------------------------------- VATEX


VATEX = [
    {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["A man plays.", "Someone plays"], "chCap": ["..."]},
    {"videoID": "abc_000001_000011", "enCap": ["A dog barks."]},
]


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("vatex_training_v1.0.json", "train"),
        ("vatex_validation_v1.0.json", "val"),
        ("vatex_public_test_english_v1.1.json", "test"),
        ("my_videos.json", "train"),
        ("interval_clips.json", "train"),
    ],
)
def test_vatex_split_comes_from_the_file_name(tmp_path: Path, name: str, split: str) -> None:
    caps = load_captions(_write(tmp_path / name, json.dumps(VATEX)))
    assert [c.split for c in caps] == [split] * 3
    assert caps[0].media == Path(os.path.realpath(tmp_path)) / "Ptf_2VRj-V0_000122_000132"
    assert caps[2].caption == "A dog barks." and caps[2].source.endswith(f"{name}: [1].enCap[0]")


def test_vatex_without_english_captions(tmp_path: Path) -> None:
    path = _write(tmp_path / "vatex_private_test_without_captions.json", json.dumps([{"videoID": "a_1_2"}]))
    assert 'private_test_without_captions.json: [0]: no English captions ("enCap")' in _error(path)


# ------------------------------------------------------------- other JSON, detection


def test_json_list_of_records_and_jsonl_saved_as_json(tmp_path: Path) -> None:
    records = [{"media": "a.png", "caption": "x", "split": "val"}, {"media": "b.png", "caption": "y"}]
    listed = load_captions(_write(tmp_path / "list.json", json.dumps(records)))
    lines = load_captions(_jsonl(tmp_path / "lines.json", records))
    one = load_captions(_jsonl(tmp_path / "one.json", records[:1]))
    assert [(c.media.name, c.split) for c in listed] == [("a.png", "val"), ("b.png", "train")]
    assert [(c.media, c.caption) for c in lines] == [(c.media, c.caption) for c in listed]
    assert one[0].caption == "x" and listed[1].source.endswith("list.json: item [1]")


def test_format_sniffed_when_the_extension_says_nothing(tmp_path: Path) -> None:
    as_jsonl = _jsonl(tmp_path / "a.txt", [{"media": "a.png", "caption": "x"}, {"media": "b.png", "caption": "y"}])
    as_csv = _write(tmp_path / "b.txt", "media,caption\na.png,x\n")
    as_karpathy = _write(tmp_path / "c", json.dumps(KARPATHY, indent=2))
    assert len(load_captions(as_jsonl)) == 2
    assert len(load_captions(as_csv)) == 1
    assert len(load_captions(as_karpathy)) == 3
    assert "unknown captions format" in _error(_write(tmp_path / "d.txt", "just some text\n"))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("c.jsonl", "", "c.jsonl: no captions in the file"),
        ("c.json", '{"images": [}', "c.json:1: not valid JSON ("),
        ("c.json", '{"dataset": "coco"}', "neither a Karpathy file"),
        ("c.jsonl", b"\xff\xfe\x00bad", "c.jsonl: not UTF-8 text"),
    ],
)
def test_file_level_errors(tmp_path: Path, name: str, content: str | bytes, expected: str) -> None:
    assert expected in _error(_write(tmp_path / name, content))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "captions file not found" in _error(tmp_path / "nope.jsonl")
    assert "is a folder" in _error(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", '{"media": "a.png", "caption": "x"}\n')
    path.chmod(0)
    try:
        assert "cannot read captions file" in _error(path)
    finally:
        path.chmod(0o644)


def test_split_names() -> None:
    assert [normalise_split(s) for s in ("TRAIN", "restval", "dev", "testing", None, "", "extra")] == [
        "train", "train", "val", "test", "train", "train", "extra",
    ]


# -------------------------------------------------------------------------- matching


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A dataset folder: images, videos and one file outside it."""
    for rel in ("data/images/a.png", "data/images/b.png", "data/videos/abc_1_2.mp4", "data/videos/dup.mp4",
                "data/old/dup.webm", "outside/zzz_9_9.mp4", "data/flickr/1000.jpg"):
        _write(tmp_path / rel, b"")
    return Path(os.path.realpath(tmp_path))


def _items(root: Path, *rels: str) -> dict[str, str]:
    return {rel: str(root / rel) for rel in rels}


def test_match_by_resolved_path(tree: Path) -> None:
    caps = load_captions(_jsonl(tree / "data" / "c.jsonl", [
        {"media": "images/a.png", "caption": "x"},
        {"media": "images/./b.png", "caption": "y"},
        {"media": "images/missing.png", "caption": "z"},
        {"media": "images/a.png", "caption": "again"},
    ]))
    items = _items(tree, "data/images/a.png", "data/images/b.png")
    pairs, unmatched = match_captions(caps, items)
    assert [(c.caption, i) for c, i in pairs] == [
        ("x", "data/images/a.png"), ("y", "data/images/b.png"), ("again", "data/images/a.png"),
    ]
    assert [c.caption for c in unmatched] == ["z"]


def test_vatex_video_ids_match_file_stems_under_the_captions_folder(tree: Path) -> None:
    vatex = [{"videoID": "abc_1_2", "enCap": ["one"]}, {"videoID": "zzz_9_9", "enCap": ["outside the tree"]},
             {"videoID": "nothing_0_0", "enCap": ["no such video"]}]
    caps = load_captions(_write(tree / "data" / "vatex_validation.json", json.dumps(vatex)))
    items = _items(tree, "data/videos/abc_1_2.mp4", "outside/zzz_9_9.mp4", "data/images/a.png")
    pairs, unmatched = match_captions(caps, items)
    assert [(c.caption, i) for c, i in pairs] == [("one", "data/videos/abc_1_2.mp4")]
    assert [c.caption for c in unmatched] == ["outside the tree", "no such video"]


def test_file_names_match_a_unique_file_deeper_in_the_tree(tree: Path) -> None:
    data = {"images": [{"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "a dog"}]}]}
    caps = load_captions(_write(tree / "data" / "dataset_flickr30k.json", json.dumps(data)))
    pairs, unmatched = match_captions(caps, _items(tree, "data/flickr/1000.jpg"))
    assert [i for _, i in pairs] == ["data/flickr/1000.jpg"] and not unmatched


def test_trailing_paths_match_under_a_media_root_not_the_file_folder(tree: Path) -> None:
    data = {"images": [{"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "a dog"}]}]}
    path = _write(tree / "annotations" / "dataset_flickr30k.json", json.dumps(data))
    items = _items(tree, "data/flickr/1000.jpg")
    assert match_captions(load_captions(path), items)[0] == []
    pairs, unmatched = match_captions(load_captions(path, media_root=tree / "data"), items)
    assert [i for _, i in pairs] == ["data/flickr/1000.jpg"] and not unmatched


def test_ambiguous_stem_is_an_error_naming_the_files(tree: Path) -> None:
    vatex = json.dumps([{"videoID": "dup", "enCap": ["x"]}])
    caps = load_captions(_write(tree / "data" / "vatex_training.json", vatex))
    with pytest.raises(FastslowError) as info:
        match_captions(caps, _items(tree, "data/videos/dup.mp4", "data/old/dup.webm"))
    message = str(info.value)
    assert "vatex_training.json: [0].enCap[0]: media 'dup' matches 2 extracted files" in message
    assert "videos/dup.mp4" in message and "old/dup.webm" in message and "\n" not in message
    # with the folder written, the same items are no longer ambiguous
    caps = load_captions(_write(tree / "data" / "v2.json", json.dumps([{"videoID": "videos/dup", "enCap": ["x"]}])))
    pairs, _ = match_captions(caps, _items(tree, "data/videos/dup.mp4", "data/old/dup.webm"))
    assert [i for _, i in pairs] == ["data/videos/dup.mp4"]


def test_one_file_under_two_ids_pairs_with_the_first(tree: Path) -> None:
    caps = load_captions(_jsonl(tree / "data" / "c.jsonl", [{"media": "images/a.png", "caption": "x"}]))
    items = {"z/a.png": str(tree / "data/images/a.png"), "images/a.png": str(tree / "data/images/a.png")}
    assert [i for _, i in match_captions(caps, items)[0]] == ["images/a.png"]


def test_captions_built_in_code_match_without_a_root(tree: Path) -> None:
    caps = [Caption(tree / "data" / "videos" / "abc_1_2", "x", "train", "code")]
    pairs, unmatched = match_captions(caps, _items(tree, "data/videos/abc_1_2.mp4"))
    assert [i for _, i in pairs] == ["data/videos/abc_1_2.mp4"] and not unmatched


def test_synthetic_dataset_captions_match_all_its_media(tmp_path: Path) -> None:
    from fastslow_cli.demo import synth

    captions = synth.generate(tmp_path / "demo", synth.SynthConfig(n_images=6, n_videos=2))
    root = Path(os.path.realpath(tmp_path / "demo"))
    items = {p.relative_to(root).as_posix(): str(p) for p in sorted(root.rglob("*.*")) if p.suffix in (".png", ".mp4")}
    pairs, unmatched = match_captions(load_captions(captions), items)
    assert len(pairs) == 8 and not unmatched
    assert {i for _, i in pairs} == set(items)
