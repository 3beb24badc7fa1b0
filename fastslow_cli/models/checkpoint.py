"""Model folders: `config.json` + `model.safetensors` + `tokenizer.json`.

Each file is written atomically; `config.json` is written last and records the sha256
of the other two, so a folder torn by a crash between files (new weights, old config)
is detected on load instead of silently mixing two models. Weights are safetensors:
no pickles, nothing executes on load. The config records the feature set the model was
trained on (fingerprint and level shapes) so it is never run on other features.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from fastslow_cli.atomic import atomic_path, atomic_write_json, file_sha256
from fastslow_cli.errors import FastslowError
from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.models.files import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    TOKENIZER,
    WEIGHTS,
    read_config,
)
from fastslow_cli.models.slow import SlowConfig, SlowModel
from fastslow_cli.text.tokenizer import TextTokenizer

KINDS = {"fast": (FastConfig, FastModel), "slow": (SlowConfig, SlowModel)}


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer and its whole `config.json`."""

    model: FastModel | SlowModel
    tokenizer: TextTokenizer
    config: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.config["kind"])


def save_model(
    model_dir: str | Path,
    model: FastModel | SlowModel,
    tokenizer: TextTokenizer,
    features: dict[str, Any],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model folder; `features` holds at least `fingerprint` (and e.g. `set`, `levels`).

    `training` records the training arguments, `extra` anything else worth keeping
    (best epoch, validation metrics, teacher of a distilled model).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / WEIGHTS) as tmp:
        # One metadata key: safetensors writes a metadata map in no fixed order, so with two
        # keys the same weights gave different bytes (and another `native_identity` hash).
        save_file(state, str(tmp), metadata={"format": FORMAT})
    tokenizer.save(model_dir / TOKENIZER)
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": model.kind,
        "architecture": model.config.to_dict(),
        "features": {**features, "levels": [list(s) for s in model.config.level_shapes]},
        "training": training or {},
        **(extra or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": {WEIGHTS: file_sha256(model_dir / WEIGHTS), TOKENIZER: file_sha256(model_dir / TOKENIZER)},
    }
    atomic_write_json(model_dir / CONFIG, config)
    return model_dir


def check_features(config: dict[str, Any], fingerprint: str | None, level_shapes: Any, where: str) -> None:
    """Refuse features other than those the model was trained on (one-line message)."""
    want = config.get("features", {})
    if level_shapes is not None:
        got = [list(map(int, s)) for s in level_shapes]
        if got != want.get("levels"):
            raise FastslowError(
                f"{where}: the model expects feature levels {want.get('levels')} but the feature set has {got}; "
                "use the feature set it was trained on or retrain"
            )
    if fingerprint is not None and want.get("fingerprint") not in (None, fingerprint):
        raise FastslowError(
            f"{where}: the model was trained on features {want.get('fingerprint')} (set "
            f"{want.get('set', '?')!r}) but the feature set is {fingerprint}; use that set or retrain"
        )


def load_model(
    model_dir: str | Path,
    kind: str | None = None,
    fingerprint: str | None = None,
    level_shapes: Any = None,
) -> LoadedModel:
    """Load a model folder for inference (eval mode), checking kind, integrity and features."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if kind is not None and config["kind"] != kind:
        raise FastslowError(f"{model_dir} holds a {config['kind']} model, not a {kind} one: pass a {kind} model")
    check_features(config, fingerprint, level_shapes, str(model_dir))
    for name in (WEIGHTS, TOKENIZER):
        path = model_dir / name
        if not path.is_file():
            raise FastslowError(f"{path} is missing: the model folder is incomplete, retrain it")
        if config.get("sha256", {}).get(name) != file_sha256(path):
            raise FastslowError(f"{path} does not match {model_dir / CONFIG} (interrupted save?): retrain the model")
    cfg_cls, model_cls = KINDS[config["kind"]]
    known = {f.name for f in fields(cfg_cls)}
    arch = config.get("architecture", {})
    unknown = sorted(set(arch) - known)
    if unknown:
        raise FastslowError(
            f"{model_dir / CONFIG} has settings this fastslow does not know {unknown}: "
            "it was saved by another version; retrain the model with this one"
        )
    try:
        model = model_cls(cfg_cls(**arch))
        model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise FastslowError(f"{model_dir / WEIGHTS} does not fit its config: retrain the model") from exc
    model.eval()
    return LoadedModel(model=model, tokenizer=TextTokenizer.load(model_dir / TOKENIZER), config=config)
