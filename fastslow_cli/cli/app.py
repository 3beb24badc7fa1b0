"""The `fastslow` command line: parse, call the core, render.

Kept light on purpose: nothing heavy (torch, transformers, pyarrow, numpy) is imported at
module level, so `fastslow --help` and argument errors answer at once. Each command
imports the core module it needs when it runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

from fastslow_cli import __version__
from fastslow_cli.errors import FastslowError
from fastslow_cli.index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M

app = typer.Typer(
    name="fastslow",
    help="Search your images and videos with natural-language queries: a Fast dual "
    "encoder + HNSW index finds candidates, a Slow cross-attention model re-ranks them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
index_app = typer.Typer(help="Build and inspect the HNSW search index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
models_app = typer.Typer(help="Manage trained models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

WorkspaceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--workspace",
        "-w",
        envvar="FASTSLOW_WORKSPACE",
        help="Workspace folder (env FASTSLOW_WORKSPACE; default ./.fastslow).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Write results to stdout as JSON Lines; human text goes to stderr.")
]
SetOpt = Annotated[str, typer.Option("--set", help="Feature set name (a folder under features/).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N or mps.")]


class Engine(str, Enum):
    auto = "auto"
    onnx = "onnx"
    torch = "torch"


class ComputeEngine(str, Enum):
    """Where `extract` and `index build`/`update` do their heavy work: here, or on Ray Data
    actors (features/extract_ray.py, index/encode_ray.py; docs/SCALE.md)."""

    local = "local"
    ray = "ray"


class Decoder(str, Enum):
    auto = "auto"
    decord = "decord"
    av = "av"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastslow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """fastslow: fast and accurate text-to-visual search on your own collections."""


class _ReaderGone(Exception):
    """stdout's reader went away (`fastslow search ... | head`): done, not an error."""


@contextmanager
def _to_stdout() -> Iterator[None]:
    """Around writes to stdout: a broken pipe leaves as `_ReaderGone`, since click would
    turn the BrokenPipeError itself into exit 1 (which fails `set -o pipefail` scripts)."""
    try:
        yield
    except BrokenPipeError:
        raise _ReaderGone from None


def _emit_json(obj: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed so pipes (`| jq`) see it at once."""
    with _to_stdout():
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _workspace(option: str | None, models: bool = True) -> Any:
    """The workspace of `--workspace`; for commands that run models, every core for torch."""
    from fastslow_cli.workspace import Workspace

    ws = Workspace(option)
    if models:
        from fastslow_cli.runtime import use_all_cores

        use_all_cores()
    return ws


def _say(message: str) -> None:
    from fastslow_cli.cli.console import err_console

    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def _note(event: dict[str, Any]) -> None:
    """A core event as one stderr line (for commands that draw no progress)."""
    if event.get("event") in ("note", "warning", "info"):
        _say(f"{event['event']}: {event['message']}" if event["event"] != "info" else event["message"])


@app.command()
def extract(
    paths: Annotated[
        list[str], typer.Argument(help="Files or folders to scan recursively, or URLs (s3://bucket/videos).", show_default=False)
    ],
    workspace: WorkspaceOpt = None,
    set_name: SetOpt = "default",
    backbone: Annotated[
        str, typer.Option(help="'pixels' (no weights) or a Hugging Face vision model id / local folder.")
    ] = "pixels",
    frames: Annotated[int, typer.Option(min=1, max=256, help="Frames sampled uniformly per video.")] = 8,
    size: Annotated[
        Optional[int], typer.Option(min=16, max=1024, help="Frame size fed to the backbone (default: the backbone's).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per backbone batch.")] = 64,
    decoder: Annotated[Decoder, typer.Option(help="Video decoder: auto = decord, PyAV on failure.")] = Decoder.auto,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Decoder processes (local engine), or Ray actors, each with one decoder process (ray)."),
    ] = 2,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds before a hung decoder is killed.")] = 120.0,
    device: DeviceOpt = "auto",
    thumbnails: Annotated[
        bool, typer.Option("--thumbnails/--no-thumbnails", help="Store a small JPEG per image and sampled frame.")
    ] = True,
    engine: Annotated[
        ComputeEngine,
        typer.Option(help="local: decode and run the backbone here; ray: on Ray Data actors (docs/SCALE.md)."),
    ] = ComputeEngine.local,
    address: Annotated[
        Optional[str],
        typer.Option(
            help="With --engine ray: local (default: a private Ray on this machine's cores), auto (the cluster "
            "`ray start` runs here) or ray://HOST:PORT.",
            show_default=False,
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0.0, help="With --engine ray: GPUs each actor claims (its backbone then runs on CUDA).")
    ] = 0.0,
    publish: Annotated[
        Optional[str],
        typer.Option(
            help="After the run, copy the set's Parquet dataset to this URL (s3://bucket/features/SET): only new "
            "parts are uploaded. Ray workers elsewhere read it with `index build --features-url`.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Decode media, run the visual backbone and append features to the Parquet store.

    Resumable: items already stored (same path, size and mtime) are skipped; renamed files
    reuse their features. PATH may be a URL (s3://, gs://, hdfs://, file://): objects are
    listed and fetched through pyarrow. With --engine ray the same feature set is written
    (local media must be at the same path on every Ray node; URLs need no mount).
    Exit 0 = all stored, 3 = some files failed (listed in features/SET/errors.jsonl),
    1 = failure, 2 = bad usage.
    """
    from fastslow_cli.cli.progress import Events
    from fastslow_cli.cli.render import render_extract_summary

    ws = _workspace(workspace, models=backbone != "pixels")
    with Events() as events:
        summary = ws.extract(
            paths, set_name, backbone=backbone, frames=frames, size=size, batch_size=batch_size,
            decoder=decoder.value, workers=workers, timeout=timeout, device=device, thumbnails=thumbnails,
            engine=engine.value, address=address, gpus_per_worker=gpus_per_worker, publish=publish, progress=events,
        )
    if json_out:
        _emit_json(summary.to_json())
    render_extract_summary(summary)
    if summary.failed:
        raise typer.Exit(3)


CaptionsOpt = Annotated[
    list[Path],
    typer.Option(
        "--captions",
        help="Captions: JSON Lines, CSV, Karpathy JSON or VATEX JSON; media paths relative to the file. "
        "Repeat to combine files (e.g. VATEX train + validation).",
        metavar="FILE",
        show_default=False,
    ),
]
MediaRootOpt = Annotated[
    Optional[str],
    typer.Option(
        "--media-root",
        help="Folder (or URL, for media extracted from one) the captions' media paths are relative to, when not "
        "the captions file's folder.",
        metavar="DIR",
        show_default=False,
    ),
]
EpochsOpt = Annotated[Optional[int], typer.Option(min=1, help="Passes over the training items (default: per model).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", min=2, help="Items per step (default: per model).")]
LrOpt = Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (default: per model).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed: the same seed gives the same model.")]


class ModelKind(str, Enum):
    fast = "fast"
    slow = "slow"


@app.command()
def train(
    kind: Annotated[ModelKind, typer.Argument(help="fast: the dual encoder; slow: the cross-attention re-ranker.")],
    captions: CaptionsOpt,
    media_root: MediaRootOpt = None,
    workspace: WorkspaceOpt = None,
    set_name: SetOpt = "default",
    out: Annotated[Optional[str], typer.Option(help="Model name (default: the kind, 'fast' or 'slow').")] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Train a Fast or Slow model on stored features and a captions file (train split; best epoch on val)."""
    _fit(workspace, json_out, lambda ws, events: ws.train(
        kind.value, captions, set=set_name, out=out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        media_root=media_root, device=device, progress=events,
    ))


@app.command()
def distill(
    captions: CaptionsOpt,
    media_root: MediaRootOpt = None,
    workspace: WorkspaceOpt = None,
    teacher: Annotated[str, typer.Option(help="The Slow teacher (name or folder).")] = "slow",
    student: Annotated[str, typer.Option(help="The trained Fast student to start from (name or folder).")] = "fast",
    out: Annotated[Optional[str], typer.Option(help="Name of the distilled model (default: STUDENT-distilled).")] = None,
    set_name: SetOpt = "default",
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Distil a Slow teacher into a Fast student (KL to the teacher's scores + contrastive loss)."""
    _fit(workspace, json_out, lambda ws, events: ws.distill(
        captions, teacher=teacher, student=student, out=out, set=set_name, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, media_root=media_root, device=device, progress=events,
    ))


def _fit(workspace: str | None, json_out: bool, run: Callable[[Any, Any], Any]) -> None:
    """Run a training step (`train`, `distill`) with its progress on stderr; the summary as JSON on request."""
    from fastslow_cli.cli.progress import Events

    ws = _workspace(workspace)
    with Events() as events:
        summary = run(ws, events)
    if json_out:
        _emit_json(summary.to_json())


@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(help="A trained model (name under WORKSPACE/models or folder).")],
    captions: CaptionsOpt,
    media_root: MediaRootOpt = None,
    workspace: WorkspaceOpt = None,
    set_name: SetOpt = "default",
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Fit a model's relevance scale (for `search --min-score`) on the val split, as training does.

    Models trained by this fastslow are calibrated already; this is for older ones. The
    weights are untouched, so indexes built with the model stay valid.
    """
    from fastslow_cli.cli.progress import Events

    ws = _workspace(workspace)
    with Events() as events:
        summary = ws.calibrate(model, captions, set=set_name, media_root=media_root, device=device, progress=events)
    if json_out:
        _emit_json(summary)


ModelOpt = Annotated[
    str, typer.Option("--model", help="Fast model: a name under WORKSPACE/models, a folder, or a Hugging Face CLIP id.")
]
SlowOpt = Annotated[
    Optional[str],
    typer.Option("--slow", help="Slow model for re-ranking: name, folder or BLIP ITM id (default: 'slow' if trained)."),
]
IndexOpt = Annotated[str, typer.Option("--index", "--name", help="Index name (a folder under WORKSPACE/index).")]
UseIndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index", "--name",
        help="Index name (default: 'default', else the one `fastslow demo` built, else the only one).",
        show_default=False,
    ),
]


class MemoryDtype(str, Enum):
    """How an index stores the Slow memory (index/memory.py)."""

    int8 = "int8"
    f16 = "f16"


MemoryOpt = Annotated[
    MemoryDtype,
    typer.Option("--memory", help="How the cached Slow memory is stored: int8 with a per-token scale (half the disk) or float16."),
]


IndexEngineOpt = Annotated[
    ComputeEngine, typer.Option("--engine", help="Encode the items in this process (local) or on Ray actors (ray: docs/SCALE.md).")
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="--engine ray: local (a private Ray on this machine's cores, the default), auto or ray://HOST:PORT.",
                 show_default=False),
]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", min=1, help="--engine ray: encoding actors (default 2).", show_default=False)
]
FeaturesUrlOpt = Annotated[
    Optional[str],
    typer.Option("--features-url", help="--engine ray: the actors read the feature set's copy published at this URL "
                 "(`extract --publish`), for workers that do not mount the workspace.", show_default=False),
]
GpusPerWorkerOpt = Annotated[
    Optional[float],
    typer.Option("--gpus-per-worker", min=0, help="--engine ray: GPUs per actor (above 0: the actors encode on cuda).",
                 show_default=False),
]


@index_app.command("build")
def index_build(
    workspace: WorkspaceOpt = None,
    set_name: SetOpt = "default",
    model: ModelOpt = "fast",
    slow: SlowOpt = None,
    name: IndexOpt = "default",
    m: Annotated[int, typer.Option("--M", min=2, max=256, help="HNSW graph degree.")] = DEFAULT_M,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=8, help="HNSW build-time beam.")] = DEFAULT_EF_CONSTRUCTION,
    ef: Annotated[int, typer.Option("--ef", min=1, help="Default search-time beam (raised to k when smaller).")] = DEFAULT_EF,
    memory: MemoryOpt = MemoryDtype.int8,
    shards: Annotated[
        int, typer.Option("--shards", min=1, max=1024, help="Split the index into N shards by a hash of the item id.")
    ] = 1,
    device: DeviceOpt = "auto",
    engine: IndexEngineOpt = ComputeEngine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    features_url: FeaturesUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build the HNSW index from stored features and a Fast model (+ cached Slow memory)."""
    from fastslow_cli.cli.progress import Events

    ws = _workspace(workspace)
    with Events() as events:
        report = ws.build_index(
            model, slow, set=set_name, name=name, M=m, ef_construction=ef_construction, ef=ef, device=device,
            progress=events, memory=memory.value, shards=shards, engine=engine.value, address=address,
            workers=workers, gpus_per_worker=gpus_per_worker, features_url=features_url,
        )
    _say(
        f"index '{report.index}': {report.items} items in {report.seconds:.1f} s"
        + (f", {report.skipped_missing} left out (media file gone)" if report.skipped_missing else "")
        + ("" if report.has_slow else "; no Slow model: search without --rerank only")
    )
    if json_out:
        _emit_json(report.to_json())


@index_app.command("update")
def index_update(
    workspace: WorkspaceOpt = None,
    set_name: Annotated[
        Optional[str], typer.Option("--set", help="Feature set name (default: the one the index was built from).")
    ] = None,
    name: UseIndexOpt = None,
    device: DeviceOpt = "auto",
    engine: IndexEngineOpt = ComputeEngine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    features_url: FeaturesUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bring an index in line with its feature set: add new items, re-encode changed ones, drop deleted ones."""
    from fastslow_cli.cli.progress import Events

    ws = _workspace(workspace)
    with Events() as events:
        report = ws.update_index(name, set=set_name, device=device, progress=events, engine=engine.value, address=address,
                                 workers=workers, gpus_per_worker=gpus_per_worker, features_url=features_url)
    _say(f"index '{report.index}': added {report.added}, updated {report.updated}, removed {report.removed}")
    if json_out:
        _emit_json(report.to_json())


index_app.command("add", help="Alias of `index update`.")(index_update)


@index_app.command("info")
def index_info(workspace: WorkspaceOpt = None, name: UseIndexOpt = None, json_out: JsonOpt = False) -> None:
    """Describe an index: models, feature set, counts, HNSW parameters."""
    manifest = _workspace(workspace, models=False).index_info(name)
    if json_out:
        _emit_json(manifest)
    else:
        from fastslow_cli.cli.render import render_index_info

        render_index_info(manifest)


@models_app.command("export")
def models_export(
    names: Annotated[list[str], typer.Argument(help="Models: names under WORKSPACE/models or folders.", show_default=False)],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the ONNX query graph of native models (training writes it; this is for older models)."""
    from fastslow_cli.cli.progress import Events

    ws = _workspace(workspace, models=False)
    with Events() as events:
        rows = ws.export_models(names, progress=events)
    if json_out:
        for row in rows:
            _emit_json(row)


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="Queries; '-' reads one per line from stdin.", show_default=False)],
    workspace: WorkspaceOpt = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Results per query.")] = 10,
    rerank: Annotated[int, typer.Option(min=0, help="Re-rank the Fast top K with the Slow model (0 = off).")] = 0,
    alpha: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Weight of the Fast score in re-ranking (default: the index's).")
    ] = None,
    ef: Annotated[Optional[int], typer.Option(min=1, help="HNSW search beam (default: the index's).")] = None,
    min_score: Annotated[
        Optional[float],
        typer.Option(
            "--min-score", min=0.0, max=1.0,
            help="Keep only results whose relevance (calibrated P(match), 0-1; see README) is at least this.",
        ),
    ] = None,
    index: UseIndexOpt = None,
    device: DeviceOpt = "auto",
    engine: Annotated[
        Engine,
        typer.Option(
            help="What runs the models: onnx (ONNX Runtime, no torch start-up), torch, or auto "
            "(onnx when the models' graphs are there, else torch with a note).",
        ),
    ] = Engine.auto,
    json_out: JsonOpt = False,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", metavar="FILE", help="Also write the results as one self-contained page (thumbnails "
                     "inlined; opens offline).", show_default=False),
    ] = None,
) -> None:
    """Search the index with natural-language queries."""
    from fastslow_cli.cli.queries import read_queries
    from fastslow_cli.cli.render import render_results
    from fastslow_cli.errors import UsageError

    if not queries:
        raise UsageError("no query given: `fastslow search \"a red car\"`, or `-` to read queries from stdin")
    if html is not None:
        from fastslow_cli.serve.view import check_html_target

        check_html_target(html)
    searcher = _workspace(workspace, models=False).searcher(
        index, rerank=rerank > 0, device=device, engine=engine.value, progress=_note
    )
    if searcher.engine == "torch":  # ONNX Runtime sizes its own thread pool
        from fastslow_cli.runtime import use_all_cores

        use_all_cores()
    if min_score is not None:
        searcher.check_min_score(min_score, rerank)  # once, before any query
    skipped = 0
    searched: list[tuple[str, list[Any]]] = []
    missing: set[str] = set()
    for query in read_queries(queries):
        try:
            if query.problem:
                raise UsageError(query.problem)
            warning = searcher.vocabulary_warning(query.text, rerank)
            if warning:
                _say(f"warning: {warning}")
            results = searcher.search(query.text, k=k, rerank=rerank, alpha=alpha, ef=ef, min_score=min_score)
        except UsageError as exc:  # one odd line in a stdin batch does not stop the others
            if query.line is None:
                raise
            skipped += 1
            _say(f"skipped stdin line {query.line}: {exc}")
            continue
        missing.update(r.id for r in results if r.missing)
        searched.append((query.text, results))
        if json_out:
            for r in results:
                _emit_json(r.to_json())
        else:
            with _to_stdout():
                cut = None if min_score is None else f"“{query.text}”: no result with relevance >= {min_score:g}"
                render_results(results, empty=cut)
    if missing:
        name = searcher.index.directory.name
        _say(
            f"warning: {len(missing)} result(s) point at files that no longer exist: run `fastslow extract PATH` "
            f"where they moved to, then `fastslow index update{'' if name == 'default' else ' --index ' + name}`"
        )
    if html is not None:
        from fastslow_cli.serve.view import export_html

        params = {"k": k, "rerank": rerank, "alpha": alpha, "min_score": min_score}
        export_html(searcher, [r for _, r in searched], html, params=params, queries=[q for q, _ in searched])
        _say(f"wrote {html} ({len(searched)} quer{'y' if len(searched) == 1 else 'ies'}; self-contained, opens offline)")
    if skipped:
        raise FastslowError(f"{skipped} quer{'y' if skipped == 1 else 'ies'} from stdin could not be searched (see above)")


@app.command()
def serve(
    workspace: WorkspaceOpt = None,
    index: UseIndexOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one, printed).")] = 8765,
    token: Annotated[
        Optional[str],
        typer.Option(envvar="FASTSLOW_TOKEN", help="Require this token on every call (Authorization: Bearer, or ?token=).",
                     show_default=False),
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """A local web page and JSON API over an index (models loaded once); stop with Ctrl-C."""
    from fastslow_cli.cli.serving import check_exposure, run_server

    check_exposure(host, token, _say)
    searcher = _workspace(workspace).searcher(index, device=device)
    from fastslow_cli.serve.app import create_app

    run_server(create_app(searcher, token=token), host, port, _say)


@app.command("eval")
def evaluate(
    captions: CaptionsOpt,
    media_root: MediaRootOpt = None,
    workspace: WorkspaceOpt = None,
    split: Annotated[str, typer.Option(help="Captions split to evaluate on.")] = "test",
    set_name: SetOpt = "default",
    fast: Annotated[Optional[str], typer.Option(help="Fast model (name, folder or CLIP id); '' to skip.")] = "fast",
    slow: Annotated[Optional[str], typer.Option(help="Slow model (name, folder or BLIP id); '' to skip.")] = "slow",
    distilled: Annotated[Optional[str], typer.Option(help="A distilled Fast model to compare (name or folder).")] = None,
    rerank: Annotated[int, typer.Option(min=0, help="Also measure Fast top-K re-ranked by Slow through an index.")] = 0,
    alpha: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Fast weight when re-ranking.")] = None,
    queries: Annotated[
        Optional[int], typer.Option("--queries", min=1, help="Evaluate a seeded random subset of this many captions.")
    ] = None,
    memory: Annotated[
        Optional[MemoryDtype],
        typer.Option(
            "--memory",
            help="Score slow and rerank from Slow memory stored as an index stores it (default: slow as computed, rerank int8).",
            show_default=False,
        ),
    ] = None,
    html: Annotated[
        Optional[Path],
        typer.Option("--html", metavar="FILE", help="Also write a self-contained HTML report (plots, calibration, twins).",
                     show_default=False),
    ] = None,
    sweep: Annotated[
        str, typer.Option("--sweep", metavar="K,K,...", help="Re-ranking depths the --html report plots (0 = Fast only).")
    ] = "0,5,10,20,50,100",
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """R@1/5/10, median rank, twin accuracy and ms/query of fast, slow, distilled and fast+rerank."""
    from fastslow_cli.cli.progress import Events
    from fastslow_cli.errors import UsageError

    try:
        depths = [int(k) for k in sweep.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--sweep {sweep!r}: give whole numbers separated by commas, e.g. 0,5,10,20") from None
    ws = _workspace(workspace)
    with Events() as events:
        rows = ws.evaluate(
            captions, split=split, set=set_name, fast=fast or None, slow=slow or None, distilled=distilled,
            rerank=rerank, alpha=alpha, queries=queries, media_root=media_root, html=html, sweep=depths,
            device=device, progress=events, memory=memory.value if memory else None,
        )
    if json_out:
        for row in rows:
            _emit_json(row)
    else:
        from fastslow_cli.cli.render import render_eval

        render_eval(rows, split)


@app.command()
def demo(
    workspace: WorkspaceOpt = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for the generated dataset (default: WORKSPACE/demo-data).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller, faster run (a minute or two).")] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Run the whole pipeline on the embedded synthetic dataset (about 10 minutes on 2 cores).

    synth, extract, train fast and slow, distil, index, eval and example searches.
    """
    from fastslow_cli.cli.render import DemoEvents, render_demo_end
    from fastslow_cli.demo.pipeline import run_demo

    ws = _workspace(workspace)
    with DemoEvents() as events:
        result = run_demo(ws, out=out, quick=quick, device=device, progress=events)
    render_demo_end(ws, result)
    if json_out:
        _emit_json(result)


# What an interrupted command leaves behind (typer turns Ctrl-C into exit code 130).
INTERRUPTED = {
    "extract": "the items extracted so far are stored; run the same command again to extract the rest",
    "train": "nothing was saved (a model is written only when training ends); run the command again to train it",
    "distill": "nothing was saved (a model is written only when distillation ends); run the command again",
    "index build": "the index was not changed (a new one is swapped in only when complete); run the command again",
    "index update": "the index was not changed (it is swapped in only when complete); run the command again",
    "models export": "a graph is swapped in only when complete; run the command again for the models not reported",
    "index add": "the index was not changed (it is swapped in only when complete); run the command again",
    "search": "the results printed are complete; queries not yet answered were not searched, run them again",
    "eval": "eval writes nothing (an --html report only when complete); run the command again",
    "calibrate": "the model's config.json was not changed; run the command again",
    "demo": "the generated data and extracted features are kept and reused; run it again to redo the rest",
}
INTERRUPT_EXIT = 130


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code.

    Typer runs without its standalone mode, so its usage errors (a 4-line box) and Ctrl-C
    (a silent exit 130) come here and are told in one line like every other error.
    """
    args = sys.argv[1:]
    try:
        code = app(args, prog_name="fastslow", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError:
        sys.exit(2)  # `fastslow` or `fastslow index` alone: the help is already printed
    except click_exceptions.UsageError as exc:
        _print_error(f"{_one_line(exc.format_message())} (see {_command_path(exc.ctx)} --help)")
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        _print_error(_one_line(exc.format_message()))
        sys.exit(exc.exit_code)
    except FastslowError as exc:
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # between here and typer's own handler
        code = INTERRUPT_EXIT
    except (_ReaderGone, BrokenPipeError):
        # `fastslow search ... | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        from fastslow_cli.atomic import ACCESS_ERRNOS, WRITE_ERRNOS, write_failure

        if exc.errno not in WRITE_ERRNOS + ACCESS_ERRNOS or os.environ.get("FASTSLOW_DEBUG"):
            _internal_error(exc)
        _print_error(str(write_failure(exc)))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback on request
        _internal_error(exc)
    if code == INTERRUPT_EXIT:
        kept = INTERRUPTED.get(_command_name(args))
        _print_error("interrupted" + (f": {kept}" if kept else ""))
    sys.exit(code if isinstance(code, int) else 0)


def _internal_error(exc: Exception) -> None:
    if os.environ.get("FASTSLOW_DEBUG"):
        raise exc
    _print_error(f"internal error: {type(exc).__name__}: {exc} (set FASTSLOW_DEBUG=1 for a traceback and report it)")
    sys.exit(1)


def _command_name(args: list[str]) -> str:
    """'extract', 'index build', ...: the command words of `args` (the root takes no option values)."""
    words = [a for a in args if not a.startswith("-")][:2]
    return " ".join(words) if words[:1] in (["index"], ["models"]) else " ".join(words[:1])


def _command_path(ctx: Any) -> str:
    """'fastslow search' for an error in `search` (whatever name the program was started by)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["fastslow", *reversed(names)])


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _print_error(message: str) -> None:
    from rich.text import Text

    from fastslow_cli.cli.console import err_console

    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
