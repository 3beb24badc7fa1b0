"""A small Fast model trained for the benchmark: real item and caption vectors for HNSW recall.

Random-init or synthetic vectors say little about where trained text vectors fall
relative to the item vectors (the case HNSW finds hardest: queries outside the item
clusters). This trains one through the public API, as a user would: synthetic captioned
media (`demo.synth.generate`), `Workspace.extract` (the real decode pool) and
`Workspace.train("fast")` on the train split, selected on val.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastslow_cli import Workspace
from fastslow_cli.data.captioned_set import captioned_set
from fastslow_cli.demo.synth import SynthConfig, generate


@dataclass
class TrainedVectors:
    """Unit item vectors of the whole collection, unit vectors of held-out captions, their items."""

    items: np.ndarray  # (N, dim)
    queries: np.ndarray  # (Q, dim): val and test captions
    truth: np.ndarray  # (Q,) row in `items` of each caption's own item
    info: dict


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def train_small_fast(tmp: Path, synth: SynthConfig, epochs: int, batch_size: int) -> TrainedVectors:
    """Generate, extract, train; return the trained model's vectors and how the run went."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    captions = generate(tmp / "synth", synth)
    seconds["synth"] = time.perf_counter() - start
    workspace = Workspace(tmp / "workspace")
    start = time.perf_counter()
    workspace.extract([tmp / "synth"], set="bench", device="cpu")
    seconds["extract"] = time.perf_counter() - start
    start = time.perf_counter()
    best = workspace.train("fast", captions, set="bench", epochs=epochs, batch_size=batch_size, seed=synth.seed, device="cpu").best
    seconds["train"] = time.perf_counter() - start
    fast = workspace.load_fast("fast", device="cpu")
    data = captioned_set(workspace.store("bench"), captions, ["train", "val", "test"])  # every item, in one table
    held_out = data.pairs["val"] + data.pairs["test"]
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
            "batch_size": batch_size,
            "best_epoch": best.get("epoch"),
            "val_R@1": round(float(best.get("val_R@1", 0.0)), 1),
            "val_R@5": round(float(best.get("val_R@5", 0.0)), 1),
            "val_items": val_items,
            "val_chance_R@1": round(100.0 / max(1, val_items), 2),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
    )
