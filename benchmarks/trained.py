"""A small Fast model trained for the benchmark: real item and caption vectors for HNSW recall.

Random-init or synthetic vectors say little about where trained text vectors fall
relative to the item vectors (the case HNSW finds hardest: queries outside the item
clusters). This trains one with the same calls a user's `fastslow train fast` makes:
synthetic captioned media (`demo.synth.generate`), `features.extract.run_extract` into a
feature store, `training.loop.train_fast` on the train split, selected on val.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastslow_cli.data.captioned_set import captioned_set
from fastslow_cli.demo.synth import SynthConfig, generate
from fastslow_cli.features.extract import ExtractOptions, run_extract
from fastslow_cli.search.retrievers import NativeFast
from fastslow_cli.store.parquet import FeatureStore
from fastslow_cli.training.loop import TrainArgs, train_fast
from fastslow_cli.workspace import Workspace


@dataclass
class TrainedVectors:
    """Unit item vectors of the whole collection, unit vectors of held-out captions, their items."""

    items: np.ndarray  # (N, dim)
    queries: np.ndarray  # (Q, dim): val and test captions
    truth: np.ndarray  # (Q,) row in `items` of each caption's own item
    info: dict


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def train_small_fast(tmp: Path, synth: SynthConfig, epochs: int, min_batch: int) -> TrainedVectors:
    """Generate, extract, train; return the trained model's vectors and how the run went."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    captions = generate(tmp / "synth", synth)
    seconds["synth"] = time.perf_counter() - start
    workspace = Workspace(tmp / "workspace")
    start = time.perf_counter()
    run_extract([str(tmp / "synth")], workspace, ExtractOptions(set_name="bench", device="cpu"), progress=False)
    seconds["extract"] = time.perf_counter() - start
    data = captioned_set(FeatureStore(workspace.features_dir("bench")), captions, ["train", "val", "test"])
    start = time.perf_counter()
    result = train_fast(
        data.table, data.pairs["train"], data.pairs["val"], args=TrainArgs(epochs=epochs, min_batch=min_batch), device="cpu"
    )
    seconds["train"] = time.perf_counter() - start
    fast = NativeFast(result.model, result.tokenizer, {"path": "bench/trained"}, torch.device("cpu"))
    held_out = data.pairs["val"] + data.pairs["test"]
    best = result.best
    val_items = int(best.get("val_items", 0))
    return TrainedVectors(
        items=_unit(fast.encode_items(data.table)),
        queries=_unit(np.concatenate([fast.encode_texts([text]) for text, _ in held_out])),
        truth=np.array([item for _, item in held_out], dtype=np.int64),
        info={
            "items": len(data.table.ids),
            "images": synth.n_images,
            "videos": synth.n_videos,
            "train_captions": len(data.pairs["train"]),
            "query_captions": len(held_out),
            "epochs": epochs,
            "batch_size": result.args.batch_size,
            "best_epoch": best.get("epoch"),
            "val_R@1": round(float(best.get("val_R@1", 0.0)), 1),
            "val_R@5": round(float(best.get("val_R@5", 0.0)), 1),
            "val_items": val_items,
            "val_chance_R@1": round(100.0 / max(1, val_items), 2),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
    )
