"""User-facing errors.

Anything the user can fix (a bad file, a missing model, a wrong flag) is raised as a
`FastslowError` whose message is one line naming the file and the fix; the CLI prints
it without a traceback and exits with `exit_code`.
"""

from __future__ import annotations


class FastslowError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(FastslowError):
    """Bad usage: wrong arguments or options (exit code 2)."""

    exit_code = 2


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, short enough for one error line
    (what a `FastslowError` quotes of a library's failure)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip().rstrip(".")[:300]
    return type(exc).__name__
