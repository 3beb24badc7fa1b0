"""Item encoding on Ray (`index build --engine ray`): the Fast vectors, frame vectors and Slow
memory of every item computed by Ray Data actors, streamed back in order to the same writer.

The driver (the `fastslow index build` process) cuts the ids into chunks, and one Ray Data job
maps them through `EncodeActor`s (`ActorPoolStrategy(size=workers)`). Each actor loads the Fast
(and Slow) model once, from the folder or hub id the driver loaded it from, and opens the feature
set at its path: workers read the Parquet parts themselves, no features travel through the
driver. A chunk becomes exactly the `IndexChunk` the local engine computes (`encode_table`),
pickled (arrays stay exact). The driver takes the chunks back in order and hands them to
`write_index` or the sharded writer, unchanged: same files, same labels, same progress events.

Workers must see the feature set and the model folders at the same paths as the driver (a shared
mount on a cluster; a hub id must be in their cache), and have fastslow installed. An actor
checks the models' content hashes and the feature set's fingerprint against the driver's, so a
worker with other files fails with one line instead of writing a mixed index.

No retries: actors have `max_restarts=0` and `max_task_retries=0`, and Ray Data's error budgets
are 0. An error in an actor (loading a model, reading a part, encoding) comes back as one line and
the driver raises it as a `FastslowError`; `write_index` then leaves the previous index as it was.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastslow_cli.errors import FastslowError, UsageError, one_line
from fastslow_cli.index.folder import CHUNK, IndexChunk, encode_table
from fastslow_cli.ray_cluster import ACTOR_CPUS, map_on_actors, ray_session
from fastslow_cli.media.location import is_url
from fastslow_cli.store.parquet import FeatureStore, StoreEntry
from fastslow_cli.store.published import PublishedFeatures, part_files

if TYPE_CHECKING:
    from fastslow_cli.search.retrievers import FastRetriever, SlowRetriever

MIN_CHUNK = 16  # ids per Ray task at least: below this a task's overhead (ms) outweighs its work
CHUNKS_PER_WORKER = 4  # tasks per actor at least, when the set is large enough: every actor gets work
DEFAULT_WORKERS = 2


def chunk_size(count: int, workers: int) -> int:
    """Ids per Ray task: `count` ids cut into at least CHUNKS_PER_WORKER tasks per actor (so each
    of them gets work, and progress moves as chunks come back), never more than CHUNK (the local
    engine's memory bound per chunk) nor fewer than MIN_CHUNK."""
    return max(MIN_CHUNK, min(CHUNK, -(-count // (max(workers, 1) * CHUNKS_PER_WORKER))))


@dataclass(frozen=True)
class ModelRef:
    """A model as an actor loads it: where (a folder or a hub id) and what it must hash to."""

    location: str
    content_hash: str

    @classmethod
    def of(cls, retriever: Any, kind: str) -> ModelRef:
        identity = retriever.identity
        location, digest = identity.get("path"), identity.get("content_hash")
        if not location or not digest:
            raise FastslowError(f"the {kind} model has no recorded location or content hash: --engine ray loads models from their folders")
        return cls(str(location), str(digest))


class EncodeActor:
    """A Ray Data actor: the models and the feature set opened once, then one chunk per call.

    Errors are returned, not raised, so that Ray neither retries nor logs a traceback: the
    driver raises the first one as one line."""

    def __init__(self, store_dir: str, fingerprint: str, fast: ModelRef, slow: ModelRef | None, device: str) -> None:
        self.where = f"Ray worker {socket.gethostname()} (pid {os.getpid()})"
        self.error: str | None = None
        try:
            from fastslow_cli.search.retrievers import load_fast, load_slow

            self.store = PublishedFeatures(store_dir) if is_url(store_dir) else FeatureStore(Path(store_dir))
            if self.store.fingerprint() != fingerprint:
                raise FastslowError(
                    f"the feature set at {store_dir} is not the one the driver reads (another fingerprint): "
                    "give every worker the same feature set at the same path"
                )
            self.fast = _checked(load_fast(fast.location, device), fast, "Fast")
            self.slow = _checked(load_slow(slow.location, device), slow, "Slow") if slow is not None else None
        except Exception as exc:  # noqa: BLE001 - reported to the driver as one line (no Ray retry, no traceback)
            self.error = _describe(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        seq = [int(s) for s in batch["seq"]]
        try:
            if self.error is not None:
                raise FastslowError(self.error)
            ids, sources = pickle.loads(batch["task"][0])
            chunk = encode_table(self.store.load(ids), sources, self.fast, self.slow)
            return {"seq": seq, "chunk": [pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)], "error": [""]}
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            message = exc.args[0] if isinstance(exc, FastslowError) and exc.args else _describe(exc)
            return {"seq": seq, "chunk": [b""], "error": [f"{self.where}: {message}"]}


def _check_published(store: FeatureStore, url: str) -> str:
    """`url` when the copy published there is the set as it is now (the same parts, each of the
    same size and mtime), else one line saying to publish again: workers must not encode old rows."""
    copy = PublishedFeatures(url)
    copy.manifest()
    if copy.fingerprint() != store.fingerprint() or copy.published_files() != part_files(store.parts()):
        raise FastslowError(
            f"the copy at {url} is not feature set {store.directory.name} as it is now: publish it again "
            f"(`fastslow extract ... --set {store.directory.name} --publish {url}`), then build"
        )
    return url


def _checked(retriever: Any, ref: ModelRef, kind: str) -> Any:
    if retriever.identity.get("content_hash") != ref.content_hash:
        raise FastslowError(
            f"the {kind} model at {ref.location} is not the one the driver loaded (another content hash): "
            "give every worker the same model files at the same path"
        )
    return retriever


def _describe(exc: BaseException) -> str:
    """One line for an actor's error: a FastslowError's own message (it names the fix), else the
    exception's type and first line, and how to see the whole traceback."""
    if isinstance(exc, FastslowError):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)} (the same build with --engine local shows the traceback)"


@dataclass
class RayEncoder:
    """An `Encoder` (index/folder.py) whose chunks are encoded by `workers` Ray actors, each with
    ACTOR_CPUS CPUs and `gpus_per_worker` GPUs (then on device cuda), on the Ray `address`
    reaches (`ray_cluster.ray_session`: a Ray already initialised in this process is reused)."""

    address: str | None = None
    workers: int = DEFAULT_WORKERS
    gpus_per_worker: float = 0.0
    features_url: str | None = None  # the actors read the set's published copy there (store/published.py)

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UsageError(f"--workers {self.workers!r} is invalid: use a whole number of Ray actors, 1 or more")
        if not self.gpus_per_worker >= 0:
            raise UsageError(f"--gpus-per-worker {self.gpus_per_worker!r} is invalid: use 0 or more (e.g. 0.5 or 1)")

    @contextmanager
    def __call__(
        self,
        store: FeatureStore,
        entries: Mapping[str, StoreEntry],
        groups: Sequence[Sequence[str]],
        fast: FastRetriever,
        slow: SlowRetriever | None,
    ) -> Iterator[list[Iterator[IndexChunk]]]:
        refs = (ModelRef.of(fast, "Fast"), ModelRef.of(slow, "Slow") if slow is not None else None)
        size = chunk_size(sum(len(ids) for ids in groups), self.workers)
        tasks = [(g, list(ids[s : s + size])) for g, ids in enumerate(groups) for s in range(0, len(ids), size)]
        if not tasks:
            yield [iter(()) for _ in groups]
            return
        source = str(store.directory.resolve()) if self.features_url is None else _check_published(store, self.features_url)
        with ray_session(self.address) as ray:
            self._check_resources(ray)
            dataset = self._dataset(ray, store, source, tasks, entries, refs)
            results = _results(ray, dataset, tasks)
            try:
                yield _split(results, len(groups))
            finally:
                results.close()  # stops the Ray job when the writer stopped early (an error, Ctrl-C)

    def _check_resources(self, ray: Any) -> None:
        """Refuse what the cluster, as it is now, cannot place (Ray would wait for it forever;
        an autoscaling cluster must be scaled up first)."""
        have = ray.cluster_resources()
        cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        if self.gpus_per_worker > 0 and self.workers * self.gpus_per_worker > gpus:
            raise FastslowError(
                f"--workers {self.workers} x --gpus-per-worker {self.gpus_per_worker:g} needs "
                f"{self.workers * self.gpus_per_worker:g} GPU(s), the Ray cluster has {gpus:g}: "
                "use fewer workers, a smaller --gpus-per-worker (0: CPU), or a cluster with GPUs"
            )
        if self.workers * ACTOR_CPUS > cpus:
            most = int(cpus / ACTOR_CPUS)
            raise FastslowError(
                f"--workers {self.workers}: the Ray cluster has {cpus:g} CPU(s), room for {most} encoding actors "
                f"({ACTOR_CPUS:g} CPU each): use --workers {max(most, 1)} or a larger cluster"
            )

    def _dataset(
        self, ray: Any, store: FeatureStore, source: str, tasks: list[tuple[int, list[str]]],
        entries: Mapping[str, StoreEntry], refs: tuple[ModelRef, ModelRef | None],
    ) -> Any:
        items = [
            {"seq": k, "task": pickle.dumps((ids, [entries[i] for i in ids]), protocol=pickle.HIGHEST_PROTOCOL)}
            for k, (_, ids) in enumerate(tasks)
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))  # a block per chunk: any actor takes any chunk
        device = "cuda" if self.gpus_per_worker > 0 else "cpu"
        dataset = map_on_actors(
            dataset,
            EncodeActor,
            workers=self.workers,
            gpus_per_worker=self.gpus_per_worker,
            fn_constructor_args=(source, store.fingerprint(), *refs, device),
            batch_size=1,
        )
        dataset.context.execution_options.preserve_order = True
        return dataset


def _results(ray: Any, dataset: Any, tasks: list[tuple[int, list[str]]]) -> Iterator[tuple[int, IndexChunk]]:
    """(group, chunk) in task order; the first actor error raised as one line."""
    rows = iter(dataset.iter_rows())
    try:
        for k, row in enumerate(rows):
            if row["error"]:
                raise FastslowError(f"index build --engine ray: {row['error']}")
            chunk = pickle.loads(row["chunk"])
            group, ids = tasks[k]
            if int(row["seq"]) != k or chunk.ids != ids:
                raise RuntimeError(f"Ray returned chunk {row['seq']} where chunk {k} was due")
            yield group, chunk
    except ray.exceptions.RayError as exc:  # an actor that died (killed, out of memory), a lost node
        raise FastslowError(f"index build --engine ray: the Ray job failed: {one_line(exc)}") from exc
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _split(results: Iterator[tuple[int, IndexChunk]], groups: int) -> list[Iterator[IndexChunk]]:
    """One stream of (group, chunk), in group order, as one iterator per group: the writers
    consume the groups one after the other, so each takes its chunks off the shared stream."""
    head: list[tuple[int, IndexChunk]] = []

    def stream(group: int) -> Iterator[IndexChunk]:
        while True:
            if not head:
                following = next(results, None)
                if following is None:
                    return
                head.append(following)
            if head[0][0] != group:
                if head[0][0] < group:
                    raise RuntimeError(f"group {group} read before group {head[0][0]} was finished")
                return
            yield head.pop()[1]

    return [stream(g) for g in range(groups)]
