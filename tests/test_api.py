"""The public Python API (`fastslow_cli.Workspace`) end to end on a tiny synthetic set,
its events, its laziness, and `examples/python_api.py` against `fastslow search --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fastslow_cli as fs
from fastslow_cli.demo.synth import SynthConfig, generate

REPO = Path(__file__).parents[1]
QUERY = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Extract, train Fast and Slow, index: every step through the API, events recorded."""
    root = tmp_path_factory.mktemp("api")
    captions = generate(root / "data", SynthConfig(n_images=60, n_videos=6, seed=5))
    ws = fs.Workspace(root / "ws")
    events: dict[str, list[dict[str, Any]]] = {}

    def recorder(step: str) -> Any:
        return lambda e: events.setdefault(step, []).append(e)

    summary = ws.extract([root / "data"], progress=recorder("extract"))
    fast = ws.train("fast", captions, epochs=1, batch_size=16, progress=recorder("train"))
    slow = ws.train("slow", captions, epochs=1, batch_size=16)
    index = ws.build_index("fast", "slow", progress=recorder("index"))
    return {"ws": ws, "captions": captions, "events": events, "summary": summary, "fast": fast, "slow": slow,
            "index": index}


def test_each_step_returns_a_summary(built: dict[str, Any]) -> None:
    assert isinstance(built["summary"], fs.ExtractSummary)
    assert built["summary"].found == built["summary"].extracted == 66
    assert (built["fast"].kind, built["slow"].kind) == ("fast", "slow")
    assert Path(built["fast"].path, "model.safetensors").is_file()
    assert isinstance(built["index"], fs.IndexSummary) and built["index"].items == 66
    assert built["ws"].indexes() == ["default"] and built["ws"].default_index() == "default"


def test_progress_arrives_as_events(built: dict[str, Any]) -> None:
    extract, train, index = (built["events"][k] for k in ("extract", "train", "index"))
    assert extract[0] == {"event": "start", "stage": "extract default", "total": 66}
    assert sum(e["n"] for e in extract if e["event"] == "advance") == 66
    kinds = {e["event"] for e in train}
    assert {"info", "step", "epoch"} <= kinds
    assert sum(e["n"] for e in index if e["event"] == "advance") == 66


def test_searcher_results(built: dict[str, Any]) -> None:
    searcher = built["ws"].searcher()
    hits = searcher.search(QUERY, k=5, rerank=10)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(isinstance(h, fs.Result) and h.slow_score is not None for h in hits)
    assert all(Path(h.path).exists() for h in hits)
    with pytest.raises(fs.UsageError):
        searcher.search("   ")


def test_evaluate(built: dict[str, Any]) -> None:
    rows = built["ws"].evaluate(built["captions"], rerank=5)
    assert [r["method"] for r in rows] == ["fast", "slow", "rerank"]
    assert all(0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100 for r in rows)


def test_a_missing_model_is_a_clear_error(built: dict[str, Any]) -> None:
    with pytest.raises(fs.FastslowError, match="no model 'nomodel'.*fastslow train"):
        built["ws"].build_index("nomodel")


def test_example_script_prints_what_the_cli_prints(built: dict[str, Any]) -> None:
    ws = str(built["ws"].root)
    env = {**os.environ, "FASTSLOW_WORKSPACE": ws}
    api = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), QUERY, "-k", "5", "--rerank", "20"],
                         capture_output=True, text=True, env=env, timeout=300)
    cli = subprocess.run([sys.executable, "-m", "fastslow_cli", "search", QUERY, "-k", "5", "--rerank", "20", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert api.returncode == 0 and cli.returncode == 0, api.stderr + cli.stderr
    assert api.stdout == cli.stdout
    assert len([json.loads(line) for line in api.stdout.splitlines()]) == 5


def test_import_and_workspace_stay_light() -> None:
    code = (
        "import sys, fastslow_cli as fs; ws = fs.Workspace('/nonexistent/ws'); ws.indexes(); "
        "print(sorted(m for m in ('torch', 'pyarrow', 'numpy', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fs.Nope  # noqa: B018


def test_evaluate_several_captions_files_with_a_media_root(built: dict[str, Any], tmp_path: Path) -> None:
    """Captions split over two files in a folder of their own: combined, counted per file."""
    lines = built["captions"].read_text().splitlines()
    images, videos = tmp_path / "ann" / "images.jsonl", tmp_path / "ann" / "videos.jsonl"
    images.parent.mkdir()
    images.write_text("".join(line + "\n" for line in lines if '"images/' in line))
    videos.write_text("".join(line + "\n" for line in lines if '"videos/' in line))
    events: list[dict[str, Any]] = []
    rows = built["ws"].evaluate([images, videos], slow=None, media_root=built["captions"].parent,
                                progress=events.append)
    test = [json.loads(line) for line in lines if json.loads(line)["split"] == "test"]
    assert [r["queries"] for r in rows] == [len(test)]
    files = {e["path"]: e for e in events if e["event"] == "info" and "matched" in e}
    assert list(files) == [str(images), str(videos)]
    assert sum(e["used"]["test"] for e in files.values()) == len(test)
    assert all(e["matched"] == e["captions"] and e["duplicates"] == 0 for e in files.values())
