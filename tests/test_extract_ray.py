"""`extract --engine ray` on a local 2-CPU Ray: the same feature set as the local engine,
resumable, and a crashing or hanging decoder costs one file."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import assert_same_set, file_url, run_cli, set_contents
from fastslow_cli.errors import FastslowError
from fastslow_cli.features import extract_ray
from fastslow_cli.features.extract import ExtractOptions, run_extract
from fastslow_cli.media.decode import Decoded, decode
from fastslow_cli.media.discover import MediaFile
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.workspace import Workspace

pytestmark = pytest.mark.xdist_group("ray")

def _set_dir(ws: Path) -> Path:
    return ws / "features" / "default"


def _extract(paths: list[Path], ws: Path, progress=None, **kw: object):
    return run_extract([str(p) for p in paths], Workspace(ws), ExtractOptions(**kw), progress=progress)


@pytest.fixture(scope="module")
def local_set(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest media (images, clips, broken files) extracted by the local engine."""
    ws = tmp_path_factory.mktemp("local") / "ws"
    _extract([media_dir], ws, frames=4)
    return _set_dir(ws)


def test_ray_writes_the_same_set_as_local(ray_local: Any, media_dir: Path, local_set: Path, tmp_path: Path) -> None:
    summary = _extract([media_dir], tmp_path / "ws", frames=4, engine="ray", workers=2)
    assert summary.extracted == len(FeatureStore(local_set).entries()) > 8  # more than one Ray task
    assert len(summary.failed) == len(FeatureStore(local_set).errors()) > 0  # the broken files, as locally
    assert_same_set(local_set, _set_dir(tmp_path / "ws"))


def test_ray_actors_fetch_urls_as_the_local_engine_does(ray_local: Any, good_media: dict, tmp_path: Path) -> None:
    """Each actor's decoder fetches its objects itself (no mount): the same set as locally."""
    src = tmp_path / "src"
    src.mkdir()
    for key in ("png", "jpeg", "clip", "unicode_clip"):
        shutil.copy(good_media[key], src / good_media[key].name)
    local = _extract([file_url(src)], tmp_path / "local", frames=4)
    ray = _extract([file_url(src)], tmp_path / "ray", frames=4, engine="ray", workers=2)
    assert ray.extracted == local.extracted == 4
    assert_same_set(_set_dir(tmp_path / "local"), _set_dir(tmp_path / "ray"))
    assert all(i.startswith("file://") for i in FeatureStore(_set_dir(tmp_path / "ray")).entries())


def test_interrupted_ray_run_resumes(ray_local: Any, media_dir: Path, local_set: Path, tmp_path: Path) -> None:
    """Ctrl-C after the first Ray task's rows: they are kept, the rerun does the rest."""
    ws = tmp_path / "ws"

    def interrupt(event: dict[str, Any]) -> None:
        if event["event"] == "advance":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract([media_dir], ws, progress=interrupt, frames=4, engine="ray", workers=1, flush_items=1)
    kept = FeatureStore(_set_dir(ws)).entries()
    assert 0 < len(kept) <= extract_ray.ITEMS_PER_TASK
    total = len(FeatureStore(local_set).entries())
    summary = _extract([media_dir], ws, frames=4, engine="ray", workers=2)
    assert summary.skipped_existing == len(kept)
    assert summary.extracted == total - len(kept)
    table = pq.ParquetDataset(sorted((_set_dir(ws) / "parts").glob("part-*.parquet"))).read()
    assert len(set(table.column("id").to_pylist())) == table.num_rows == total  # no duplicate ids
    one, two = set_contents(local_set), set_contents(_set_dir(ws))
    assert one["rows"] == two["rows"] and one["thumbs"] == two["thumbs"]


def crash_or_hang(item: MediaFile, size: int, frames: int, decoder: str) -> Decoded:
    """In the decoder process: SIGSEGV on *crash* files, a decode that never ends on *hang*."""
    if "crash" in item.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    while "hang" in item.name:
        time.sleep(0.5)
    return decode(item, size, frames, decoder)


def test_crashing_and_hanging_files_cost_one_file_each(
    ray_local: Any, good_media: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"img{i}.png").write_bytes(good_media["png"].read_bytes() + bytes([i]))
    shutil.copy(good_media["jpeg"], src / "crash.jpg")
    shutil.copy(good_media["jpeg"], src / "hang.jpg")
    shutil.copy(good_media["clip"], src / "clip.mp4")
    monkeypatch.setattr(extract_ray, "ray_outcomes", functools.partial(extract_ray.ray_outcomes, decode_fn=crash_or_hang))
    started = time.monotonic()
    summary = _extract([src], tmp_path / "ws", frames=4, engine="ray", workers=1, timeout=5.0)
    assert time.monotonic() - started < 300  # finished: no retry loop on the file that killed its decoder (generous: CI may share the cores)
    assert summary.extracted == 6
    errors = {Path(e["path"]).name: e for e in FeatureStore(_set_dir(tmp_path / "ws")).errors()}
    assert set(errors) == {"crash.jpg", "hang.jpg"}
    assert errors["crash.jpg"]["reason"] == "decoder crashed (SIGSEGV)"
    assert errors["crash.jpg"]["attempts"] == ["pillow: crashed (signal SIGSEGV)"]
    assert errors["hang.jpg"]["reason"] == "decoder timed out after 5 s"


def test_actor_failure_is_one_error_line(ray_local: Any, good_media: dict, tmp_path: Path) -> None:
    """An actor that cannot start (here: a backbone size the workers refuse) is not retried:
    the run fails at once with the core's own one-line message."""
    from fastslow_cli.features.extract import plan
    from fastslow_cli.media.discover import find_media

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "a.png")
    started = time.monotonic()
    with pytest.raises(FastslowError) as failed:
        list(extract_ray.ray_outcomes(plan(find_media([src]), {}), ExtractOptions(size=0, engine="ray", workers=1)))
    assert str(failed.value).startswith("--size 0") and "\n" not in str(failed.value)
    assert time.monotonic() - started < 300  # finished: no retry loop (generous: CI may share the cores)


def test_cli_ray_extract_json_is_clean(good_media: dict, tmp_path: Path) -> None:
    """A process of its own, which starts (and stops) its own local Ray."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(good_media["png"], src / "a.png")
    shutil.copy(good_media["short_clip"], src / "b.mp4")
    proc = subprocess.run(
        [sys.executable, "-m", "fastslow_cli", "extract", str(src), "-w", str(tmp_path / "ws"), "--engine", "ray",
         "--workers", "1", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["extracted"] == 2
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr and "(raylet)" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus-per-worker", "1"], "--gpus-per-worker needs --engine ray"),
        (["--address", "auto"], "--address needs --engine ray"),
        (["--engine", "ray", "s3:/bucket/media"], "did you mean the URL s3://bucket/media"),
    ],
)
def test_usage_errors_need_no_ray(args: list[str], message: str, tmp_path: Path) -> None:
    paths = [] if any(a.startswith("s3:") for a in args) else [str(tmp_path)]
    out = run_cli("extract", *paths, *args, "-w", str(tmp_path / "ws"))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
