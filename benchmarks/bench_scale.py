"""What an index of N items costs on one machine, unsharded and sharded: build time, peak
RSS, disk, query p50 (Fast, Fast+rerank(20)) and recall@10 against exact search.

    python benchmarks/bench_scale.py [--sizes 100000 1000000] [--shards 1 4] [--quick] [--out DIR]
    python benchmarks/bench_scale.py --no-index --extract-items 400 [--out DIR]

- Contents are synthetic, sized like the defaults (read from `FastConfig()` and
  `SlowConfig()` through bench_search's `default_models`): clustered unit Fast vectors of
  the default dim and, per item, a Slow memory of the default image shape (64 tokens x
  width), cycled from a pool of random rows, stored as the shipped default `--memory`.
- Each (N, shards) runs in two fresh processes (so peak RSS is theirs alone): the build
  child draws the vectors, writes a real index folder with the writer `fastslow index
  build` uses (`write_index`, or `write_sharded_index` with items routed by `shard_of`),
  at the shipped HNSW defaults unless `--ef-construction` says otherwise, and computes the
  exact top-10 of the queries twice: numpy brute force and faiss `IndexFlatIP` (the
  outside reference, in the `bench` extra); the search child opens the index as
  `fastslow search` does (`SearchIndex.open` + `Searcher` with default-size, randomly
  initialised Fast and Slow models: weights do not change the cost) and times single
  queries end to end, text encoding included; Fast+rerank(20) scores 20 real memories
  read from the index with the Slow model.
- Index files are deleted after each row (a 1M-item index is ~8 GB at int8).
- `--extract-items N` (or `--extract-demo`: the full demo's media) adds extraction rows:
  `fastslow extract` items/s with the local engine and with `--engine ray` at 1 and 2
  actors on the same files, and whether each Ray feature set equals the local one
  (scale_extract.py); `--no-index` runs only those.

Timings are medians on a shared 2-core machine: read ratios within one run.
"""

from __future__ import annotations

import common  # noqa: I001 - first: sets the BLAS threads before numpy loads

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from fastslow_cli.index.hnsw import AnnParams, exact_search, recall_at_k
from fastslow_cli.index.memory import DEFAULT_DTYPE, bytes_per_row

SEED = 0
QUERIES = 200
TOP = 10
RERANK = 20
POOL = 64  # distinct random memories, cycled over the items
CHUNK = 8192
FULL = {"sizes": [100_000, 1_000_000], "shards": [1, 4], "queries": QUERIES}
QUICK = {"sizes": [2000], "shards": [1, 4], "queries": 30}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _contents(n: int, queries: int) -> tuple[Any, Any, np.ndarray, np.ndarray, list[np.ndarray], dict]:
    """Default-size models, N item vectors, query vectors and the memory pool (same seed, same data)."""
    from bench_search import default_models, item_vectors

    fast, slow, texts, shape = default_models(SEED)
    rng = np.random.default_rng(SEED)
    vectors, qvecs = item_vectors(rng, n, fast.dim, queries)
    tokens = shape["memory_tokens"]["image"]
    pool = [rng.standard_normal((tokens, slow.width)).astype(np.float16) for _ in range(POOL)]
    return fast, slow, vectors, qvecs, pool, {**shape, "texts": texts}


def _chunks(vectors: np.ndarray, rows: np.ndarray, pool: list[np.ndarray]):
    from fastslow_cli.index.folder import IndexChunk

    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        ids = [f"item{i:07d}" for i in part]
        yield IndexChunk(
            ids=ids, paths=[f"/bench/{i}" for i in ids], kinds=["image"] * len(ids),
            frames=np.ones(len(ids), dtype=np.int64), timestamps=[[0.0]] * len(ids),
            vectors=vectors[part], frame_vectors=vectors[part],
            memories=[pool[i % len(pool)] for i in part],
            sizes=[0] * len(ids), mtimes_ns=[0] * len(ids), content_hashes=[""] * len(ids),
        )


def build_child(n: int, shards: int, params: AnnParams, queries: int, directory: str, out: str) -> None:
    """Draw, build, exact top-10 (numpy and faiss); write the figures to `out`."""
    from fastslow_cli.index.folder import write_index
    from fastslow_cli.index.shards import shard_of, write_sharded_index

    fast, slow, vectors, qvecs, pool, _ = _contents(n, queries)
    args = {"fast_identity": fast.identity, "slow_identity": slow.identity, "slow_width": slow.width, "params": params,
            "feature_set": "synthetic (benchmark)", "feature_fingerprint": "synthetic"}
    rss_before = _rss_mb()
    start = time.perf_counter()
    if shards == 1:
        write_index(Path(directory), _chunks(vectors, np.arange(n), pool), **args)
    else:
        owner = np.array([shard_of(f"item{i:07d}", shards) for i in range(n)])
        write_sharded_index(
            Path(directory), [_chunks(vectors, np.flatnonzero(owner == s), pool) for s in range(shards)], **args
        )
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    exact, _ = exact_search(vectors, qvecs, TOP)
    figures: dict[str, Any] = {"build_s": round(seconds, 1), "build_peak_rss_mb": round(peak, 1),
                               "rss_before_build_mb": round(rss_before, 1)}
    try:
        import faiss

        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        _, faiss_top = flat.search(qvecs, TOP)
        figures["numpy_vs_faiss_flat_recall@10"] = recall_at_k(exact, faiss_top)
        figures["faiss"] = faiss.__version__
    except ImportError:
        faiss_top, figures["faiss"] = None, None
    np.save(Path(out).with_suffix(".exact.npy"), exact)
    if faiss_top is not None:
        np.save(Path(out).with_suffix(".faiss.npy"), faiss_top)
    np.save(Path(out).with_suffix(".q.npy"), qvecs)
    Path(out).write_text(json.dumps(figures))


def search_child(directory: str, out: str) -> None:
    """Open the index as `fastslow search` does; time Fast and Fast+rerank(20); recall@10."""
    from fastslow_cli.index.folder import SearchIndex
    from fastslow_cli.search.searcher import Searcher

    from bench_search import default_models

    fast, slow, texts, _ = default_models(SEED)
    rss_models = _rss_mb()
    start = time.perf_counter()
    index = SearchIndex.open(Path(directory))
    open_s = time.perf_counter() - start
    rss_open = _rss_mb()
    searcher = Searcher(index, fast, slow)
    qvecs = np.load(Path(out).with_suffix(".q.npy"))
    exact = np.load(Path(out).with_suffix(".exact.npy"))
    got = np.stack([index.ann.query(q[None], TOP)[0][0] for q in qvecs])
    ids = np.array(index.items["id"])
    # index labels -> the bench's item numbers (a sharded index orders items by shard)
    number = np.array([int(i[4:]) for i in ids])
    figures: dict[str, Any] = {
        "open_s": round(open_s, 2),
        "rss_after_open_mb": round(rss_open - rss_models, 1),
        "recall@10_vs_numpy": recall_at_k(number[got], exact),
    }
    faiss_file = Path(out).with_suffix(".faiss.npy")
    if faiss_file.exists():
        figures["recall@10_vs_faiss_flat"] = recall_at_k(number[got], np.load(faiss_file))
    for name, rerank in (("fast", 0), (f"fast_rerank{RERANK}", RERANK)):
        searcher.search(texts[0], k=TOP, rerank=rerank)  # warm-up
        times = []
        for q in texts[: len(qvecs)]:
            t0 = time.perf_counter()
            searcher.search(q, k=TOP, rerank=rerank)
            times.append(1000.0 * (time.perf_counter() - t0))
        figures[f"p50_ms_{name}"] = round(statistics.median(times), 3)
    figures["search_peak_rss_mb"] = round(_peak_rss_mb() - rss_models, 1)
    Path(out).write_text(json.dumps(figures))


def _in_child(target, *args) -> None:
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:2]} failed with exit code {proc.exitcode}")


def _disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def run_row(n: int, shards: int, params: AnnParams, queries: int, work: Path) -> dict[str, Any]:
    directory, out = work / "index" / f"n{n}-s{shards}", work / f"n{n}-s{shards}.json"
    _in_child(build_child, n, shards, params, queries, str(directory), str(out))
    row = {"n": n, "shards": shards, **json.loads(out.read_text())}
    row["disk_bytes"] = _disk(directory)
    row["disk_bytes_per_item"] = round(row["disk_bytes"] / n, 1)
    memory = sum(p.stat().st_size for p in directory.rglob("slow_memory.*") if not p.name.endswith("offsets.npy"))
    row["memory_bytes_per_item"] = round(memory / n, 1)
    row["hnsw_bytes_per_item"] = round(sum(p.stat().st_size for p in directory.rglob("hnsw.bin")) / n, 1)
    _in_child(search_child, str(directory), str(out))
    row.update(json.loads(out.read_text()))
    shutil.rmtree(directory)
    print(json.dumps(row), flush=True)
    return row


def to_markdown(report: dict) -> str:
    lines = _index_markdown(report) if report["rows"] else []
    if report.get("extract"):
        from scale_extract import to_markdown as extract_markdown

        lines += extract_markdown(report["extract"])
    lines += ["", common.SHARED_NOTE, f"Load average at the end: {report['machine'].get('load_avg_at_end')}.", ""]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def _index_markdown(report: dict) -> list[str]:
    p = report["params"]
    lines = [
        "# Scale: index cost at N items, unsharded and sharded",
        "",
        f"Synthetic unit vectors (dim {p['dim']}) and Slow memories ({p['memory_tokens']} x {p['slow_width']}, "
        f"stored {p['memory_dtype']}: {p['memory_bytes_per_item_expected']} bytes/item; f16 would be "
        f"{p['memory_bytes_per_item_f16']}), HNSW M={p['M']} ef_construction={p['ef_construction']} ef={p['ef_search']}, "
        f"{report['machine']['cpus']} CPUs. p50 = median single-query time end to end (text encoding included); "
        "rerank = Fast top-20 re-scored by a default-size Slow model from memory read off the index. "
        "RSS: build = peak of the build process (vectors drawn in it included); search = after opening, "
        "models excluded. Recall@10 of the HNSW top-10 against exact search (numpy; faiss IndexFlatIP).",
        "",
        "| N | shards | build s | build peak RSS MB | disk MB | disk B/item | search RSS MB | p50 Fast ms | "
        "p50 Fast+rerank(20) ms | recall@10 (numpy) | recall@10 (faiss flat) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        faiss_recall = r.get("recall@10_vs_faiss_flat")
        lines.append(
            f"| {r['n']:,} | {r['shards']} | {r['build_s']:.0f} | {r['build_peak_rss_mb']:.0f} | "
            f"{r['disk_bytes'] / 1e6:,.0f} | {r['disk_bytes_per_item']:,.0f} | {r['search_peak_rss_mb']:.0f} | "
            f"{r['p50_ms_fast']:.2f} | {r['p50_ms_fast_rerank20']:.1f} | {r['recall@10_vs_numpy']:.3f} | "
            f"{'-' if faiss_recall is None else f'{faiss_recall:.3f}'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_output_args(parser, "smoke run: 2000 items, 30 queries")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--shards", type=int, nargs="+")
    parser.add_argument("--queries", type=int)
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION,
                        help=f"HNSW build beam (shipped: {DEFAULT_EF_CONSTRUCTION}); a lower one is labelled in the results")
    parser.add_argument("--work", type=Path, help="scratch folder for the index files (default: a temp dir)")
    parser.add_argument("--note", default="", help="a line added under the table (what was run and why)")
    parser.add_argument("--name", default="scale", help="results file name (default scale)")
    parser.add_argument("--extract-items", type=int, default=0,
                        help="also time extraction (local engine vs Ray) on this many demo-like media files")
    parser.add_argument("--extract-demo", action="store_true", help="the extraction rows on the full demo's media")
    parser.add_argument("--no-index", action="store_true", help="only the extraction rows")
    add_encode_args(parser)
    args = parser.parse_args()
    if args.encode:
        run_encode(args)
        return
    preset = QUICK if args.quick else FULL
    sizes, shard_counts = args.sizes or preset["sizes"], args.shards or preset["shards"]
    queries = args.queries or preset["queries"]
    params = AnnParams(M=DEFAULT_M, ef_construction=args.ef_construction, ef_search=DEFAULT_EF)
    from bench_search import default_models

    _, slow, _, shape = default_models(SEED)
    tokens = shape["memory_tokens"]["image"]
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": common.machine(),
        "params": {
            "dim": shape["fast_dim"], "slow_width": slow.width, "memory_tokens": tokens, "memory_dtype": DEFAULT_DTYPE,
            "memory_bytes_per_item_expected": tokens * bytes_per_row(DEFAULT_DTYPE, slow.width),
            "memory_bytes_per_item_f16": tokens * bytes_per_row("f16", slow.width),
            "M": params.M, "ef_construction": params.ef_construction, "ef_search": params.ef_search,
            "shipped_ef_construction": DEFAULT_EF_CONSTRUCTION, "queries": queries, "rerank": RERANK,
        },
        "note": args.note,
        "rows": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.work))
    try:
        if args.extract_items or args.extract_demo:
            from scale_extract import run_extract_rows

            report["extract"] = run_extract_rows(work / "extract", None if args.extract_demo else args.extract_items)
            report["machine"]["load_avg_at_end"] = common.load_average()
            common.save(args.out, args.name, report, to_markdown(report))
        for n in [] if args.no_index else sizes:
            for shards in shard_counts:
                report["rows"].append(run_row(n, shards, params, queries, work))
                # Saved after every row: a long run cut short keeps the rows it finished.
                report["machine"]["load_avg_at_end"] = common.load_average()
                common.save(args.out, args.name, report, to_markdown(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- item encoding: local vs Ray (--encode)
#
#     python benchmarks/bench_scale.py --encode [--encode-items 3000] [--quick] [--out DIR]
#
# What `fastslow index build` costs per item when the models encode the items (the expensive
# part at 100M items): the local engine against `--engine ray` with 1 and 2 actors, on one
# synthetic feature set of default pixel-backbone shapes (two images for every 8-frame video, random
# float16 rows in parts of 500) with default-size, randomly initialised Fast and Slow models saved
# as folders (weights do not change the cost). Each row is a fresh `fastslow index build --json`
# process, timed from outside (wall: interpreter, torch and, for ray, a private local Ray's start-up
# included); `build s` is what the command itself reports (Ray start-up included, imports not).
# Threads: the local engine's torch uses every core; each Ray actor (0.5 CPU) gets one thread.

ENCODE_ITEMS = {"full": 3000, "quick": 300}
ENCODE_PART = 500
# (engine, Ray actors, cores the process may use: None = all). The local engine's torch takes a
# thread per core it may use; a 0.5-CPU Ray actor gets one, so "local on 1 core" (taskset) is the
# like-for-like row for one actor.
ENCODE_RUNS = (("local", None, None), ("local", None, 1), ("ray", 1, None), ("ray", 2, None))


def add_encode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encode", action="store_true", help="item encoding throughput: local engine vs --engine ray 1 and 2 actors")
    parser.add_argument("--encode-items", type=int, help=f"items in the synthetic feature set (default {ENCODE_ITEMS['full']}, quick {ENCODE_ITEMS['quick']})")
    parser.add_argument("--encode-repeats", type=int, default=1, help="rounds of (local, ray 1, ray 2), interleaved")


def encode_workspace(ws: Path, n: int) -> dict[str, Any]:
    """The feature set `default` and models `fast` and `slow` of the `--encode` rows."""
    from bench_search import VIDEO_FRAMES, default_models

    from fastslow_cli.models.checkpoint import save_model
    from fastslow_cli.store.parquet import FeatureRow, FeatureStore

    fast, slow, _, shape = default_models(SEED)
    shapes = [tuple(s) for s in shape["levels"]]
    store = FeatureStore(ws / "features" / "default")
    store.ensure({"name": "bench-synthetic"}, shapes, VIDEO_FRAMES)
    media = ws.parent / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for start in range(0, n, ENCODE_PART):
        rows = []
        for i in range(start, min(n, start + ENCODE_PART)):
            frames = VIDEO_FRAMES if i % 3 == 2 else 1
            path = media / f"item{i:07d}.{'mp4' if frames > 1 else 'png'}"
            path.write_bytes(b"%d" % i)
            rows.append(FeatureRow(
                id=path.name, path=str(path), kind="video" if frames > 1 else "image", frames=frames,
                timestamps=[0.5 * t for t in range(frames)], size=path.stat().st_size,
                mtime_ns=path.stat().st_mtime_ns, content_hash=f"hash-{i}",
                levels=[rng.standard_normal((frames, *lv)).astype(np.float16) for lv in shapes],
            ))
        store.append(rows)
    features = {"fingerprint": store.fingerprint(), "set": "default"}
    slow.model.config.finest_level = slow.model.config.resolve_finest_level()  # as training records it
    for retriever in (fast, slow):
        save_model(ws / "models" / retriever.kind, retriever.model, retriever.tokenizer, features)
    videos = sum(1 for i in range(n) if i % 3 == 2)
    return {"items": n, "images": n - videos, "videos": videos, "video_frames": VIDEO_FRAMES, "levels": shape["levels"],
            "fast_params": shape["fast_params"], "slow_params": shape["slow_params"], "part_rows": ENCODE_PART}


def encode_row(ws: Path, engine: str, workers: int | None, cores: int | None, n: int) -> dict[str, Any]:
    """One fresh `fastslow index build` process: wall time from outside, the command's own seconds."""
    import os
    import subprocess
    import sys

    name = engine + (f"{workers}" if workers else "") + (f"-{cores}core" if cores else "")
    args = ["--engine", engine] + ([] if workers is None else ["--workers", str(workers)])
    pin = [] if cores is None else ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cores])]
    # A user's environment: not common's one-BLAS-thread setting (torch then takes every core
    # locally; Ray gives each 0.5-CPU actor one thread, whatever this says).
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update({"FASTSLOW_WORKSPACE": str(ws), "FASTSLOW_ONNX_EXPORT": "0",
                "PYTHONPATH": os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")])})
    load = common.load_average()
    start = time.perf_counter()
    out = subprocess.run([*pin, sys.executable, "-m", "fastslow_cli", "index", "build", "--name", name, "--device", "cpu",
                          "--json", *args], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"index build {' '.join(args)} failed: {out.stderr[-2000:]}")
    built = json.loads(out.stdout.splitlines()[-1])
    noise = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("index ")]
    row = {"engine": engine, "workers": workers, "cores": cores or len(os.sched_getaffinity(0)), "wall_s": round(wall, 1), "build_s": built["seconds"],
           "items_per_s_wall": round(n / wall, 1), "items_per_s_build": round(n / built["seconds"], 1),
           "load_avg_before": load, "stderr_lines_besides_progress": len(noise)}
    shutil.rmtree(ws / "index" / name)
    print(json.dumps(row), flush=True)
    return row


def encode_markdown(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        "# Item encoding: `index build` local engine vs `--engine ray`",
        "",
        f"{p['items']:,} synthetic items ({p['images']:,} images, {p['videos']:,} videos of {p['video_frames']} frames; "
        f"default pixel-backbone levels {p['levels']}), default-size random-init Fast ({p['fast_params']:,} parameters) "
        f"and Slow ({p['slow_params']:,}) models, int8 Slow memory, {report['machine']['cpus']} CPUs. "
        "Each row is a fresh `fastslow index build --json` process (cores: what it may use; 1 = pinned with taskset): "
        "wall = from outside (imports and, for Ray, "
        "a private local Ray's start-up included); build = the command's own seconds (Ray start-up included).",
        "",
        "| engine | actors | cores | wall s | build s | items/s (wall) | items/s (build) | load avg before (1, 5, 15 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['engine']} | {r['workers'] or '-'} | {r['cores']} | {r['wall_s']:.1f} | {r['build_s']:.1f} | "
                     f"{r['items_per_s_wall']:.1f} | {r['items_per_s_build']:.1f} | {', '.join(map(str, r['load_avg_before']))} |")
    lines += ["", common.SHARED_NOTE, ""]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def run_encode(args: argparse.Namespace) -> None:
    n = args.encode_items or ENCODE_ITEMS["quick" if args.quick else "full"]
    work = Path(tempfile.mkdtemp(prefix="bench-encode-", dir=args.work))
    try:
        ws = work / "ws"
        report: dict[str, Any] = {"quick": args.quick, "machine": common.machine(), "params": encode_workspace(ws, n),
                                  "note": args.note, "rows": []}
        for _ in range(args.encode_repeats):
            for engine, workers, cores in ENCODE_RUNS:
                report["rows"].append(encode_row(ws, engine, workers, cores, n))
                report["machine"]["load_avg_at_end"] = common.load_average()
                common.save(args.out, args.name if args.name != "scale" else "encode", report, encode_markdown(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
