"""Training a Slow model: the bidirectional captioning loss over (caption, item) pairs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from fastslow_cli.models.encode import slow_batcher
from fastslow_cli.models.slow import SlowConfig, SlowModel
from fastslow_cli.store.parquet import FeatureTable
from fastslow_cli.text.tokenizer import TextTokenizer
from fastslow_cli.training.loop import Callback, Pair, SlowTrainArgs, Step, TrainResult, ValSet
from fastslow_cli.training.loop import fit_config, prepare, train_loop, validator


def train_slow(
    table: FeatureTable,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    config: SlowConfig | None = None,
    args: SlowTrainArgs | None = None,
    tokenizer: TextTokenizer | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train a Slow model with the bidirectional captioning loss; keep the epoch with the best val R@1.

    `config.finest_level` left as None is resolved from the table's level shapes.
    """
    args = args or SlowTrainArgs()
    tokenizer = prepare(table, train_pairs, val_pairs, tokenizer, args.seed)
    config = copy.deepcopy(config or SlowConfig())
    config.level_shapes = [list(np.shape(lv)[2:]) for lv in table.levels]
    config.finest_level = config.resolve_finest_level()
    batcher = slow_batcher(table, config.finest_level)
    fit_config(config, tokenizer, table)
    device = torch.device(device or "cpu")
    model = SlowModel(config).to(device)
    val = ValSet(val_pairs, args.val_items, args.val_texts, args.seed)

    def step_loss(step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        return model.caption_loss(step.ids, step.mask, *model.encode_visual(step.levels, step.frame_mask)), {}

    validate = validator(model, tokenizer, table, val, device)
    return train_loop(model, tokenizer, batcher, train_pairs, args, step_loss, validate, callback, device)
