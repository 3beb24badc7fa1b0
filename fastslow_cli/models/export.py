"""ONNX graphs of what a query needs from a native model, exported when the model is saved.

A one-shot `fastslow search` spends most of its time importing torch; with these graphs
it runs on ONNX Runtime instead (`search/onnx.py`) and never imports torch. Each model
folder gets one graph (`models/files.py` names the files):

- Fast: the text tower, `ids (B, L) int64, mask (B, L) bool -> vectors (B, dim)` (unit).
- Slow: one query against K cached memories, `ids (1, L), mask (1, L), memory (K, M, width)
  float32, memory_mask (K, M) bool -> scores (K,)`: the per-item key/value projection and
  both decoders, the same `pair_scores` the torch path runs.

Exported with `torch.onnx.export(dynamo=True)` and `torch.export.Dim` for every length
(batch, tokens, items, memory): the legacy exporter baked the lengths it was traced at
into reshapes (DESIGN.md, "Known traps"). Needs `onnx` and `onnxscript`, imported here only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from fastslow_cli.atomic import atomic_path, atomic_write_json, file_sha256
from fastslow_cli.models.fast import FastModel
from fastslow_cli.models.files import GRAPH, GRAPH_RECORD, graph_record, read_config
from fastslow_cli.models.slow import SlowModel

OPSET = 18


class FastTextGraph(nn.Module):
    """The Fast model's text tower alone: token ids and mask -> unit vectors."""

    def __init__(self, model: FastModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids, mask)


class SlowQueryGraph(nn.Module):
    """One query's scores against K memories: keys/values per item, then both decoders."""

    def __init__(self, model: SlowModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        k = memory.shape[0]
        kvs = self.model.memory_kv(memory)
        return self.model.pair_scores(ids.expand(k, -1), mask.expand(k, -1), kvs, memory_mask)


def _graph_and_inputs(model: FastModel | SlowModel) -> tuple[nn.Module, tuple, tuple, list[str]]:
    """The wrapper, example inputs, their dynamic dimensions and names (lengths all distinct,
    so no two dimensions are taken for one)."""
    max_len = int(model.config.max_len)
    tokens = torch.export.Dim("tokens", min=2, max=max_len)
    ids = torch.tensor([[1, 4, 5, 6, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    if isinstance(model, FastModel):
        batch = torch.export.Dim("batch", min=1)
        ids, mask = ids.repeat(3, 1), mask.repeat(3, 1)
        return FastTextGraph(model), (ids, mask), ({0: batch, 1: tokens}, {0: batch, 1: tokens}), ["ids", "mask"]
    items, length = torch.export.Dim("items", min=1), torch.export.Dim("memory", min=1)
    memory = torch.zeros(3, 7, int(model.config.width))
    memory_mask = torch.ones(3, 7, dtype=torch.bool)
    shapes = ({1: tokens}, {1: tokens}, {0: items, 1: length}, {0: items, 1: length})
    return SlowQueryGraph(model), (ids, mask, memory, memory_mask), shapes, ["ids", "mask", "memory", "memory_mask"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress to stdout and warns through logging: a command's
    `--json` stdout must stay clean, and none of it is for the user."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def export_query_graph(model_dir: str | Path, model: FastModel | SlowModel | None = None) -> Path:
    """Write the query graph of the saved model in `model_dir` (its weights are loaded when
    `model`, the same model in memory, is not given or is not on the CPU), then its record;
    returns the graph's path.

    The record is written last and names the weights' sha256 from `config.json`, so a
    graph torn by a crash, or left from weights since replaced, is never used.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if model is not None and any(p.device.type != "cpu" for p in model.parameters()):
        model = None  # trained on a GPU: export the saved weights on the CPU (example inputs are CPU tensors)
    if model is None:
        from fastslow_cli.models.checkpoint import load_model

        model = load_model(model_dir).model
    graph, args, shapes, names = _graph_and_inputs(model)
    out_name = "vectors" if isinstance(model, FastModel) else "scores"
    was_training = model.training
    model.eval()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                graph, args, dynamo=True, dynamic_shapes=shapes, input_names=names, output_names=[out_name],
                opset_version=OPSET, verbose=False,
            )
            (model_dir / GRAPH_RECORD).unlink(missing_ok=True)  # no record of a graph being replaced
            with atomic_path(model_dir / GRAPH) as tmp:
                program.save(str(tmp))
    finally:
        model.train(was_training)
    atomic_write_json(model_dir / GRAPH_RECORD, graph_record(config, file_sha256(model_dir / GRAPH)))
    return model_dir / GRAPH
