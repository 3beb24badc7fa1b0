"""media.py: discovery, frame sampling, and decoding of real and broken files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastslow_cli.errors import FastslowError
from fastslow_cli.media.discover import IMAGE_EXTS, VIDEO_EXTS, MediaFile, find_media
from fastslow_cli.media.decode import MediaError, decode, decode_image, decode_video_av, decode_video_decord, sample_indices

REPO = Path(__file__).resolve().parents[1]
VIDEO_DECODERS = [decode_video_decord, decode_video_av]


def _item(path: Path, kind: str) -> MediaFile:
    st = path.stat()
    return MediaFile(path.name, path.resolve().as_posix(), kind, st.st_size, st.st_mtime_ns)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- discovery


def _rel(found: list[MediaFile], root: Path) -> list[str]:
    return [Path(m.id).relative_to(root.resolve()).as_posix() for m in found]


def test_find_media_lists_every_media_file_once_sorted(media_dir, good_media):
    root = media_dir / "good"
    found = find_media([root])
    expected = sorted(p.relative_to(root).as_posix() for p in good_media.values())
    assert _rel(found, root) == expected  # hidden folder and notes.txt left out
    assert find_media([root]) == found  # stable
    for m in found:
        path = Path(m.path)
        assert path.is_absolute() and m.id == m.path and path == path.resolve()
        assert m.kind == ("image" if path.suffix in IMAGE_EXTS else "video")
        st = path.stat()
        assert (m.size, m.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_extensions_are_case_insensitive_and_others_ignored(tmp_path):
    for name in ["A.JPG", "b.Mp4", "c.WebM", "d.txt", "e.jpg.bak", "f.MKV"]:
        _touch(tmp_path / name)
    assert [(m.name, m.kind) for m in find_media([tmp_path])] == [
        ("A.JPG", "image"),
        ("b.Mp4", "video"),
        ("c.WebM", "video"),
        ("f.MKV", "video"),
    ]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"} == IMAGE_EXTS
    assert {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"} == VIDEO_EXTS


def test_symlink_to_file_is_followed_and_counted_once(tmp_path):
    real = _touch(tmp_path / "real" / "x.png", b"png bytes")
    links = tmp_path / "links"
    links.mkdir()
    (links / "y.png").symlink_to(real)
    (links / "dangling.png").symlink_to(tmp_path / "missing.png")
    only_links = find_media([links])
    assert [m.id for m in only_links] == [real.resolve().as_posix()]  # the id is the real file's
    assert only_links[0].path == real.resolve().as_posix() and only_links[0].size == len(b"png bytes")
    # Walking both folders: the same real file once.
    assert [m.id for m in find_media([tmp_path])] == [real.resolve().as_posix()]


def test_symlinked_folder_loop_terminates(tmp_path):
    _touch(tmp_path / "a" / "one.jpg")
    _touch(tmp_path / "a" / "b" / "two.mp4")
    (tmp_path / "a" / "b" / "back").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(".", target_is_directory=True)
    assert _rel(find_media([tmp_path]), tmp_path) == ["a/b/two.mp4", "a/one.jpg"]


def test_hard_link_duplicate_counted_once(tmp_path):
    first = _touch(tmp_path / "a.jpg")
    os.link(first, tmp_path / "b.jpg")
    assert _rel(find_media([tmp_path]), tmp_path) == ["a.jpg"]


def test_roots_in_given_order_and_file_root_uses_its_name(tmp_path):
    _touch(tmp_path / "z" / "clip.mp4")
    single = _touch(tmp_path / "deep" / "dir" / "pic.png")
    _touch(tmp_path / "readme.md")
    found = find_media([tmp_path / "z", single, tmp_path / "readme.md"])
    assert [m.name for m in found] == ["clip.mp4", "pic.png"]


def test_missing_root_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FastslowError, match="nowhere: no such file or folder"):
        find_media([tmp_path, missing])


def test_same_name_under_two_roots_gives_two_ids(tmp_path):
    one = _touch(tmp_path / "one" / "x.jpg", b"1")
    two = _touch(tmp_path / "two" / "x.jpg", b"2")
    found = find_media([tmp_path / "one", tmp_path / "two"])
    assert [m.id for m in found] == [one.resolve().as_posix(), two.resolve().as_posix()]
    assert find_media([tmp_path / "two"])[0].id == found[1].id  # whichever root names it


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("num_frames", [0, 1, 2, 3, 7, 8, 9, 24, 25, 100, 1001])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 16])
def test_sample_indices_are_segment_centres(num_frames, n):
    idx = sample_indices(num_frames, n)
    assert len(idx) == min(num_frames, n)
    assert idx == sorted(set(idx)) and all(0 <= i < num_frames for i in idx)
    if num_frames > n:
        seg = num_frames / n
        for k, i in enumerate(idx):  # frame i spans [i, i+1) and holds segment k's centre
            assert i <= (k + 0.5) * seg < i + 1
            assert k * seg < i + 1 and i < (k + 1) * seg  # so it overlaps segment k


def test_sample_indices_known_values_and_bad_n():
    assert sample_indices(24, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sample_indices(10, 1) == [5]
    with pytest.raises(ValueError):
        sample_indices(10, 0)


# ----------------------------------------------------------------------------- videos


def _grey_levels(frames: np.ndarray) -> np.ndarray:
    """Mean of the top half of each frame: the moving square lives in the bottom rows."""
    return frames[:, : frames.shape[1] // 2].reshape(len(frames), -1).mean(axis=1)


@pytest.mark.parametrize("decoder", VIDEO_DECODERS, ids=["decord", "av"])
def test_known_clip_frames_and_timestamps(decoder, good_media, frame_level):
    out = decoder(good_media["clip"], 32, 8)
    expected = [1, 4, 7, 10, 13, 16, 19, 22]  # 24 frames @ 12 fps
    assert out.frames.shape == (8, 32, 32, 3) and out.frames.dtype == np.uint8
    assert out.timestamps == pytest.approx([i / 12 for i in expected], abs=1e-5)
    assert np.abs(_grey_levels(out.frames) - [frame_level(i, 24) for i in expected]).max() < 4
    assert out.requested == 8 and out.warning is None
    assert out.decoder == decoder.__name__.rsplit("_", 1)[1]


def test_decord_and_pyav_give_the_same_frames(good_media):
    for name in ["clip", "mkv_clip", "unicode_clip"]:
        a = decode_video_decord(good_media[name], 48, 5)
        b = decode_video_av(good_media[name], 48, 5)
        assert a.frames.shape == b.frames.shape
        assert a.timestamps == pytest.approx(b.timestamps, abs=1e-3)
        diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean()
        assert diff < 3.0, f"{name}: mean abs diff {diff:.2f}"


@pytest.mark.parametrize("decoder", VIDEO_DECODERS, ids=["decord", "av"])
def test_short_clip_gives_its_real_frame_count(decoder, good_media):
    out = decoder(good_media["short_clip"], 16, 8)
    assert out.frames.shape == (3, 16, 16, 3) and out.requested == 8
    assert out.timestamps == pytest.approx([0, 1 / 12, 2 / 12], abs=1e-5)


def test_damaged_clip_pyav_recovers_part_and_says_so(damaged_clip):
    with pytest.raises(MediaError):
        decode_video_decord(damaged_clip, 16, 8)
    out = decode_video_av(damaged_clip, 16, 8)
    assert 0 < len(out.frames) <= 8 and len(out.frames) == len(out.timestamps)
    assert out.timestamps == sorted(out.timestamps) and out.timestamps[-1] < 2.0
    assert out.warning and "of the 24 frames" in out.warning


# ----------------------------------------------------------------------------- images


def _mean_rgb(region: np.ndarray) -> np.ndarray:
    return region.reshape(-1, 3).mean(axis=0)


def test_image_basics_and_exif_orientation(good_media):
    png = decode_image(good_media["png"], 32)
    assert png.frames.shape == (1, 32, 32, 3) and png.timestamps == [0.0]
    assert (png.decoder, png.requested) == ("pillow", 1)
    assert np.allclose(_mean_rgb(png.frames[0]), (220, 20, 20), atol=2)

    plain = decode_image(good_media["jpeg"], 32).frames[0]  # left green, right blue
    assert _mean_rgb(plain[:, :12])[1] > 150 and _mean_rgb(plain[:, 20:])[2] > 150

    # Stored left red / right blue with orientation 6: displayed top red / bottom blue.
    rotated = decode_image(good_media["exif_jpeg"], 32).frames[0]
    top, bottom = _mean_rgb(rotated[:12]), _mean_rgb(rotated[20:])
    assert top[0] > 180 and top[2] < 60
    assert bottom[2] > 180 and bottom[0] < 60


def test_gif_first_frame_and_transparency_over_white(good_media):
    gif = decode_image(good_media["gif"], 8).frames[0]
    assert np.allclose(_mean_rgb(gif), (0, 255, 0), atol=3)
    alpha = decode_image(good_media["alpha_png"], 20).frames[0]
    assert np.allclose(_mean_rgb(alpha[:, :8]), (0, 0, 255), atol=3)
    assert np.allclose(_mean_rgb(alpha[:, 12:]), (255, 255, 255), atol=3)


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("decoder", ["decord", "av"])
def test_every_broken_input_gives_a_media_error(decoder, broken_media):
    reasons = {}
    for name, path in broken_media.items():
        kind = "image" if path.suffix in IMAGE_EXTS else "video"
        with pytest.raises(MediaError) as info:
            decode(_item(path, kind), 16, 4, decoder)
        reason = str(info.value)
        assert reason and "\n" not in reason and len(reason) <= 300
        reasons[name] = reason
    assert reasons["empty"] == "empty file"
    assert "cannot identify it as an image, nor can PyAV decode it as a video" in reasons["fake_png"]
    assert "truncated" in reasons["truncated_jpeg"].lower()
    if decoder == "av":
        assert reasons["no_frames"] == "no decodable frames"


def test_decode_dispatch(good_media):
    clip = _item(good_media["clip"], "video")
    assert decode(clip, 16, 2, "av").decoder == "av"
    assert decode(clip, 16, 2, "decord").decoder == "decord"
    assert decode(_item(good_media["png"], "image"), 16, 2, "av").decoder == "pillow"
    with pytest.raises(ValueError, match="unknown decoder"):
        decode(clip, 16, 2, "opencv")


def test_deleted_file_gives_a_media_error(tmp_path, good_media):
    gone = tmp_path / "gone.png"
    with pytest.raises(MediaError, match="file not found"):
        decode_image(gone, 8)


_PERMISSION_CHECK = """
import sys
from pathlib import Path
from fastslow_cli.media.decode import MediaError, decode_image, decode_video_av
for fn in (decode_image, decode_video_av):
    try:
        fn(Path(sys.argv[1]), 8, *([] if fn is decode_image else [2]))
    except MediaError as exc:
        print(exc)
"""


def test_unreadable_file_gives_permission_denied(unreadable_file):
    if os.geteuid() != 0:
        for fn, args in ((decode_image, (8,)), (decode_video_av, (8, 2))):
            with pytest.raises(MediaError, match="^permission denied$"):
                fn(unreadable_file, *args)
        return
    # Root reads any file: check from a process with every capability dropped.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop capabilities to test permissions")
    proc = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--",
         sys.executable, "-c", _PERMISSION_CHECK, os.fspath(unreadable_file)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["permission denied", "permission denied"]


def test_media_module_does_not_import_torch():
    code = "import sys, fastslow_cli.media; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


def test_pyav_seeking_matches_decoding_every_frame(good_media, monkeypatch):
    import fastslow_cli.media.decode as media

    sequential = decode_video_av(good_media["clip"], 32, 8)
    monkeypatch.setattr(media, "AV_SEEK_MIN_FRAMES", 1)
    sought = decode_video_av(good_media["clip"], 32, 8)
    assert sought.timestamps == sequential.timestamps
    assert np.array_equal(sought.frames, sequential.frames)


# ----------------------------------------------------------------------------- formats and content


def _halves_image(path: Path, **save_args: object) -> Path:
    """Left red, right blue, 32x32, in the format `path`'s extension names."""
    from PIL import Image

    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    Image.fromarray(pixels).save(path, **save_args)
    return path


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".avif", ".heic", ".heif"])
def test_tiff_avif_and_heif_images_decode(tmp_path, ext):
    if ext in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.register_heif_opener()  # only to write the test file
    path = _halves_image(tmp_path / f"halves{ext}", **({} if ext.startswith(".tif") else {"quality": 95}))
    assert find_media([tmp_path])[0].kind == "image"
    frame = decode(_item(path, "image"), 16, 4, "av").frames[0]
    assert np.allclose(_mean_rgb(frame[:, :6]), (255, 0, 0), atol=25)
    assert np.allclose(_mean_rgb(frame[:, 10:]), (0, 0, 255), atol=25)


def test_heif_opener_is_registered_lazily_even_for_a_heic_named_jpg(tmp_path):
    script = """
import sys
from pathlib import Path
from PIL import Image
from fastslow_cli.media.decode import decode_image
assert "pillow_heif" not in sys.modules
decode_image(Path(sys.argv[1]), 8)
assert "pillow_heif" not in sys.modules, "a PNG must not import pillow-heif"
frame = decode_image(Path(sys.argv[2]), 8).frames[0]
assert "pillow_heif" in sys.modules and frame[:, :3, 0].mean() > 200
"""
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = tmp_path / "halves.heic"
    _halves_image(heic, quality=95)
    heic.rename(tmp_path / "really_heic.jpg")
    png = _halves_image(tmp_path / "plain.png")
    done = subprocess.run([sys.executable, "-c", script, str(png), str(tmp_path / "really_heic.jpg")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_mislabelled_files_decode_by_content(tmp_path, good_media):
    mp4_as_jpg = tmp_path / "clip.jpg"
    shutil.copy(good_media["clip"], mp4_as_jpg)
    video = decode(_item(mp4_as_jpg, "image"), 16, 4, "decord")
    assert (video.kind, video.decoder, len(video.frames)) == ("video", "av", 4)
    png_as_mp4 = tmp_path / "still.mp4"
    shutil.copy(good_media["png"], png_as_mp4)
    for decoder in ("decord", "av"):
        image = decode(_item(png_as_mp4, "video"), 16, 4, decoder)
        assert (image.kind, image.decoder, len(image.frames)) == ("image", "pillow", 1)
    assert decode(_item(good_media["clip"], "video"), 16, 4, "av").kind == "video"
