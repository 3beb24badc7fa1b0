"""One-shot `fastslow search` from the shell: ONNX Runtime path against the torch path.

Each row is a fresh process, timed from start to exit (what a person at a shell waits
for): `fastslow --help`, `search QUERY` and `search QUERY --rerank 20` with `--engine onnx`
and `--engine torch`, and `python -c "import X"` for the modules on the query path. Rows
are interleaved round by round (one run of each per round) so load on the shared machine
falls on all of them alike; the report gives medians and the torch/ONNX ratios. One more
ONNX run records which heavy modules the process imported (torch must not be among them).

The workspace is `--workspace` (the demo's: `fastslow demo` builds it, its index becomes
the default); without one, `--quick` builds a tiny one with random models (a smoke run:
its times say nothing about a real index).
"""

from __future__ import annotations

import common  # noqa: I001 - first: sets the BLAS threads before numpy loads

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUERY = "a red circle left of a blue square"
MODULES = ("numpy", "pyarrow", "hnswlib", "tokenizers", "onnxruntime", "pandas", "torch")
HEAVY = ("torch", "pandas", "transformers")
RERANK = 20


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.fspath(common.ROOT)}


def _timed(argv: list[str]) -> float:
    """Wall seconds of one process, start to exit; a failure stops the benchmark with its stderr."""
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=600, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def _rows(workspace: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "fastslow_cli"]
    search = [*cli, "search", QUERY, "--workspace", os.fspath(workspace)]
    rows = {"fastslow --help": [*cli, "--help"]}
    for engine in ("onnx", "torch"):
        rows[f"search, {engine}"] = [*search, "--engine", engine]
        rows[f"search --rerank {RERANK}, {engine}"] = [*search, "--rerank", str(RERANK), "--engine", engine]
    rows["python (no import)"] = [sys.executable, "-c", "pass"]
    for module in MODULES:
        rows[f"import {module}"] = [sys.executable, "-c", f"import {module}"]
    return rows


def heavy_imports(workspace: Path) -> list[str]:
    """The heavy modules a one-shot ONNX `search --rerank 20` imported, read at its exit."""
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print('HEAVY=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))\n"
        f"sys.argv = ['fastslow', 'search', {QUERY!r}, '--rerank', '{RERANK}', '--engine', 'onnx', '--workspace', {os.fspath(workspace)!r}]\n"
        "from fastslow_cli.cli.app import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600, check=False)
    line = next((x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the ONNX search failed:\n{proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("HEAVY="))


def tiny_workspace(root: Path) -> Path:
    """A workspace with 60 random items, random tiny Fast and Slow models (with their ONNX
    graphs) and an index: enough for a smoke run."""
    import numpy as np
    import torch

    from fastslow_cli import Workspace
    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.models.export import export_query_graph
    from fastslow_cli.models.fast import FastConfig, FastModel
    from fastslow_cli.models.slow import SlowConfig, SlowModel
    from fastslow_cli.store.parquet import FeatureRow, FeatureStore
    from fastslow_cli.text.tokenizer import TextTokenizer

    ws, media = root / "ws", root / "media"
    media.mkdir(parents=True)
    shapes = [(4, 4, 12), (2, 2, 24)]
    store = FeatureStore(ws / "features" / "default")
    store.ensure({"name": "random"}, shapes, 4)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        frames = 1 if i % 3 else 3
        path = media / f"item{i:03d}.{'png' if frames == 1 else 'mp4'}"
        path.write_bytes(path.name.encode())
        rows.append(FeatureRow(
            id=path.name, path=os.fspath(path), kind="image" if frames == 1 else "video", frames=frames,
            timestamps=[0.5 * t for t in range(frames)], size=path.stat().st_size, mtime_ns=path.stat().st_mtime_ns,
            content_hash=path.name, levels=[rng.standard_normal((frames, *s)).astype(np.float16) for s in shapes],
        ))
    store.append(rows)
    torch.manual_seed(0)
    tok = TextTokenizer.train([QUERY, "a dog runs on the beach"])
    levels = [list(s) for s in shapes]
    features = {"fingerprint": store.fingerprint(), "set": "default"}
    for name, model in (
        ("fast", FastModel(FastConfig(level_shapes=levels, vocab_size=tok.vocab_size, dim=16, width=32, heads=2,
                                      visual_layers=1, text_layers=1))),
        ("slow", SlowModel(SlowConfig(level_shapes=levels, vocab_size=tok.vocab_size, width=32, heads=2, coarse_layers=1,
                                      refine_layers=1, decoder_layers=1, finest_level=0))),
    ):
        export_query_graph(save_model(ws / "models" / name, model, tok, features), model)
    Workspace(ws).build_index(device="cpu")
    return ws


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch

    info = common.machine(torch=torch.__version__, onnxruntime=onnxruntime.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace or tiny_workspace(Path(tmp))
        index = json.loads(subprocess.run(
            [sys.executable, "-m", "fastslow_cli", "index", "info", "--json", "--workspace", os.fspath(workspace)],
            capture_output=True, text=True, env=_env(), check=True,
        ).stdout)
        rows = _rows(workspace)
        times: dict[str, list[float]] = {name: [] for name in rows}
        if not args.quick:  # warm the page cache: every row then reads the files warm
            _timed(rows[f"search --rerank {RERANK}, onnx"])
            _timed(rows[f"search --rerank {RERANK}, torch"])
        for _ in range(args.runs):
            for name, argv in rows.items():
                times[name].append(_timed(argv))
        heavy = heavy_imports(workspace)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["python (no import)"]
    ratios = {
        "search": median["search, torch"] / median["search, onnx"],
        f"search --rerank {RERANK}": median[f"search --rerank {RERANK}, torch"] / median[f"search --rerank {RERANK}, onnx"],
    }
    info["load_avg_at_end"] = common.load_average()
    return {
        "quick": args.quick,
        "workspace": "tiny random (smoke run)" if args.workspace is None else os.fspath(args.workspace),
        "index": {k: index.get(k) for k in ("name", "count", "images", "videos")},
        "query": QUERY,
        "runs": args.runs,
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "import_seconds": {m: round(median[f"import {m}"] - base, 3) for m in MODULES},
        "torch_over_onnx": {k: round(v, 2) for k, v in ratios.items()},
        "onnx_search_heavy_imports": heavy,
        "machine": info,
    }


def markdown(report: dict[str, Any]) -> str:
    med, ratio = report["seconds_median"], report["torch_over_onnx"]
    index = report["index"]
    lines = [
        "# One-shot `fastslow search`: ONNX Runtime vs torch",
        "",
        f"Index `{index['name']}` ({index['count']} items: {index['images']} images, {index['videos']} videos), "
        f"query \"{report['query']}\"; each figure is the median of {report['runs']} fresh processes "
        "(start to exit), rows interleaved. " + common.SHARED_NOTE,
        "",
        "| command | ONNX Runtime (s) | torch (s) | torch / ONNX |",
        "| --- | ---: | ---: | ---: |",
    ]
    for what in ("search", f"search --rerank {RERANK}"):
        lines.append(f"| `{what}` | {med[what + ', onnx']:.2f} | {med[what + ', torch']:.2f} | {ratio[what]:.1f}x |")
    lines += [
        f"| `fastslow --help` | {med['fastslow --help']:.2f} | | |",
        "",
        f"Heavy modules the ONNX `search --rerank {RERANK}` imported: "
        + (", ".join(report["onnx_search_heavy_imports"]) or "none (no torch, no pandas)") + ".",
        "",
        f"| import (beyond `python -c pass`, {med['python (no import)']:.2f} s) | seconds |",
        "| --- | ---: |",
        *(f"| `{m}` | {s:.2f} |" for m, s in report["import_seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_output_args(parser, "a smoke run: 1 round (a tiny random workspace unless --workspace)")
    parser.add_argument("--workspace", type=Path, help="workspace whose default index is searched (e.g. the demo's)")
    parser.add_argument("--runs", type=int, help="rounds of the interleaved timing (default 7, --quick 1)")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 7)
    if args.workspace is None and not args.quick:
        parser.error("--workspace is needed (the demo's), except for a --quick smoke run")
    report = run(args)
    common.save(args.out, "cli", report, markdown(report))


if __name__ == "__main__":
    main()
