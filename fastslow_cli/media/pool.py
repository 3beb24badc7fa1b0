"""Decoding in child processes, so that a decoder crash or hang costs one file, not the run.

decord can segfault or abort the whole process on a corrupt file (dmlc/decord #25, #99,
#229; `try/except` cannot catch that) and can hang. Each worker process decodes one file
at a time; if it dies or overruns the timeout, the parent kills it, starts a fresh one
and retries that file with the next decoder (decord -> PyAV), then goes on with the rest.

Workers come from the "forkserver" start method where available (else "spawn"): never a
plain fork of a parent that may already run torch threads. So, as with any spawn-style
multiprocessing, a script using this module needs the `if __name__ == "__main__":` guard.
Each worker also holds a lifeline pipe to the parent and exits when it breaks, so no
worker outlives its parent, even a hung one after `kill -9`.
"""

from __future__ import annotations

import heapq
import importlib.util
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from types import TracebackType

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.media.discover import MediaFile
from fastslow_cli.media.location import clear_scratch
from fastslow_cli.media.decode import Decoded, MediaError, decode, decode_with_thumbnails

DecodeFn = Callable[[MediaFile, int, int, str], Decoded]

_PLANS = {"auto": ["decord", "av"], "decord": ["decord"], "av": ["av"]}
_START_TIMEOUT = 60.0  # seconds for a fresh worker to import its modules and report ready


@dataclass
class DecodeResult:
    """The outcome for one item: frames, or a one-line reason, plus every attempt made."""

    item: MediaFile
    decoded: Decoded | None
    error: str | None
    attempts: list[str]


# ----------------------------------------------------------------------------- child side


def _worker_main(
    conn: Connection, alive: Connection, decode_fn: DecodeFn, size: int, frames: int
) -> None:
    """Child loop: receive (seq, item, decoder), send back ("ok"|"error", seq, payload)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    threading.Thread(target=_exit_with_parent, args=(alive,), daemon=True).start()
    _silence_stdio()
    conn.send(("ready", -1, None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # parent gone
            return
        if task is None:
            return
        seq, item, decoder = task
        try:
            reply = ("ok", seq, decode_fn(item, size, frames, decoder))
        except MediaError as exc:
            reply = ("error", seq, str(exc))
        except Exception as exc:  # noqa: BLE001 - report, never let one file kill the worker
            reply = ("error", seq, " ".join(f"{type(exc).__name__}: {exc}".split())[:300])
        conn.send(reply)


def _exit_with_parent(alive: Connection) -> None:
    """End this process as soon as the parent is gone, even in the middle of a hung decode.

    Only the parent holds the other end of `alive`, so EOF means it died (even by
    `kill -9`). Decoders release the GIL while in C, so this thread gets to run.
    """
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(0)


def _silence_stdio() -> None:
    """Decoders print to fds 1 and 2; keep stdout clean for --json and stderr for progress."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


# ----------------------------------------------------------------------------- parent side


@dataclass
class _Job:
    seq: int
    item: MediaFile
    plan: list[str]
    attempts: list[str] = field(default_factory=list)
    result: DecodeResult | None = None


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    alive: Connection  # the parent's end of the child's lifeline: closing it ends the child
    started: float
    ready: bool = False
    job: _Job | None = None
    decoder: str = ""
    deadline: float = float("inf")


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Import the decoders once in the fork server; restarted workers then start fast.
        ctx.set_forkserver_preload(["fastslow_cli.media.decode", "av"])
        return ctx
    return mp.get_context("spawn")


class DecodePool:
    """Worker processes that decode media files, isolated from each other and the parent.

    Use as a context manager; `close()` (or leaving the `with` block, also on Ctrl+C)
    kills every worker. `decoder` is "auto" (decord, then PyAV on any failure), "decord"
    or "av". `thumbnails` asks for `Decoded.thumbnails` (`media.decode_with_thumbnails`).
    `decode_fn` replaces `media.decode` (a picklable module-level function).
    """

    def __init__(
        self,
        size: int,
        frames: int,
        decoder: str = "auto",
        workers: int = 2,
        timeout: float = 60.0,
        decode_fn: DecodeFn | None = None,
        thumbnails: bool = False,
    ) -> None:
        if decoder not in _PLANS:
            raise UsageError(f"unknown --decoder {decoder!r}: use auto, decord or av")
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if timeout <= 0:
            raise UsageError(f"the decode timeout must be positive, got {timeout}")
        plan = list(_PLANS[decoder])
        if decoder == "auto" and decode_fn is None and importlib.util.find_spec("decord") is None:
            plan = ["av"]  # decord is not available on this platform
        self._plan = plan
        self._size = size
        self._frames = frames
        self._nworkers = workers
        self._timeout = timeout
        self._decode_fn = decode_fn or (decode_with_thumbnails if thumbnails else decode)
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self._window = 4 * workers  # items admitted but not yet yielded: bounds memory
        self._closed = False

    # -- lifecycle

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker and reap it; safe to call twice."""
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            if w.proc.is_alive():
                w.proc.terminate()
        for w in workers:
            self._reap(w)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (for diagnostics and tests)."""
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    # -- the main loop

    def imap(self, items: Iterable[MediaFile], tick: float | None = None) -> Iterator[DecodeResult | None]:
        """Decode `items`, yielding results in input order as soon as each is ready.

        With `tick`, also yield None whenever `tick` seconds pass without a result, so the
        caller can save its work on time even while a slow file decodes.
        """
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        source = iter(items)
        jobs: dict[int, _Job] = {}
        todo: list[int] = []  # heap of job seqs waiting for a worker, oldest first
        next_in = next_out = 0
        exhausted = False
        last = time.monotonic()
        try:
            while True:
                while not exhausted and next_in - next_out < self._window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    plan = ["pillow"] if item.kind == "image" else list(self._plan)
                    jobs[next_in] = _Job(next_in, item, plan)
                    heapq.heappush(todo, next_in)
                    next_in += 1
                self._dispatch(jobs, todo)
                head = jobs.get(next_out)
                if head is not None and head.result is not None:
                    del jobs[next_out]
                    next_out += 1
                    last = time.monotonic()
                    yield head.result
                    continue
                if not jobs:
                    return
                if tick is not None and time.monotonic() - last >= tick:
                    last = time.monotonic()
                    yield None
                    continue
                self._wait(todo, None if tick is None else last + tick - time.monotonic())
        finally:
            self._abandon_busy()

    def _dispatch(self, jobs: dict[int, _Job], todo: list[int]) -> None:
        """Hand each idle worker the oldest waiting job; start workers for what is left."""
        for w in list(self._workers):
            if todo and w.ready and w.job is None:
                job = jobs[heapq.heappop(todo)]
                decoder = job.plan[len(job.attempts)]
                # Images ignore the decoder argument; pass a valid one all the same.
                task = (job.seq, job.item, self._plan[0] if decoder == "pillow" else decoder)
                try:
                    w.conn.send(task)
                except OSError:  # the worker died while idle: the job never ran
                    heapq.heappush(todo, job.seq)
                    self._discard(w)
                    continue
                w.job, w.decoder = job, decoder
                w.deadline = time.monotonic() + self._timeout
        while todo and len(self._workers) < self._nworkers:
            self._workers.append(self._start_worker())

    def _wait(self, todo: list[int], limit: float | None = None) -> None:
        """Block until a worker replies, dies or overruns its deadline (or `limit` seconds
        pass); handle that."""
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.job is not None]
        deadlines += [w.started + _START_TIMEOUT for w in self._workers if not w.ready]
        if limit is not None:
            deadlines.append(now + limit)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        waitables = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
        ready = set(wait(waitables, timeout))
        for w in list(self._workers):
            if w.conn in ready:
                try:
                    kind, seq, payload = w.conn.recv()
                except (EOFError, OSError):
                    self._on_death(w, todo)
                    continue
                if kind == "ready":
                    w.ready = True
                elif w.job is not None and seq == w.job.seq:
                    job, w.job, w.deadline = w.job, None, float("inf")
                    if kind == "ok":
                        self._finish_attempt(job, payload.decoder, "ok", None, todo, payload)
                    else:
                        self._finish_attempt(job, w.decoder, payload, payload, todo)
            elif w.proc.sentinel in ready:
                self._on_death(w, todo)
        now = time.monotonic()
        for w in list(self._workers):
            if w.job is not None and now >= w.deadline:
                job = w.job
                self._discard(w)
                after = f"timed out after {self._timeout:g} s"
                self._finish_attempt(job, w.decoder, after, f"decoder {after}", todo)
            elif not w.ready and now >= w.started + _START_TIMEOUT:
                self._discard(w)
                raise FastslowError(
                    f"a decode worker did not start within {_START_TIMEOUT:g} s: "
                    "check that numpy, Pillow and PyAV import cleanly (python -c 'import av')"
                )

    def _on_death(self, w: _Worker, todo: list[int]) -> None:
        """A worker's process ended: blame its current file, if any, and replace it later."""
        code = self._discard(w)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            attempt, error = f"crashed (signal {name})", f"decoder crashed ({name})"
        else:
            attempt, error = f"crashed (exit code {code})", f"decoder crashed (exit code {code})"
        if w.job is not None:
            self._finish_attempt(w.job, w.decoder, attempt, error, todo)
        elif not w.ready:
            raise FastslowError(
                f"a decode worker died while starting ({error}): "
                "check that numpy, Pillow and PyAV import cleanly (python -c 'import av')"
            )

    def _finish_attempt(
        self,
        job: _Job,
        decoder: str,
        outcome: str,
        error: str | None,
        todo: list[int],
        decoded: Decoded | None = None,
    ) -> None:
        job.attempts.append(f"{decoder}: {outcome}")
        if decoded is not None:
            job.result = DecodeResult(job.item, decoded, None, job.attempts)
        elif len(job.attempts) < len(job.plan):
            heapq.heappush(todo, job.seq)  # retry with the next decoder
        else:
            job.result = DecodeResult(job.item, None, error, job.attempts)

    # -- process management

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        lifeline, alive = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, lifeline, self._decode_fn, self._size, self._frames),
            name="fastslow-decode",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # so the parent sees EOF when the child dies
        lifeline.close()
        return _Worker(proc=proc, conn=parent_conn, alive=alive, started=time.monotonic())

    def _discard(self, w: _Worker) -> int | None:
        """Kill and reap one worker, forget it, and return its exit code."""
        if w in self._workers:
            self._workers.remove(w)
        if w.proc.is_alive():
            w.proc.kill()
        return self._reap(w)

    @staticmethod
    def _reap(w: _Worker) -> int | None:
        """Wait for a worker that was told to stop; free its pipe and process handles."""
        w.proc.join(timeout=5)
        if w.proc.is_alive():  # ignored SIGTERM, or stuck in the kernel: insist
            w.proc.kill()
            w.proc.join(timeout=5)
        code = w.proc.exitcode
        if w.proc.pid is not None:
            clear_scratch(w.proc.pid)  # objects it was fetching when it crashed or was killed
        w.conn.close()
        w.alive.close()
        if code is not None:
            w.proc.close()
        return code

    def _abandon_busy(self) -> None:
        """The consumer stopped early: workers still busy would reply to a dead loop."""
        for w in [w for w in self._workers if w.job is not None]:
            w.job = None
            self._discard(w)


__all__ = ["DecodePool", "DecodeResult"]
