"""cli/progress.py: the CLI renders every event the core sends, on stderr only."""

from __future__ import annotations

from fastslow_cli.cli.progress import Events


def test_training_events_with_epochs_without_validation(capsys) -> None:
    with Events() as events:
        events({"event": "step", "epoch": 1, "step": 1, "total_steps": 2, "loss": 1.5})
        events({"event": "epoch", "epoch": 1, "step": 1, "loss": 1.5, "best": False})  # val skipped
        events({"event": "epoch", "epoch": 2, "step": 2, "val_R@1": 10.0, "val_R@5": 40.0, "best": True})
    out, err = capsys.readouterr()
    assert "not validated yet" in err and "val R@1 10.0" in err and "*best" in err
    assert out == ""


def test_stage_bars_and_messages(capsys) -> None:
    with Events() as events:
        events({"event": "start", "stage": "extract demo", "total": 3})
        events({"event": "advance", "stage": "extract demo", "n": 2})
        events({"event": "failed", "path": "/m/bad.mp4", "reason": "no video stream"})
        events({"event": "warning", "path": "/m/short.mp4", "message": "only 3 of 8 frames"})
        events({"event": "note", "message": "10 items held out"})
        events({"event": "info", "message": "train fast: 9 captions"})
        events({"event": "phase", "message": "evaluating slow"})
        events({"event": "unknown-kind"})  # newer cores may send more: ignored
    out, err = capsys.readouterr()
    assert out == ""
    for text in ("skipped /m/bad.mp4: no video stream", "warning /m/short.mp4: only 3 of 8 frames",
                 "note: 10 items held out", "train fast: 9 captions"):
        assert text in " ".join(err.split()), text


def test_a_dropped_stage_leaves_no_bar(capsys) -> None:
    with Events() as events:
        events({"event": "start", "stage": "index main", "total": 4400})
        events({"event": "drop", "stage": "index main"})  # index update: nothing changed
        events({"event": "start", "stage": "thumbnails main", "total": 2})
        events({"event": "advance", "stage": "thumbnails main", "n": 2})
    out, err = capsys.readouterr()
    assert out == "" and "index main" not in err and "thumbnails main" in err


def test_a_stage_names_its_unit() -> None:
    from rich.progress import Task

    from fastslow_cli.cli.console import RateColumn

    column = RateColumn("items")
    parts = Task(0, "publish s", 2, 2, _get_time=lambda: 1.0, finished_speed=4.0, fields={"unit": "parts"})
    rows = Task(1, "extract s", 2, 2, _get_time=lambda: 1.0, finished_speed=4.0, fields={})
    assert column.render(parts).plain == "4.0 parts/s" and column.render(rows).plain == "4.0 items/s"
