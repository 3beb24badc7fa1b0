"""media/location.py: local paths and filesystem URLs (file:// through pyarrow, memory://
through fsspec) reached the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import file_url as url

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.media import location
from fastslow_cli.media.decode import MediaError, decode
from fastslow_cli.media.discover import MediaFile, find_media


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name, data in {"b/two.jpg": b"22", "a.png": b"1", ".hidden/x.png": b"h", "b/.dot.png": b"d", "b/notes.txt": b"n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("text, expected", [
    ("s3://bucket/key", True), ("file:///tmp/x", True), ("gs://b", True),
    ("/tmp/x", False), ("relative/s3://x", False), ("C://x", False), ("s3:/bucket/key", False),
])
def test_is_url(text: str, expected: bool) -> None:
    assert location.is_url(text) is expected


def test_listing_a_url_is_relative_sorted_hidden_skipped(tree: Path) -> None:
    listed = sorted(location.list_files(url(tree)))
    assert [(rel, u, size) for rel, u, size, _ in listed] == [
        ("a.png", url(tree / "a.png"), 1), ("b/notes.txt", url(tree / "b/notes.txt"), 1), ("b/two.jpg", url(tree / "b/two.jpg"), 2),
    ]
    assert listed[0][3] == (tree / "a.png").stat().st_mtime_ns
    assert location.list_files(url(tree / "b/two.jpg"))[0][:3] == ("two.jpg", url(tree / "b/two.jpg"), 2)
    with pytest.raises(FileNotFoundError):
        location.list_files(url(tree / "nothing"))


def test_find_media_on_a_url_gives_url_items(tree: Path) -> None:
    found = find_media([url(tree), url(tree / "a.png")])  # the second root names an item again
    assert [(m.id, m.path, m.kind, m.name) for m in found] == [
        (url(tree / "a.png"), url(tree / "a.png"), "image", "a.png"),
        (url(tree / "b/two.jpg"), url(tree / "b/two.jpg"), "image", "two.jpg"),
    ]
    with pytest.raises(FastslowError, match="no such object or folder: check the URL"):
        find_media([url(tree / "gone")])


def test_stat_open_and_folders_alike_for_paths_and_urls(tree: Path) -> None:
    for where in (str(tree / "b/two.jpg"), url(tree / "b/two.jpg")):
        assert location.stat(where) == (2, (tree / "b/two.jpg").stat().st_mtime_ns)
        with location.open_input(where) as fh:
            assert fh.read() == b"22"
        assert not location.is_folder(where)
    assert location.is_folder(url(tree / "b")) and location.is_folder(str(tree / "b"))
    with pytest.raises(FileNotFoundError):
        location.stat(url(tree / "gone.png"))


def test_known_gone_checks_local_files_only(tree: Path) -> None:
    assert location.known_gone(str(tree / "gone.png")) and not location.known_gone(str(tree / "a.png"))
    assert not location.known_gone(url(tree / "gone.png"))  # an object is never checked one by one


def test_local_copy_of_an_object_is_deleted_after_use(tree: Path) -> None:
    with location.local_copy(url(tree / "b/two.jpg")) as copy:
        assert Path(copy).read_bytes() == b"22" and copy.endswith(".jpg")
        assert Path(copy).parent == location.scratch_dir()
    assert not Path(copy).exists()
    with location.local_copy(str(tree / "a.png")) as same:
        assert same == str(tree / "a.png")  # a local file is used in place


def test_fsspec_only_protocols_work_too() -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.pipe("/fastslow-test/clips/a.mp4", b"abc")
    try:
        assert [u for _, u, _, _ in location.list_files("memory:///fastslow-test")] == ["memory:///fastslow-test/clips/a.mp4"]
        with location.local_copy("memory:///fastslow-test/clips/a.mp4") as copy:
            assert Path(copy).read_bytes() == b"abc"
    finally:
        memory.rm("/fastslow-test", recursive=True)


def test_bad_urls_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="did you mean the URL s3://bucket/videos"):
        find_media(["s3:/bucket/videos"])  # what Path("s3://bucket/videos") makes of it
    with pytest.raises(UsageError, match=r"no filesystem for nope://"):
        find_media(["nope://bucket/videos"])
    (tmp_path / "s3:" / "bucket").mkdir(parents=True)
    (tmp_path / "s3:" / "bucket" / "a.png").write_bytes(b"1")
    monkeypatch.chdir(tmp_path)
    assert [m.name for m in find_media(["s3:/bucket"])] == ["a.png"]  # a real folder of that name is a path


def test_decoding_an_object_fetches_it(tree: Path, good_media: dict) -> None:
    png = tree / "real.png"
    png.write_bytes(good_media["png"].read_bytes())
    item = MediaFile(url(png), url(png), "image", png.stat().st_size, png.stat().st_mtime_ns)
    local = MediaFile(str(png), str(png), "image", png.stat().st_size, png.stat().st_mtime_ns)
    assert (decode(item, 16, 4, "av").frames == decode(local, 16, 4, "av").frames).all()
    gone = MediaFile(url(tree / "gone.png"), url(tree / "gone.png"), "image", 1, 1)
    with pytest.raises(MediaError, match="object not found"):
        decode(gone, 16, 4, "av")
