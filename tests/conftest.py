"""Shared fixtures: real media made with Pillow and PyAV, broken inputs, a temp workspace.

Session-scoped fixtures are generated once per run; tests must not modify their files
(copy them to `tmp_path` first when a test needs to change something).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from fastslow_cli.models.files import EXPORT_SWITCH
from fastslow_cli.store.parquet import FeatureRow, FeatureStore, FeatureTable

# Saving a model exports its ONNX graph (about 5 s each here): off for the suite, so the many
# tests that train or save models do not all pay it; `onnx_export` turns it back on for a module
# (the ONNX tests and the CLI end-to-end ones), `onnx_models` exports tiny models once per session.
os.environ[EXPORT_SWITCH] = "0"

@dataclass
class Ran:
    """What a CLI run gave: the fields of `subprocess.CompletedProcess` the tests read."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | bytes | None = None) -> Ran:
    """`fastslow ARGS` in this process (no interpreter and torch start-up per call), through
    the console script's own `main()`, so exit codes and one-line errors are the real ones.

    Click's test isolation swaps stdin/stdout/stderr and the environment for the call;
    keep subprocesses for what needs a process of its own (imports, signals, kill -9).
    """
    from typer.testing import CliRunner

    from fastslow_cli.cli.app import main

    with CliRunner().isolation(input=stdin, env=env) as streams:
        argv, sys.argv = sys.argv, ["fastslow", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = argv
        return Ran(code, streams[0].getvalue().decode(), streams[1].getvalue().decode())


# ------------------------------------------------------------------ feature sets compared

MANIFEST_TIMES = ("created", "updated", "parts")  # when and in how many parts: not what is stored


def set_contents(set_dir: Path, prefix: str = "") -> dict[str, Any]:
    """Everything a feature set holds, in a comparable form: the rows sorted by id (every
    column; the float16 levels as their raw bits), each part's schema and metadata (but the
    names of the parts a compacted part replaced: they depend on when rows were appended),
    the manifest (but its times and part list), the thumbnail files' bytes and the errors.
    `prefix` (file://) is taken off ids and paths: a set read from URLs against one from paths."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fastslow_cli.store.parquet import REPLACES_KEY

    parts = sorted((set_dir / "parts").glob("part-*.parquet"))
    table = pq.ParquetDataset(parts).read().sort_by("id")
    rows = {n: table.column(n).to_pylist() for n in table.column_names if not n.startswith("level_")}
    for n in ("id", "path"):
        rows[n] = [v.removeprefix(prefix) for v in rows[n]]
    for n in (n for n in table.column_names if n.startswith("level_")):
        flat = pc.list_flatten(table.column(n))
        rows[n] = np.concatenate([c.to_numpy(zero_copy_only=False) for c in flat.chunks]).view(np.uint16).tobytes()
    manifest = json.loads((set_dir / "manifest.json").read_text())
    manifest = {k: v for k, v in manifest.items() if k not in MANIFEST_TIMES}
    manifest["counts"].pop("parts", None)
    thumbs = {p.relative_to(set_dir).as_posix(): p.read_bytes() for p in (set_dir / "thumbs").rglob("*") if p.is_file()}
    errors = sorted((e["id"].removeprefix(prefix), e["reason"], tuple(e["attempts"])) for e in FeatureStore(set_dir).errors())
    schemas = {  # distinct over the parts: each part has the same one
        (s.remove_metadata().to_string(), tuple(sorted((k, v) for k, v in s.metadata.items() if k != REPLACES_KEY)))
        for s in (pq.read_schema(part) for part in parts)
    }
    return {"rows": rows, "schemas": schemas, "manifest": manifest, "thumbs": thumbs, "errors": errors}


def assert_same_set(a: Path, b: Path, prefix: str = "") -> None:
    """`a` and `b` hold the same (`set_contents`; `prefix` taken off `b`'s ids and paths)."""
    one, two = set_contents(a), set_contents(b, prefix)
    assert one["rows"]["id"] == two["rows"]["id"]
    for name in one["rows"]:
        assert one["rows"][name] == two["rows"][name], name
    assert one["schemas"] == two["schemas"] and len(one["schemas"]) == 1
    assert one["manifest"] == two["manifest"]
    assert one["thumbs"] == two["thumbs"]
    assert one["errors"] == two["errors"]


def file_url(path: Path) -> str:
    """`path` as a file:// URL: read through pyarrow.fs like s3:// (media/location.py), not as a path."""
    return "file://" + path.resolve().as_posix()


CLIP_FRAMES = 24
CLIP_FPS = 12
CLIP_SIZE = 64
EXIF_ORIENTATION = 0x0112


def clip_level(i: int, frames: int) -> int:
    """Grey level of frame `i` of a `make_clip` clip: it encodes the frame index."""
    return round(16 + 220 * i / max(frames - 1, 1))


def _write_clip(path: Path, frames: int, size: int, fps: int, faststart: bool = False) -> Path:
    """H.264 clip: frame i is uniform grey `clip_level(i)` with a black 8x8 square moving
    left to right along the bottom rows (rows size-12..size-4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            pixels = np.full((size, size, 3), clip_level(i, frames), np.uint8)
            x = round((size - 8) * i / max(frames - 1, 1))
            pixels[size - 12 : size - 4, x : x + 8] = 0
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_noise_clip(path: Path, frames: int, size: int, fps: int) -> Path:
    """A faststart clip of random frames: large packets, so a cut lands mid-stream."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _save_image(path: Path, pixels: np.ndarray, **save_args: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_args)
    return path


def _halves(height: int, width: int, first: tuple[int, int, int], second: tuple[int, int, int]) -> np.ndarray:
    """Left half `first`, right half `second`."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = first
    pixels[:, width // 2 :] = second
    return pixels


@pytest.fixture(scope="session")
def make_clip() -> Callable[..., Path]:
    """make_clip(path, frames=24, size=64, fps=12, faststart=False) writes a real H.264 MP4."""

    def make(path: Path, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE, fps: int = CLIP_FPS,
             faststart: bool = False) -> Path:
        return _write_clip(Path(path), frames, size, fps, faststart)

    return make


@pytest.fixture(scope="session")
def frame_level() -> Callable[[int, int], int]:
    """frame_level(i, frames): the grey level encoded in frame i of a `make_clip` clip."""
    return clip_level


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with `good/` (see good_media, plus a hidden folder and a .txt to be ignored)
    and `broken/` (see broken_media)."""
    root = tmp_path_factory.mktemp("media")
    good, broken = root / "good", root / "broken"

    _save_image(good / "red.png", np.full((40, 30, 3), (220, 20, 20), np.uint8))
    _save_image(good / "photo.jpg", _halves(48, 64, (20, 200, 20), (20, 20, 200)), quality=95)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    _save_image(good / "rotated.jpg", _halves(32, 48, (230, 20, 20), (20, 20, 230)), quality=95, exif=exif)
    gif_first = Image.fromarray(np.full((16, 16, 3), (0, 255, 0), np.uint8)).convert("P")
    gif_second = Image.fromarray(np.full((16, 16, 3), (255, 0, 255), np.uint8)).convert("P")
    gif_first.save(good / "anim.gif", save_all=True, append_images=[gif_second], duration=100, loop=0)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)  # left half opaque blue, right half fully transparent
    _save_image(good / "alpha.png", rgba)
    _save_image(good / "sub" / "deeper" / "nested.jpg", np.full((24, 24, 3), 128, np.uint8))
    _write_clip(good / "clip.mp4", CLIP_FRAMES, CLIP_SIZE, CLIP_FPS)
    _write_clip(good / "short.mp4", 3, CLIP_SIZE, CLIP_FPS)
    _write_clip(good / "café clip ü.mp4", 6, CLIP_SIZE, CLIP_FPS)
    _write_clip(good / "sub" / "clip.mkv", 12, CLIP_SIZE, CLIP_FPS)
    _save_image(good / ".hidden" / "ignored.jpg", np.zeros((8, 8, 3), np.uint8))
    (good / "notes.txt").write_text("not media\n")

    broken.mkdir()
    (broken / "empty.mp4").write_bytes(b"")
    data = (good / "clip.mp4").read_bytes()  # moov atom at the end: half a file cannot open
    (broken / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (broken / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (broken / "fake.png").write_text("not a PNG at all\n")
    jpeg = (good / "photo.jpg").read_bytes()
    (broken / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    # Intact container, but every H.264 sample zeroed: opens, yet no frame decodes.
    mdat = data.find(b"mdat")
    box = int.from_bytes(data[mdat - 4 : mdat], "big")
    zeroed = bytearray(data)
    zeroed[mdat + 4 : mdat - 4 + box] = bytes(box - 8)
    (broken / "no_frames.mp4").write_bytes(bytes(zeroed))
    return root


@pytest.fixture(scope="session")
def good_media(media_dir: Path) -> dict[str, Path]:
    """name -> path of each decodable file: png, jpeg, exif_jpeg (orientation 6: stored
    left red / right blue, displayed top red / bottom blue), gif (frame 0 green, frame 1
    magenta), alpha_png (left blue, right transparent), nested_jpeg, clip (24 frames @ 12
    fps, 64x64), short_clip (3 frames), unicode_clip ("café clip ü.mp4", 6 frames), mkv_clip
    (12 frames)."""
    good = media_dir / "good"
    return {
        "png": good / "red.png",
        "jpeg": good / "photo.jpg",
        "exif_jpeg": good / "rotated.jpg",
        "gif": good / "anim.gif",
        "alpha_png": good / "alpha.png",
        "nested_jpeg": good / "sub" / "deeper" / "nested.jpg",
        "clip": good / "clip.mp4",
        "short_clip": good / "short.mp4",
        "unicode_clip": good / "café clip ü.mp4",
        "mkv_clip": good / "sub" / "clip.mkv",
    }


@pytest.fixture(scope="session")
def broken_media(media_dir: Path) -> dict[str, Path]:
    """name -> path of each file no decoder can read: empty (0 bytes), truncated (first
    half of an MP4), text_as_mp4, fake_png, truncated_jpeg, no_frames (zeroed samples)."""
    broken = media_dir / "broken"
    return {
        "empty": broken / "empty.mp4",
        "truncated": broken / "truncated.mp4",
        "text_as_mp4": broken / "text.mp4",
        "fake_png": broken / "fake.png",
        "truncated_jpeg": broken / "truncated.jpg",
        "no_frames": broken / "no_frames.mp4",
    }


@pytest.fixture(scope="session")
def damaged_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """First half of a faststart MP4 (24 noise frames, 64x64): decord fails on it, PyAV
    recovers the frames before the cut."""
    folder = tmp_path_factory.mktemp("damaged")
    full = _write_noise_clip(folder / "full.mp4", CLIP_FRAMES, CLIP_SIZE, CLIP_FPS)
    data = full.read_bytes()
    cut = folder / "damaged.mp4"
    cut.write_bytes(data[: len(data) // 2])
    full.unlink()
    return cut


@pytest.fixture
def unreadable_file(tmp_path: Path) -> Path:
    """A valid JPEG with mode 000. Root ignores file modes: as root, check it from a
    process without capabilities (e.g. `setpriv --inh-caps=-all --bounding-set=-all`)."""
    path = _save_image(tmp_path / "locked.jpg", np.full((16, 16, 3), 90, np.uint8))
    path.chmod(0)
    return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temp folder set as FASTSLOW_WORKSPACE for the test."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    monkeypatch.setenv("FASTSLOW_WORKSPACE", os.fspath(ws))
    return ws


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests (`pytestmark = usefixtures(...)`):
    tiny models gain nothing from threads, and on a loaded machine idle-spinning intra-op
    threads make them 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def plain_reads() -> Callable[[Path], dict[str, list[str]]]:
    """The ids pyarrow, pandas, Polars and DuckDB each see in a folder of Parquet parts,
    with no fastslow code: the feature store must be a dataset any reader opens."""

    def read(folder: Path) -> dict[str, list[str]]:
        import duckdb
        import pandas as pd
        import polars as pl
        import pyarrow.parquet as pq

        return {
            "pyarrow": pq.read_table(folder).column("id").to_pylist(),
            "pandas": pd.read_parquet(folder)["id"].tolist(),
            "polars": pl.read_parquet(folder)["id"].to_list(),
            "duckdb": [r[0] for r in duckdb.sql(f"select id from read_parquet('{folder}/**')").fetchall()],
        }

    return read


def _feature_table(levels: list[np.ndarray], frame_mask: np.ndarray) -> FeatureTable:
    """A `FeatureTable` of feature levels (N, T, H, W, C) and a frame mask (N, T); ids "item000"..."""
    mask = np.asarray(frame_mask, dtype=bool)
    frames = mask.sum(1)
    n = len(mask)
    return FeatureTable(
        ids=[f"item{i:03d}" for i in range(n)], paths=[f"item{i:03d}" for i in range(n)],
        kinds=["image" if f == 1 else "video" for f in frames], frames=frames,
        timestamps=[[0.5 * t for t in range(int(f))] for f in frames], levels=list(levels), frame_mask=mask,
    )


@pytest.fixture(scope="session")
def feature_table() -> Callable[[list[np.ndarray], np.ndarray], FeatureTable]:
    """feature_table(levels, frame_mask): an in-memory `FeatureTable` (no store on disk)."""
    return _feature_table


class IndexKit:
    """Feature stores of tiny random rows (images and 3..8-frame videos, with media files on
    disk) and small randomly initialised Fast/Slow retrievers: what index and search tests
    build on (the mechanics do not depend on trained weights)."""

    shapes = [(8, 8, 12), (4, 4, 24), (2, 2, 48)]
    captions = [
        "a red circle left of a blue square",
        "a green triangle above a yellow star",
        "a dog runs on the beach",
        "two cats sleep under a big tree",
    ]

    @staticmethod
    def item_specs(count: int, first: int = 0) -> list[tuple[str, int]]:
        """(id, frames): two images for every video, videos of 3..8 frames."""
        return [(f"item{i:03d}.{'mp4' if i % 3 == 2 else 'png'}", 3 + i % 6 if i % 3 == 2 else 1)
                for i in range(first, first + count)]

    def add_rows(self, store: FeatureStore, media: Path, specs: list[tuple[str, int]], seed: int, urls: bool = False) -> None:
        """Append one part of random float16 rows, touching each item's media file (recorded
        as its file:// URL with `urls`, as an extract from a URL would)."""
        rng = np.random.default_rng(seed)
        rows = []
        for item_id, frames in specs:
            path = media / item_id
            path.write_bytes(item_id.encode())
            rows.append(FeatureRow(
                id=item_id, path=file_url(path) if urls else str(path), kind="image" if frames == 1 else "video", frames=frames,
                timestamps=[0.25 + 0.5 * t for t in range(frames)], size=path.stat().st_size,
                mtime_ns=path.stat().st_mtime_ns, content_hash=f"hash-{item_id}",
                levels=[rng.standard_normal((frames, *shape)).astype(np.float16) for shape in self.shapes],
            ))
        store.append(rows)

    @staticmethod
    def edit_item(store: FeatureStore, media: Path, item_id: str, like: str) -> None:
        """Re-extract `item_id` after its file was edited: new bytes (size, mtime, hash), and the
        features of item `like` (same frame count), so its new content is known."""
        path = media / item_id
        path.write_bytes(b"edited: " + item_id.encode())
        source = store.load([like])
        frames = int(source.frames[0])
        store.append(
            [
                FeatureRow(
                    id=item_id, path=str(path), kind=source.kinds[0], frames=frames, timestamps=source.timestamps[0],
                    size=path.stat().st_size, mtime_ns=path.stat().st_mtime_ns, content_hash=f"edited-{item_id}",
                    levels=[lv[0, :frames] for lv in source.levels],
                )
            ]
        )

    def make_store(self, root: Path, count: int = 36, seed: int = 0, urls: bool = False) -> FeatureStore:
        """A feature set of `count` items (images and 3..8-frame videos) with existing media files
        (at file:// URLs with `urls`)."""
        store = FeatureStore(root / "features" / "test")
        store.ensure({"name": "test-backbone"}, self.shapes, 8)
        media = root / "media"
        media.mkdir(parents=True, exist_ok=True)
        self.add_rows(store, media, self.item_specs(count), seed, urls)
        return store

    def make_models(self, store: FeatureStore, seed: int = 0, fast_hash: str = "fast-a",
                    slow_hash: str = "slow-a", captions: list[str] | None = None) -> tuple[Any, Any]:
        """Small randomly initialised Fast and Slow models (fixed seed) as `NativeFast`, `NativeSlow`,
        built for the store's level shapes, with a tokenizer trained on `captions` (default `self.captions`)."""
        import torch

        from fastslow_cli.models.fast import FastConfig, FastModel
        from fastslow_cli.models.slow import SlowConfig, SlowModel
        from fastslow_cli.search.retrievers import NativeFast, NativeSlow
        from fastslow_cli.text.tokenizer import TextTokenizer

        torch.manual_seed(seed)
        tok = TextTokenizer.train(captions or self.captions)
        shapes = [list(s) for s in store.manifest()["levels"]]
        fast = FastModel(FastConfig(level_shapes=shapes, vocab_size=tok.vocab_size, dim=16, width=32, heads=2,
                                    visual_layers=1, text_layers=1))
        slow = SlowModel(SlowConfig(level_shapes=shapes, vocab_size=tok.vocab_size, width=32, heads=2, coarse_layers=1,
                                    refine_layers=1, decoder_layers=1, finest_level=1))
        cpu = torch.device("cpu")
        fp = store.fingerprint()
        return (
            NativeFast(fast, tok, identity={"path": f"models/{fast_hash}", "content_hash": fast_hash, "fingerprint": fp}, device=cpu),
            NativeSlow(slow, tok, identity={"path": f"models/{slow_hash}", "content_hash": slow_hash, "fingerprint": fp}, device=cpu),
        )


@pytest.fixture(scope="session")
def index_kit() -> IndexKit:
    """Tiny feature stores and random-init retrievers for index and search tests (see `IndexKit`)."""
    return IndexKit()


@pytest.fixture(scope="module")
def onnx_export() -> Iterator[None]:
    """Saving a model writes its ONNX graph again, for a module (`pytestmark = usefixtures(...)`
    or as a module fixture's argument): what a user gets by default."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(EXPORT_SWITCH, "1")
        yield


@pytest.fixture(scope="session")
def onnx_models(index_kit: IndexKit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace (`ws`) with 36 tiny random items (`store`), Fast and Slow models saved as
    models/fast and models/slow with their ONNX graphs (exported once per session), and an
    index 'default' built with them."""
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.models.export import export_query_graph
    from fastslow_cli.workspace import Workspace

    ws = tmp_path_factory.mktemp("onnx") / "ws"
    store = FeatureStore(ws / "features" / "default")
    store.ensure({"name": "test-backbone"}, index_kit.shapes, 8)
    media = ws.parent / "media"
    media.mkdir()
    index_kit.add_rows(store, media, index_kit.item_specs(36), seed=0)
    features = {"fingerprint": store.fingerprint(), "set": "default"}
    for retriever in index_kit.make_models(store):
        folder = save_model(ws / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
        export_query_graph(folder, retriever.model)
    Workspace(ws).build_index(device="cpu")
    return {"ws": ws, "store": store}


# ------------------------------------------------------------------ web app in a browser

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`.ci/run` installs it); Playwright's own download cannot work offline
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def served_workspace(tmp_path_factory: pytest.TempPathFactory, index_kit: IndexKit) -> Path:
    """A workspace over real synthetic media (10 images, 5 H.264 clips), extracted by the CLI
    (so thumbnails exist), with small random-init Fast and Slow models and index `default`:
    what `fastslow serve` needs, in seconds (what is checked is the page, not the ranking)."""
    from fastslow_cli.demo.synth import SynthConfig, generate
    from fastslow_cli.index.folder import build_index
    from fastslow_cli.index.hnsw import AnnParams
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.search.retrievers import load_native

    root = tmp_path_factory.mktemp("served").resolve()
    data, ws = root / "data", root / "ws"
    captions = generate(data, SynthConfig(n_images=10, n_videos=5, seed=4))
    out = run_cli("extract", str(data), env={"FASTSLOW_WORKSPACE": str(ws)})
    assert out.returncode == 0, out.stderr[-2000:]
    store = FeatureStore(ws / "features" / "default")
    texts = [json.loads(line)["caption"] for line in captions.read_text().splitlines()]
    features = {"fingerprint": store.fingerprint(), "set": "default"}
    for retriever in index_kit.make_models(store, captions=texts):
        save_model(ws / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
    fast, slow = (load_native(ws / "models" / kind, kind, "cpu") for kind in ("fast", "slow"))
    build_index(store, ws / "index" / "default", fast, slow, AnnParams(M=8, ef_construction=32, ef_search=32))
    return ws


@contextmanager
def serving(ws: Path, log: Path, *args: str, timeout: float = 120.0) -> Iterator[str]:
    """The real `fastslow serve -w WS --port 0 ARGS` in a subprocess running this checkout's
    code; yields its URL once it listens (its stderr kept in `log`), and stops it afterwards."""
    from fastslow_cli.serve.process import served

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    with served(ws, log, args, env=env, timeout=timeout) as (url, _):
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (headless, one per test session)."""
    if not CHROMIUM.exists():
        if os.environ.get("FASTSLOW_REQUIRE_BROWSER"):  # .ci/run sets it: CI never skips these tests
            pytest.fail(f"{CHROMIUM} is absent but FASTSLOW_REQUIRE_BROWSER is set: `apt-get install chromium`")
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install chromium`, as .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Ray tests: one local Ray per test process, shared by every `--engine ray` test. Mark such a
# test module `pytestmark = pytest.mark.xdist_group("ray")` so xdist (`--dist loadgroup`) runs
# them all in one worker and only one Ray starts (about 4 s and a few hundred MB here).
RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs, as `--engine ray --address local` starts on this machine;
    the core's `ray_session` reuses it instead of starting its own."""
    from fastslow_cli.ray_cluster import ray_session

    # Ray's workers (and the decoder processes they start) inherit the environment of the
    # Ray started here: with tests/ on their path they can import a test's helper by name
    # (a decode function that crashes, say), as the workers of a local DecodePool do.
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), before) if p)
    try:
        session = ray_session("local", num_cpus=RAY_CPUS)
        ray = session.__enter__()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    try:
        yield ray
    finally:
        session.__exit__(None, None, None)
