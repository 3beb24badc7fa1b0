"""One resolver for model arguments: a workspace model, a folder, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastslow_cli.errors import FastslowError
from fastslow_cli.models.names import ModelRef, resolve_model


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    (tmp_path / "models" / "fast").mkdir(parents=True)
    return tmp_path / "models"


def test_a_bare_name_is_a_workspace_model_first(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()  # a same-named folder here does not win
    assert resolve_model("fast", models_dir) == ModelRef("native", str(models_dir / "fast"))


def test_a_bare_name_the_workspace_lacks_is_refused_with_the_fix(models_dir: Path) -> None:
    with pytest.raises(FastslowError, match=r"no model 'slow' in .*models: train it"):
        resolve_model("slow", models_dir)


def test_folders_resolve_to_absolute_paths_and_files_are_refused(models_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert resolve_model("mine", models_dir) == ModelRef("local", str((tmp_path / "mine").resolve()))
    assert resolve_model("./mine") == ModelRef("local", str((tmp_path / "mine").resolve()))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FastslowError, match="weights.bin: it is a file, not a model folder; use a folder"):
        resolve_model("./weights.bin", what="backbone", fix="use a folder")


def test_hub_ids_pass_through_and_path_like_names_need_a_folder(tmp_path: Path) -> None:
    assert resolve_model("openai/clip-vit-base-patch32") == ModelRef("hub", "openai/clip-vit-base-patch32")
    assert resolve_model("gpt2") == ModelRef("hub", "gpt2")  # no workspace to look in: a hub id
    for name in ("./missing", os.fspath(tmp_path / "missing"), "a/b/c", "~/nowhere-here", " "):
        with pytest.raises(FastslowError, match="no such folder"):
            resolve_model(name)
