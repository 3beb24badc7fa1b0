"""Search latency of Fast exact, Fast HNSW, Slow-only and Fast+rerank(K), and HNSW recall, side by side.

    python benchmarks/bench_search.py [--sizes 1000 10000 100000] [--quick] [--out DIR]

What is measured, in one run (about 5 minutes on 2 shared cores; `--quick` is a smoke run):

- the default Fast and Slow models (`FastConfig()` / `SlowConfig()` on the default
  `pixels` features), randomly initialised with a fixed seed: weights do not change the
  cost of a query, only what it finds;
- at each collection size N, a real index folder written by `index.write_index` (the
  writer `fastslow index build` uses) at the shipped HNSW defaults (`DEFAULT_M`,
  `DEFAULT_EF_CONSTRUCTION`, `DEFAULT_EF` from `fastslow_cli.index`) and read back by
  `SearchIndex`, with synthetic contents: Fast vectors with cluster structure (see
  `item_vectors`) and Slow memories cycled from a pool of random rows: 64 tokens per
  image (an 8x8 grid), 8 frames x 64 tokens per video (the extract default of 8 frames);
- per query, end to end, text encoding included: Fast exact (numpy dot over all N + top-10),
  Fast HNSW (hnswlib top-10 at the default ef), Slow-only (`SlowRetriever.score` of the
  query against all N memories, held in RAM) and Fast+rerank(K) (`Searcher.search` with
  `rerank=K`: HNSW top-K, K memories read from the index's mmap, Slow scoring, reorder),
  for an index of images and (up to `--video-max` items) an index of videos. Methods take
  turns round by round, so load on the shared machine hits them alike; the median round
  counts. Slow-only is measured over all N items up to `--slow-max` (videos:
  `--video-slow-items`); above that the same query is timed on the first items and scaled
  linearly (it is one decoder pass per item), and the tables say "extrapolated";
- outside references on the same vectors and queries (look-up only): hnswlib's
  brute-force `BFIndex` and, when faiss is installed (`pip install 'fastslow[bench]'`),
  faiss `IndexFlatIP` and `IndexHNSWFlat` (M, efConstruction, efSearch as ours);
- HNSW recall@10 against exact search at several ef (a separate table), for cluster
  queries, the random model's caption vectors, isotropic Gaussian vectors (the worst
  case) and the vectors of a small Fast model trained here on synthetic captions through
  the public API (`trained.py`), whose R@1 is reported to show it learnt something.

Read the ratios, not the absolute figures: the machine is shared and noisy.
"""

from __future__ import annotations

import common  # noqa: I001 - first: sets the BLAS threads before numpy loads

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hnswlib
import numpy as np
import torch

from fastslow_cli.demo.synth import SynthConfig, caption, render_clip, render_image, sample_scene
from fastslow_cli.features.backbones import PixelBackbone
from fastslow_cli.features.extract import ExtractOptions
from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from fastslow_cli.index.folder import IndexChunk, SearchIndex, write_index
from fastslow_cli.index.hnsw import AnnIndex, AnnParams, recall_at_k
from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.models.slow import SlowConfig, SlowModel
from fastslow_cli.search.retrievers import NativeFast, NativeSlow
from fastslow_cli.search.searcher import Searcher
from fastslow_cli.text.tokenizer import TextTokenizer
from trained import TrainedVectors, train_small_fast

try:
    import faiss
except ImportError:  # optional: the `bench` extra
    faiss = None

SHIPPED = AnnParams(M=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION, ef_search=DEFAULT_EF)
RERANK_KS = (10, 20, 50)
EFS = (16, 32, 64, 128, 256, 512)
TOP = 10
VIDEO_FRAMES = ExtractOptions().frames  # frames sampled per video by `fastslow extract`
PER_CLUSTER = 50  # mean items per cluster of the synthetic Fast vectors
SPREAD = 0.8  # noise norm relative to the cluster centre's norm
MEMORY_POOL = 256  # distinct random memories, cycled over the items
GAUSSIAN_MAX = 10_000  # largest N for the Gaussian worst-case recall (its HNSW build is slow)
LOOKUP_QUERIES = 100  # single-query look-ups timed per recall row
TRAIN_BATCH = 16  # small batches: more optimiser steps for the same compute (600 images: val R@1 17, chance 1.5)
FULL = {"sizes": [1000, 10_000, 100_000], "rounds": 5, "per_round": 10, "slow_rounds": 3, "slow_max": 10_000,
        "video_max": 10_000, "video_slow_items": 1000, "faiss_hnsw_max": 10_000, "recall_queries": 500,
        "train_images": 600, "train_videos": 60, "train_epochs": 12}
QUICK = {"sizes": [1000], "rounds": 2, "per_round": 3, "slow_rounds": 1, "slow_max": 1000,
         "video_max": 1000, "video_slow_items": 100, "faiss_hnsw_max": 1000, "recall_queries": 100,
         "train_images": 100, "train_videos": 10, "train_epochs": 2}


# ----------------------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def item_vectors(rng: np.random.Generator, n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors and in-distribution query vectors.

    N/50 cluster centres ~ N(0, I); an item (or query) is a random centre plus isotropic
    Gaussian noise of 0.8x the centre's norm, L2-normalised: items of one cluster have
    cosine ~0.6, unrelated items ~0, like the near-duplicate groups a trained encoder
    makes of a collection (the trained-model table checks this against real vectors).
    """
    centres = rng.standard_normal((max(1, n // PER_CLUSTER), dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        pick = centres[rng.integers(0, len(centres), count)]
        noise = rng.standard_normal((count, dim)).astype(np.float32)
        return unit(pick + SPREAD * noise * np.linalg.norm(pick, axis=1, keepdims=True) / np.sqrt(dim))

    return draw(n), draw(queries)


def vector_stats(vectors: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Mean cosine of random pairs and of each sampled item's nearest other item."""
    sample = vectors[rng.choice(len(vectors), min(500, len(vectors)), replace=False)]
    nearest = np.sort(sample @ vectors.T, axis=1)[:, -2]  # -1 is the item itself
    pairs = sample @ sample.T
    off = pairs[~np.eye(len(sample), dtype=bool)]
    return {"mean_pair_cosine": round(float(off.mean()), 3), "mean_nn_cosine": round(float(nearest.mean()), 3)}


def chunks(vectors: np.ndarray, pool: list[np.ndarray], kind: str, rng: np.random.Generator, size: int = 4096) -> Iterator[IndexChunk]:
    """The index contents: N items of one kind with the given Fast vectors and cycled memories.

    Images have one frame (frame vector = item vector); videos `VIDEO_FRAMES` frames whose
    vectors scatter around the item vector, so a hit's best timestamp is a real arg-max.
    """
    frames = 1 if kind == "image" else VIDEO_FRAMES
    for start in range(0, len(vectors), size):
        stop = min(start + size, len(vectors))
        block = vectors[start:stop]
        per_frame = np.repeat(block, frames, axis=0)
        if frames > 1:
            per_frame = unit(per_frame + 0.3 * rng.standard_normal(per_frame.shape).astype(np.float32) / np.sqrt(block.shape[1]))
        ids = [f"{kind}{i:06d}" for i in range(start, stop)]
        yield IndexChunk(
            ids=ids,
            paths=[f"/bench/{i}" for i in ids],
            kinds=[kind] * len(ids),
            frames=np.full(len(ids), frames, dtype=np.int64),
            timestamps=[[0.5 * f for f in range(frames)]] * len(ids),
            vectors=block,
            frame_vectors=per_frame,
            memories=[pool[i % len(pool)] for i in range(start, stop)],
            sizes=[0] * len(ids),
            mtimes_ns=[0] * len(ids),
            content_hashes=[""] * len(ids),
        )


def write(directory: Path, vectors: np.ndarray, pool: list[np.ndarray], kind: str, fast: NativeFast, slow: NativeSlow, rng: np.random.Generator) -> float:
    """Write an index of `kind` items at the shipped HNSW defaults; returns the seconds it took."""
    start = time.perf_counter()
    write_index(
        directory,
        chunks(vectors, pool, kind, rng),
        fast_identity=fast.identity,
        slow_identity=slow.identity,
        slow_width=slow.width,
        params=SHIPPED,
        feature_set="synthetic (benchmark)",
        feature_fingerprint="synthetic",
    )
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- models


def default_models(seed: int) -> tuple[NativeFast, NativeSlow, list[str], dict]:
    """Default-config Fast and Slow models on the default pixel features; queries are synthetic captions."""
    rng = np.random.default_rng(seed)
    tok = TextTokenizer.train(caption(sample_scene(rng, "image")) for _ in range(2000))
    queries = [caption(sample_scene(rng, "image")) for _ in range(200)]
    backbone = PixelBackbone()
    shapes = [list(s) for s in backbone.level_shapes()]
    torch.manual_seed(seed)
    fast_model = FastModel(FastConfig(level_shapes=shapes, vocab_size=tok.vocab_size))
    slow_model = SlowModel(SlowConfig(level_shapes=shapes, vocab_size=tok.vocab_size))
    cpu = torch.device("cpu")
    fast = NativeFast(fast_model, tok, {"path": "bench/fast", "content_hash": f"random-init-{seed}"}, cpu)
    slow = NativeSlow(slow_model, tok, {"path": "bench/slow", "content_hash": f"random-init-{seed}"}, cpu)
    # A real rendered image and clip through the Slow model: the memory lengths an index stores.
    tokens = {}
    for kind, frames in (("image", render_image(sample_scene(rng, "image"), backbone.input_size)[None]),
                         ("video", render_clip(sample_scene(rng, "clip"), backbone.input_size, VIDEO_FRAMES))):
        levels = [torch.from_numpy(lv[None].astype(np.float32)) for lv in backbone(frames)]
        with torch.inference_mode():
            memory, _ = slow_model.eval().encode_visual(levels, torch.ones(1, len(frames), dtype=torch.bool))
        tokens[kind] = int(memory.shape[1])
    shape = {
        "levels": shapes,
        "fast_dim": fast.dim,
        "slow_width": slow.width,
        "memory_tokens": tokens,
        "video_frames": VIDEO_FRAMES,
        "fast_params": sum(p.numel() for p in fast_model.parameters()),
        "slow_params": sum(p.numel() for p in slow_model.parameters()),
        "fast_config": {k: v for k, v in FastConfig().to_dict().items() if k not in ("level_shapes", "vocab_size")},
        "slow_config": {k: v for k, v in SlowConfig().to_dict().items() if k not in ("level_shapes", "vocab_size")},
        "vocab_size": tok.vocab_size,
    }
    return fast, slow, queries, shape


# ----------------------------------------------------------------------------- timing


Method = tuple[Callable[[str], object], int, int]  # (function of one query, queries per round, rounds)


def interleaved(methods: dict[str, Method], queries: list[str]) -> dict[str, float]:
    """Median over rounds of ms/query; each round runs every method still due on its next queries, in turn."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    cursor = dict.fromkeys(methods, 0)
    for r in range(max(rounds for _, _, rounds in methods.values())):
        for name, (fn, per_round, rounds) in methods.items():
            if r >= rounds:
                continue
            batch = [queries[(cursor[name] + i) % len(queries)] for i in range(per_round)]
            cursor[name] += per_round
            start = time.perf_counter()
            for q in batch:
                fn(q)
            times[name].append(1000.0 * (time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def lookup_ms(fn: Callable[[np.ndarray], object], qvecs: np.ndarray) -> float:
    """Median ms of a single-query look-up (how search calls the index: one query at a time);
    the median, because on a shared machine a query now and then waits for a core."""
    times = []
    for q in qvecs:
        start = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def exact_top(base: np.ndarray, q: np.ndarray, k: int = TOP) -> np.ndarray:
    """Brute-force top-k rows of `base` (unit rows) for unit query rows `q` (Q, dim)."""
    sims = q @ base.T
    k = min(k, base.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def recall_curve(ann: AnnIndex, base: np.ndarray, qvecs: np.ndarray, efs: tuple[int, ...]) -> list[dict]:
    """HNSW recall@10 against exact search, and single-query look-up ms, at each ef."""
    truth = exact_top(base, qvecs)
    rows = []
    for ef in efs:
        labels, _ = ann.query(qvecs, TOP, ef=ef)
        ms = lookup_ms(lambda q: ann.query(q, TOP, ef=ef), qvecs[:LOOKUP_QUERIES])
        rows.append({"ef": ef, "recall@10": round(recall_at_k(labels, truth), 4), "lookup_ms": round(ms, 4)})
    return rows


# ----------------------------------------------------------------------------- outside references


def references(ann: AnnIndex, base: np.ndarray, query_sets: dict[str, np.ndarray], faiss_hnsw: bool) -> list[dict]:
    """Ours and outside libraries on the same vectors: recall@10 per query set, look-up ms, build s.

    Searches run one query at a time on one thread (faiss: `omp_set_num_threads(1)`), as
    `Searcher` does; builds use every core, as `write_index` does for ours.
    """
    truths = {name: exact_top(base, q) for name, q in query_sets.items()}
    probe = next(iter(query_sets.values()))[:LOOKUP_QUERIES]
    dim, threads = base.shape[1], os.cpu_count() or 1
    candidates: list[tuple[str, Callable[[], Callable[[np.ndarray], np.ndarray]]]] = [
        ("fastslow exact (numpy dot)", lambda: (lambda q: exact_top(base, q))),
        (f"fastslow HNSW (hnswlib, ef {DEFAULT_EF})", lambda: (lambda q: ann.query(q, TOP)[0])),
    ]

    def bf_index() -> Callable[[np.ndarray], np.ndarray]:
        index = hnswlib.BFIndex(space="ip", dim=dim)
        index.init_index(max_elements=len(base))
        index.add_items(base)
        return lambda q: index.knn_query(q, k=TOP)[0]

    candidates.append(("hnswlib BFIndex (brute force)", bf_index))
    if faiss is not None:

        def faiss_built(index: object) -> Callable[[np.ndarray], np.ndarray]:
            faiss.omp_set_num_threads(threads)
            index.add(base)
            faiss.omp_set_num_threads(1)
            return lambda q: index.search(q, TOP)[1]

        def faiss_hnsw_index() -> Callable[[np.ndarray], np.ndarray]:
            index = faiss.IndexHNSWFlat(dim, DEFAULT_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
            index.hnsw.efSearch = DEFAULT_EF
            return faiss_built(index)

        candidates.append(("faiss IndexFlatIP", lambda: faiss_built(faiss.IndexFlatIP(dim))))
        if faiss_hnsw:
            candidates.append((f"faiss IndexHNSWFlat (M {DEFAULT_M}, efC {DEFAULT_EF_CONSTRUCTION}, ef {DEFAULT_EF})", faiss_hnsw_index))
    rows = []
    for name, build in candidates:
        start = time.perf_counter()
        search = build()
        built = time.perf_counter() - start
        row = {"name": name, "build_seconds": None if name.startswith("fastslow") else round(built, 2)}
        for set_name, q in query_sets.items():
            row[f"recall@10_{set_name}"] = round(recall_at_k(search(q), truths[set_name]), 4)
        row["lookup_ms"] = round(lookup_ms(search, probe), 4)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one size


def slow_scan(slow: NativeSlow, memories: list[np.ndarray]) -> Callable[[str], object]:
    """Slow-only search: score the query against every memory, keep the top 10."""

    def search(q: str) -> object:
        return np.argsort(-slow.score([q], memories)[0])[:TOP]

    return search


def run_size(n: int, args: argparse.Namespace, fast: NativeFast, slow: NativeSlow, queries: list[str], tokens: dict[str, int], tmp: Path) -> dict:
    rng = np.random.default_rng(args.seed + n)
    vectors, qvecs = item_vectors(rng, n, fast.dim, args.recall_queries)
    pools = {kind: [rng.standard_normal((length, slow.width)).astype(np.float16) for _ in range(MEMORY_POOL)] for kind, length in tokens.items()}
    kinds = ["image"] + (["video"] if n <= args.video_max else [])
    build_s = {kind: round(write(tmp / f"{kind}-{n}", vectors, pools[kind], kind, fast, slow, rng), 1) for kind in kinds}
    indexes = {kind: SearchIndex.open(tmp / f"{kind}-{n}") for kind in kinds}
    searchers = {kind: Searcher(index, fast, slow) for kind, index in indexes.items()}
    image_index = indexes["image"]
    base = np.ascontiguousarray(image_index.frame_vectors, dtype=np.float32)  # as read back; images: frame = item vector
    scanned = {"image": min(n, args.slow_max), "video": min(n, args.video_slow_items)}
    every, half = (args.per_round, args.rounds), (max(1, args.per_round // 2), args.rounds)
    methods: dict[str, Method] = {
        "text_encoding": (lambda q: fast.encode_texts([q]), *every),
        "fast_exact": (lambda q: exact_top(base, fast.encode_texts([q])), *every),
        "fast_hnsw": (lambda q: image_index.ann.query(fast.encode_texts([q]), TOP), *every),
    }
    for kind in kinds:
        searcher = searchers[kind]
        for k in RERANK_KS:
            methods[f"rerank_{kind}_{k}"] = ((lambda q, s=searcher, k=k: s.search(q, k=TOP, rerank=k)), *(every if kind == "image" else half))
        # Memories in RAM, read outside the timing: kind to Slow-only. One query per round.
        methods[f"slow_only_{kind}"] = (slow_scan(slow, indexes[kind].memories(range(scanned[kind]))), 1, args.slow_rounds)
    for fn, _, _ in methods.values():  # warm-up: first-call allocations, page cache
        fn(queries[-1])
    ms = interleaved(methods, queries)
    latency = {name: round(v, 3) for name, v in ms.items() if not name.startswith("slow_only")}
    slow_only = {}
    for kind in kinds:
        value = ms[f"slow_only_{kind}"] * n / scanned[kind]
        latency[f"slow_only_{kind}"] = round(value, 1)
        slow_only[kind] = {"ms": round(value, 1), "items_scanned": scanned[kind], "extrapolated": scanned[kind] < n,
                           "queries_timed": args.slow_rounds, "ms_per_item": round(ms[f"slow_only_{kind}"] / scanned[kind], 4)}
    caption_vecs = fast.encode_texts(queries)
    result = {
        "n": n,
        "kinds": kinds,
        "build_seconds": build_s,
        "vector_stats": vector_stats(base, rng),
        "ms_per_query": latency,
        "slow_only": slow_only,
        "speedup_slow_over_rerank": {
            kind: {str(k): round(latency[f"slow_only_{kind}"] / latency[f"rerank_{kind}_{k}"], 1) for k in RERANK_KS} for kind in kinds
        },
        "references": references(image_index.ann, base, {"clusters": qvecs, "captions": caption_vecs}, n <= args.faiss_hnsw_max),
        "recall_clustered": recall_curve(image_index.ann, base, qvecs, args.efs),
        "recall_captions": recall_curve(image_index.ann, base, caption_vecs, args.efs),
    }
    if n <= GAUSSIAN_MAX and not args.quick:
        gauss = unit(rng.standard_normal((n, fast.dim)))
        gauss_ann = AnnIndex.build(gauss, SHIPPED, threads=os.cpu_count() or 1)
        result["recall_gaussian"] = recall_curve(gauss_ann, gauss, unit(rng.standard_normal((args.recall_queries, fast.dim))), args.efs)
    return result


def trained_recall(vectors: TrainedVectors, efs: tuple[int, ...]) -> dict:
    """HNSW recall@10 on a trained model's vectors, and how often HNSW's first hit is the exact first hit."""
    ann = AnnIndex.build(vectors.items, SHIPPED, threads=os.cpu_count() or 1)
    exact_first = exact_top(vectors.items, vectors.queries, 1)[:, 0]
    hnsw_first = ann.query(vectors.queries, 1)[0][:, 0]
    return {
        **vectors.info,
        f"top1_agreement_ef{DEFAULT_EF}": round(float(np.mean(hnsw_first == exact_first)), 4),
        "vector_stats": vector_stats(vectors.items, np.random.default_rng(0)),
        "recall_captions": recall_curve(ann, vectors.items, vectors.queries, efs),
    }


def ef_needed(curve: list[dict], target: float) -> int | None:
    return next((r["ef"] for r in curve if r["recall@10"] >= target), None)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    info = common.machine(torch=torch.__version__, hnswlib=getattr(hnswlib, "__version__", "?"),
                          faiss=getattr(faiss, "__version__", None) if faiss is not None else None)
    fast, slow, queries, shape = default_models(args.seed)
    sizes = []
    with tempfile.TemporaryDirectory(prefix="fastslow-bench-search-") as tmp:
        for n in args.sizes:
            started = time.perf_counter()
            sizes.append(run_size(n, args, fast, slow, queries, shape["memory_tokens"], Path(tmp)))
            for kind in ("image", "video"):  # the memory files are large: free the disk as we go
                shutil.rmtree(Path(tmp) / f"{kind}-{n}", ignore_errors=True)
            print(f"N={n}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        trained = None
        if not args.no_train:
            started = time.perf_counter()
            synth = SynthConfig(n_images=args.train_images, n_videos=args.train_videos, seed=args.seed)
            trained = trained_recall(train_small_fast(Path(tmp) / "trained", synth, args.train_epochs, TRAIN_BATCH), args.efs)
            print(f"trained model: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    at_10k = next((s for s in sizes if s["n"] == 10_000), None)
    checks = {
        "rerank20_speedup_at_10k": at_10k["speedup_slow_over_rerank"]["image"]["20"] if at_10k else None,
        "ef_for_recall_0.98": {str(s["n"]): ef_needed(s["recall_clustered"], 0.98) for s in sizes},
        "ef_for_recall_0.98_captions": {str(s["n"]): ef_needed(s["recall_captions"], 0.98) for s in sizes},
        "ef_for_recall_0.98_gaussian": {str(s["n"]): ef_needed(s["recall_gaussian"], 0.98) for s in sizes if "recall_gaussian" in s},
        "ef_for_recall_0.98_trained": ef_needed(trained["recall_captions"], 0.98) if trained else None,
    }
    info["load_avg_at_end"] = common.load_average()
    return {
        "benchmark": "search",
        "script": "benchmarks/bench_search.py",
        "quick": args.quick,
        "params": {
            "sizes": args.sizes, "rounds": args.rounds, "slow_rounds": args.slow_rounds, "per_round": args.per_round,
            "slow_max": args.slow_max, "video_max": args.video_max, "video_slow_items": args.video_slow_items,
            "faiss_hnsw_max": args.faiss_hnsw_max, "threads": args.threads, "recall_queries": args.recall_queries,
            "efs": list(args.efs), "hnsw": {"M": SHIPPED.M, "ef_construction": SHIPPED.ef_construction, "ef_search": SHIPPED.ef_search},
            "seed": args.seed, "cluster_size": PER_CLUSTER, "cluster_spread": SPREAD,
        },
        "models": shape,
        "machine": info,
        "sizes": sizes,
        "trained": trained,
        "checks": checks,
    }


# ----------------------------------------------------------------------------- report


def _slow_cell(s: dict, kind: str, fmt: str) -> str:
    if kind not in s["kinds"]:
        return "-"
    cell = s["slow_only"][kind]
    text = format(cell["ms"], fmt)
    if cell["extrapolated"]:
        return f"{text} (extrapolated from {cell['items_scanned']:,} items)"
    return text


def to_markdown(report: dict) -> str:
    p, m, sizes = report["params"], report["models"], report["sizes"]
    head = "| | " + " | ".join(f"N = {s['n']:,}" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    tok = m["memory_tokens"]
    lines = [
        "# Search: Fast, Slow and Fast+rerank", "",
        f"Produced by `{report['script']}`" + (" (quick run)" if report["quick"] else "") + ". "
        f"Default models (Fast dim {m['fast_dim']}, {m['fast_params'] / 1e6:.2f} M parameters; Slow width {m['slow_width']}, "
        f"{m['slow_params'] / 1e6:.2f} M parameters), random init, torch {p['threads']} thread(s), BLAS {report['machine']['blas_threads']}; "
        f"HNSW at the shipped defaults M={p['hnsw']['M']}, ef_construction={p['hnsw']['ef_construction']}, ef={p['hnsw']['ef_search']}. "
        f"Synthetic index: clustered Fast vectors (about {p['cluster_size']} items per cluster, noise {p['cluster_spread']}x "
        f"the centre's norm), random Slow memories of {tok['image']} tokens per image and {tok['video']} per video "
        f"({m['video_frames']} frames); queries are synthetic captions, encoded per query. "
        f"Python {report['machine']['python']}, torch {report['machine']['torch']}, {report['machine']['cpus']} CPUs "
        f"(load average {report['machine']['load_avg_at_start'][0]} at the start, {report['machine']['load_avg_at_end'][0]} at the end).",
        "", f"**{report['machine']['shared_machine']}**",
        "", "## ms per query, end to end (text encoding included)", "",
        f"Methods take turns, median of {p['rounds']} rounds ({p['slow_rounds']} quer{'y' if p['slow_rounds'] == 1 else 'ies'} for Slow-only). Slow-only scores "
        f"memories already in RAM, measured over all N items up to {p['slow_max']:,} images / {p['video_slow_items']:,} videos; "
        "beyond that the same queries were timed on the first items and scaled linearly to N (marked \"extrapolated\"). "
        "Rerank reads its K memories from the index's mmap. Video indexes are built up to "
        f"N = {p['video_max']:,} (\"-\": not built).", "",
        head, rule,
    ]
    rows = [
        ("text_encoding", "Fast text encoding alone"),
        ("fast_exact", "Fast exact (numpy dot over all)"),
        ("fast_hnsw", f"Fast HNSW (ef {p['hnsw']['ef_search']})"),
    ]
    for key, label in rows:
        lines.append(f"| {label} | " + " | ".join(f"{s['ms_per_query'][key]:.2f}" for s in sizes) + " |")
    for kind in ("image", "video"):
        lines.append(f"| Slow over all {kind}s | " + " | ".join(_slow_cell(s, kind, ",.1f") for s in sizes) + " |")
        for k in RERANK_KS:
            key = f"rerank_{kind}_{k}"
            cells = [f"{s['ms_per_query'][key]:.2f}" if key in s["ms_per_query"] else "-" for s in sizes]
            lines.append(f"| Fast HNSW + rerank K={k}, {kind}s ({tok[kind]} tokens) | " + " | ".join(cells) + " |")
    lines += ["", "## Speed-up of Fast+rerank(K) over Slow-only (same run)", "", head, rule]
    for kind in ("image", "video"):
        for k in RERANK_KS:
            cells = []
            for s in sizes:
                if kind not in s["kinds"]:
                    cells.append("-")
                    continue
                note = " (extrapolated Slow-only)" if s["slow_only"][kind]["extrapolated"] else ""
                cells.append(f"{s['speedup_slow_over_rerank'][kind][str(k)]:,.0f}x{note}")
            lines.append(f"| {kind}s, K = {k} | " + " | ".join(cells) + " |")
    lines += [
        "", "## Outside references on the same vectors (look-up only, no text encoding)", "",
        "Recall@10 against exact search for the cluster queries and the caption queries' Fast vectors; median ms "
        "of a single-query look-up on one thread; build seconds on all cores (ours: see the build line below).", "",
    ]
    for s in sizes:
        lines += [f"N = {s['n']:,}:", "", "| | recall@10 clusters | recall@10 captions | ms / look-up | build s |", "|---|---:|---:|---:|---:|"]
        for r in s["references"]:
            build = "-" if r["build_seconds"] is None else f"{r['build_seconds']:.1f}"
            lines.append(f"| {r['name']} | {r['recall@10_clusters']:.3f} | {r['recall@10_captions']:.3f} | {r['lookup_ms']:.3f} | {build} |")
        lines.append("")
    if faiss_missing := report["machine"]["faiss"] is None:
        lines += ["faiss is not installed, so its rows are missing: `pip install 'fastslow[bench]'`.", ""]
    if not faiss_missing and any(s["n"] > p["faiss_hnsw_max"] for s in sizes):
        lines += [f"faiss IndexHNSWFlat is built only up to N = {p['faiss_hnsw_max']:,} (`--faiss-hnsw-max`): its build is slow here.", ""]
    lines += [
        "## HNSW recall@10 against exact search, by ef (look-up only)", "",
        "Cluster queries are drawn like the items; caption queries are the random model's text vectors, which fall "
        "anywhere relative to the clusters. Median ms of a single-query look-up (cluster queries).", "",
        "| ef | " + " | ".join(f"N = {s['n']:,}: clusters | captions | ms" for s in sizes) + " |",
        "|---:|" + "---:|---:|---:|" * len(sizes),
    ]
    for i, ef in enumerate(p["efs"]):
        cells = [f"{s['recall_clustered'][i]['recall@10']:.3f} | {s['recall_captions'][i]['recall@10']:.3f} | {s['recall_clustered'][i]['lookup_ms']:.3f}" for s in sizes]
        lines.append(f"| {ef} | " + " | ".join(cells) + " |")
    gauss = [s for s in sizes if "recall_gaussian" in s]
    if gauss:
        lines += ["", "Worst case, isotropic Gaussian vectors (no structure):", "",
                  "| ef | " + " | ".join(f"N = {s['n']:,}" for s in gauss) + " |", "|---:|" + "---:|" * len(gauss)]
        for i, ef in enumerate(p["efs"]):
            lines.append(f"| {ef} | " + " | ".join(f"{s['recall_gaussian'][i]['recall@10']:.3f}" for s in gauss) + " |")
    t = report["trained"]
    if t:
        agree = t[f"top1_agreement_ef{DEFAULT_EF}"]
        lines += [
            "", "## A trained Fast model (`trained.py`)", "",
            f"Default Fast model trained here on synthetic captioned media ({t['images']} images, {t['videos']} clips; "
            f"`demo.synth.generate` -> `Workspace.extract` -> `Workspace.train('fast')`, {t['epochs']} epochs, batch {t['batch_size']}; "
            f"synth {t['seconds']['synth']:.0f} s, extract {t['seconds']['extract']:.0f} s, train {t['seconds']['train']:.0f} s). "
            f"Best epoch {t['best_epoch']}: val R@1 {t['val_R@1']:.1f} (chance {t['val_chance_R@1']:.1f}), R@5 {t['val_R@5']:.1f} "
            f"over {t['val_items']} val items. HNSW over the model's vectors of all {t['items']:,} items, queried with the "
            f"{t['query_captions']} val+test captions: at ef {DEFAULT_EF} its first hit is the exact first hit for "
            f"{100 * agree:.1f}% of them. "
            f"Item vectors: mean cosine {t['vector_stats']['mean_pair_cosine']:.2f} between random pairs, "
            f"{t['vector_stats']['mean_nn_cosine']:.2f} to the nearest other item. The collection is small, so HNSW is "
            "near-exact at any ef here; the random-model caption rows above are the harder case.", "",
            "| ef | recall@10 (trained caption queries) | ms |", "|---:|---:|---:|",
        ]
        lines += [f"| {r['ef']} | {r['recall@10']:.3f} | {r['lookup_ms']:.3f} |" for r in t["recall_captions"]]
    c = report["checks"]
    lines += ["", "## Targets", ""]
    if c["rerank20_speedup_at_10k"] is not None:
        verdict = "met" if c["rerank20_speedup_at_10k"] >= 100 else "NOT met"
        lines.append(f"- Fast+rerank(20) over Slow-only at N = 10,000 images (both measured): {c['rerank20_speedup_at_10k']:,.0f}x (target >= 100x: {verdict}).")
    for key, what in (("ef_for_recall_0.98", "clustered"), ("ef_for_recall_0.98_captions", "random-model caption queries"),
                      ("ef_for_recall_0.98_gaussian", "Gaussian worst case")):
        for n, ef in c[key].items():
            lines.append(f"- Recall@10 >= 0.98 at N = {int(n):,} ({what}): " + (f"ef >= {ef}." if ef else "not reached at the ef tried."))
    if t:
        ef = c["ef_for_recall_0.98_trained"]
        lines.append(f"- Recall@10 >= 0.98 on the trained model's vectors (N = {t['items']:,}): " + (f"ef >= {ef}." if ef else "not reached at the ef tried."))
    lines += [
        "", "Vector statistics (mean cosine of random pairs / of each item's nearest neighbour): "
        + "; ".join(f"N = {s['n']:,}: {s['vector_stats']['mean_pair_cosine']:.2f} / {s['vector_stats']['mean_nn_cosine']:.2f}" for s in sizes) + ".",
        "Index build (write_index: memory file, HNSW on all cores, items): "
        + "; ".join(f"N = {s['n']:,}: " + ", ".join(f"{k}s {v:.0f} s" for k, v in s["build_seconds"].items()) for s in sizes) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_output_args(parser, "smoke run: N = 1000, two rounds, a tiny trained model, no Gaussian recall")
    parser.add_argument("--sizes", type=int, nargs="+", help="collection sizes (default 1000 10000 100000)")
    parser.add_argument("--rounds", type=int, help="rounds of the interleaved timing (default 5)")
    parser.add_argument("--per-round", type=int, help="queries per method per round (default 10; video rerank half)")
    parser.add_argument("--slow-rounds", type=int, help="queries timed for Slow-only, one per round (default 3)")
    parser.add_argument("--slow-max", type=int, help="Slow-only over images is measured over at most this many items (default 10000)")
    parser.add_argument("--video-max", type=int, help="largest N with a video index (default 10000: 1.3 GB of memory)")
    parser.add_argument("--video-slow-items", type=int, help="Slow-only over videos is measured over at most this many items (default 1000)")
    parser.add_argument("--faiss-hnsw-max", type=int, help="largest N for the faiss HNSW reference (default 10000)")
    parser.add_argument("--recall-queries", type=int)
    parser.add_argument("--train-images", type=int, help="synthetic images for the trained model (default 600)")
    parser.add_argument("--train-videos", type=int, help="synthetic clips for the trained model (default 60)")
    parser.add_argument("--train-epochs", type=int, help="epochs of the trained model (default 12)")
    parser.add_argument("--no-train", action="store_true", help="skip the trained-model recall")
    parser.add_argument("--efs", type=int, nargs="+", default=list(EFS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.efs = tuple(sorted(args.efs))
    report = run(args)
    common.save(args.out, "search", report, to_markdown(report))


if __name__ == "__main__":
    main()
