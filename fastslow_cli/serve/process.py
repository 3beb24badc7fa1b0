"""`fastslow serve` in a child process, for code that needs a real server on a real socket
(the browser tests, `benchmarks/bench_serve.py`, a notebook): started on a free loopback
port, its URL read from the `serving http://...` line it prints, stopped on exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from fastslow_cli.errors import FastslowError

_SERVING = re.compile(r"serving (http://\S+/)")


@contextmanager
def served(
    workspace: Path,
    log: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[tuple[str, int]]:
    """Run `fastslow serve -w WORKSPACE --port 0 ARGS`; yield (its URL, its PID) once it is
    listening. Its stderr goes to `log` (quoted in the error when it does not start in
    `timeout` seconds); it is terminated, then killed if it lingers, when the block ends."""
    command = [sys.executable, "-m", "fastslow_cli", "serve", "-w", os.fspath(workspace), "--port", "0", *args]
    with log.open("w") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ if env is None else env))
    try:
        deadline = time.monotonic() + timeout
        while not (said := _SERVING.search(log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FastslowError(f"fastslow serve did not start (its stderr is in {log}): {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield said.group(1), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
