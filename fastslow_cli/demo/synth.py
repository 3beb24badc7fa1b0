"""The embedded demo dataset: seeded, compositional images and MP4 clips with captions.

Why compositional: retrieval models that treat a caption as a bag of words cannot tell
"a red circle left of a blue square" from "a blue square left of a red circle". The
captions here bind attributes to objects, state spatial relations and, for clips, the
direction of motion (which no single frame shows), and the dataset deliberately holds
*twins*: captions with exactly the same words in another order that describe different
media. That is where a cross-attention (Slow) model can beat a dual encoder (Fast).

Vocabulary (25 words)
    a, single, while, of, moving, moves
    colours     red green blue yellow purple white
    shapes      circle square triangle cross diamond
    sizes       small large
    relations   left of, right of, above, below
    directions  left right up down

Grammar
    thing  := "a" [size] colour shape
    image  := "a single" [size] colour shape            (the only object in the image)
            | thing relation thing                      (2 objects)
            | thing relation thing relation thing       (3 objects in a row: the relation
                                                          holds between neighbours)
    clip   := thing "moving" direction
            | thing "moving" direction "while" thing "moves" direction
    e.g. "a red circle left of a blue square", "a small green triangle above a large
    yellow cross", "a single white diamond", "a red circle moving left while a blue
    square moves up". Within one scene all colours differ and all shapes differ. Every
    object is small or large, but a caption says the size only sometimes (never in
    clips). The two clauses of a clip caption are ordered by colour (red, green, blue,
    yellow, purple, white), so a caption never has a reordered paraphrase of itself.

Semantics (used to keep evaluation splits unambiguous, see `describes`)
    "A left of B" holds when A's box lies entirely left of B's box (likewise right of,
    above, below); images are drawn with a clear gap along the relation's axis and the
    objects aligned on the other axis, so no other relation holds between them. "a
    single X" requires X to be alone; "X moving d" requires X to move in direction d.

Twins
    A share (`twin_share`, default half) of the items of every split comes in pairs whose
    captions have the same words in another order: relation arguments permuted, colours,
    shapes or sizes swapped between two objects, or (clips) directions swapped. Each twin
    gets a fresh layout and background. Evaluation finds twins by sorted-word equality.
    Within the val split and within the test split no caption is true of any item but its
    own (checked with `describes`), so the ground truth is exact; the train split may hold
    repeated layouts, which only adds visual variety.

Files written by `generate`: images/NNNNN.png, videos/NNNNN.mp4 (H.264, yuv420p, constant
frame rate), captions.jsonl ({"media", "caption", "split"}, media relative to the file)
and synth.json (the config and counts). The same seed gives the same bytes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from fastslow_cli.atomic import atomic_write_json, atomic_write_text
from fastslow_cli.errors import FastslowError, UsageError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (50, 95, 240),
    "yellow": (235, 215, 45),
    "purple": (155, 70, 215),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
SPLITS = ("train", "val", "test")

# Geometry, in fractions of the frame side.
_RADIUS = {"small": (0.075, 0.10), "large": (0.15, 0.18)}
_MARGIN = 0.02  # between an object's box and the frame border
_GAP = 0.06  # least gap between related objects along the relation's axis (4 px at 64)
_TRAVEL = (0.30, 0.42)  # distance a clip object moves from first to last frame
_MAX_ANGLE = math.radians(12)  # small enough that a square never looks like a diamond
_SUPERSAMPLE = 4  # anti-aliasing: sub-samples per pixel side

# How many objects: images mostly 2, clips 1 or 2.
_N_THINGS = {"image": ((1, 2, 3), (0.1, 0.7, 0.2)), "clip": ((1, 2), (0.35, 0.65))}
_SAY_SIZE = 0.3  # chance that a caption says an object's size (single objects: 0.5)
_MAX_TRIES = 2000  # per item, before a split is declared too large for the vocabulary


@dataclass(frozen=True)
class Thing:
    """One object: what the caption may say about it, and where it is drawn."""

    colour: str
    shape: str
    size: str  # "small" | "large": always true of the drawing
    say_size: bool  # whether the caption mentions the size
    direction: str | None = None  # clips only
    x: float = 0.5  # centre (clips: at the first frame), fraction of the width
    y: float = 0.5
    radius: float = 0.1  # half the side of the object's box, fraction of the side
    travel: float = 0.0  # clips: distance moved over the clip
    angle: float = 0.0  # radians
    rgb: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class Scene:
    """An image or a clip: objects in caption order, the relation between neighbours."""

    kind: str  # "image" | "clip"
    things: tuple[Thing, ...]
    relation: str | None  # images with 2+ objects
    background: int  # seed of the background texture


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of the demo dataset; the defaults suit the 2-core demo."""

    n_images: int = 4000
    n_videos: int = 400
    size: int = 64
    video_frames: int = 16
    fps: int = 8
    seed: int = 0
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test
    twin_share: float = 0.5  # share of the items of each split that come as twin pairs


# --------------------------------------------------------------------------- captions


def _noun_phrase(thing: Thing) -> str:
    words = ["a"] + ([thing.size] if thing.say_size else []) + [thing.colour, thing.shape]
    return " ".join(words)


def caption(scene: Scene) -> str:
    """The caption of a scene, following the grammar of the module docstring."""
    things = scene.things
    if scene.kind == "clip":
        first = f"{_noun_phrase(things[0])} moving {things[0].direction}"
        if len(things) == 1:
            return first
        return f"{first} while {_noun_phrase(things[1])} moves {things[1].direction}"
    if len(things) == 1:
        return "a single " + _noun_phrase(things[0])[2:]
    return f" {scene.relation} ".join(_noun_phrase(t) for t in things)


def twin_key(text: str) -> str:
    """Captions with equal keys have the same words in another order (or are equal)."""
    return " ".join(sorted(text.split()))


def _relation_holds(relation: str, a: Thing, b: Thing) -> bool:
    if relation == "left of":
        return a.x + a.radius < b.x - b.radius
    if relation == "right of":
        return _relation_holds("left of", b, a)
    if relation == "above":
        return a.y + a.radius < b.y - b.radius
    if relation == "below":
        return _relation_holds("above", b, a)
    raise ValueError(f"unknown relation {relation!r}")


def describes(text: Scene, content: Scene) -> bool:
    """Whether the caption of `text` is true of the media of `content` (see Semantics)."""
    if text.kind != content.kind:
        return False
    present = {(t.colour, t.shape): t for t in content.things}
    matched = []
    for t in text.things:
        c = present.get((t.colour, t.shape))
        if c is None or (t.say_size and t.size != c.size) or t.direction != c.direction:
            return False
        matched.append(c)
    if text.kind == "image":
        if len(text.things) == 1:
            return len(content.things) == 1
        return all(_relation_holds(text.relation or "", a, b) for a, b in zip(matched, matched[1:]))
    return True


# ----------------------------------------------------------------------------- scenes


def sample_scene(rng: np.random.Generator, kind: str, n_things: int | None = None) -> Scene:
    """A random scene of `kind` ("image" or "clip"), laid out so its caption is true."""
    if kind not in _N_THINGS:
        raise ValueError(f"kind must be 'image' or 'clip', not {kind!r}")
    counts, probs = _N_THINGS[kind]
    n = int(rng.choice(counts, p=probs)) if n_things is None else n_things
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n, replace=False)
    sizes = list(rng.choice(SIZES, size=n))
    if n == 3 and sizes.count("large") > 1:  # two large objects leave no room for a third
        keep = int(rng.choice([i for i, z in enumerate(sizes) if z == "large"]))
        sizes = ["large" if i == keep else "small" for i in range(3)]
    if kind == "clip":
        directions = list(rng.choice(list(DIRECTIONS), size=n, replace=False))
        say = [False] * n
    else:
        directions = [None] * n
        say = list(rng.random(n) < (0.5 if n == 1 else _SAY_SIZE))
    things = tuple(
        Thing(str(c), str(s), str(z), bool(y), d if d is None else str(d))
        for c, s, z, y, d in zip(colours, shapes, sizes, say, directions)
    )
    relation = str(rng.choice(RELATIONS)) if kind == "image" and n > 1 else None
    return _layout(rng, Scene(kind, things, relation, 0))


def twin(rng: np.random.Generator, scene: Scene) -> Scene | None:
    """A scene whose caption has the same words as `scene`'s in another order.

    Picks one applicable change at random (permute the relation's arguments, swap colours,
    shapes or said sizes between two objects, swap two clip objects' directions) and lays
    the result out afresh; None when the scene has a single object.
    """
    things = list(scene.things)
    n = len(things)
    if n < 2:
        return None
    ops = ["colours", "shapes"]
    ops.append("directions" if scene.kind == "clip" else "permute")
    sized = [i for i, t in enumerate(things) if t.say_size]
    size_pairs = [(i, j) for i in sized for j in sized if i < j and things[i].size != things[j].size]
    if size_pairs:
        ops.append("sizes")
    op = str(rng.choice(ops))
    if op == "permute":
        orders = list(itertools.permutations(range(n)))[1:]  # all but the identity
        order = orders[int(rng.integers(len(orders)))]
        things = [things[k] for k in order]
    else:
        if op == "sizes":
            i, j = size_pairs[int(rng.integers(len(size_pairs)))]
        else:
            i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
        field = {"colours": "colour", "shapes": "shape", "sizes": "size", "directions": "direction"}[op]
        a, b = getattr(things[i], field), getattr(things[j], field)
        things[i], things[j] = replace(things[i], **{field: b}), replace(things[j], **{field: a})
    return _layout(rng, replace(scene, things=tuple(things)))


def _layout(rng: np.random.Generator, scene: Scene) -> Scene:
    """Fresh geometry, colour jitter and background for a scene's objects."""
    things = []
    for t in scene.things:
        low, high = _RADIUS[t.size]
        jitter = rng.normal(0.0, 8.0, 3) + np.array(COLOURS[t.colour]) * (rng.uniform(0.88, 1.08) - 1)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[t.colour]) + jitter, 0, 255))
        angle = 0.0 if t.shape == "circle" else float(rng.uniform(-_MAX_ANGLE, _MAX_ANGLE))
        things.append(replace(t, radius=float(rng.uniform(low, high)), rgb=rgb, angle=angle))
    if scene.kind == "clip":
        things = _place_moving(rng, sorted(things, key=lambda t: list(COLOURS).index(t.colour)))
    else:
        things = _place_still(rng, things, scene.relation)
    return replace(scene, things=tuple(things), background=int(rng.integers(2**31)))


def _place_still(rng: np.random.Generator, things: list[Thing], relation: str | None) -> list[Thing]:
    """Objects in a row along the relation's axis, gaps >= _GAP, aligned on the other axis."""
    if relation is None:
        return [replace(t, x=_uniform_inside(rng, t.radius), y=_uniform_inside(rng, t.radius)) for t in things]
    forward = relation in ("left of", "above")
    row = things if forward else things[::-1]  # objects in increasing coordinate order
    radii = np.array([t.radius for t in row])
    slack = 1 - 2 * _MARGIN - 2 * radii.sum() - _GAP * (len(row) - 1)
    spare = slack * rng.dirichlet(np.ones(len(row) + 1))  # before, between..., after
    along = []
    edge = _MARGIN
    for k, r in enumerate(radii):
        edge += spare[k] + (_GAP if k else 0.0)
        along.append(edge + r)
        edge += 2 * r
    r_max, r_min = radii.max(), radii.min()
    centre = rng.uniform(_MARGIN + r_max, 1 - _MARGIN - r_max)
    # Cross-axis offsets below 0.4 * smallest radius keep every pair's boxes overlapping on
    # that axis, so no second relation (e.g. "above" in a "left of" row) holds.
    across = [float(np.clip(centre + rng.uniform(-0.4, 0.4) * r_min, _MARGIN + r, 1 - _MARGIN - r)) for r in radii]
    horizontal = relation in ("left of", "right of")
    placed = [
        replace(t, x=float(a), y=c) if horizontal else replace(t, x=c, y=float(a))
        for t, a, c in zip(row, along, across)
    ]
    return placed if forward else placed[::-1]


def _uniform_inside(rng: np.random.Generator, radius: float, travel: float = 0.0, sign: float = 0.0) -> float:
    """A centre coordinate keeping the box (and its whole path) inside the frame."""
    low, high = _MARGIN + radius, 1 - _MARGIN - radius
    if sign < 0:
        low += travel
    elif sign > 0:
        high -= travel
    return float(rng.uniform(low, high))


def _place_moving(rng: np.random.Generator, things: list[Thing]) -> list[Thing]:
    """Start positions whose whole paths stay inside the frame and never touch each other."""
    for _ in range(200):
        placed = []
        for t in things:
            dx, dy = DIRECTIONS[t.direction or ""]
            travel = float(rng.uniform(*_TRAVEL))
            x = _uniform_inside(rng, t.radius, travel, dx)
            y = _uniform_inside(rng, t.radius, travel, dy)
            placed.append(replace(t, x=x, y=y, travel=travel))
        if len(placed) < 2 or _paths_apart(placed[0], placed[1]):
            return placed
    # Two large objects on crossing paths can fail every try: shrink them and retry.
    return _place_moving(rng, [replace(t, size="small", radius=_RADIUS["small"][1]) for t in things])


def _paths_apart(a: Thing, b: Thing) -> bool:
    for s in np.linspace(0.0, 1.0, 33):
        ax, ay = _position(a, s)
        bx, by = _position(b, s)
        if abs(ax - bx) < a.radius + b.radius + 0.02 and abs(ay - by) < a.radius + b.radius + 0.02:
            return False
    return True


def _position(t: Thing, s: float) -> tuple[float, float]:
    """Centre of a clip object at clip time s in [0, 1]."""
    dx, dy = DIRECTIONS[t.direction] if t.direction else (0.0, 0.0)
    return t.x + dx * t.travel * s, t.y + dy * t.travel * s


# ---------------------------------------------------------------------------- drawing


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape masks in coordinates scaled by the radius (y points down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v <= 0.75) & (au <= 0.5 * (v + 1.0))
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "diamond":
        return au + av <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _draw(img: np.ndarray, t: Thing, cx: float, cy: float) -> None:
    """Blend one anti-aliased object into `img` (float, HxWx3) at pixel centre (cx, cy)."""
    size = img.shape[0]
    r = t.radius * size
    x0, x1 = max(0, int(cx - 1.1 * r)), min(size, int(math.ceil(cx + 1.1 * r)))
    y0, y1 = max(0, int(cy - 1.1 * r)), min(size, int(math.ceil(cy + 1.1 * r)))
    if x0 >= x1 or y0 >= y1:
        return
    s = _SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s - cx
    ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s - cy
    cos, sin = math.cos(t.angle), math.sin(t.angle)
    u = (cos * xs[None, :] + sin * ys[:, None]) / r
    v = (-sin * xs[None, :] + cos * ys[:, None]) / r
    alpha = _inside(t.shape, u, v).reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))[..., None]
    patch = img[y0:y1, x0:x1]
    patch += alpha * (np.asarray(t.rgb, dtype=np.float32) - patch)


def _upsample_matrix(k: int, size: int) -> np.ndarray:
    """Linear interpolation from k control points to `size` pixel centres."""
    grid = (np.arange(k) + 0.5) / k
    pixels = (np.arange(size) + 0.5) / size
    return np.stack([np.interp(pixels, grid, np.eye(k)[a]) for a in range(k)], axis=1)


def _background(seed: int, size: int) -> np.ndarray:
    """A dark, varied, textured background (float32 HxWx3) that all colours stand out on."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(20, 90) + rng.uniform(-15, 15, 3)
    m = _upsample_matrix(4, size)
    rows = np.tensordot(m, rng.normal(0, 10, (4, 4, 3)), axes=(1, 0))  # (size, 4, 3)
    blotches = np.tensordot(rows, m, axes=(1, 1)).transpose(0, 2, 1)  # (size, size, 3)
    coords = (np.arange(size) + 0.5) / size - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(theta) * coords[None, :] + math.sin(theta) * coords[:, None]
    img = level + blotches + rng.uniform(0, 20) * ramp[..., None]
    if rng.random() < 0.3:  # faint stripes
        freq, phi = rng.uniform(3, 9), rng.uniform(0, 2 * math.pi)
        img = img + rng.uniform(3, 8) * np.sin(2 * math.pi * freq * ramp + phi)[..., None]
    img = img + rng.normal(0, rng.uniform(1, 5), (size, size, 3))
    return img.astype(np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_image(scene: Scene, size: int) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) RGB image."""
    img = _background(scene.background, size)
    for t in scene.things:
        _draw(img, t, t.x * size, t.y * size)
    return _to_uint8(img)


def render_clip(scene: Scene, size: int, frames: int) -> np.ndarray:
    """The scene as uint8 (frames, size, size, 3) RGB frames; objects move at constant speed."""
    background = _background(scene.background, size)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        s = f / (frames - 1) if frames > 1 else 0.0
        img = background.copy()
        for t in scene.things:
            x, y = _position(t, s)
            _draw(img, t, x * size, y * size)
        out[f] = _to_uint8(img)
    return out


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB image (Pillow's PNG writer stores no timestamp: deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 (yuv420p) MP4 bytes, the same on every run and machine.

    x264's SIMD code (AVX-512 at least) gave different bytes from run to run on these tiny
    frames, and its C and SIMD paths are not bit-exact with each other: plain C code on one
    thread is the only deterministic choice, at about 15 ms a clip.
    """
    import av  # imported here: only generation of clips needs it

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "x264-params": "asm=0"}
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, fps)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)  # explicit: x264's rate control reads them
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


# ------------------------------------------------------------------------- generation


class _Split:
    """The scenes of one split. It never repeats a caption; when `exclusive` (val, test) it
    also refuses a scene that would make any caption true of two items, so retrieval ground
    truth and twin pairs are exact."""

    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive
        self.scenes: list[Scene] = []
        self._captions: set[str] = set()
        self._by_thing: dict[tuple[str, str], list[int]] = {}

    def accepts(self, scene: Scene) -> bool:
        if caption(scene) in self._captions:
            return False
        if not self.exclusive:
            return True
        near = {i for t in scene.things for i in self._by_thing.get((t.colour, t.shape), [])}
        return not any(describes(scene, self.scenes[i]) or describes(self.scenes[i], scene) for i in near)

    def add(self, scene: Scene) -> None:
        for t in scene.things:
            self._by_thing.setdefault((t.colour, t.shape), []).append(len(self.scenes))
        self.scenes.append(scene)
        self._captions.add(caption(scene))


def split_counts(n: int, fractions: Sequence[float]) -> dict[str, int]:
    """Items per split: val and test rounded, train takes the rest."""
    total = float(sum(fractions))
    val = round(n * fractions[1] / total)
    test = round(n * fractions[2] / total)
    return {"train": n - val - test, "val": val, "test": test}


def _fill_split(rng: np.random.Generator, kind: str, split: str, count: int, twin_share: float) -> list[Scene]:
    box = _Split(exclusive=split != "train")
    n_pairs = int(count * twin_share / 2)
    for _ in range(n_pairs):
        for _ in range(_MAX_TRIES):
            a = sample_scene(rng, kind, n_things=int(rng.choice([2, 3])) if kind == "image" else 2)
            b = twin(rng, a)
            if b is not None and box.accepts(a) and box.accepts(b) and not describes(a, b) and not describes(b, a):
                box.add(a)
                box.add(b)
                break
        else:
            raise _too_many(kind, split, count)
    while len(box.scenes) < count:
        for tries in range(_MAX_TRIES):
            # Single objects run out first in a big val/test split: fall back to more objects.
            scene = sample_scene(rng, kind, None if tries < 50 else max(_N_THINGS[kind][0]))
            if box.accepts(scene):
                box.add(scene)
                break
        else:
            raise _too_many(kind, split, count)
    return box.scenes


def _too_many(kind: str, split: str, count: int) -> FastslowError:
    return FastslowError(
        f"cannot make {count} {kind}s with distinct captions for the {split} split; "
        f"ask for fewer items or a smaller {split} fraction"
    )


def plan(config: SynthConfig) -> list[tuple[str, str, Scene]]:
    """Every item as (media path relative to the captions file, split, scene), in file order.

    Images and clips draw from separate seeded streams, so changing the number of clips
    leaves the images unchanged.
    """
    _check(config)
    streams = np.random.SeedSequence(config.seed).spawn(2)
    items: list[tuple[str, str, Scene]] = []
    for kind, folder, ext, n, seq in (
        ("image", "images", "png", config.n_images, streams[0]),
        ("clip", "videos", "mp4", config.n_videos, streams[1]),
    ):
        rng = np.random.default_rng(seq)
        pool = [
            (split, scene)
            for split, count in split_counts(n, config.splits).items()
            for scene in _fill_split(rng, kind, split, count, config.twin_share)
        ]
        order = rng.permutation(len(pool))  # interleave splits and separate twins
        width = max(5, len(str(n - 1)))
        items += [(f"{folder}/{k:0{width}d}.{ext}", *pool[int(i)]) for k, i in enumerate(order)]
    return items


def _check(config: SynthConfig) -> None:
    if config.n_images < 0 or config.n_videos < 0 or config.n_images + config.n_videos == 0:
        raise UsageError("the synthetic dataset needs at least one image or video (counts must be >= 0)")
    if config.size < 32 or config.size % 2:
        raise UsageError(f"synthetic media size must be an even number >= 32, not {config.size}")
    if config.video_frames < 2 or config.fps < 1:
        raise UsageError("synthetic clips need at least 2 frames and fps >= 1")
    if len(config.splits) != 3 or min(config.splits) < 0 or sum(config.splits) <= 0:
        raise UsageError(f"splits must be three non-negative train/val/test fractions, not {config.splits}")
    if not 0.0 <= config.twin_share <= 1.0:
        raise UsageError(f"twin_share must be between 0 and 1, not {config.twin_share}")


_MEDIA_NAME = re.compile(r"^\.?\d+\.(png|mp4)(\.tmp)?$")  # ours, or a leftover temporary


def _prepare(out_dir: Path, keep: set[str]) -> None:
    """Refuse a folder that holds other data; remove stale media of an earlier synth run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FastslowError(f"{out_dir} is a file; give a folder for the synthetic dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "synth.json").is_file():
        raise FastslowError(f"{out_dir} is not empty and holds no synthetic dataset; give an empty or new folder")
    for folder in ("images", "videos"):
        if (out_dir / folder).is_dir():
            for path in (out_dir / folder).iterdir():
                if _MEDIA_NAME.match(path.name) and f"{folder}/{path.name}" not in keep:
                    path.unlink()


def _write_replace(path: Path, data: bytes) -> None:
    """Write next to `path`, then rename: no half-written media is ever visible under its
    name. Durability comes from one `os.sync` in `generate` (an fsync per file would cost
    more than drawing it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def generate(out_dir: Path, config: SynthConfig, progress: Callable[[int], None] | None = None) -> Path:
    """Write the dataset to `out_dir` and return its captions.jsonl.

    `progress(k)` is called after every k media files written (k is 1), for a progress bar
    of `config.n_images + config.n_videos` steps. The captions file is written last, so a
    folder with a captions.jsonl holds every media file it names.
    """
    out_dir = Path(out_dir)
    items = plan(config)
    _prepare(out_dir, {media for media, _, _ in items})
    (out_dir / "captions.jsonl").unlink(missing_ok=True)
    atomic_write_json(out_dir / "synth.json", {"config": asdict(config), "version": 1})
    lines = []
    for media, split, scene in items:
        if scene.kind == "image":
            data = encode_png(render_image(scene, config.size))
        else:
            data = encode_mp4(render_clip(scene, config.size, config.video_frames), config.fps)
        _write_replace(out_dir / media, data)
        lines.append(json.dumps({"media": media, "caption": caption(scene), "split": split}))
        if progress is not None:
            progress(1)
    os.sync()  # one flush for all media, before the captions file that commits them
    captions_path = out_dir / "captions.jsonl"
    atomic_write_text(captions_path, "\n".join(lines) + "\n")
    return captions_path
