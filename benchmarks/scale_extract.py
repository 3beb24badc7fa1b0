"""bench_scale.py's extraction rows: `fastslow extract` items/s, local engine vs Ray.

The demo's media (images and clips made by `fastslow_cli.demo.synth`, in the demo's 10:1
ratio) are extracted by fresh `fastslow extract` processes into fresh workspaces: the
local engine with 2 decoder processes, then `--engine ray` (a private local Ray) with 1
and 2 actors. Each configuration also runs on the first few files only, so the fixed cost
(process, imports, Ray start-up, actors' start) and the per-item cost separate:
per item = (wall(N) - wall(few)) / (N - few). Each Ray feature set is then compared with
the local one: rows sorted by id with every column equal (the float16 levels compared as
raw bits), the same schema and metadata in the parts (but the names of
the parts a compacted part replaced), the same manifest but for its times and
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
# (engine, workers, input): the media as a path, or as a file:// URL (listed, hashed and fetched
# through pyarrow.fs, as s3:// would be: what reading objects costs beyond the decode).
ENGINES = [("local", 2, "path"), ("ray", 1, "path"), ("ray", 2, "path"), ("local", 2, "url"), ("ray", 2, "url")]
URL_PREFIX = "file://"
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


def set_contents(set_dir: Path, prefix: str = "") -> dict[str, Any]:
    """What a feature set holds, in a form `==` compares exactly (see the module docstring);
    `prefix` (file://) is taken off ids and paths, to compare a set read from URLs with one read from paths."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fastslow_cli.store.parquet import FeatureStore

    parts = sorted((set_dir / "parts").glob("part-*.parquet"))
    table = pq.ParquetDataset(parts).read().sort_by("id")
    rows: dict[str, Any] = {n: table.column(n).to_pylist() for n in table.column_names if not n.startswith("level_")}
    for n in ("id", "path"):
        rows[n] = [v.removeprefix(prefix) for v in rows[n]]
    for n in (n for n in table.column_names if n.startswith("level_")):
        flat = pc.list_flatten(table.column(n))
        rows[n] = np.concatenate([c.to_numpy(zero_copy_only=False) for c in flat.chunks]).view(np.uint16).tobytes()
    manifest = {k: v for k, v in json.loads((set_dir / "manifest.json").read_text()).items() if k not in MANIFEST_TIMES}
    manifest["counts"].pop("parts", None)
    return {
        "rows": rows,
        "schema": {_schema(part) for part in parts},  # every part has the same one
        "manifest": manifest,
        "thumbs": {p.relative_to(set_dir).as_posix(): p.read_bytes() for p in (set_dir / "thumbs").rglob("*") if p.is_file()},
        "errors": sorted((e["id"].removeprefix(prefix), e["reason"], tuple(e["attempts"])) for e in FeatureStore(set_dir).errors()),
    }


def _schema(part: Path) -> tuple[str, tuple[tuple[bytes, bytes], ...]]:
    """A part's columns and metadata, but the names of the parts it replaced (compaction's
    bookkeeping: how many parts a run appended depends on its timing, not on the rows)."""
    import pyarrow.parquet as pq

    from fastslow_cli.store.parquet import REPLACES_KEY

    schema = pq.read_schema(part)
    return schema.remove_metadata().to_string(), tuple(sorted((k, v) for k, v in (schema.metadata or {}).items() if k != REPLACES_KEY))


def differences(a: Path, b: Path, prefix: str = "") -> list[str]:
    """The parts of two feature sets that differ (empty: identical); `prefix` as for `set_contents` of `b`."""
    one, two = set_contents(a), set_contents(b, prefix)
    out = [f"rows.{k}" for k in one["rows"] if one["rows"][k] != two["rows"].get(k)]
    return out + [k for k in ("schema", "manifest", "thumbs", "errors") if one[k] != two[k]]


def driver_cost(set_dir: Path, scratch: Path, flush: int = 64) -> dict[str, float]:
    """What the driver spends per row whichever engine made it, measured on a stored set's
    own rows: unpickle an outcome, write its thumbnails, append parts of `flush` rows
    (zstd Parquet, manifest update). On a cluster this bounds the rate: one driver
    stores at most 1 / (this) items per second, however many workers decode."""
    import pickle

    from fastslow_cli.features.extract import Outcome
    from fastslow_cli.media.discover import MediaFile
    from fastslow_cli.store.parquet import FeatureRow, FeatureStore
    from fastslow_cli.store.thumbs import ThumbnailFiles, entry_key

    source = FeatureStore(set_dir)
    entries, table, manifest = source.entries(), source.load(), source.manifest()
    files = ThumbnailFiles(set_dir)
    blobs = []
    for i, item_id in enumerate(table.ids):
        e, t = entries[item_id], int(table.frames[i])
        row = FeatureRow(id=item_id, path=e.path, kind=e.kind, frames=t, timestamps=list(table.timestamps[i]),
                         size=e.size, mtime_ns=e.mtime_ns, content_hash=e.content_hash,
                         levels=[lv[i, :t] for lv in table.levels])
        thumbs = [files.path(entry_key(e), f).read_bytes() for f in range(files.count(entry_key(e)))]
        item = MediaFile(id=item_id, path=e.path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns)
        blobs.append((entry_key(e), pickle.dumps(Outcome(item, row, thumbs), protocol=pickle.HIGHEST_PROTOCOL)))
    target = FeatureStore(scratch / "features" / "default")
    target.ensure(manifest["backbone"], [tuple(s) for s in manifest["levels"]], manifest["frames"])
    out = ThumbnailFiles(target.directory)
    spent = {"unpickle": 0.0, "thumbnails": 0.0, "append": 0.0}
    pending = []
    for n, (key, blob) in enumerate(blobs, 1):
        t0 = time.perf_counter()
        outcome = pickle.loads(blob)
        t1 = time.perf_counter()
        out.put(key, outcome.thumbnails)
        t2 = time.perf_counter()
        pending.append(outcome.row)
        if len(pending) == flush or n == len(blobs):
            target.append(pending)
            pending = []
        spent["unpickle"] += t1 - t0
        spent["thumbnails"] += t2 - t1
        spent["append"] += time.perf_counter() - t2
    per_item = {f"{k}_ms": round(1000 * v / len(blobs), 3) for k, v in spent.items()}
    per_item["total_ms"] = round(sum(per_item.values()), 3)
    per_item["outcome_kb"] = round(sum(len(b) for _, b in blobs) / len(blobs) / 1024, 1)
    return per_item


def _extract(media: Path, ws: Path, engine: str, workers: int, url: bool = False) -> dict[str, Any]:
    """One `fastslow extract` process; its summary and wall time (process start included)."""
    source = URL_PREFIX + media.resolve().as_posix() if url else str(media)
    cmd = [sys.executable, "-m", "fastslow_cli", "extract", source, "-w", str(ws), "--engine", engine,
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
    for engine, workers, source in ENGINES:
        name = f"{engine}-w{workers}-{source}"
        small = _extract(few, work / f"ws-few-{name}", engine, workers, source == "url")
        big = _extract(media, work / f"ws-{name}", engine, workers, source == "url")
        sets[name] = work / f"ws-{name}" / "features" / "default"
        per_item = (big["wall_s"] - small["wall_s"]) / max(len(files) - FEW, 1)
        row = {
            "engine": engine, "workers": workers, "input": source, "items": len(files), **big,
            "items_per_s": round(big["extracted"] / big["wall_s"], 1),
            "fixed_s": small["wall_s"], "per_item_ms": round(1000 * per_item, 2),
            "items_per_s_after_start": round(1 / per_item, 1) if per_item > 0 else None,
        }
        if name != "local-w2-path":
            diff = differences(sets["local-w2-path"], sets[name], URL_PREFIX if source == "url" else "")
            row["identical_to_local"] = not diff
            row["differences"] = diff
        rows.append(row)
        print(json.dumps(row), flush=True)
    driver = driver_cost(sets["local-w2-path"], work / "driver")
    print(json.dumps({"driver_per_item": driver}), flush=True)
    return {"driver_per_item": driver, "media": {"files": len(files), "images": sum(p.suffix == ".png" for p in files),
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
        "equal (float16 levels as raw bits), same schema and metadata in every part (but the names of the parts a "
        "compacted part replaced: bookkeeping that depends on when rows were appended), same manifest but for its times and part "
        "list, same thumbnail files byte for byte, same errors.",
        "",
        "Input `url`: the same files given as a `file://` URL, so they are listed, hashed and fetched (each "
        "decoder copies its file to a scratch folder) through pyarrow.fs as objects at s3:// would be; their set "
        "is compared with the local one with `file://` taken off ids and paths.",
        "",
        "| engine | workers | input | files | wall s | items/s | fixed s | per item ms | items/s after start | identical to local |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in extract["rows"]:
        first = r["engine"] == "local" and r.get("input", "path") == "path"
        same = "-" if first else ("yes" if r["identical_to_local"] else f"NO: {', '.join(r['differences'])}")
        after = "-" if r["items_per_s_after_start"] is None else f"{r['items_per_s_after_start']:.0f}"
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r.get('input', 'path')} | {r['items']:,} | {r['wall_s']:.1f} | {r['items_per_s']:.0f} | "
            f"{r['fixed_s']:.1f} | {r['per_item_ms']:.2f} | {after} | {same} |"
        )
    d = extract.get("driver_per_item")
    if d:
        lines += [
            "",
            f"The driver's own cost per row, whichever engine made it (measured on the local set's rows, "
            f"outcomes of {d['outcome_kb']:.0f} KB on average): unpickle {d['unpickle_ms']:.3f} ms, thumbnails "
            f"{d['thumbnails_ms']:.3f} ms, Parquet append in parts of 64 {d['append_ms']:.3f} ms; total "
            f"{d['total_ms']:.2f} ms, so one driver stores at most ~{1000 / d['total_ms']:,.0f} items/s.",
        ]
    return lines
