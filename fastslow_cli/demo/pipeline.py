"""`fastslow demo`: the whole pipeline on the embedded synthetic dataset, end to end.

Each step is the same core call the matching command makes, so the demo shows (and
tests) exactly what a user gets.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastslow_cli.cli.console import err_console, make_progress
from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from fastslow_cli.workspace import Workspace

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


def make_dataset(data_dir: Path, quick: bool) -> Path:
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
    with make_progress() as bar:
        task = bar.add_task("synth dataset", total=config.n_images + config.n_videos)
        captions = generate(data_dir, config, progress=lambda k: bar.advance(task, k))
    return captions


EXAMPLE_QUERIES = (
    "a red circle left of a blue square",
    "a blue square left of a red circle",
    "a green triangle moving up",
)


def _step(title: str, timings: dict[str, float], name: str) -> Any:
    err_console.rule(title)
    return _Timer(timings, name)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.perf_counter() - self.start


def run_demo(workspace: Workspace, out: Path | None = None, quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """synth -> extract -> train fast -> train slow -> distill -> index -> eval -> searches."""
    from fastslow_cli.commands import (
        build_index_command,
        distill_command,
        eval_command,
        search_command,
        train_command,
    )
    from fastslow_cli.features.extract import ExtractOptions, run_extract
    from fastslow_cli.cli.render import render_eval, render_extract_summary, render_results

    timings: dict[str, float] = {}
    data_dir = Path(out) if out is not None else workspace.root / ("demo-data-quick" if quick else "demo-data")
    suffix = "-quick" if quick else ""
    set_name = DEMO_SET + suffix
    fast, slow, distilled, index = f"demo-fast{suffix}", f"demo-slow{suffix}", f"demo-distilled{suffix}", f"demo{suffix}"
    epochs = DEMO_EPOCHS["quick" if quick else "full"]
    ws = workspace.root

    with _step("1/7 synthetic dataset", timings, "synth"):
        captions = make_dataset(data_dir, quick)
    with _step("2/7 extract features", timings, "extract"):
        summary = run_extract([str(data_dir)], workspace, ExtractOptions(set_name=set_name, device=device))
        render_extract_summary(summary)
    with _step("3/7 train the Fast model (dual encoder)", timings, "train fast"):
        train_command("fast", ws, captions, set_name, fast, epochs["fast"], None, None, 0, device)
    with _step("4/7 train the Slow model (cross-attention, bidirectional captioning)", timings, "train slow"):
        train_command("slow", ws, captions, set_name, slow, epochs["slow"], None, None, 0, device)
    with _step("5/7 distil Slow into Fast", timings, "distill"):
        distill_command(ws, captions, set_name, slow, fast, distilled, epochs["distill"], None, None, 0, device)
    with _step("6/7 build the index (HNSW + cached Slow memory)", timings, "index"):
        build_index_command(ws, set_name, distilled, slow, index, DEFAULT_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF, device)
    with _step("7/7 evaluate on the test split", timings, "eval"):
        rows = eval_command(
            ws, captions, "test", set_name, fast, slow, distilled, DEMO_RERANK, None, device, DEMO_QUERIES
        )
        render_eval(rows, "test", err_console)
    err_console.rule("example searches (re-ranked)")
    for results in search_command(ws, list(EXAMPLE_QUERIES), 3, DEMO_RERANK, None, None, index, device):
        render_results(results, err_console)
    total = sum(timings.values())
    err_console.print(
        "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s",
        markup=False,
        highlight=False,
    )
    return {
        "captions": str(captions),
        "feature_set": set_name,
        "extract": summary.to_json(),
        "eval": rows,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
