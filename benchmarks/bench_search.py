"""Search latency of Fast exact, Fast HNSW, Slow-only and Fast+rerank(K), and HNSW recall, side by side.

    python benchmarks/bench_search.py [--sizes 1000 10000 100000] [--quick] [--out benchmarks/results]

What is measured, at each collection size N, in one run:

- the default Fast and Slow models (`FastConfig()` / `SlowConfig()` for the default
  `pixels` features), randomly initialised with a fixed seed: weights do not change
  the cost of a query, only what it finds;
- a real index folder written by `index.write_index` (the writer `fastslow index build`
  uses) and read back by `SearchIndex`, with synthetic contents (see `item_vectors`):
  Fast vectors with cluster structure, and a Slow memory of 64 tokens x width per item
  (an image at `finest_level` 1: an 8x8 grid), cycled from a pool of random rows;
- per query, end to end, text encoding included: Fast exact (one text encoding + a
  numpy dot product over all N vectors + top-10), Fast HNSW (text + hnswlib top-10 at
  the index's default ef), Slow-only (`SlowRetriever.score` of the query against all N
  cached memories, held in RAM, + top-10) and Fast+rerank(K) (`Searcher.search` with
  `rerank=K`: text, HNSW top-K, K memories read from the mmap, Slow scoring, reorder).
  Methods take turns round by round, so load on this shared machine hits them alike;
  the median round counts. Above `--slow-max` items Slow-only is timed on the first
  `--slow-max` items and extrapolated linearly (it is one decoder pass per item),
  and labelled so;
- HNSW recall@10 against exact search, for in-distribution query vectors, at several
  ef, with the look-up time (no text encoding), for the clustered vectors and, up to
  10k items, for isotropic Gaussian vectors (the worst case for HNSW).

Read the ratios, not the absolute figures: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os

# One BLAS thread unless told otherwise: on a shared 2-core machine a multi-threaded BLAS
# call spins against other processes (a 10k-row numpy dot went from 0.2 to 12 ms).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from fastslow_cli.index.hnsw import AnnIndex, AnnParams, recall_at_k  # noqa: E402
from fastslow_cli.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from fastslow_cli.features.backbones import PixelBackbone  # noqa: E402
from fastslow_cli.index.folder import IndexChunk, SearchIndex, write_index  # noqa: E402
from fastslow_cli.models.fast import FastConfig, FastModel  # noqa: E402
from fastslow_cli.models.slow import SlowConfig, SlowModel  # noqa: E402
from fastslow_cli.search.retrievers import NativeFast, NativeSlow  # noqa: E402
from fastslow_cli.search.searcher import Searcher  # noqa: E402
from fastslow_cli.demo.synth import caption, render_image, sample_scene  # noqa: E402
from fastslow_cli.text.tokenizer import TextTokenizer  # noqa: E402

RERANK_KS = (10, 20, 50)
EFS = (16, 32, 64, 128, 256, 512)
TOP = 10
PER_CLUSTER = 50  # mean items per cluster of the synthetic Fast vectors
SPREAD = 0.8  # noise norm relative to the cluster centre's norm
MEMORY_POOL = 256  # distinct random memories, cycled over the items
GAUSSIAN_MAX = 10_000  # largest N for the Gaussian worst-case recall (its HNSW build is slow)


# ----------------------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def item_vectors(rng: np.random.Generator, n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors and in-distribution query vectors.

    N/50 cluster centres ~ N(0, I); an item (or query) is a random centre plus isotropic
    Gaussian noise of 0.8x the centre's norm, L2-normalised: items of one cluster have
    cosine ~0.6, unrelated items ~0, like the near-duplicate groups a trained encoder
    makes of a collection. Trained weights would be needed for real embeddings.
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
    sims = sample @ vectors.T
    nearest = np.sort(sims, axis=1)[:, -2]  # -1 is the item itself
    pairs = sample @ sample.T
    off = pairs[~np.eye(len(sample), dtype=bool)]
    return {"mean_pair_cosine": round(float(off.mean()), 3), "mean_nn_cosine": round(float(nearest.mean()), 3)}


def chunks(vectors: np.ndarray, pool: list[np.ndarray], size: int = 4096) -> Iterator[IndexChunk]:
    """The index contents: N images (one frame each) with the given Fast vectors and cycled memories."""
    for start in range(0, len(vectors), size):
        stop = min(start + size, len(vectors))
        ids = [f"item{i:06d}.png" for i in range(start, stop)]
        yield IndexChunk(
            ids=ids,
            paths=[f"/bench/{i}" for i in ids],
            kinds=["image"] * len(ids),
            frames=np.ones(len(ids), dtype=np.int64),
            timestamps=[[0.0]] * len(ids),
            vectors=vectors[start:stop],
            frame_vectors=vectors[start:stop],
            memories=[pool[i % len(pool)] for i in range(start, stop)],
            sizes=[0] * len(ids),
            mtimes_ns=[0] * len(ids),
            content_hashes=[""] * len(ids),
        )


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
    # One real rendered image through both models: the widths and memory length the index stores.
    frames = render_image(sample_scene(rng, "image"), backbone.input_size)[None]
    levels = [torch.from_numpy(lv[None].astype(np.float32)) for lv in backbone(frames)]
    with torch.inference_mode():
        memory, _ = slow_model.eval().encode_visual(levels, torch.ones(1, 1, dtype=torch.bool))
    shape = {
        "levels": shapes,
        "fast_dim": fast.dim,
        "slow_width": slow.width,
        "memory_tokens_per_image": int(memory.shape[1]),
        "fast_params": sum(p.numel() for p in fast_model.parameters()),
        "slow_params": sum(p.numel() for p in slow_model.parameters()),
        "fast_config": {k: v for k, v in FastConfig().to_dict().items() if k not in ("level_shapes", "vocab_size")},
        "slow_config": {k: v for k, v in SlowConfig().to_dict().items() if k not in ("level_shapes", "vocab_size")},
        "vocab_size": tok.vocab_size,
    }
    return fast, slow, queries, shape


# ----------------------------------------------------------------------------- timing


def interleaved(methods: dict[str, tuple[Callable[[str], object], int, int]], queries: list[str]) -> dict[str, float]:
    """Median over rounds of ms/query. `methods`: name -> (function, queries per round, rounds);
    each round runs every method still due on its next queries, in turn."""
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
    start = time.perf_counter()
    for q in qvecs:
        fn(q[None])
    return 1000.0 * (time.perf_counter() - start) / len(qvecs)


def exact_top(base: np.ndarray, q: np.ndarray, k: int = TOP) -> np.ndarray:
    """Brute-force top-k rows of `base` (unit rows) for unit query rows `q` (Q, dim)."""
    sims = q @ base.T
    top = np.argpartition(-sims, min(k, base.shape[0] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def recall_curve(ann: AnnIndex, base: np.ndarray, qvecs: np.ndarray, efs: tuple[int, ...]) -> list[dict]:
    truth = exact_top(base, qvecs)
    rows = []
    for ef in efs:
        labels, _ = ann.query(qvecs, TOP, ef=ef)
        rows.append(
            {"ef": ef, "recall@10": round(recall_at_k(labels, truth), 4), "lookup_ms": round(lookup_ms(lambda q: ann.query(q, TOP, ef=ef), qvecs[:100]), 4)}
        )
    return rows


# ----------------------------------------------------------------------------- one size


def run_size(n: int, args: argparse.Namespace, fast: NativeFast, slow: NativeSlow, queries: list[str], memory_tokens: int, tmp: Path) -> dict:
    rng = np.random.default_rng(args.seed + n)
    vectors, qvecs = item_vectors(rng, n, fast.dim, args.recall_queries)
    pool = [rng.standard_normal((memory_tokens, slow.width)).astype(np.float16) for _ in range(MEMORY_POOL)]
    directory = tmp / f"index-{n}"
    start = time.perf_counter()
    write_index(
        directory,
        chunks(vectors, pool),
        fast_identity=fast.identity,
        slow_identity=slow.identity,
        slow_width=slow.width,
        params=AnnParams(),
        feature_set="synthetic (benchmark)",
        feature_fingerprint="synthetic",
    )
    build_s = time.perf_counter() - start
    index = SearchIndex.open(directory)
    searcher = Searcher(index, fast, slow)
    base = np.ascontiguousarray(index.frame_vectors, dtype=np.float32)  # as read back; images: frame = item vector
    n_slow = min(n, args.slow_max)
    slow_memories = index.memories(range(n_slow))  # in RAM, outside the timing: kind to Slow-only

    def fast_exact(q: str) -> object:
        return exact_top(base, fast.encode_texts([q]))

    def fast_hnsw(q: str) -> object:
        return index.ann.query(fast.encode_texts([q]), TOP)

    def slow_only(q: str) -> object:
        scores = slow.score([q], slow_memories)[0]
        return np.argsort(-scores)[:TOP]

    every = (args.per_round, args.rounds)
    methods: dict[str, tuple[Callable[[str], object], int, int]] = {
        "text_encoding": (lambda q: fast.encode_texts([q]), *every),
        "fast_exact": (fast_exact, *every),
        "fast_hnsw": (fast_hnsw, *every),
        **{f"rerank_{k}": ((lambda q, k=k: searcher.search(q, k=TOP, rerank=k)), *every) for k in RERANK_KS},
        "slow_only": (slow_only, 1, args.slow_rounds),  # seconds per query: one per round, fewer rounds
    }
    for fn, _, _ in methods.values():  # warm-up: first-call allocations, page cache
        fn(queries[-1])
    ms = interleaved(methods, queries)
    slow_ms = ms["slow_only"] * n / n_slow
    latency = {name: round(v, 3) for name, v in ms.items() if name != "slow_only"}
    latency["slow_only"] = round(slow_ms, 1)
    result = {
        "n": n,
        "build_seconds": round(build_s, 1),
        "vector_stats": vector_stats(base, rng),
        "ms_per_query": latency,
        "qps": {name: round(1000.0 / v, 2) for name, v in latency.items()},
        "slow_only_measured_items": n_slow,
        "slow_only_extrapolated": n_slow < n,
        "speedup_slow_over_rerank": {str(k): round(slow_ms / ms[f"rerank_{k}"], 1) for k in RERANK_KS},
        "speedup_exact_over_hnsw_lookup": None,
        "recall_clustered": recall_curve(index.ann, base, qvecs, args.efs),
        "recall_captions": recall_curve(index.ann, base, fast.encode_texts(queries), args.efs),
        "exact_lookup_ms": round(lookup_ms(lambda q: exact_top(base, q), qvecs[:100]), 4),
    }
    default_ef = index.ann.params.ef_search
    hnsw_default = next((r for r in result["recall_clustered"] if r["ef"] == default_ef), None)
    if hnsw_default:
        result["speedup_exact_over_hnsw_lookup"] = round(result["exact_lookup_ms"] / hnsw_default["lookup_ms"], 1)
    if n <= GAUSSIAN_MAX and not args.quick:
        gauss = unit(rng.standard_normal((n, fast.dim)))
        gauss_q = unit(rng.standard_normal((args.recall_queries, fast.dim)))
        gauss_ann = AnnIndex.build(gauss, AnnParams(), threads=os.cpu_count() or 1)
        result["recall_gaussian"] = recall_curve(gauss_ann, gauss, gauss_q, args.efs)
    del searcher, index, slow_memories
    return result


def ef_needed(curve: list[dict], target: float) -> int | None:
    return next((r["ef"] for r in curve if r["recall@10"] >= target), None)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    fast, slow, queries, shape = default_models(args.seed)
    sizes = []
    with tempfile.TemporaryDirectory(prefix="fastslow-bench-search-") as tmp:
        for n in args.sizes:
            started = time.perf_counter()
            sizes.append(run_size(n, args, fast, slow, queries, shape["memory_tokens_per_image"], Path(tmp)))
            print(f"N={n}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    at_10k = next((s for s in sizes if s["n"] == 10_000), None)
    checks = {
        "rerank20_speedup_at_10k": at_10k["speedup_slow_over_rerank"]["20"] if at_10k else None,
        "rerank20_speedup_at_10k_ok": (at_10k["speedup_slow_over_rerank"]["20"] >= 100) if at_10k else None,
        "ef_for_recall_0.98": {str(s["n"]): ef_needed(s["recall_clustered"], 0.98) for s in sizes},
        "ef_for_recall_0.98_captions": {str(s["n"]): ef_needed(s["recall_captions"], 0.98) for s in sizes},
        "ef_for_recall_0.98_gaussian": {str(s["n"]): ef_needed(s["recall_gaussian"], 0.98) for s in sizes if "recall_gaussian" in s},
    }
    return {
        "benchmark": "search",
        "quick": args.quick,
        "params": {
            "sizes": args.sizes, "rounds": args.rounds, "slow_rounds": args.slow_rounds, "per_round": args.per_round,
            "slow_max": args.slow_max, "threads": args.threads, "recall_queries": args.recall_queries, "efs": list(args.efs),
            "hnsw": {"M": AnnParams().M, "ef_construction": AnnParams().ef_construction, "ef_search": AnnParams().ef_search},
            "seed": args.seed, "cluster_size": PER_CLUSTER, "cluster_spread": SPREAD,
        },
        "models": shape,
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "hnswlib": getattr(hnswlib, "__version__", "?"),
            "cpus": len(os.sched_getaffinity(0)), "blas_threads": os.environ["OPENBLAS_NUM_THREADS"], "load_avg_at_start": load_at_start, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "sizes": sizes,
        "checks": checks,
    }


# ----------------------------------------------------------------------------- report


def to_markdown(report: dict) -> str:
    p, m, sizes = report["params"], report["models"], report["sizes"]
    head = "| | " + " | ".join(f"N = {s['n']:,}" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    names = [
        ("text_encoding", "Fast text encoding alone"),
        ("fast_exact", "Fast exact (numpy dot over all)"),
        ("fast_hnsw", f"Fast HNSW (ef {p['hnsw']['ef_search']})"),
        ("slow_only", "Slow over all items"),
        *((f"rerank_{k}", f"Fast HNSW + rerank K={k}") for k in RERANK_KS),
    ]

    def slow_cell(s: dict, value: str) -> str:
        return f"{value} (extrapolated from {s['slow_only_measured_items']:,})" if s["slow_only_extrapolated"] else value

    lines = [
        "# Search: Fast, Slow and Fast+rerank", "",
        f"Default models (Fast dim {m['fast_dim']}, {m['fast_params'] / 1e6:.2f} M parameters; Slow width {m['slow_width']}, "
        f"{m['slow_params'] / 1e6:.2f} M parameters; Slow memory {m['memory_tokens_per_image']} tokens per image), random init, "
        f"torch {p['threads']} thread(s), BLAS {report['machine']['blas_threads']}; HNSW M={p['hnsw']['M']}, ef_construction={p['hnsw']['ef_construction']}. "
        f"Synthetic index: clustered Fast vectors (about {p['cluster_size']} items per cluster, noise {p['cluster_spread']}x "
        "the centre's norm), random Slow memories; queries are synthetic captions, encoded per query (text encoding is "
        "included in every row but the last table's). Slow-only scores memories already in RAM; rerank reads its K from "
        f"the index's mmap. Methods take turns, median of {p['rounds']} rounds ({p['slow_rounds']} for Slow-only). "
        f"Python {report['machine']['python']}, torch {report['machine']['torch']}, {report['machine']['cpus']} CPUs, shared "
        f"(load average {report['machine']['load_avg_at_start'][0]} at the start, {report['machine']['load_avg_at_end'][0]} at the end)."
        + (" Quick run." if report["quick"] else ""),
        "", "## ms per query", "", head, rule,
    ]
    for key, label in names:
        cells = [slow_cell(s, f"{s['ms_per_query'][key]:,.1f}") if key == "slow_only" else f"{s['ms_per_query'][key]:.2f}" for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Queries per second", "", head, rule]
    for key, label in names:
        cells = [slow_cell(s, f"{s['qps'][key]:.3g}") if key == "slow_only" else f"{s['qps'][key]:,.1f}" for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Speed-up of Fast+rerank(K) over Slow-only", "", head, rule]
    for k in RERANK_KS:
        lines.append(f"| K = {k} | " + " | ".join(f"{s['speedup_slow_over_rerank'][str(k)]:,.0f}x" for s in sizes) + " |")
    lines += [
        "", "## HNSW recall@10 against exact search (look-up only, no text encoding)", "",
        "Recall for query vectors drawn like the items (clusters) and for the caption queries' Fast text vectors "
        "(captions; the model is untrained, so these fall anywhere relative to the clusters). "
        "Look-up ms per single query (cluster queries); exact = numpy dot over all N.", "",
        "| ef | " + " | ".join(f"N = {s['n']:,}: clusters | captions | ms" for s in sizes) + " |",
        "|---:|" + "---:|---:|---:|" * len(sizes),
    ]
    for i, ef in enumerate(p["efs"]):
        cells = [
            f"{s['recall_clustered'][i]['recall@10']:.3f} | {s['recall_captions'][i]['recall@10']:.3f} | {s['recall_clustered'][i]['lookup_ms']:.3f}"
            for s in sizes
        ]
        lines.append(f"| {ef} | " + " | ".join(cells) + " |")
    lines.append("| exact | " + " | ".join(f"1.000 | 1.000 | {s['exact_lookup_ms']:.3f}" for s in sizes) + " |")
    gauss = [s for s in sizes if "recall_gaussian" in s]
    if gauss:
        lines += [
            "", "Worst case, isotropic Gaussian vectors (no structure):", "",
            "| ef | " + " | ".join(f"N = {s['n']:,}" for s in gauss) + " |", "|---:|" + "---:|" * len(gauss),
        ]
        for i, ef in enumerate(p["efs"]):
            lines.append(f"| {ef} | " + " | ".join(f"{s['recall_gaussian'][i]['recall@10']:.3f}" for s in gauss) + " |")
    c = report["checks"]
    lines += ["", "## Issue 5 targets", ""]
    if c["rerank20_speedup_at_10k"] is not None:
        verdict = "met" if c["rerank20_speedup_at_10k_ok"] else "NOT met"
        lines.append(f"- Fast+rerank(20) over Slow-only at N = 10,000: {c['rerank20_speedup_at_10k']:,.0f}x (target >= 100x: {verdict}).")
    for n, ef in c["ef_for_recall_0.98"].items():
        lines.append(f"- Recall@10 >= 0.98 at N = {int(n):,} (clustered): " + (f"ef >= {ef}." if ef else "not reached at the ef tried."))
    for n, ef in c["ef_for_recall_0.98_captions"].items():
        lines.append(f"- Recall@10 >= 0.98 at N = {int(n):,} (caption queries): " + (f"ef >= {ef}." if ef else "not reached at the ef tried."))
    for n, ef in c["ef_for_recall_0.98_gaussian"].items():
        lines.append(f"- Recall@10 >= 0.98 at N = {int(n):,} (Gaussian worst case): " + (f"ef >= {ef}." if ef else "not reached at the ef tried."))
    lines += [
        "", "Vector statistics (mean cosine of random pairs / of each item's nearest neighbour): "
        + "; ".join(f"N = {s['n']:,}: {s['vector_stats']['mean_pair_cosine']:.2f} / {s['vector_stats']['mean_nn_cosine']:.2f}" for s in sizes) + ".",
        "Index build (write_index: memory file, HNSW, items): " + "; ".join(f"N = {s['n']:,}: {s['build_seconds']:.0f} s" for s in sizes) + ".",
        "", "Timings are from one run on a shared machine: compare within the tables.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="collection sizes (default 1000 10000 100000)")
    parser.add_argument("--quick", action="store_true", help="sizes 1000 and 10000, fewer rounds, no Gaussian recall")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the interleaved timing (default 7, quick 3)")
    parser.add_argument("--per-round", type=int, default=None, help="queries per method per round (default 10, quick 5)")
    parser.add_argument("--slow-max", type=int, default=None, help="Slow-only is timed on at most this many items (default 10000, quick 5000)")
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--efs", type=int, nargs="+", default=list(EFS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    args.sizes = args.sizes or ([1000, 10_000] if args.quick else [1000, 10_000, 100_000])
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.per_round = args.per_round or (5 if args.quick else 10)
    args.slow_max = args.slow_max or (5000 if args.quick else 10_000)
    args.slow_rounds = 1 if args.quick else 5
    args.efs = tuple(sorted(args.efs))

    report = run(args)
    markdown = to_markdown(report)
    atomic_write_json(args.out / "search.json", report)
    atomic_write_text(args.out / "search.md", markdown)
    print(markdown)
    print(f"saved {args.out / 'search.json'} and {args.out / 'search.md'}")


if __name__ == "__main__":
    main()
