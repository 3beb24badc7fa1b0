"""`errors.one_line`: what an error message quotes of a library's failure."""

from __future__ import annotations

from fastslow_cli.errors import one_line


def test_one_line_takes_the_first_non_empty_line_without_its_full_stop() -> None:
    assert one_line(ValueError("\n  bad header.\nTraceback details\n")) == "bad header"
    assert one_line(OSError("x" * 500)) == "x" * 300
    assert one_line(KeyError()) == "KeyError"  # nothing to quote: the exception's type
