"""bench_scale.py's extraction rows: `fastslow extract` items/s, local engine vs Ray.

The demo's media (images and clips made by `fastslow_cli.demo.synth`, in the demo's 10:1
ratio) are extracted by fresh `fastslow extract` processes into fresh workspaces: the
local engine with 2 decoder processes, then `--engine ray` (a private local Ray) with 1
and 2 actors. Each configuration also runs on the first few files only, so the fixed cost
(process, imports, Ray start-up, actors' start) and the per-item cost separate:
per item = (wall(N) - wall(few)) / (N - few). Each Ray feature set is then compared with
the local one: rows sorted by id with every column equal (the float16 levels compared as
raw bits), the same parts schema and metadata, the same manifest but for its times and
part list, the same thumbnail files byte for byte, the same errors.
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

FEW = 8  # files in the fixed-cost runs: one Ray task
ENGINES = [("local", 2), ("ray", 1), ("ray", 2)]
MANIFEST_TIMES = ("created", "updated", "parts")


def make_media(folder: Path, items: int | None) -> Path:
    """The demo's media: its full dataset (`items` None) or `items` files, 10 images per clip."""
    from dataclasses import replace

    from fastslow_cli.demo.pipeline import demo_config
    from fastslow_cli.demo.synth import generate

    config = demo_config(quick=False)
    if items is not None:
        videos = max(1, items // 11)
        config = replace(config, n_images=items - videos, n_videos=videos)
    generate(folder, config)
    return folder


def set_contents(set_dir: Path) -> dict[str, Any]:
    """What a feature set holds, in a form `==` compares exactly (see the module docstring)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fastslow_cli.store.parquet import FeatureStore

    parts = sorted((set_dir / "parts").glob("part-*.parquet"))
    table = pq.ParquetDataset(parts).read().sort_by("id")
    rows: dict[str, Any] = {n: table.column(n).to_pylist() for n in table.column_names if not n.startswith("level_")}
    for n in (n for n in table.column_names if n.startswith("level_")):
        flat = pc.list_flatten(table.column(n))
        rows[n] = np.concatenate([c.to_numpy(zero_copy_only=False) for c in flat.chunks]).view(np.uint16).tobytes()
    manifest = {k: v for k, v in json.loads((set_dir / "manifest.json").read_text()).items() if k not in MANIFEST_TIMES}
    manifest["counts"].pop("parts", None)
    return {
        "rows": rows,
        "schema": pq.read_schema(parts[0]).to_string(show_schema_metadata=True),
        "manifest": manifest,
        "thumbs": {p.relative_to(set_dir).as_posix(): p.read_bytes() for p in (set_dir / "thumbs").rglob("*") if p.is_file()},
        "errors": sorted((e["id"], e["reason"], tuple(e["attempts"])) for e in FeatureStore(set_dir).errors()),
    }


def differences(a: Path, b: Path) -> list[str]:
    """The parts of two feature sets that differ (empty: identical)."""
    one, two = set_contents(a), set_contents(b)
    out = [f"rows.{k}" for k in one["rows"] if one["rows"][k] != two["rows"].get(k)]
    return out + [k for k in ("schema", "manifest", "thumbs", "errors") if one[k] != two[k]]


def _extract(media: Path, ws: Path, engine: str, workers: int) -> dict[str, Any]:
    """One `fastslow extract` process; its summary and wall time (process start included)."""
    cmd = [sys.executable, "-m", "fastslow_cli", "extract", str(media), "-w", str(ws), "--engine", engine,
           "--workers", str(workers), "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                   os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.splitlines()[-1])
    return {"wall_s": round(wall, 2), "extract_s": summary["seconds"], "extracted": summary["extracted"],
            "failed": summary["failed"], "stderr_lines": len(proc.stderr.splitlines())}


def run_extract_rows(work: Path, items: int | None) -> dict[str, Any]:
    """Every engine on the same media (and on its first FEW files); rows and the comparison."""
    media = make_media(work / "media", items)
    files = sorted(p for p in media.rglob("*") if p.suffix in (".png", ".mp4"))
    few = work / "few"
    for p in files[:FEW]:
        target = few / p.relative_to(media)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    rows, sets = [], {}
    for engine, workers in ENGINES:
        name = f"{engine}-w{workers}"
        small = _extract(few, work / f"ws-few-{name}", engine, workers)
        big = _extract(media, work / f"ws-{name}", engine, workers)
        sets[name] = work / f"ws-{name}" / "features" / "default"
        per_item = (big["wall_s"] - small["wall_s"]) / max(len(files) - FEW, 1)
        row = {
            "engine": engine, "workers": workers, "items": len(files), **big,
            "items_per_s": round(big["extracted"] / big["wall_s"], 1),
            "fixed_s": small["wall_s"], "per_item_ms": round(1000 * per_item, 2),
            "items_per_s_after_start": round(1 / per_item, 1) if per_item > 0 else None,
        }
        if engine == "ray":
            diff = differences(sets["local-w2"], sets[name])
            row["identical_to_local"] = not diff
            row["differences"] = diff
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"media": {"files": len(files), "images": sum(p.suffix == ".png" for p in files),
                      "clips": sum(p.suffix == ".mp4" for p in files), "full_demo": items is None},
            "rows": rows}


def to_markdown(extract: dict[str, Any]) -> list[str]:
    m = extract["media"]
    what = "the full demo's media" if m["full_demo"] else "the demo's kind of media"
    lines = [
        "",
        f"## Extraction: local engine vs Ray ({what}: {m['files']:,} files, {m['images']:,} PNG images, "
        f"{m['clips']:,} MP4 clips; pixels backbone, 8 frames per clip)",
        "",
        f"Each row is a fresh `fastslow extract --json` process; wall = the whole process (imports, Ray start-up "
        f"and the actors' start included); fixed = the same command on {FEW} files; per item = (wall - fixed) / "
        f"(files - {FEW}). identical = the Ray feature set equals the local one: rows sorted by id with every column "
        "equal (float16 levels as raw bits), same parts schema and metadata, same manifest but for its times and part "
        "list, same thumbnail files byte for byte, same errors.",
        "",
        "| engine | workers | files | wall s | items/s | fixed s | per item ms | items/s after start | identical to local |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in extract["rows"]:
        same = "-" if r["engine"] == "local" else ("yes" if r["identical_to_local"] else f"NO: {', '.join(r['differences'])}")
        after = "-" if r["items_per_s_after_start"] is None else f"{r['items_per_s_after_start']:.0f}"
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r['items']:,} | {r['wall_s']:.1f} | {r['items_per_s']:.0f} | "
            f"{r['fixed_s']:.1f} | {r['per_item_ms']:.2f} | {after} | {same} |"
        )
    return lines
