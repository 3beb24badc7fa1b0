"""`fastslow demo`: the whole pipeline on the embedded synthetic dataset, end to end.

Each step is the same `Workspace` call the matching command makes, so the demo shows
(and tests) exactly what a user gets. Like the rest of the core it never prints: it
reports through `progress` events, adding `section` (a step begins), `extracted`,
`evaluated` and `searched` (a step's result, for the CLI to render).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastslow_cli.workspace import Progress, Workspace

DEMO_SET = "demo"
DEMO_RERANK = 20
DEMO_QUERIES = 200  # test captions evaluated (all test items are ranked): Slow-only scores every pair
# Epochs per step: sized so the full demo takes about 10 minutes on 2 CPU cores.
DEMO_EPOCHS = {
    "full": {"fast": 15, "slow": 12, "distill": 10},
    "quick": {"fast": 15, "slow": 10, "distill": 6},
}


def demo_config(quick: bool) -> Any:
    """The dataset size: the full demo fits about 10 minutes on 2 cores, --quick one or two."""
    from fastslow_cli.demo.synth import SynthConfig

    if quick:
        return SynthConfig(n_images=600, n_videos=60, seed=0)
    return SynthConfig(seed=0)


def make_dataset(data_dir: Path, quick: bool, progress: Progress | None = None) -> Path:
    """Generate the dataset unless the folder already holds the same one."""
    from fastslow_cli.demo.synth import generate

    config = demo_config(quick)
    captions = data_dir / "captions.jsonl"
    meta = data_dir / "synth.json"
    if captions.exists() and meta.exists():
        try:
            if json.loads(meta.read_text())["config"] == json.loads(json.dumps(asdict(config))):
                return captions
        except (ValueError, KeyError):
            pass
    emit = progress or (lambda _e: None)
    emit({"event": "start", "stage": "synth dataset", "total": config.n_images + config.n_videos})
    return generate(data_dir, config, progress=lambda k: emit({"event": "advance", "stage": "synth dataset", "n": k}))


ONNX_CHECK_QUERIES = 50
ONNX_CHECK_TOLERANCE = 1e-4


def split_captions(captions: Path, count: int) -> list[str]:
    """The first `count` distinct captions of the test split of a captions file."""
    out: list[str] = []
    for line in Path(captions).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("split") == "test" and row["caption"] not in out:
            out.append(row["caption"])
    return out[:count]


def engine_check(workspace: Workspace, index: str, queries: list[str], k: int = 10, rerank: int = DEMO_RERANK) -> dict[str, Any]:
    """Search `queries` through ONNX Runtime and through torch: whether every top-`k` (re-ranked
    by `rerank`) is the same list in the same order, and the largest score difference
    (`score`, `fast_score`, `slow_score`). `ran` is False, with `why`, where the index's
    models have no current graphs (FASTSLOW_ONNX_EXPORT=0 when they were saved)."""
    from fastslow_cli.errors import FastslowError

    try:
        onnx = workspace.searcher(index, device="cpu", engine="onnx")
    except FastslowError as exc:
        return {"ran": False, "why": str(exc), "queries": 0}
    torch = workspace.searcher(index, device="cpu", engine="torch")
    same, worst = 0, 0.0
    for query in queries:
        a, b = onnx.search(query, k=k, rerank=rerank), torch.search(query, k=k, rerank=rerank)
        same += [r.id for r in a] == [r.id for r in b]
        for x, y in zip(a, b):
            pairs = [(x.score, y.score), (x.fast_score, y.fast_score), (x.slow_score or 0.0, y.slow_score or 0.0)]
            worst = max(worst, *(abs(p - q) for p, q in pairs))
    return {
        "ran": True, "queries": len(queries), "k": k, "rerank": rerank, "same_top_k": same,
        "max_score_diff": worst, "passed": same == len(queries) and worst <= ONNX_CHECK_TOLERANCE,
        "tolerance": ONNX_CHECK_TOLERANCE,
    }


EXAMPLE_QUERIES = (
    "a red circle left of a blue square",
    "a blue square left of a red circle",
    "a green triangle moving up",
)


def run_demo(
    workspace: Workspace, out: Path | None = None, quick: bool = False, device: str = "auto", progress: Progress | None = None
) -> dict[str, Any]:
    """synth -> extract -> train fast -> train slow -> distill -> index -> eval -> searches,
    then the ONNX query path checked against torch on 50 test captions (`engine_check`).

    The demo's index becomes the workspace's default, so a plain `fastslow search` works next.
    """
    emit = progress or (lambda _e: None)
    timings: dict[str, float] = {}

    @contextmanager
    def step(title: str, name: str) -> Iterator[None]:
        emit({"event": "section", "title": title})
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start

    data_dir = Path(out) if out is not None else workspace.root / ("demo-data-quick" if quick else "demo-data")
    suffix = "-quick" if quick else ""
    set_name = DEMO_SET + suffix
    fast, slow, distilled, index = f"demo-fast{suffix}", f"demo-slow{suffix}", f"demo-distilled{suffix}", f"demo{suffix}"
    epochs = DEMO_EPOCHS["quick" if quick else "full"]

    with step("1/7 synthetic dataset", "synth"):
        captions = make_dataset(data_dir, quick, progress)
    with step("2/7 extract features", "extract"):
        summary = workspace.extract([data_dir], set_name, device=device, progress=progress)
        emit({"event": "extracted", "summary": summary})
    with step("3/7 train the Fast model (dual encoder)", "train fast"):
        workspace.train("fast", captions, set=set_name, out=fast, epochs=epochs["fast"], device=device, progress=progress)
    with step("4/7 train the Slow model (cross-attention, bidirectional captioning)", "train slow"):
        workspace.train("slow", captions, set=set_name, out=slow, epochs=epochs["slow"], device=device, progress=progress)
    with step("5/7 distil Slow into Fast", "distill"):
        workspace.distill(captions, teacher=slow, student=fast, out=distilled, set=set_name, epochs=epochs["distill"],
                          device=device, progress=progress)
    with step("6/7 build the index (HNSW + cached Slow memory)", "index"):
        workspace.build_index(distilled, slow, set=set_name, name=index, device=device, progress=progress)
        workspace.set_default_index(index)
    with step("7/7 evaluate on the test split", "eval"):
        rows = workspace.evaluate(captions, split="test", set=set_name, fast=fast, slow=slow, distilled=distilled,
                                  rerank=DEMO_RERANK, queries=DEMO_QUERIES, device=device, progress=progress)
        emit({"event": "evaluated", "rows": rows, "split": "test"})
    emit({"event": "section", "title": "example searches (re-ranked)"})
    searcher = workspace.searcher(index, device=device, progress=progress)
    for query in EXAMPLE_QUERIES:
        emit({"event": "searched", "results": searcher.search(query, k=3, rerank=DEMO_RERANK)})
    with step("ONNX Runtime against torch", "onnx check"):
        onnx = engine_check(workspace, index, split_captions(captions, ONNX_CHECK_QUERIES))
        emit({"event": "onnx_checked", "check": onnx})
    return {
        "captions": str(captions),
        "feature_set": set_name,
        "index": index,
        "models": {"fast": fast, "slow": slow, "distilled": distilled},
        "extract": summary.to_json(),
        "eval": rows,
        "onnx_check": onnx,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
