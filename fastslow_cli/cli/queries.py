"""The queries of `fastslow search`: the command line's, or one per line of stdin for `-`."""

from __future__ import annotations

import sys
from collections.abc import Iterator


def read_queries(queries: list[str]) -> Iterator[str]:
    """The queries in order; `-` reads one per line from stdin (blank lines skipped)."""
    for q in queries:
        if q == "-":
            for line in sys.stdin:
                if line.strip():
                    yield line.rstrip("\n")
        else:
            yield q
