"""The CLI layer: light imports (in subprocesses), version, usage errors and exit codes (in process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_cli

from fastslow_cli import __version__

HEAVY = ("torch", "transformers", "pyarrow", "numpy", "ray")


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from fastslow_cli.cli.app import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "extract" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("sub", [["extract", "--help"], ["train", "--help"], ["search", "--help"], ["index", "--help"], ["models", "export", "--help"]])
def test_subcommand_help_is_light(sub: list[str]) -> None:
    code = (
        "import sys\n"
        "from fastslow_cli.cli.app import app\n"
        "try:\n"
        f"    app({sub!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"fastslow {__version__}"


def test_unknown_option_is_usage_error() -> None:
    out = run_cli("extract", "--no-such-option", "x")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_missing_path_is_one_line_error(tmp_path) -> None:
    missing = tmp_path / "nope"
    out = run_cli("extract", str(missing), "-w", str(tmp_path / "ws"), "--json")
    assert out.returncode == 1  # a runtime error the user can fix (2 is for bad usage)
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: {missing}: no such file or folder: check the path"
    assert out.stdout == ""


def test_a_folder_without_media_is_named_in_a_warning(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not media")
    out = run_cli("extract", str(tmp_path / "empty"), "-w", str(tmp_path / "ws"))
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "warning: no image or video file found" in out.stderr and ".mp4" in out.stderr


def test_bad_workspace_is_usage_error(tmp_path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    out = run_cli("extract", str(tmp_path), "-w", str(afile))
    assert out.returncode == 2
    assert "workspace" in out.stderr and "Traceback" not in out.stderr


def test_json_mode_keeps_stdout_clean(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_cli("extract", str(empty), "-w", str(tmp_path / "ws"), "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["extracted"] == 0 and summary["failed"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["extrakt"], "error: No such command 'extrakt'. Did you mean 'extract'? (see fastslow --help)"),
        (["search", "--k", "0", "x"],
         "error: Invalid value for '-k' / '--k': Input should be greater than or equal to 1 (see fastslow search --help)"),
        (["search"], "error: Missing argument 'queries'. (see fastslow search --help)"),
        (["train"], "error: Missing argument 'kind'. Choose from: fast, slow (see fastslow train --help)"),
        (["index", "bild"], "error: No such command 'bild'. Did you mean 'build'? (see fastslow index --help)"),
        (["extract", "--no-such-option", "x"], "error: No such option: --no-such-option (see fastslow extract --help)"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    """Issue 9: Typer printed a usage line, a hint and a 3-line box."""
    out = run_cli(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [message]


@pytest.mark.parametrize("args", [[], ["index"]])
def test_no_arguments_still_show_help(args: list[str]) -> None:
    out = run_cli(*args)
    assert out.returncode == 2 and "Usage: fastslow" in out.stdout and "Commands" in out.stdout
