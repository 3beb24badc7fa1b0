"""What a model argument names: a model under WORKSPACE/models, a folder, or a hub id.

The one resolver behind `--model`/`--slow`/`--teacher`/`--student`, `--backbone` and the
Hugging Face adapters. Light (no torch) and never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastslow_cli.errors import FastslowError


@dataclass(frozen=True)
class ModelRef:
    """`native`: a model folder under WORKSPACE/models, named by its folder name;
    `local`: any other model folder (absolute path); `hub`: a Hugging Face hub id."""

    kind: Literal["native", "local", "hub"]
    path_or_id: str


def _bare(name: str) -> bool:
    return "/" not in name and "\\" not in name and not name.startswith((".", "~"))


def resolve_model(
    name: str,
    models_dir: Path | None = None,
    what: str = "model",
    fix: str = "pass a model folder or a hub id",
) -> ModelRef:
    """Resolve `name`: a bare name under `models_dir` (when given), else an existing folder,
    else a hub id. Raises a one-line `FastslowError` naming `what` and `fix` for a bare
    name `models_dir` lacks, a file, or a path-like name with no folder behind it."""
    if models_dir is not None and name and _bare(name):
        candidate = Path(models_dir) / name
        if candidate.exists():
            return ModelRef("native", str(candidate))
        if not Path(name).exists():
            raise FastslowError(f"no model '{name}' in {models_dir}: train it (`fastslow train ...`) or pass a model folder")
    path = Path(name).expanduser()
    if name.strip() and path.is_dir():
        return ModelRef("local", str(path.resolve()))
    if name.strip() and path.exists():
        raise FastslowError(f"cannot load {what} {name}: it is a file, not a model folder; {fix}")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or not name.strip():
        raise FastslowError(f"cannot load {what} {name}: no such folder; {fix}")
    return ModelRef("hub", name)
