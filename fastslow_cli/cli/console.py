"""Consoles and progress bars: human text always goes to stderr, so stdout stays clean
for `--json` output that `jq` can read."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

err_console = Console(stderr=True)


class _Stdout(Console):
    """The results console: when its reader goes away (`fastslow search ... | head`), the
    command ends quietly with exit 0 (`cli.app.main`), not with rich's exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


out_console = _Stdout()


def make_progress(*extra_columns: object, transient: bool = False) -> Progress:
    """A rich progress bar on stderr; `extra_columns` add e.g. a loss or items/s column."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


class RateColumn(ProgressColumn):
    """Completed units per second, e.g. `12.3 items/s` (a task's own `unit` field wins)."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", self.unit)
        return Text("" if speed is None else f"{speed:.1f} {unit}/s", style="progress.data.speed")
