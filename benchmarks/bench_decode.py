"""Decode throughput of decord vs PyAV on the same clips, measured side by side.

    python benchmarks/bench_decode.py [--clips N] [--out benchmarks/results]

Generates a few real H.264 clips (default 320x240, 5 s, 25 fps, a keyframe every 2 s)
in a temporary folder, then decodes each clip with `media.decode_video_decord` and
`media.decode_video_av` (same sampled frame count, same output size, one thread each, as
in the extract workers), alternating the order every round. Reports sampled frames/s,
source video frames/s and the ratio decord / PyAV, and saves `decode.json` and
`decode.md`. The machine is shared and noisy: read the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from fastslow_cli.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from fastslow_cli.media.decode import decode_video_av, decode_video_decord  # noqa: E402

DECODERS = {"decord": decode_video_decord, "av": decode_video_av}


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


def run(args: argparse.Namespace) -> dict:
    frame_counts = [int(x) for x in args.frames.split(",")]
    with tempfile.TemporaryDirectory(prefix="fastslow-bench-decode-") as tmp:
        clips, source_frames = [], []
        for i in range(args.clips):
            path = Path(tmp) / f"clip{i}.mp4"
            source_frames.append(make_clip(path, args.width, args.height, args.seconds, args.fps, seed=i))
            clips.append(path)
        for fn in DECODERS.values():  # warm-up: imports, first-open costs
            fn(clips[0], args.size, frame_counts[0])

        settings = []
        for n in frame_counts:
            times: dict[str, list[float]] = {name: [] for name in DECODERS}
            delivered = {name: 0 for name in DECODERS}
            diffs = []
            for rnd in range(args.repeats):
                order = list(DECODERS) if rnd % 2 == 0 else list(reversed(DECODERS))
                for clip in clips:
                    outputs = {}
                    for name in order:
                        start = time.perf_counter()
                        outputs[name] = DECODERS[name](clip, args.size, n)
                        times[name].append(time.perf_counter() - start)
                        delivered[name] += len(outputs[name].frames)
                    a, b = outputs["decord"].frames, outputs["av"].frames
                    if a.shape != b.shape:
                        raise SystemExit(f"decoders disagree on {clip.name}: {a.shape} vs {b.shape}")
                    diffs.append(float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))
            per = {}
            for name in DECODERS:
                total = sum(times[name])
                per[name] = {
                    "seconds_total": round(total, 4),
                    "seconds_per_clip_median": round(statistics.median(times[name]), 5),
                    "sampled_frames_per_s": round(delivered[name] / total, 1),
                    "source_frames_per_s": round(sum(source_frames) * args.repeats / total, 1),
                    "clips_per_s": round(len(times[name]) / total, 2),
                }
            settings.append({
                "frames": n,
                "decoders": per,
                "ratio_decord_over_av": round(per["decord"]["sampled_frames_per_s"]
                                              / per["av"]["sampled_frames_per_s"], 2),
                "mean_abs_pixel_diff": round(statistics.mean(diffs), 3),
            })
    return {
        "benchmark": "decode",
        "params": {k: getattr(args, k) for k in
                   ("clips", "width", "height", "seconds", "fps", "size", "repeats")},
        "clip": f"H.264 {args.width}x{args.height}, {args.seconds:g} s @ {args.fps} fps, "
                f"keyframe every {2 * args.fps} frames",
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "decord": __import__("decord").__version__,
            "av": av.__version__,
        },
        "settings": settings,
    }


def to_markdown(report: dict) -> str:
    lines = [
        "# Decode throughput: decord vs PyAV",
        "",
        f"Clips: {report['params']['clips']} x {report['clip']}; output "
        f"{report['params']['size']}x{report['params']['size']} RGB; one thread per decoder; "
        f"{report['params']['repeats']} rounds, order alternated. "
        f"Python {report['machine']['python']}, {report['machine']['cpus']} CPUs, "
        f"decord {report['machine']['decord']}, PyAV {report['machine']['av']}.",
        "",
        "| frames sampled | decoder | sampled frames/s | source frames/s | clips/s | decord / PyAV | mean abs pixel diff |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in report["settings"]:
        for name, r in s["decoders"].items():
            ratio = f"{s['ratio_decord_over_av']:.2f}x" if name == "decord" else ""
            diff = f"{s['mean_abs_pixel_diff']:.2f}" if name == "decord" else ""
            lines.append(f"| {s['frames']} | {name} | {r['sampled_frames_per_s']:.1f} | "
                         f"{r['source_frames_per_s']:.1f} | {r['clips_per_s']:.2f} | {ratio} | {diff} |")
    lines += ["", "Timings are from one run on a shared machine: compare within the table."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--frames", default="8,32", help="comma-separated sampled frame counts")
    parser.add_argument("--size", type=int, default=64, help="output frame side (pixels)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    report = run(args)
    markdown = to_markdown(report)
    atomic_write_json(args.out / "decode.json", report)
    atomic_write_text(args.out / "decode.md", markdown)
    print(markdown)
    print(f"saved {args.out / 'decode.json'} and {args.out / 'decode.md'}")


if __name__ == "__main__":
    main()
