"""The query path on ONNX Runtime: graphs exported from tiny random models (once per session,
`onnx_models` in conftest) give the torch path's vectors, scores and rankings; a one-shot
search imports no torch; missing, stale and torn graphs fall back to torch with a note (or
are refused with --engine onnx) and are written again by `index build` / `models export`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_pipeline import cli, ok

from fastslow_cli import Workspace
from fastslow_cli.errors import FastslowError
from fastslow_cli.models.files import GRAPH, GRAPH_RECORD, query_graph
from fastslow_cli.search.onnx import OnnxFast, OnnxSlow, load_onnx
from fastslow_cli.search.retrievers import load_native

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

QUERIES = [
    "a dog runs on the beach",
    "a red circle left of a blue square",
    "two cats sleep under a big tree",
    "a green triangle above a yellow star",
    "a dog",
    "a blue square above a red circle and a dog runs on the beach under a big tree " * 3,  # truncated to 32 tokens
    "zebra",  # unknown: [BOS] [UNK] [EOS]
]


def models(onnx_models: dict[str, Any], kind: str) -> tuple[Any, Any]:
    folder = onnx_models["ws"] / "models" / kind
    return load_native(folder, kind, "cpu"), load_onnx(folder, kind, "cpu")


def test_fast_graph_gives_the_torch_vectors_at_every_length(onnx_models: dict[str, Any]) -> None:
    torch_fast, onnx_fast = models(onnx_models, "fast")
    assert isinstance(onnx_fast, OnnxFast) and onnx_fast.dim == torch_fast.dim
    for query in QUERIES:  # lengths 3 .. 32 tokens; the graph was exported at 5
        np.testing.assert_allclose(onnx_fast.encode_texts([query]), torch_fast.encode_texts([query]), atol=1e-5)
    batch = onnx_fast.encode_texts(QUERIES[:4])  # another batch size than the export's (3)
    np.testing.assert_allclose(batch, torch_fast.encode_texts(QUERIES[:4]), atol=1e-5)
    assert onnx_fast.identity == torch_fast.identity  # an index accepts either
    assert onnx_fast.query_words("a zebra") == torch_fast.query_words("a zebra") == [("a", True), ("zebra", False)]


def test_slow_graph_gives_the_torch_scores_on_cached_memories(onnx_models: dict[str, Any]) -> None:
    torch_slow, onnx_slow = models(onnx_models, "slow")
    index = Workspace(onnx_models["ws"]).searcher(engine="torch").index
    memories = index.memories(range(index.count))  # images (16 tokens) and videos (80, 128)
    assert len({m.shape[0] for m in memories}) >= 3
    assert isinstance(onnx_slow, OnnxSlow) and onnx_slow.width == torch_slow.width
    want, got = torch_slow.score(QUERIES, memories), onnx_slow.score(QUERIES, memories)
    assert got.shape == (len(QUERIES), index.count)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert onnx_slow.score([], memories).shape == (0, index.count)


def test_onnx_search_equals_torch_search(onnx_models: dict[str, Any]) -> None:
    ws = Workspace(onnx_models["ws"])
    on_onnx, on_torch = ws.searcher(device="cpu"), ws.searcher(device="cpu", engine="torch")
    assert (on_onnx.engine, on_torch.engine) == ("onnx", "torch")  # auto took ONNX: the graphs are there
    for query in QUERIES:
        for rerank in (0, 20):
            a, b = on_onnx.search(query, k=10, rerank=rerank), on_torch.search(query, k=10, rerank=rerank)
            assert [r.id for r in a] == [r.id for r in b]
            for x, y in zip(a, b):
                assert x.fast_score == pytest.approx(y.fast_score, abs=1e-5)
                assert (x.slow_score is None) == (y.slow_score is None) == (rerank == 0)
                if rerank:
                    assert x.slow_score == pytest.approx(y.slow_score, abs=1e-5)
                assert x.score == pytest.approx(y.score, abs=1e-4)
                assert x.timestamp == y.timestamp
    assert on_onnx.vocabulary_warning("zebra", 5) == on_torch.vocabulary_warning("zebra", 5) is not None


def test_heat_maps_on_the_onnx_engine_come_from_the_same_weights(onnx_models: dict[str, Any]) -> None:
    """The ONNX graph returns scores only: heat maps load the Slow weights on torch once and
    equal the torch engine's (the page and `search --html` offer them on either engine)."""
    ws = Workspace(onnx_models["ws"])
    on_onnx, on_torch = ws.searcher(device="cpu"), ws.searcher(device="cpu", engine="torch")
    assert on_onnx.engine == "onnx" and on_onnx.draws_heatmaps and on_torch.draws_heatmaps
    item = on_torch.search(QUERIES[0], k=1, rerank=5)[0].id
    a, b = on_onnx.heatmap(QUERIES[0], item), on_torch.heatmap(QUERIES[0], item)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)


def _search_in_a_process(ws: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`fastslow search ARGS` in a fresh interpreter; also the heavy modules it imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('MODULES', [m for m in ('torch', 'pandas', 'transformers') if m in sys.modules],"
        " file=sys.stderr))\n"
        f"sys.argv = ['fastslow', 'search', *{list(args)!r}, '--workspace', {str(ws)!r}]\n"
        "from fastslow_cli.cli.app import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    line = next(x for x in out.stderr.splitlines() if x.startswith("MODULES"))
    return out, json.loads(line.split(" ", 1)[1].replace("'", '"'))


def test_one_shot_search_imports_neither_torch_nor_pandas(onnx_models: dict[str, Any]) -> None:
    out, heavy = _search_in_a_process(onnx_models["ws"], "a dog runs on the beach", "--rerank", "20", "--json")
    assert out.returncode == 0, out.stderr
    assert heavy == []
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 10 and all(r["slow_score"] is not None for r in rows)
    assert "note:" not in out.stderr

    out, heavy = _search_in_a_process(onnx_models["ws"], "a dog", "--engine", "torch")
    assert out.returncode == 0 and heavy == ["torch"]  # the check above can fail


@pytest.fixture
def copied(onnx_models: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the session workspace that a test may change (the index keeps its models:
    they are recorded relative to the workspace)."""
    return Path(shutil.copytree(onnx_models["ws"], tmp_path / "ws"))


def test_missing_graph_falls_back_to_torch_with_one_note(copied: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (copied / "models" / "slow" / GRAPH).unlink()
    out = ok(cli(copied, "search", "a dog", "a red circle", "-k", "3", "--rerank", "5", "--json"))
    assert len(out.stdout.splitlines()) == 6
    assert out.stderr.count("note:") == 1
    assert "searching with torch, which starts slower: model slow" in out.stderr
    assert "it has no ONNX graph; `fastslow models export slow` writes it" in out.stderr
    assert "note:" not in ok(cli(copied, "search", "a dog", "-k", "3")).stderr  # no re-ranking: the Slow graph is not needed

    out = cli(copied, "search", "a dog", "--rerank", "5", "--engine", "onnx")
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "--engine onnx: model slow" in out.stderr

    monkeypatch.setenv("FASTSLOW_ONNX_EXPORT", "1")
    ok(cli(copied, "index", "build"))  # an index build gives its models the graphs they lack
    assert query_graph(copied / "models" / "slow") == (copied / "models" / "slow" / GRAPH, None)
    assert Workspace(copied).searcher().engine == "onnx"


def test_stale_and_torn_graphs_are_not_used(copied: Path, index_kit) -> None:
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.store.parquet import FeatureStore

    slow = copied / "models" / "slow"
    graph = slow / GRAPH
    graph.write_bytes(graph.read_bytes()[:-10])  # torn
    assert query_graph(slow) == (None, "its ONNX graph does not match its record (interrupted export?)")
    with pytest.raises(FastslowError, match=r"models/slow: its ONNX graph does not match .* `fastslow models export slow`"):
        load_onnx(slow, "slow")

    fast = copied / "models" / "fast"
    store = FeatureStore(copied / "features" / "default")
    retrained = index_kit.make_models(store, seed=1)[0]  # new weights saved over the model, graph left as it was
    save_model(fast, retrained.model, retrained.tokenizer, {"fingerprint": store.fingerprint(), "set": "default"})
    assert query_graph(fast)[1] == "its ONNX graph was exported from other weights (the model was retrained since)"

    out = ok(cli(copied, "models", "export", "fast", "--json"))  # the fix: even with FASTSLOW_ONNX_EXPORT=0
    assert json.loads(out.stdout)["graph"] == str(fast / GRAPH) and "wrote" in out.stderr
    assert query_graph(fast) == (fast / GRAPH, None)
    record = json.loads((fast / GRAPH_RECORD).read_text())
    assert record["weights_sha256"] == json.loads((fast / "config.json").read_text())["sha256"]["model.safetensors"]
    np.testing.assert_allclose(load_onnx(fast, "fast").encode_texts(["a dog"]), retrained.encode_texts(["a dog"]), atol=1e-5)


def test_engine_and_device_choices(onnx_models: dict[str, Any]) -> None:
    ws = onnx_models["ws"]
    out = cli(ws, "search", "a dog", "--device", "cuda")  # auto: CUDA runs on torch, which says this machine has none
    assert out.returncode == 2 and "no CUDA GPU is visible: use --device cpu" in out.stderr
    out = cli(ws, "search", "a dog", "--device", "cuda", "--engine", "onnx")  # this onnxruntime is the CPU build
    assert out.returncode == 1 and "needs onnxruntime-gpu" in out.stderr and "Traceback" not in out.stderr
    out = cli(ws, "search", "a dog", "--engine", "tensorrt")
    assert out.returncode == 2 and "tensorrt" in out.stderr and "Traceback" not in out.stderr
    out = cli(ws, "models", "export", "no-such-model")
    assert out.returncode == 1 and "no model 'no-such-model'" in out.stderr


def test_the_demo_check_compares_the_engines(onnx_models: dict[str, Any], copied: Path) -> None:
    from fastslow_cli.cli.render import onnx_check_line
    from fastslow_cli.demo.pipeline import engine_check

    check = engine_check(Workspace(onnx_models["ws"]), "default", QUERIES, k=10, rerank=20)
    assert check["ran"] and check["passed"] and check["same_top_k"] == len(QUERIES)
    assert 0 <= check["max_score_diff"] <= 1e-4
    assert onnx_check_line(check).startswith(f"ONNX Runtime vs torch, {len(QUERIES)} test captions, top-10 re-ranked by 20: same answers")

    (copied / "models" / "fast" / GRAPH).unlink()
    check = engine_check(Workspace(copied), "default", QUERIES)
    assert not check["ran"] and "it has no ONNX graph" in check["why"]
    assert onnx_check_line(check).startswith("ONNX check not run: --engine onnx: model fast")
