"""The command glue: training progress copes with every event the loops send."""

from __future__ import annotations

from fastslow_cli.commands import _TrainProgress


def test_progress_handles_epochs_without_validation(capsys) -> None:
    with _TrainProgress("train") as progress:
        progress.event({"event": "step", "epoch": 1, "step": 1, "total_steps": 2, "loss": 1.5})
        progress.event({"event": "epoch", "epoch": 1, "step": 1, "loss": 1.5, "best": False})  # val skipped
        progress.event({"event": "epoch", "epoch": 2, "step": 2, "val_R@1": 10.0, "val_R@5": 40.0, "best": True})
    err = capsys.readouterr().err
    assert "not validated yet" in err and "val R@1 10.0" in err
