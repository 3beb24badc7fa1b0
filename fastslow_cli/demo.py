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

from fastslow_cli.console import err_console, make_progress
from fastslow_cli.workspace import Workspace

DEMO_SET = "demo"


def demo_config(quick: bool) -> Any:
    """The dataset size: the full demo fits about 10 minutes on 2 cores, --quick one or two."""
    from fastslow_cli.synth import SynthConfig

    if quick:
        return SynthConfig(n_images=600, n_videos=60, seed=0)
    return SynthConfig(seed=0)


def make_dataset(data_dir: Path, quick: bool) -> Path:
    """Generate the dataset unless the folder already holds the same one."""
    from fastslow_cli.synth import generate

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


def run_demo(workspace: Workspace, out: Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Run every available step and return a JSON-able summary."""
    from fastslow_cli.extract import ExtractOptions, run_extract
    from fastslow_cli.render import render_extract_summary

    timings: dict[str, float] = {}
    data_dir = Path(out) if out is not None else workspace.root / ("demo-data-quick" if quick else "demo-data")
    set_name = DEMO_SET + ("-quick" if quick else "")

    t0 = time.perf_counter()
    err_console.rule("1. synthetic dataset")
    captions = make_dataset(data_dir, quick)
    timings["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    err_console.rule("2. extract features")
    summary = run_extract([str(data_dir)], workspace, ExtractOptions(set_name=set_name))
    render_extract_summary(summary)
    timings["extract"] = time.perf_counter() - t0

    return {
        "captions": str(captions),
        "feature_set": set_name,
        "extract": summary.to_json(),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
