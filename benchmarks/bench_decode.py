"""Decode throughput of decord vs PyAV, and extract throughput with 1 vs 2 decode workers.

    python benchmarks/bench_decode.py [--quick] [--out DIR]

1. Decoders, side by side: real H.264 clips (default 320x240, 25 fps, a keyframe every
   2 s) are generated in a temporary folder: short ones (5 s, 125 frames) and long ones
   (16 s, 400 frames: at least `media.decode.AV_SEEK_MIN_FRAMES`, so PyAV takes its
   seek-per-sample path). Each clip is decoded with `decode_video_decord` and
   `decode_video_av` (same sampled frame count, same output size, one thread each, as in
   the extract workers), alternating the order every round; long clips are also decoded
   by PyAV's decode-every-frame pass (its fallback, and what it did before seeking), to
   show what the seek path buys.
2. Extract, end to end: `Workspace.extract` (`features.extract.run_extract`: discover,
   hash, decode in the `media.pool.DecodePool` worker processes, pixel backbone, Parquet) on the same files
   with `workers=1` and `workers=2`, alternating, a fresh feature set each run: the demo's
   synthetic images and clips (`demo.synth.generate`), and copies of the short clips above.

Saves `decode.json` and `decode.md`; about a minute on 2 shared cores. The machine is
shared and noisy: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import common  # noqa: I001 - first: sets the BLAS threads before numpy loads

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from fastslow_cli import Workspace
from fastslow_cli.demo.synth import SynthConfig, generate
from fastslow_cli.features.extract import ExtractOptions
from fastslow_cli.media.decode import (
    AV_SEEK_MIN_FRAMES,
    Decoded,
    _av_declared_frames,
    _av_grab,
    _av_pass,
    decode_video_av,
    decode_video_decord,
    sample_indices,
)


def decode_every_frame(path: Path, size: int, frames: int) -> Decoded:
    """PyAV without seeking: one pass decoding every frame, keeping the sampled ones."""
    grab = functools.partial(_av_grab, size=size, thumbnail=0)
    picked, _ = _av_pass(path, grab, sample_indices(_av_declared_frames(path), frames))
    return Decoded(frames=np.stack([f for _, f, _ in picked]), timestamps=[t for t, _, _ in picked], decoder="av", requested=frames, kind="video")


DecodeFn = Callable[[Path, int, int], Decoded]
DECODERS: dict[str, DecodeFn] = {"decord": decode_video_decord, "av": decode_video_av}
LONG_DECODERS: dict[str, DecodeFn] = {**DECODERS, "av_every_frame": decode_every_frame}
FULL = {"clips": 3, "long_clips": 2, "repeats": 5, "extract_images": 400, "extract_videos": 100, "extract_copies": 8, "extract_repeats": 2}
QUICK = {"clips": 1, "long_clips": 1, "repeats": 1, "extract_images": 8, "extract_videos": 4, "extract_copies": 2, "extract_repeats": 1}


def make_clip(path: Path, width: int, height: int, seconds: float, fps: int, seed: int) -> int:
    """A textured scene panning and brightening over time, so every frame costs real
    decoding work. Returns the number of frames written."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, axis=1)) // 2).astype(np.uint8)
    count = int(seconds * fps)
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(count):
            shift = int(i * width / count)
            pixels = texture[:, shift : shift + width].astype(np.int16)
            pixels += int(60 * np.sin(2 * np.pi * i / count))
            frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return count


# ----------------------------------------------------------------------------- decoders


def decode_case(case: str, clips: list[Path], source_frames: list[int], decoders: dict[str, DecodeFn], args: argparse.Namespace) -> list[dict]:
    """Every decoder on every clip, order alternated each round; one row per sampled frame count."""
    for fn in decoders.values():  # warm-up: imports, first-open costs
        fn(clips[0], args.size, args.frames[0])
    settings = []
    for n in args.frames:
        times: dict[str, list[float]] = {name: [] for name in decoders}
        delivered = dict.fromkeys(decoders, 0)
        diffs = []
        for rnd in range(args.repeats):
            order = list(decoders) if rnd % 2 == 0 else list(reversed(decoders))
            for clip in clips:
                outputs = {}
                for name in order:
                    start = time.perf_counter()
                    outputs[name] = decoders[name](clip, args.size, n)
                    times[name].append(time.perf_counter() - start)
                    delivered[name] += len(outputs[name].frames)
                a, b = outputs["decord"].frames, outputs["av"].frames
                if a.shape != b.shape:
                    raise SystemExit(f"decoders disagree on {clip.name}: {a.shape} vs {b.shape}")
                diffs.append(float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))
        per = {}
        for name in decoders:
            total = sum(times[name])
            per[name] = {
                "seconds_total": round(total, 4),
                "seconds_per_clip_median": round(statistics.median(times[name]), 5),
                "sampled_frames_per_s": round(delivered[name] / total, 1),
                "source_frames_per_s": round(sum(source_frames) * args.repeats / total, 1),
                "clips_per_s": round(len(times[name]) / total, 2),
            }
        av_rate = per["av"]["sampled_frames_per_s"]
        settings.append({
            "case": case,
            "clip_frames": source_frames[0],
            "av_seek_path": source_frames[0] >= AV_SEEK_MIN_FRAMES,
            "frames": n,
            "decoders": per,
            "ratio_over_av": {name: round(r["sampled_frames_per_s"] / av_rate, 2) for name, r in per.items() if name != "av"},
            "mean_abs_pixel_diff_decord_av": round(statistics.mean(diffs), 3),
        })
    return settings


def make_clips(folder: Path, count: int, seconds: float, args: argparse.Namespace, seed: int) -> tuple[list[Path], list[int]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, frames = [], []
    for i in range(count):
        path = folder / f"clip{i}.mp4"
        frames.append(make_clip(path, args.width, args.height, seconds, args.fps, seed=seed + i))
        paths.append(path)
    return paths, frames


# ----------------------------------------------------------------------------- extract


def extract_rate(folder: Path, workspace: Workspace, set_name: str, workers: int) -> float:
    """Items per second of one extract of `folder` into a fresh feature set."""
    summary = workspace.extract([folder], set=set_name, workers=workers, device="cpu")
    if summary.failed or not summary.extracted:
        raise SystemExit(f"extract of {folder} failed: {summary.failed[:1] or 'no items extracted'}")
    return summary.extracted / summary.seconds


def extract_throughput(tmp: Path, short_clips: list[Path], args: argparse.Namespace) -> list[dict]:
    """Items/s of `Workspace.extract` with 1 and 2 decode workers, alternating, on three file sets."""
    generate(tmp / "synth", SynthConfig(n_images=args.extract_images, n_videos=args.extract_videos, seed=0))
    copies = tmp / "clips"
    copies.mkdir()
    for i in range(args.extract_copies):
        for clip in short_clips:  # real copies: discovery counts a hard-linked file once
            shutil.copyfile(clip, copies / f"{clip.stem}-{i}.mp4")
    sets = {
        "synthetic images": (tmp / "synth" / "images", "64x64 PNG"),
        "synthetic clips": (tmp / "synth" / "videos", "64x64 H.264, 16 frames"),
        "clips": (copies, f"H.264 {args.width}x{args.height}, {args.seconds:g} s @ {args.fps} fps"),
    }
    workspace = Workspace(tmp / "workspace")
    extract_rate(tmp / "synth" / "videos", workspace, "warm-up", 2)  # start the fork server, page cache
    rows = []
    for name, (folder, what) in sets.items():
        rates: dict[int, list[float]] = {1: [], 2: []}
        for rnd in range(args.extract_repeats):
            for workers in (1, 2) if rnd % 2 == 0 else (2, 1):
                rates[workers].append(extract_rate(folder, workspace, f"{name.replace(' ', '-')}-w{workers}-r{rnd}", workers))
        median = {w: statistics.median(r) for w, r in rates.items()}
        rows.append({
            "files": name,
            "what": what,
            "items": len(list(folder.iterdir())),
            "items_per_s": {str(w): round(v, 1) for w, v in median.items()},
            "ratio_2_over_1": round(median[2] / median[1], 2),
        })
    return rows


# ----------------------------------------------------------------------------- report


def run(args: argparse.Namespace) -> dict:
    info = common.machine(decord=__import__("decord").__version__, av=av.__version__)
    with tempfile.TemporaryDirectory(prefix="fastslow-bench-decode-") as tmp:
        short, short_frames = make_clips(Path(tmp) / "short", args.clips, args.seconds, args, seed=0)
        long, long_frames = make_clips(Path(tmp) / "long", args.long_clips, args.long_seconds, args, seed=100)
        settings = decode_case("short", short, short_frames, DECODERS, args) + decode_case("long", long, long_frames, LONG_DECODERS, args)
        extract = extract_throughput(Path(tmp) / "extract", short, args)
    info["load_avg_at_end"] = common.load_average()
    return {
        "benchmark": "decode",
        "script": "benchmarks/bench_decode.py",
        "quick": args.quick,
        "params": {k: getattr(args, k) for k in
                   ("clips", "long_clips", "width", "height", "seconds", "long_seconds", "fps", "size", "frames", "repeats",
                    "extract_images", "extract_videos", "extract_copies", "extract_repeats")},
        "av_seek_min_frames": AV_SEEK_MIN_FRAMES,
        "extract_frames_per_video": ExtractOptions().frames,
        "machine": info,
        "settings": settings,
        "extract": extract,
    }


def to_markdown(report: dict) -> str:
    p, m = report["params"], report["machine"]
    lines = [
        "# Decode and extract throughput", "",
        f"Produced by `{report['script']}`" + (" (quick run)" if report["quick"] else "") + ". "
        f"Python {m['python']}, {m['cpus']} CPUs, decord {m['decord']}, PyAV {m['av']} "
        f"(load average {m['load_avg_at_start'][0]} at the start, {m['load_avg_at_end'][0]} at the end).",
        "", f"**{m['shared_machine']}**",
        "", "## Decoders: decord vs PyAV, same clips", "",
        f"H.264 {p['width']}x{p['height']} @ {p['fps']} fps, keyframe every {2 * p['fps']} frames: {p['clips']} short clips "
        f"({p['seconds']:g} s) and {p['long_clips']} long ones ({p['long_seconds']:g} s; PyAV seeks to each sample in clips of "
        f"{report['av_seek_min_frames']}+ frames). Output {p['size']}x{p['size']} RGB; one thread per decoder; "
        f"{p['repeats']} rounds, order alternated. `av_every_frame`: PyAV decoding every frame (its path for shorter clips, "
        "and its fallback when seeking fails).", "",
        "| clips | frames sampled | decoder | sampled frames/s | source frames/s | clips/s | vs PyAV | mean abs pixel diff decord/PyAV |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in report["settings"]:
        label = f"{s['case']} ({s['clip_frames']} frames{', PyAV seeks' if s['av_seek_path'] else ''})"
        for name, r in s["decoders"].items():
            ratio = f"{s['ratio_over_av'][name]:.2f}x" if name in s["ratio_over_av"] else "1.00x"
            diff = f"{s['mean_abs_pixel_diff_decord_av']:.2f}" if name == "decord" else ""
            lines.append(f"| {label} | {s['frames']} | {name} | {r['sampled_frames_per_s']:.1f} | "
                         f"{r['source_frames_per_s']:.1f} | {r['clips_per_s']:.2f} | {ratio} | {diff} |")
    lines += [
        "", "## Extract: 1 vs 2 decode workers, same files", "",
        f"`Workspace.extract` end to end ({report['extract_frames_per_video']} frames per video, pixel backbone, decoder auto), "
        f"a fresh feature set per run, worker counts alternated, median of {p['extract_repeats']} run(s) each. "
        "With 2 cores shared with other processes, the second worker can only help as much as a core is free.", "",
        "| files | items | 1 worker items/s | 2 workers items/s | 2 / 1 |", "|---|---:|---:|---:|---:|",
    ]
    for r in report["extract"]:
        lines.append(f"| {r['files']} ({r['what']}) | {r['items']} | {r['items_per_s']['1']:.1f} | {r['items_per_s']['2']:.1f} | {r['ratio_2_over_1']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_output_args(parser, "smoke run: one clip of each length, one round, a few files to extract")
    parser.add_argument("--clips", type=int, help="short clips (default 3)")
    parser.add_argument("--long-clips", type=int, help="long clips (default 2)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the short clips")
    parser.add_argument("--long-seconds", type=float, default=16.0, help="length of the long clips (needs 300+ frames to seek)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32], help="sampled frame counts")
    parser.add_argument("--size", type=int, default=64, help="output frame side (pixels)")
    parser.add_argument("--repeats", type=int, help="decode rounds (default 5)")
    parser.add_argument("--extract-images", type=int, help="synthetic images to extract (default 400)")
    parser.add_argument("--extract-videos", type=int, help="synthetic clips to extract (default 100)")
    parser.add_argument("--extract-copies", type=int, help="copies of each short clip to extract (default 8)")
    parser.add_argument("--extract-repeats", type=int, help="runs per worker count (default 2)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    report = run(args)
    common.save(args.out, "decode", report, to_markdown(report))


if __name__ == "__main__":
    main()
