"""The `fastslow` command line: parse, call the core, render.

Kept light on purpose: nothing heavy (torch, transformers, pyarrow, numpy) is imported at
module level, so `fastslow --help` and argument errors answer at once. Each command
imports the core module it needs when it runs.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fastslow_cli import __version__
from fastslow_cli.errors import FastslowError, UsageError

app = typer.Typer(
    name="fastslow",
    help="Search your images and videos with natural-language queries: a Fast dual "
    "encoder + HNSW index finds candidates, a Slow cross-attention model re-ranks them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
train_app = typer.Typer(help="Train a Fast (dual encoder) or Slow (cross-attention) model.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect the HNSW search index.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(index_app, name="index")

WorkspaceOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--workspace",
        "-w",
        envvar="FASTSLOW_WORKSPACE",
        help="Workspace folder [env FASTSLOW_WORKSPACE; default ./.fastslow].",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Write results to stdout as JSON Lines; human text goes to stderr.")
]
SetOpt = Annotated[str, typer.Option("--set", help="Feature set name (a folder under features/).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


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


def _emit_json(obj: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed so pipes (`| jq`) see it at once."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _not_yet(command: str, issue: int) -> None:
    raise UsageError(
        f"`fastslow {command}` is not available in fastslow {__version__} yet (planned in issue #{issue}); "
        "run `fastslow extract` to build features meanwhile"
    )


@app.command()
def extract(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to scan recursively.", show_default=False)],
    workspace: WorkspaceOpt = None,
    set_name: SetOpt = "default",
    backbone: Annotated[
        str, typer.Option(help="'pixels' (no weights) or a Hugging Face vision model id / local folder.")
    ] = "pixels",
    frames: Annotated[int, typer.Option(min=1, max=256, help="Frames sampled uniformly per video.")] = 8,
    size: Annotated[
        Optional[int], typer.Option(min=16, max=1024, help="Frame size fed to the backbone [default: the backbone's].")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per backbone batch.")] = 64,
    decoder: Annotated[Decoder, typer.Option(help="Video decoder: auto = decord, PyAV on failure.")] = Decoder.auto,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Decoding worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds before a hung decoder is killed.")] = 120.0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Decode media, run the visual backbone and append features to the Parquet store.

    Resumable: items already stored (same path, size and mtime) are skipped; renamed files
    reuse their features. Exit 0 = all stored, 3 = some files failed (listed in
    features/SET/errors.jsonl), 1 = failure, 2 = bad usage.
    """
    from fastslow_cli.extract import ExtractOptions, run_extract
    from fastslow_cli.render import render_extract_summary
    from fastslow_cli.workspace import resolve_workspace

    ws = resolve_workspace(workspace)
    options = ExtractOptions(
        set_name=set_name,
        backbone=backbone,
        frames=frames,
        size=size,
        batch_size=batch_size,
        decoder=decoder.value,
        workers=workers,
        timeout=timeout,
        device=device,
    )
    summary = run_extract([str(p) for p in paths], ws, options)
    if json_out:
        _emit_json(summary.to_json())
    render_extract_summary(summary)
    if summary.failed:
        raise typer.Exit(3)


@train_app.command("fast")
def train_fast(workspace: WorkspaceOpt = None) -> None:
    """Train the Fast dual encoder on stored features and a captions file."""
    _not_yet("train fast", 4)


@train_app.command("slow")
def train_slow(workspace: WorkspaceOpt = None) -> None:
    """Train the Slow cross-attention model on stored features and a captions file."""
    _not_yet("train slow", 4)


@app.command()
def distill(workspace: WorkspaceOpt = None) -> None:
    """Distil a Slow teacher into a Fast student."""
    _not_yet("distill", 5)


@index_app.command("build")
def index_build(workspace: WorkspaceOpt = None) -> None:
    """Build the HNSW index from stored features and a Fast model."""
    _not_yet("index build", 5)


@index_app.command("info")
def index_info(workspace: WorkspaceOpt = None) -> None:
    """Describe an index."""
    _not_yet("index info", 5)


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="Queries; '-' reads one per line from stdin.")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Search the index with natural-language queries."""
    _not_yet("search", 5)


@app.command("eval")
def evaluate(workspace: WorkspaceOpt = None) -> None:
    """R@1/5/10, median rank and timings of fast, slow and fast+rerank."""
    _not_yet("eval", 4)


@app.command()
def demo(
    workspace: WorkspaceOpt = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for the generated dataset [default: WORKSPACE/demo-data].")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller, faster run.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run the pipeline end to end on the embedded synthetic dataset."""
    from fastslow_cli.demo import run_demo
    from fastslow_cli.workspace import resolve_workspace

    ws = resolve_workspace(workspace)
    result = run_demo(ws, out=out, quick=quick)
    if json_out:
        _emit_json(result)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    try:
        app()
    except FastslowError as exc:
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _print_error("interrupted; whatever was already stored is kept, run the command again to resume")
        sys.exit(130)
    except BrokenPipeError:
        # `fastslow search ... | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback on request
        if os.environ.get("FASTSLOW_DEBUG"):
            raise
        _print_error(
            f"internal error: {type(exc).__name__}: {exc} (set FASTSLOW_DEBUG=1 for a traceback and report it)"
        )
        sys.exit(1)


def _print_error(message: str) -> None:
    from rich.text import Text

    from fastslow_cli.console import err_console

    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
