"""`index build --engine ray` (index/encode_ray.py): the index Ray actors encode equals the local
engine's (items, vectors, frame vectors, Slow memory, search results), sharded or not, and so
does an `index update --engine ray`; an actor's failure is one line and leaves the previous
index; the CLI's options and output.

Tiny random rows and models from conftest's `index_kit`, saved to folders (actors load models
from where the driver did); one local Ray with 2 CPUs (`ray_local`) for the module, and one
CLI run with its own. Each Ray job costs seconds here: keep this file's jobs few.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import file_url
from test_index_cli import save_models
from test_pipeline import cli

from fastslow_cli.errors import FastslowError
from fastslow_cli.index.encode_ray import MIN_CHUNK, RayEncoder, _check_published, _describe, chunk_size
from fastslow_cli.index.folder import CHUNK, SearchIndex, build_index
from fastslow_cli.index.shards import ShardedIndex
from fastslow_cli.search.retrievers import load_native
from fastslow_cli.search.searcher import Searcher
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.store.published import publish
from fastslow_cli.workspace import Workspace

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.usefixtures("one_torch_thread")]

ITEMS = 36
QUERIES = ["a dog runs on the beach", "a red circle left of a blue square", "two cats sleep under a big tree"]


@pytest.fixture(scope="module")
def ws(index_kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace: feature set `default` of 36 items (images and videos), models fast and slow
    saved under WORKSPACE/models, and the local engine's indexes `local` and `local-sharded`
    (2 shards, float16 memory). Tests must not change them."""
    root = tmp_path_factory.mktemp("ray-index")
    ws = root / "ws"
    store = FeatureStore(ws / "features" / "default")
    store.ensure({"name": "test-backbone"}, index_kit.shapes, 8)
    (root / "media").mkdir()
    index_kit.add_rows(store, root / "media", index_kit.item_specs(ITEMS), seed=0)
    save_models(index_kit, ws, store)
    Workspace(ws).build_index(name="local", device="cpu")
    Workspace(ws).build_index(name="local-sharded", device="cpu", shards=2, memory="f16")
    return ws


def assert_same_index(ws: Path, local: str, ray: str, count: int = ITEMS) -> None:
    """Same items (labels, ids, sources), vectors and Slow memory within float tolerance, and
    the same search and re-ranking results."""
    a, b = SearchIndex.open(ws / "index" / local), SearchIndex.open(ws / "index" / ray)
    assert type(a) is type(b) and a.count == b.count == count
    assert a.items == b.items
    labels = range(count)
    shards = list(zip(a.shards, b.shards)) if isinstance(a, ShardedIndex) else [(a, b)]
    for x, y in shards:
        np.testing.assert_allclose(y.ann.vectors(range(y.count)), x.ann.vectors(range(x.count)), atol=1e-5)
        np.testing.assert_allclose(np.asarray(y.frame_vectors), np.asarray(x.frame_vectors), atol=1e-5)
        np.testing.assert_array_equal(y.memory_offsets, x.memory_offsets)
    assert a.memory_dtype == b.memory_dtype
    for m, n in zip(a.memories(labels), b.memories(labels)):
        # Stored memory: float16 rows, or int8 with a per-token scale (one int8 step of slack).
        np.testing.assert_allclose(n.astype(np.float32), m.astype(np.float32), atol=2e-2 if a.memory_dtype == "int8" else 1e-3)
    fast, slow = (load_native(ws / "models" / kind, kind, "cpu") for kind in ("fast", "slow"))
    for query in QUERIES:
        ranked = [[h.id for h in Searcher(ix, fast, slow).search(query, k=10, rerank=20)] for ix in (a, b)]
        assert ranked[0] == ranked[1] and len(ranked[0]) == 10
        fast_only = [[h.id for h in Searcher(ix, fast, None).search(query, k=10)] for ix in (a, b)]
        assert fast_only[0] == fast_only[1]


def test_chunk_size() -> None:
    assert chunk_size(36, 2) == MIN_CHUNK  # tiny sets: a few small tasks
    assert chunk_size(4000, 2) == 500  # 4 tasks per actor
    assert chunk_size(10**8, 2) == chunk_size(10**8, 1000) == CHUNK  # the local engine's memory bound


def test_actor_errors_are_one_line() -> None:
    assert _describe(FastslowError("feature part X is damaged: delete it")) == "feature part X is damaged: delete it"
    said = _describe(ValueError("bad shape\n  at line 3"))
    assert said == "ValueError: bad shape (the same build with --engine local shows the traceback)"


def test_ray_index_equals_local_index(ws: Path, ray_local: Any) -> None:
    events: list[dict[str, Any]] = []
    summary = Workspace(ws).build_index(name="ray", device="cpu", engine="ray", progress=events.append)
    assert summary.items == ITEMS and summary.has_slow
    advances = [e["n"] for e in events if e.get("event") == "advance" and e.get("stage") == "index ray"]
    assert advances == [16, 16, 4]  # progress counts the chunks as they come back
    assert_same_index(ws, "local", "ray")


def test_ray_index_from_the_published_copy_equals_local(ws: Path, ray_local: Any, tmp_path: Path) -> None:
    """Actors read the set from its URL copy (workers without the workspace); a stale copy is refused."""
    store = FeatureStore(ws / "features" / "default")
    url = file_url(tmp_path / "bucket" / "default")
    publish(store, url)
    summary = Workspace(ws).build_index(name="ray-url", device="cpu", engine="ray", features_url=url)
    assert summary.items == ITEMS
    assert_same_index(ws, "local", "ray-url")
    shutil.copytree(store.directory, tmp_path / "changed")  # the set changes after publishing:
    changed = FeatureStore(tmp_path / "changed")
    changed.compact(["item001.png"])
    with pytest.raises(FastslowError, match="is not feature set changed as it is now: publish it again"):
        _check_published(changed, url)


def _broken_fast_model(index_kit, ws: Path, folder: Path) -> None:
    """A Fast model saved for other level shapes (half the channels): it loads, then refuses
    the first chunk it is given."""
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.models.fast import FastConfig, FastModel
    from fastslow_cli.text.tokenizer import TextTokenizer

    store = FeatureStore(ws / "features" / "default")
    tok = TextTokenizer.train(index_kit.captions)
    shapes = [[h, w, c // 2] for h, w, c in store.manifest()["levels"]]
    model = FastModel(FastConfig(level_shapes=shapes, vocab_size=tok.vocab_size, dim=16, width=32, heads=2,
                                 visual_layers=1, text_layers=1))
    save_model(folder, model, tok, {"fingerprint": store.fingerprint(), "set": "default"})


@pytest.mark.parametrize("failure", ["model raises", "workers see another model"])
def test_actor_failure_is_one_line_and_keeps_the_previous_index(
    index_kit, ws: Path, tmp_path: Path, ray_local: Any, failure: str
) -> None:
    store = FeatureStore(ws / "features" / "default")
    directory = tmp_path / "index" / "main"
    shutil.copytree(ws / "index" / "local", directory)
    before = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    folder = tmp_path / "models" / "fast"
    if failure == "model raises":
        _broken_fast_model(index_kit, ws, folder)
        fast = load_native(folder, "fast", "cpu")
        expected = "do not match the model's"
    else:
        shutil.copytree(ws / "models" / "fast", folder)
        fast = load_native(folder, "fast", "cpu")
        shutil.rmtree(folder)
        save_models(index_kit, tmp_path, store, seed=1, only=("fast",))  # other weights, same folder
        expected = f"the Fast model at {folder.resolve()} is not the one the driver loaded"
    started = time.monotonic()
    with pytest.raises(FastslowError) as caught:
        build_index(store, directory, fast, None, encoder=RayEncoder(workers=1))
    message = str(caught.value)
    assert message.startswith("index build --engine ray: Ray worker ") and expected in message
    assert "\n" not in message
    assert time.monotonic() - started < 300  # finished: no retry loop (generous: CI may share the cores)
    assert {p.name: p.read_bytes() for p in sorted(directory.iterdir())} == before
    assert not list(directory.parent.glob(".main.*-*"))  # no half-built folder left
    assert SearchIndex.open(directory).count == ITEMS


def test_ray_sharded_index_equals_local_sharded_index(ws: Path, ray_local: Any) -> None:
    """After the failures above: the same Ray runs the next job (the failed ones were stopped)."""
    events: list[dict[str, Any]] = []
    Workspace(ws).build_index(name="ray-sharded", device="cpu", engine="ray", shards=2, memory="f16", workers=1,
                              progress=events.append)
    advances = [e["n"] for e in events if e.get("event") == "advance"]
    assert sum(advances) == ITEMS and len(advances) >= 3 and max(advances) <= MIN_CHUNK  # one Ray job, chunks per shard
    assert_same_index(ws, "local-sharded", "ray-sharded")


def test_ray_update_equals_local_update(
    index_kit, ws: Path, tmp_path: Path, ray_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`index update --engine ray`: new and changed items encoded on Ray, the rest copied, sharded or not."""
    asked: list[list[int]] = []  # items per group each Ray encoding was given
    run = RayEncoder.__call__

    def spy(self: RayEncoder, store: FeatureStore, entries: Any, groups: Any, fast: Any, slow: Any) -> Any:
        asked.append([len(g) for g in groups])
        return run(self, store, entries, groups, fast, slow)

    monkeypatch.setattr(RayEncoder, "__call__", spy)
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    store = FeatureStore(copy / "features" / "default")
    media = tmp_path / "media"
    media.mkdir()
    index_kit.add_rows(store, media, index_kit.item_specs(6, first=ITEMS), seed=5)  # 6 new items
    index_kit.edit_item(store, media, "item003.png", like="item000.png")  # 1 changed (now at another path)
    for local in ("local", "local-sharded"):
        shutil.copytree(copy / "index" / local, copy / "index" / f"{local}-ray")
        ran = Workspace(copy).update_index(local, device="cpu")
        rayed = Workspace(copy).update_index(f"{local}-ray", device="cpu", engine="ray", workers=1)
        assert (ran.added, ran.updated, ran.removed) == (rayed.added, rayed.updated, rayed.removed) == (6, 1, 0)
        assert_same_index(copy, local, f"{local}-ray", ITEMS + 6)
    assert [sum(groups) for groups in asked] == [7, 7] and len(asked[1]) == 2  # only those 7, once; 2 shards rewritten


def test_cli_usage_errors_and_resources(ws: Path, ray_local: Any) -> None:
    for args, flag in ((["--workers", "2"], "--workers"), (["--address", "auto"], "--address"),
                       (["--gpus-per-worker", "1"], "--gpus-per-worker"), (["--features-url", "s3://b/f"], "--features-url")):
        for command in (["index", "build", "--name", "never"], ["index", "update", "--name", "local"]):
            out = cli(ws, *command, *args)
            assert out.returncode == 2 and flag in out.stderr and "--engine ray" in out.stderr
            assert len(out.stderr.strip().splitlines()) == 1
    out = cli(ws, "index", "build", "--name", "never", "--engine", "ray", "--workers", "0")
    assert out.returncode == 2 and "--workers" in out.stderr
    # What the cluster cannot run at all is refused at once (Ray would wait for it forever).
    for args, why in ((["--gpus-per-worker", "1"], "GPU"), (["--workers", "5"], "use --workers 4")):
        out = cli(ws, "index", "build", "--name", "never", "--engine", "ray", *args)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
        assert out.returncode == 1 and len(errors) == 1 and why in errors[0], out.stderr
    assert not (ws / "index" / "never").exists()


def test_cli_build_with_its_own_local_ray(ws: Path) -> None:
    env = {**os.environ, "FASTSLOW_WORKSPACE": str(ws),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "fastslow_cli", "index", "build", "--name", "ray-cli", "--engine", "ray", "--workers", "1",
         "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]  # clean JSON Lines: nothing else on stdout
    assert len(rows) == 1 and rows[0]["items"] == ITEMS
    noise = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("index ")]
    assert not noise  # fastslow's progress bar and summary only: no Ray log lines or Ray Data bars
    assert_same_index(ws, "local", "ray-cli")
