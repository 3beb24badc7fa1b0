"""The queries of `fastslow search`: those on the command line, and `-` for one per line of stdin.

stdin is read as bytes and decoded line by line, so a line that is not UTF-8 (a Latin-1
file, a stray binary paste) is reported by its number and skipped while the other lines
are still searched; text-mode stdin would instead raise on it and lose the rest of the
batch. Lines are streamed: a query is answered as soon as its line arrives.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

BOM = "\ufeff"


@dataclass(frozen=True)
class Query:
    """One query; `line` is its stdin line number (None for a command-line query) and
    `problem` says why it cannot be searched (then `text` is empty and the line is skipped)."""

    text: str
    line: int | None = None
    problem: str | None = None


def read_queries(args: Sequence[str], stdin: BinaryIO | None = None) -> Iterator[Query]:
    """The command-line queries in order, `-` standing for the lines of `stdin` (default: sys.stdin).

    Blank lines are skipped; CRLF and LF endings and a UTF-8 byte-order mark are removed.
    """
    for arg in args:
        if arg != "-":
            yield Query(arg)
            continue
        stream = stdin if stdin is not None else sys.stdin.buffer
        for number, raw in enumerate(stream, start=1):
            query = _decode_line(raw, number)
            if query is not None:
                yield query


def _decode_line(raw: bytes, number: int) -> Query | None:
    """The query of one stdin line; None for a blank line (no mistake, nothing to search)."""
    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Query(
            "",
            number,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1}): "
            "save the queries as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        )
    if number == 1:
        text = text.removeprefix(BOM)
    return Query(text, number) if text.strip() else None
