"""`fastslow index update` and `search` through the CLI when files change, and workspaces
that are moved or copied: tiny random models saved into a real workspace layout, no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_pipeline import cli, ok

from fastslow_cli import Workspace
from fastslow_cli.models.checkpoint import save_model
from fastslow_cli.store.parquet import FeatureStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

QUERY = "a dog runs on the beach"


def save_models(index_kit, ws: Path, store: FeatureStore, seed: int = 0, only: tuple[str, ...] = ("fast", "slow")) -> None:
    """Save small random Fast and Slow models as WORKSPACE/models/fast and /slow."""
    features = {"fingerprint": store.fingerprint(), "set": "default"}
    for retriever in index_kit.make_models(store, seed=seed):
        if retriever.kind in only:
            save_model(ws / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)


def make_workspace(index_kit, tmp_path: Path, count: int = 12, set_name: str = "default") -> tuple[Path, FeatureStore]:
    """WORKSPACE/features/SET (media outside the workspace, in tmp_path/media) and models fast and slow."""
    ws = tmp_path / "ws"
    store = FeatureStore(ws / "features" / set_name)
    store.ensure({"name": "test-backbone"}, index_kit.shapes, 8)
    media = tmp_path / "media"
    media.mkdir()
    index_kit.add_rows(store, media, index_kit.item_specs(count), seed=0)
    save_models(index_kit, ws, store)
    return ws, store


def search(ws: Path, *args: str) -> tuple[list[dict], str]:
    out = ok(cli(ws, "search", QUERY, "--json", *args))
    return [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def test_update_follows_edits_and_deletions(index_kit, tmp_path: Path) -> None:
    ws, store = make_workspace(index_kit, tmp_path)
    ok(cli(ws, "index", "build"))
    media = tmp_path / "media"
    index_kit.edit_item(store, media, "item003.png", like="item000.png")  # edited: now shows what item000 shows
    (media / "item007.png").unlink()
    rows, err = search(ws, "-k", "12", "--rerank", "4")
    assert [r["id"] for r in rows if r["missing"]] == ["item007.png"]  # still returned, but flagged
    assert err.count("1 result(s) point at files that no longer exist") == 1 and "fastslow index update" in err

    out = ok(cli(ws, "index", "update", "--json"))
    report = json.loads(out.stdout)
    assert {k: report[k] for k in ("index", "added", "updated", "removed", "items")} == {
        "index": "default", "added": 0, "updated": 1, "removed": 1, "items": 11
    }
    assert "index 'default': added 0, updated 1, removed 1" in out.stderr

    rows, err = search(ws, "-k", "12")
    scores = {r["id"]: r["fast_score"] for r in rows}
    assert len(rows) == 11 and "item007.png" not in scores and not any(r["missing"] for r in rows)
    assert "no longer exist" not in err
    assert scores["item003.png"] == pytest.approx(scores["item000.png"], abs=1e-5)  # found by its new content

    index_kit.add_rows(store, media, index_kit.item_specs(2, first=12), seed=1)
    report = json.loads(ok(cli(ws, "index", "add", "--json")).stdout)  # the old name still works
    assert (report["added"], report["updated"], report["removed"], report["items"]) == (2, 0, 0, 13)


def test_moved_and_copied_workspaces_use_their_own_models(index_kit, tmp_path: Path) -> None:
    ws, _ = make_workspace(index_kit, tmp_path, count=6)
    ok(cli(ws, "index", "build"))
    manifest = json.loads((ws / "index" / "default" / "manifest.json").read_text())
    assert (manifest["fast"]["path"], manifest["slow"]["path"], manifest["feature_set"]) == (
        "models/fast", "models/slow", "features/default"
    )

    moved = tmp_path / "moved"
    ws.rename(moved)
    rows, _ = search(moved, "-k", "3", "--rerank", "3")
    assert len(rows) == 3 and all(r["slow_score"] is not None for r in rows)

    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    shutil.rmtree(copy / "models" / "fast")
    save_models(index_kit, copy, FeatureStore(copy / "features" / "default"), seed=1, only=("fast",))  # replaced: other weights
    out = cli(copy, "search", QUERY)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        f"the Fast model at {copy}/models/fast was retrained or replaced since index {copy}/index/default was built: "
        "rebuild the index with `fastslow index build --model fast --slow slow`"
    ) in out.stderr
    search(moved, "-k", "3")  # the original is untouched

    ok(cli(copy, "index", "build"))  # the fix the message gives


def test_update_reads_the_feature_set_the_index_was_built_from(index_kit, tmp_path: Path) -> None:
    """Through the Python API: no `set` given, the index's own set (here not 'default') is used."""
    ws_dir, store = make_workspace(index_kit, tmp_path, count=4, set_name="photos")
    ws = Workspace(ws_dir)
    ws.build_index(set="photos", device="cpu")
    index_kit.add_rows(store, tmp_path / "media", index_kit.item_specs(2, first=4), seed=1)
    summary = ws.update_index(device="cpu")
    assert (summary.added, summary.updated, summary.removed, summary.items) == (2, 0, 0, 6)
    assert summary.to_json()["updated"] == 0 and summary.to_json()["removed"] == 0
