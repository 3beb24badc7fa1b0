"""Extract time with and without thumbnails, and the thumbnails' bytes per item.

`Workspace.extract` of the demo's synthetic media (`demo/synth.py`: 64 px PNG images and
MP4 clips) into a fresh feature set per run, `thumbnails=True` and `False` alternated
(the order swapped every round), median seconds of each. Thumbnails are encoded in the
decode workers from the frames they already decoded, so the ratio is the cost of JPEG
encoding and of writing one small file per frame.

    python benchmarks/bench_thumbs.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import common  # first of the project's imports: sets the BLAS threads before numpy loads

from fastslow_cli.demo.synth import SynthConfig, generate
from fastslow_cli.store.thumbs import FOLDER
from fastslow_cli.workspace import Workspace

FULL = {"images": 400, "videos": 40, "repeats": 5}
QUICK = {"images": 12, "videos": 3, "repeats": 1}


def run_once(media: Path, workspace: Workspace, set_name: str, thumbnails: bool, workers: int) -> float:
    summary = workspace.extract([media], set=set_name, workers=workers, device="cpu", thumbnails=thumbnails)
    if summary.failed or not summary.extracted:
        raise SystemExit(f"extract of {media} failed: {summary.failed[:1] or 'no items extracted'}")
    return summary.seconds


def thumb_bytes(workspace: Workspace, set_name: str) -> dict[str, float]:
    """Total, per item and per file of the thumbnails of one set."""
    files = list((workspace.features_dir(set_name) / FOLDER).rglob("*.jpg"))
    items = {f.name.rsplit("-", 1)[0] for f in files}
    total = sum(f.stat().st_size for f in files)
    return {"files": len(files), "items": len(items), "bytes": total,
            "bytes_per_item": round(total / max(1, len(items)), 1), "bytes_per_file": round(total / max(1, len(files)), 1)}


def run(args: argparse.Namespace) -> dict:
    sizes = {**(QUICK if args.quick else FULL), **{k: v for k, v in vars(args).items() if k in FULL and v is not None}}
    machine = common.machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synth", SynthConfig(n_images=sizes["images"], n_videos=sizes["videos"], seed=0))
        workspace = Workspace(root / "ws")
        rows = []
        for name in ("images", "videos"):
            media = root / "synth" / name
            run_once(media, workspace, f"warm-up-{name}", True, args.workers)  # fork server, page cache
            seconds: dict[bool, list[float]] = {True: [], False: []}
            last = ""
            for rnd in range(sizes["repeats"]):
                for thumbs in ((True, False) if rnd % 2 == 0 else (False, True)):
                    set_name = f"{name}-{'thumbs' if thumbs else 'plain'}-{rnd}"
                    seconds[thumbs].append(run_once(media, workspace, set_name, thumbs, args.workers))
                    if thumbs:
                        last = set_name
            with_t, without = statistics.median(seconds[True]), statistics.median(seconds[False])
            rows.append({
                "files": f"synthetic {name}",
                "seconds_with": round(with_t, 3), "seconds_without": round(without, 3),
                "ratio_with_over_without": round(with_t / without, 3),
                "runs": {"with": seconds[True], "without": seconds[False]},
                "thumbnails": thumb_bytes(workspace, last),
            })
    return {
        "quick": args.quick,
        "params": {**sizes, "workers": args.workers, "frames_per_video": 8, "backbone": "pixels (64 px)"},
        "machine": {**machine, "load_avg_at_end": common.load_average()},
        "rows": rows,
    }


def to_markdown(report: dict) -> str:
    p = report["params"]
    setting = (
        f"`Workspace.extract` of the demo's synthetic media ({p['images']} images, {p['videos']} clips, "
        f"{p['frames_per_video']} frames per clip, {p['backbone']}, {p['workers']} decode workers), a fresh feature set "
        f"per run, with and without thumbnails alternated, median of {p['repeats']} run(s) each."
    )
    lines = [
        "# Extract with and without thumbnails", "",
        setting, "",
        report["machine"]["shared_machine"], "",
        "| files | s with | s without | ratio | thumbnail files | bytes per item | bytes per file |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        t = r["thumbnails"]
        lines.append(f"| {r['files']} | {r['seconds_with']} | {r['seconds_without']} | {r['ratio_with_over_without']} "
                     f"| {t['files']} | {t['bytes_per_item']} | {t['bytes_per_file']} |")
    lines += ["", f"Load average at start {report['machine']['load_avg_at_start']}, at end {report['machine']['load_avg_at_end']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_output_args(parser, "smoke run: a few files, one round")
    parser.add_argument("--images", type=int, help=f"synthetic images (default {FULL['images']})")
    parser.add_argument("--videos", type=int, help=f"synthetic clips (default {FULL['videos']})")
    parser.add_argument("--repeats", type=int, help=f"runs of each setting (default {FULL['repeats']})")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    report = run(args)
    common.save(args.out, "thumbs", report, to_markdown(report))


if __name__ == "__main__":
    main()
