"""A native model folder's files, read without torch: what the query path needs to know.

```
models/<name>/config.json        format, kind, architecture, features, sha256 of weights + tokenizer
models/<name>/model.safetensors  the weights (torch path)
models/<name>/tokenizer.json     the word-level tokenizer (both paths)
models/<name>/query.onnx         ONNX graph of the query side (see `models/export.py`)
models/<name>/query.onnx.json    what the graph was exported from: sha256 of the graph, weights, tokenizer
```

The graph's record is a file of its own, not part of `config.json`: adding a graph to an
existing model (`fastslow models export`) then changes nothing an index recorded of the
model (`native_identity` hashes only the weights and tokenizer). A graph whose record
names other weights than `config.json` (the model was retrained since), or whose bytes
do not match its record (a torn write), is stale: `query_graph` says why, and search
falls back to torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastslow_cli.atomic import file_sha256
from fastslow_cli.errors import FastslowError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
GRAPH = "query.onnx"
GRAPH_RECORD = "query.onnx.json"
FORMAT = "fastslow-model"
FORMAT_VERSION = 1
KIND_NAMES = ("fast", "slow")
GRAPH_VERSION = 1  # inputs/outputs of the graphs (models/export.py); another version is stale
EXPORT_SWITCH = "FASTSLOW_ONNX_EXPORT"  # "0": saving a model writes no ONNX graph (search then uses torch)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a model folder, checked for format and kind."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise FastslowError(f"{path} not found: train a model first (fastslow train fast|slow) or check --workspace")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FastslowError(f"{path} is not valid JSON: retrain the model") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("kind") not in KIND_NAMES:
        raise FastslowError(f"{path} is not a fastslow model config: retrain the model")
    if config.get("version", 0) > FORMAT_VERSION:
        raise FastslowError(f"{path} was written by a newer fastslow: upgrade fastslow")
    return config


def is_native(path: str | Path) -> bool:
    """A fastslow model folder (as opposed to a Hugging Face folder or hub id)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def native_identity(path: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """What an index records of a model: where it is and a hash of exactly its weights + tokenizer."""
    sha = config.get("sha256", {})
    digest = hashlib.sha256(json.dumps(sha, sort_keys=True).encode()).hexdigest()
    return {
        "name": Path(path).name,
        "path": str(Path(path).resolve()),
        "kind": config["kind"],
        "content_hash": digest,
        "fingerprint": config.get("features", {}).get("fingerprint"),
    }


def export_enabled() -> bool:
    """Whether saving a model also writes its ONNX graph (env FASTSLOW_ONNX_EXPORT, default on)."""
    return os.environ.get(EXPORT_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def graph_record(config: dict[str, Any], graph_sha256: str) -> dict[str, Any]:
    """The record written beside a graph exported from the model `config` describes."""
    sha = config.get("sha256", {})
    return {
        "version": GRAPH_VERSION,
        "kind": config["kind"],
        "graph_sha256": graph_sha256,
        "weights_sha256": sha.get(WEIGHTS),
        "tokenizer_sha256": sha.get(TOKENIZER),
    }


def query_graph(model_dir: str | Path, config: dict[str, Any] | None = None) -> tuple[Path | None, str | None]:
    """(the model's ONNX query graph, None) when it is there and was exported from these
    weights, else (None, why not) in words a note can end with."""
    model_dir = Path(model_dir)
    config = config if config is not None else read_config(model_dir)
    graph, record_path = model_dir / GRAPH, model_dir / GRAPH_RECORD
    if not graph.is_file() or not record_path.is_file():
        return None, "it has no ONNX graph"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"{record_path} is unreadable"
    if not isinstance(record, dict) or record.get("version") != GRAPH_VERSION or record.get("kind") != config["kind"]:
        return None, "its ONNX graph is from another fastslow version"
    if record != graph_record(config, record.get("graph_sha256", "")):
        return None, "its ONNX graph was exported from other weights (the model was retrained since)"
    if file_sha256(graph) != record["graph_sha256"]:
        return None, "its ONNX graph does not match its record (interrupted export?)"
    return graph, None
