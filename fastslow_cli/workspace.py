"""Where fastslow keeps its data: `--workspace`, else `$FASTSLOW_WORKSPACE`, else `./.fastslow`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fastslow_cli.errors import UsageError

ENV_VAR = "FASTSLOW_WORKSPACE"
DEFAULT_DIR = ".fastslow"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str) -> str:
    """Names of sets, models and indexes become folder names: keep them plain."""
    if not _NAME.match(name):
        raise UsageError(
            f"invalid {what} name {name!r}: use letters, digits, '.', '_' or '-' (e.g. 'default')"
        )
    return name


@dataclass(frozen=True)
class Workspace:
    """The folder layout of DESIGN.md; creating folders is left to the writers."""

    root: Path

    def features_dir(self, set_name: str) -> Path:
        return self.root / "features" / check_name(set_name, "feature set")

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model")

    def index_dir(self, name: str) -> Path:
        return self.root / "index" / check_name(name, "index")


def resolve_workspace(option: str | os.PathLike[str] | None = None) -> Workspace:
    """The workspace from the option, the environment, or the default, in that order."""
    raw = option if option not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_DIR
    root = Path(raw).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"workspace {root} is a file, not a folder: pass --workspace DIR")
    return Workspace(root.resolve())
