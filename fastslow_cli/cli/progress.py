"""The CLI side of the core's events: rich progress bars and one-line messages on stderr.

The core reports through a `progress` callback of dict events (docs/ARCHITECTURE.md,
"Events") and never prints; `Events` turns them into what a person at a terminal sees,
so stdout stays clean for `--json`.
"""

from __future__ import annotations

from typing import Any

from rich.progress import Progress, TaskID, TextColumn
from rich.status import Status
from rich.text import Text

from fastslow_cli.cli.console import RateColumn, err_console, make_progress


class Events:
    """A context manager whose `__call__` renders one core event.

    `start`/`advance` drive a bar per stage (items/s), `drop` removes one that had nothing to do, `step` a training bar with the
    running loss, `epoch` prints a line of validation metrics, `phase` updates a spinner,
    and `info`/`note`/`warning`/`failed` print one line each.
    """

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._train: Progress | None = None
        self._train_task: TaskID | None = None
        self._status: Status | None = None

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every bar and spinner (what was drawn stays on the terminal)."""
        for live in (self._bar, self._train, self._status):
            if live is not None:
                live.stop()
        self._bar = self._train = self._status = None
        self._tasks, self._train_task = {}, None

    def _print(self, text: Text | str) -> None:
        console = next((live.console for live in (self._bar, self._train) if live is not None), err_console)
        if isinstance(text, str):
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(text, soft_wrap=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            if self._bar is None:
                self._bar = make_progress(RateColumn("items"))
                self._bar.start()
            self._tasks[event["stage"]] = self._bar.add_task(
                event["stage"], total=event.get("total"), unit=event.get("unit", "items")
            )
        elif kind == "advance" and self._bar is not None and event["stage"] in self._tasks:
            self._bar.advance(self._tasks[event["stage"]], event.get("n", 1))
        elif kind == "drop" and self._bar is not None and event["stage"] in self._tasks:
            self._bar.remove_task(self._tasks.pop(event["stage"]))
        elif kind == "step":
            if self._train is None:
                self._train = make_progress(TextColumn("loss {task.fields[loss]}"))
                self._train.start()
                self._train_task = self._train.add_task("train", total=event["total_steps"], loss="")
            self._train.update(self._train_task, completed=event["step"], loss=f"{event['loss']:.3f}")
        elif kind == "epoch":
            self._print(epoch_line(event))
        elif kind == "phase":
            if self._status is None:
                self._status = err_console.status(event["message"])
                self._status.start()
            else:
                self._status.update(event["message"])
        elif kind == "info":
            self._print(event["message"])
        elif kind == "note":
            self._print(f"note: {event['message']}")
        elif kind == "warning":
            where = f"{event['path']}: " if event.get("path") else ""
            self._print(Text.assemble(("warning ", "yellow"), where + event["message"]))
        elif kind == "failed":
            self._print(Text.assemble(("skipped ", "yellow"), f"{event['path']}: {event['reason']}"))


def epoch_line(e: dict[str, Any]) -> str:
    """One training epoch as a line: loss, val R@1/R@5, twin accuracy, best marker."""
    twin, loss, r1 = e.get("val_twin_acc"), e.get("loss"), e.get("val_R@1")
    return (
        f"epoch {e['epoch']}: "
        + ("" if loss is None or loss != loss else f"loss {loss:.3f}  ")
        + ("(not validated yet)" if r1 is None else f"val R@1 {r1:.1f}  R@5 {e['val_R@5']:.1f}")
        + (f"  twins {twin:.1f}" if twin is not None else "")
        + ("  *best" if e.get("best") else "")
    )
