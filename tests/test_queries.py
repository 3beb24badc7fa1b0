"""Reading search queries: command-line ones, and stdin lines decoded one by one."""

from __future__ import annotations

import io
import os
import threading

from fastslow_cli.cli.queries import Query, read_queries


def test_command_line_queries_and_stdin_lines_in_order() -> None:
    stdin = io.BytesIO(b"a red circle\r\n\n   \nbig  dog\n")
    assert list(read_queries(["first", "-", "last"], stdin)) == [
        Query("first"), Query("a red circle", 1), Query("big  dog", 4), Query("last")
    ]


def test_a_line_that_is_not_utf8_is_reported_and_the_others_kept() -> None:
    """Issue 9: `printf 'a red circle\\na red \\xff\\xfe circle\\n' | fastslow search -` lost the rest."""
    stdin = io.BytesIO(b"a red circle\na red \xff\xfe circle\ncaf\xc3\xa9 au lait\nlast one")
    queries = list(read_queries(["-"], stdin))
    assert [(q.text, q.line) for q in queries] == [("a red circle", 1), ("", 2), ("café au lait", 3), ("last one", 4)]
    bad = queries[1]
    assert bad.problem is not None and "\n" not in bad.problem
    assert "not valid UTF-8" in bad.problem and "0xff at position 7" in bad.problem and "iconv" in bad.problem
    assert all(q.problem is None for q in queries if q is not bad)


def test_byte_order_mark_and_crlf_removed() -> None:
    stdin = io.BytesIO("\ufeffa dog\r\n\ufeffa cat\r\n".encode())
    assert [q.text for q in read_queries(["-"], stdin)] == ["a dog", "\ufeffa cat"]  # a BOM only starts a file


def test_stdin_lines_are_streamed() -> None:
    """The first line is yielded while the writer still holds the pipe open."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "wb") as writer:
        writer.write(b"first query\n")
        writer.flush()
        queries = read_queries(["-"], reader)
        got: list[Query] = []
        thread = threading.Thread(target=lambda: got.append(next(queries)), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert got == [Query("first query", 1)]
        writer.write(b"second\n")
        writer.close()
        assert list(queries) == [Query("second", 2)]
