"""The synthetic demo dataset: files, determinism, grammar, twins and truthful pictures."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fastslow_cli.demo import synth
from fastslow_cli.errors import FastslowError, UsageError

TINY = synth.SynthConfig(n_images=30, n_videos=4, seed=7)

_THING = r"a (?:(?:small|large) )?(?:red|green|blue|yellow|purple|white) (?:circle|square|triangle|cross|diamond)"
_REL = r"(?:left of|right of|above|below)"
_DIR = r"(?:left|right|up|down)"
IMAGE_CAPTION = re.compile(
    rf"^(?:a single (?:(?:small|large) )?\w+ \w+|{_THING} {_REL} {_THING}(?: {_REL} {_THING})?)$"
)
CLIP_THING = r"a (?:red|green|blue|yellow|purple|white) (?:circle|square|triangle|cross|diamond)"
CLIP_CAPTION = re.compile(rf"^{CLIP_THING} moving {_DIR}(?: while {CLIP_THING} moves {_DIR})?$")


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(captions: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in captions.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "data", TINY)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[str, str, synth.Scene]]:
    """A bigger plan (no files) for the statistical checks."""
    return synth.plan(synth.SynthConfig(n_images=600, n_videos=120, seed=1))


def test_files_and_caption_lines(tiny_dataset: Path) -> None:
    rows = _rows(tiny_dataset)
    assert len(rows) == 34
    assert sorted(set(r["split"] for r in rows)) == ["test", "train", "val"]
    for row in rows:
        assert set(row) == {"media", "caption", "split"}
        assert (tiny_dataset.parent / row["media"]).is_file()
    image = Image.open(tiny_dataset.parent / rows[0]["media"])
    assert rows[0]["media"].startswith("images/") and image.mode == "RGB" and image.size == (64, 64)


def test_clips_are_h264_mp4(tiny_dataset: Path) -> None:
    clip = next(r for r in _rows(tiny_dataset) if r["media"].endswith(".mp4"))
    with av.open(str(tiny_dataset.parent / clip["media"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape == (64, 64, 3)


def test_decoded_clip_matches_rendered_frames(tiny_dataset: Path) -> None:
    media, _, scene = next(item for item in synth.plan(TINY) if item[2].kind == "clip")
    with av.open(str(tiny_dataset.parent / media)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    rendered = synth.render_clip(scene, TINY.size, TINY.video_frames)
    assert np.abs(decoded.astype(int) - rendered).mean() < 8  # codec tolerance


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, tiny_dataset: Path) -> None:
    again = synth.generate(tmp_path / "again", TINY)
    assert _digest(again.parent) == _digest(tiny_dataset.parent)
    other = synth.generate(tmp_path / "other", synth.SynthConfig(n_images=30, n_videos=4, seed=8))
    assert _rows(other) != _rows(tiny_dataset)


def test_more_clips_leave_the_images_unchanged() -> None:
    images = [(m, s, synth.caption(sc)) for m, s, sc in synth.plan(TINY) if sc.kind == "image"]
    more = synth.plan(synth.SynthConfig(n_images=30, n_videos=9, seed=7))
    assert images == [(m, s, synth.caption(sc)) for m, s, sc in more if sc.kind == "image"]


def test_captions_follow_the_grammar(scenes: list[tuple[str, str, synth.Scene]]) -> None:
    words: set[str] = set()
    for _, _, scene in scenes:
        text = synth.caption(scene)
        pattern = IMAGE_CAPTION if scene.kind == "image" else CLIP_CAPTION
        assert pattern.match(text), text
        words.update(text.split())
    assert len(words) == 25


def test_split_sizes_and_twin_share(scenes: list[tuple[str, str, synth.Scene]]) -> None:
    for kind, n in (("image", 600), ("clip", 120)):
        per_split = {
            split: [synth.caption(sc) for _, s, sc in scenes if s == split and sc.kind == kind]
            for split in synth.SPLITS
        }
        assert {s: len(c) for s, c in per_split.items()} == synth.split_counts(n, (0.8, 0.1, 0.1))
        for split, caps in per_split.items():
            assert len(set(caps)) == len(caps), f"repeated caption in {kind} {split}"
            keys = Counter(synth.twin_key(c) for c in caps)
            share = sum(keys[synth.twin_key(c)] > 1 for c in caps) / len(caps)
            assert 0.45 <= share <= 0.8, (kind, split, share)


def test_eval_splits_have_exact_ground_truth(scenes: list[tuple[str, str, synth.Scene]]) -> None:
    for split in ("val", "test"):
        for kind in ("image", "clip"):
            group = [sc for _, s, sc in scenes if s == split and sc.kind == kind]
            for i, text in enumerate(group):
                holds = [j for j, content in enumerate(group) if synth.describes(text, content)]
                assert holds == [i], synth.caption(text)


def test_twins_reorder_words_and_are_false_of_each_other() -> None:
    rng = np.random.default_rng(0)
    seen_ops = set()
    for kind in ["image"] * 150 + ["clip"] * 50:
        scene = synth.sample_scene(rng, kind)
        other = synth.twin(rng, scene)
        if len(scene.things) == 1:
            assert other is None
            continue
        assert other is not None
        a, b = synth.caption(scene), synth.caption(other)
        assert a != b and synth.twin_key(a) == synth.twin_key(b)
        assert synth.describes(scene, scene) and synth.describes(other, other)
        assert not synth.describes(scene, other) and not synth.describes(other, scene)
        seen_ops.add(_changed(scene, other))
    # colours, shapes, said sizes or directions swapped; relation arguments permuted
    assert {("colour",), ("shape",), ("size",), ("direction",), ("colour", "shape")} <= seen_ops


def _changed(a: synth.Scene, b: synth.Scene) -> tuple[str, ...]:
    """Which said attributes differ between two scenes, object by object in caption order."""

    def said(scene: synth.Scene, field: str) -> list[object]:
        return [None if field == "size" and not t.say_size else getattr(t, field) for t in scene.things]

    return tuple(f for f in ("colour", "shape", "size", "direction") if said(a, f) != said(b, f))


def _centroid(image: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float]:
    ys, xs = np.nonzero(np.abs(image.astype(int) - np.array(rgb)).sum(axis=-1) < 45)
    assert len(xs), "object not visible"
    return float(xs.mean()), float(ys.mean())


def test_rendered_images_show_the_stated_relation(scenes: list[tuple[str, str, synth.Scene]]) -> None:
    checked = 0
    for _, _, scene in scenes[:200]:
        if scene.kind != "image" or len(scene.things) < 2:
            continue
        image = synth.render_image(scene, 64)
        centres = [_centroid(image, t.rgb) for t in scene.things]
        axis, sign = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}[scene.relation]
        for (a, b), (ta, tb) in zip(zip(centres, centres[1:]), zip(scene.things, scene.things[1:])):
            gap = sign * (b[axis] - a[axis])
            assert gap > 64 * (ta.radius + tb.radius), synth.caption(scene)  # clearly apart
            assert abs(b[1 - axis] - a[1 - axis]) < 64 * min(ta.radius, tb.radius)  # aligned
        checked += 1
    assert checked > 50


def test_rendered_clips_move_in_the_stated_direction(scenes: list[tuple[str, str, synth.Scene]]) -> None:
    clips = [sc for _, _, sc in scenes if sc.kind == "clip"][:30]
    for scene in clips:
        frames = synth.render_clip(scene, 64, 16)
        for t in scene.things:
            (x0, y0), (x1, y1) = _centroid(frames[0], t.rgb), _centroid(frames[-1], t.rgb)
            dx, dy = synth.DIRECTIONS[t.direction]
            moved = (x1 - x0) * dx + (y1 - y0) * dy
            assert moved > 0.25 * 64, synth.caption(scene)  # at least 16 pixels the right way
            assert abs((x1 - x0) * dy) + abs((y1 - y0) * dx) < 2  # and not sideways


def test_progress_counts_every_file(tmp_path: Path) -> None:
    calls: list[int] = []
    synth.generate(tmp_path / "d", synth.SynthConfig(n_images=5, n_videos=2), progress=calls.append)
    assert sum(calls) == 7


def test_regenerating_removes_stale_media(tmp_path: Path) -> None:
    out = tmp_path / "d"
    synth.generate(out, synth.SynthConfig(n_images=12, n_videos=3))
    (out / "images" / ".00001.png.tmp").write_bytes(b"left by a killed run")
    captions = synth.generate(out, synth.SynthConfig(n_images=6, n_videos=0))
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:05d}.png" for k in range(6)]
    assert not any((out / "videos").iterdir())
    assert len(_rows(captions)) == 6


def test_refuses_a_folder_with_other_data(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FastslowError, match="not empty"):
        synth.generate(tmp_path, TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "config",
    [
        synth.SynthConfig(n_images=0, n_videos=0),
        synth.SynthConfig(size=63),
        synth.SynthConfig(video_frames=1),
        synth.SynthConfig(splits=(0.8, -0.1, 0.3)),
        synth.SynthConfig(twin_share=1.5),
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, config: synth.SynthConfig) -> None:
    with pytest.raises(UsageError):
        synth.generate(tmp_path / "d", config)


def test_mp4_encoding_is_byte_deterministic() -> None:
    scene = synth.sample_scene(np.random.default_rng(5), "clip", n_things=2)
    frames = synth.render_clip(scene, 64, 16)
    assert len({synth.encode_mp4(frames, 8) for _ in range(8)}) == 1
