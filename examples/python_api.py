"""Search a fastslow workspace from Python, without the command line.

    python examples/python_api.py [QUERY] [--workspace DIR] [--index NAME] [-k N] [--rerank K]

After `fastslow demo` (or `fastslow demo --quick`) this searches the demo's index, which
the demo made the workspace's default. It prints one JSON object per result, the same
objects `fastslow search QUERY --json` prints, so the two can be compared line by line.
"""

from __future__ import annotations

import argparse
import json

import fastslow_cli as fs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", nargs="?", default="a red circle left of a blue square")
    parser.add_argument("--workspace", "-w", default=None, help="default: $FASTSLOW_WORKSPACE, else ./.fastslow")
    parser.add_argument("--index", default=None, help="default: the workspace's default index")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--rerank", type=int, default=20)
    args = parser.parse_args()

    ws = fs.Workspace(args.workspace)
    searcher = ws.searcher(args.index)  # the Fast and Slow models and the index are loaded once
    try:
        hits = searcher.search(args.query, k=args.k, rerank=args.rerank)
    except fs.FastslowError as exc:  # e.g. an empty query: one line, as the CLI does
        raise SystemExit(f"error: {exc}") from None
    for hit in hits:  # fs.Result: rank, id, path, kind, score, fast_score, slow_score, timestamp
        print(json.dumps(hit.to_json(), ensure_ascii=False))


if __name__ == "__main__":
    main()
