"""`extract --engine ray`: decode + backbone on Ray Data actors; the driver stores.

Only the decode and the backbone of the items to do move to Ray; everything else (the
plan, the writer lock, appending parts, the errors file, thumbnails, compaction) stays in
the `extract` process, which consumes these outcome groups exactly as it consumes the
local engine's (`extract._decode_and_store`). So both engines write the same feature set.

Each actor loads the backbone once and keeps one `DecodePool` (one decoder process): a
decoder that segfaults or hangs kills only that child process, the pool retries the file
with PyAV and reports it as failed, as the local engine does. A failure of the actor
itself is therefore a real error, and Ray is told not to retry it (no restarts, no task
retries, no errored blocks allowed): it ends the run with one line, the rows already
appended are kept and a rerun goes on from there.

Media are read by the workers at the paths or URLs the driver found: on a cluster, give URLs
(s3://, gs://: each actor fetches its objects itself, media/location.py) or a filesystem
mounted at the same path on every node (docs/SCALE.md).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.features.backbones import load_backbone
from fastslow_cli.features.extract import ExtractOptions, Outcome, Plan, _batches, outcomes
from fastslow_cli.media.discover import MediaFile
from fastslow_cli.media.pool import DecodeFn, DecodePool
from fastslow_cli.ray_cluster import map_on_actors, ray_session

# Items per Ray task and per output block: small, so work spreads over the actors and the
# driver gets rows (and can append a part) every few items; each costs Ray about a
# millisecond of scheduling.
ITEMS_PER_TASK = 8


class ExtractActor:
    """One Ray actor: a backbone loaded once and a decoder process, for its whole life."""

    def __init__(self, options: ExtractOptions, decode_fn: DecodeFn | None = None) -> None:
        device = "cuda" if options.gpus_per_worker > 0 else options.device
        self._backbone = load_backbone(options.backbone, size=options.size, device=device)
        self._frames_per_batch = options.batch_size
        self._pool = DecodePool(
            size=self._backbone.input_size,
            frames=options.frames,
            decoder=options.decoder,
            workers=1,
            timeout=options.timeout,
            decode_fn=decode_fn,
            thumbnails=options.thumbnails,
        )

    def __call__(self, batch: dict[str, Any]) -> Any:
        """Decode a batch of items, run the backbone; one pickled `Outcome` per item."""
        import pyarrow as pa

        items = [
            MediaFile(id=str(i), path=str(p), kind=str(k), size=int(s), mtime_ns=int(m))
            for i, p, k, s, m in zip(batch["id"], batch["path"], batch["kind"], batch["size"], batch["mtime_ns"])
        ]
        hashes = {str(i): str(h) for i, h in zip(batch["id"], batch["content_hash"])}
        done: list[Outcome] = []
        for group in _batches(self._pool.imap(items), self._frames_per_batch, float("inf")):
            done.extend(outcomes(group, self._backbone, hashes))
        blobs = [pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in done]
        return pa.table({"outcome": pa.array(blobs, pa.large_binary())})

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()


def _rows(todo: Sequence[MediaFile], hashes: dict[str, str]) -> list[dict[str, Any]]:
    """The items as Ray Data rows: what an actor needs to rebuild each `MediaFile`."""
    return [
        {"id": m.id, "path": m.path, "kind": m.kind, "size": m.size, "mtime_ns": m.mtime_ns,
         "content_hash": hashes.get(m.id, "")}
        for m in todo
    ]


@contextmanager
def _ray_data_errors_silenced() -> Iterator[None]:
    """Ray Data logs a failed run with a traceback on stderr; we report it in one line."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _failure(exc: BaseException) -> FastslowError:
    """One line for a failed Ray run. A FastslowError raised in an actor (a backbone that
    cannot load, say) is given back as such; Ray carries it either as the exception or,
    when the actor died of it, only as the last line of its remote traceback."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, FastslowError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    ours = re.match(r"fastslow_cli\.errors\.(\w+): (.+)", last)
    if ours:
        return (UsageError if ours[1] == "UsageError" else FastslowError)(ours[2])
    return FastslowError(
        f"extract on Ray failed: {last[:300].rstrip('.')} "
        "(the rows stored so far are kept: run the same command again to go on)"
    )


def ray_outcomes(
    work: Plan, options: ExtractOptions, decode_fn: DecodeFn | None = None
) -> Generator[list[Outcome], None, None]:
    """Decode and featurise `work.todo` on Ray actors; one group of outcomes per Ray task,
    as they finish. `decode_fn` replaces the decoder (as for `DecodePool`)."""
    with ray_session(options.address) as ray, _ray_data_errors_silenced():
        blocks = max(1, math.ceil(len(work.todo) / ITEMS_PER_TASK))
        items = ray.data.from_items(_rows(work.todo, work.hashes), override_num_blocks=blocks)
        dataset = map_on_actors(
            items,
            ExtractActor,
            workers=min(options.workers, blocks),  # no idle actors
            gpus_per_worker=options.gpus_per_worker,
            fn_constructor_kwargs={"options": options, "decode_fn": decode_fn},
            batch_size=ITEMS_PER_TASK,
            batch_format="numpy",
        )
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - Ray wraps what failed in its own errors
                    raise _failure(exc) from exc
                yield [pickle.loads(blob) for blob in batch.column("outcome").to_pylist()]
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
