"""Load on `fastslow serve`: latency, throughput and memory of `/api/search` over loopback.

    python benchmarks/bench_serve.py -w WORKSPACE [--index NAME] [--requests 2000]
        [--concurrency 1 4 16] [--rerank 20] [--quick] [--out DIR]

What is measured, in one run:

- the real `fastslow serve -w WORKSPACE --port 0` in a subprocess, as it ships (its
  environment without the one-BLAS-thread setting this script uses for itself), models and
  index loaded once;
- at each concurrency C, `--requests` GET `/api/search?q=...&k=10` sent by C clients at
  once (httpx's AsyncClient, each client sends its next request when its answer came),
  first without re-ranking, then with `rerank=K` (`--rerank`); queries cycle through 200
  distinct captions of the demo's grammar (`synth.caption` of random scenes), so no two
  consecutive requests repeat;
- per setting: p50 and p99 latency (client side, sent to answer read), requests per
  second over the setting's wall time, and errors (any answer but 200, or no answer);
- the server's resident memory (VmRSS from /proc/PID/status) after start-up and warm-up,
  after each setting and at the end: it must not grow with the number of requests (the
  warm-up runs at the highest concurrency, so the server's worker threads exist before).

The server answers one search at a time (the models are shared and the cores few), so
concurrency raises latency, not throughput: what it shows is that queued requests are all
answered, none fails.
"""

from __future__ import annotations

# isort: off
import common  # first: sets the BLAS threads before numpy loads
# isort: on

import argparse
import asyncio
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fastslow_cli.demo.synth import caption, sample_scene

QUERIES = 200
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def queries(count: int, seed: int) -> list[str]:
    """`count` distinct captions of the demo's grammar (images and clips)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen[caption(sample_scene(rng, "image" if len(seen) % 4 else "clip"))] = None
    return list(seen)


def rss_kib(pid: int) -> dict[str, int]:
    """Resident memory of process `pid` in KiB (Linux /proc): all of it, and the anonymous part
    (the heap: what a leak grows; file pages of the mmap-ed index come and go with the page cache)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))
            for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"))}


@contextmanager
def server(workspace: Path, index: str | None, log: Path, timeout: float = 300.0) -> Iterator[tuple[str, int]]:
    """`fastslow serve` on a free loopback port (this checkout's code, no BLAS thread caps); yields (URL, PID)."""
    from fastslow_cli.serve.process import served

    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env["PYTHONPATH"] = os.pathsep.join([os.fspath(common.ROOT), env.get("PYTHONPATH", "")])
    with served(workspace, log, ["--index", index] if index else [], env=env, timeout=timeout) as running:
        yield running


async def load(url: str, texts: list[str], requests: int, concurrency: int, rerank: int) -> dict[str, Any]:
    """`requests` searches by `concurrency` clients at once: latencies, QPS, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in sent:
            params = {"q": texts[i % len(texts)], "k": 10, "rerank": rerank}
            start = time.perf_counter()
            try:
                answer = await http.get("api/search", params=params)
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code}: {answer.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"rerank": rerank, "concurrency": concurrency, "requests": requests, "errors": len(errors),
            "error_examples": errors[:3], "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "qps": round(requests / wall, 1),
            "seconds": round(wall, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = queries(QUERIES, args.seed)
    machine = common.machine(httpx=httpx.__version__)
    with tempfile.TemporaryDirectory() as tmp, server(args.workspace, args.index, Path(tmp) / "serve.log") as (url, pid):
        health = httpx.get(url + "api/health", timeout=60).json()
        if args.rerank and not health["rerank"]:
            raise SystemExit(f"{args.workspace}: the index has no Slow model, so --rerank {args.rerank} cannot be measured")
        rss = {"after_start": rss_kib(pid)}
        for rerank in dict.fromkeys((0, args.rerank)):  # warm-up at the highest concurrency: the server's
            asyncio.run(load(url, texts, args.warmup, max(args.concurrency), rerank))  # threads and buffers exist
        rss["after_warmup"] = rss_kib(pid)
        rows = []
        for rerank in dict.fromkeys((0, args.rerank)):
            for concurrency in args.concurrency:
                rows.append(asyncio.run(load(url, texts, args.requests, concurrency, rerank)))
                rows[-1]["rss_kib_after"] = rss_kib(pid)
        rss["at_end"] = rss_kib(pid)
    return {
        "machine": {**machine, "load_avg_at_end": common.load_average()},
        "quick": args.quick,
        "params": {"workspace": os.fspath(args.workspace), "index": health["index"], "items": health["items"],
                   "k": 10, "rerank": args.rerank, "requests": args.requests, "concurrency": args.concurrency,
                   "warmup": args.warmup, "distinct_queries": QUERIES},
        "rows": rows,
        "rss_kib": rss,
        "rss_growth_after_warmup_kib": {k: rss["at_end"][k] - rss["after_warmup"][k] for k in ("rss", "anon")},
        "errors": sum(r["errors"] for r in rows),
    }


def to_markdown(report: dict[str, Any]) -> str:
    p, rss, growth = report["params"], report["rss_kib"], report["rss_growth_after_warmup_kib"]
    lines = [
        "# fastslow serve under load",
        "",
        f"`/api/search?k=10` over loopback on index `{p['index']}` ({p['items']} items, `{p['workspace']}`), "
        f"{p['requests']} requests per row by C concurrent httpx clients, after {p['warmup']} warm-up requests per mode "
        f"at C = {max(p['concurrency'])}."
        + (" Quick smoke run." if report["quick"] else ""),
        "",
        "| re-rank | C | requests | errors | p50 ms | p99 ms | QPS | server RSS after (MiB) | of which heap (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['rerank'] or 'off'} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['qps']} | {r['rss_kib_after']['rss'] / 1024:.1f} | {r['rss_kib_after']['anon'] / 1024:.1f} |")
    lines += [
        "",
        "Server RSS (heap, i.e. anonymous memory, in brackets): " + ", ".join(
            f"{rss[k]['rss'] / 1024:.1f} ({rss[k]['anon'] / 1024:.1f}) MiB {label}" for k, label in
            (("after_start", "after start-up"), ("after_warmup", "after warm-up"), ("at_end", "at the end")))
        + (f"; growth after warm-up {growth['rss'] / 1024:+.1f} ({growth['anon'] / 1024:+.1f}) MiB. The rest of RSS is "
           f"pages of the mmap-ed index read so far. Errors in total: {report['errors']}."),
        "",
        "The server answers one search at a time, so more concurrent clients raise latency (queueing), not QPS.",
        "",
        (f"{report['machine']['shared_machine']} Load average {report['machine']['load_avg_at_start']} at the start, "
         f"{report['machine']['load_avg_at_end']} at the end; {report['machine']['cpus']} CPUs."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_output_args(parser, "smoke run: 40 requests per row at concurrency 1 and 4, 8 warm-up requests")
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="workspace with an index (and a Slow model)")
    parser.add_argument("--index", help="index name (default: the workspace's default index)")
    parser.add_argument("--requests", type=int, help="requests per row (default 2000; quick 40)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="concurrent clients per row (default 1 4 16; quick 1 4)")
    parser.add_argument("--rerank", type=int, default=20, help="re-ranking K of the second half of the rows (0: only Fast)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per mode (default 50; quick 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.requests = args.requests or (40 if args.quick else 2000)
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 4, 16])
    args.warmup = args.warmup if args.warmup is not None else (8 if args.quick else 50)
    report = run(args)
    common.save(args.out, "serve", report, to_markdown(report))
    if report["errors"]:
        raise SystemExit(f"{report['errors']} request(s) failed: {report['rows']}")


if __name__ == "__main__":
    main()
