"""Training a Fast model: in-batch contrastive loss over (caption, item) pairs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from fastslow_cli.models.encode import fast_batcher
from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.store.parquet import FeatureTable
from fastslow_cli.text.tokenizer import TextTokenizer
from fastslow_cli.training.loop import Callback, Pair, Step, TrainArgs, TrainResult, ValSet
from fastslow_cli.training.loop import fit_config, prepare, train_loop, validator


def train_fast(
    table: FeatureTable,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    config: FastConfig | None = None,
    args: TrainArgs | None = None,
    tokenizer: TextTokenizer | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train a Fast model on `train_pairs`, keep the epoch with the best val R@1.

    `config` may leave `level_shapes`/`vocab_size` empty: they are taken from the table
    and the tokenizer (trained on the training captions when not given).
    """
    args = args or TrainArgs()
    tokenizer = prepare(table, train_pairs, val_pairs, tokenizer, args.seed)
    batcher = fast_batcher(table)
    config = copy.deepcopy(config or FastConfig())
    config.level_shapes = batcher.level_shapes()
    fit_config(config, tokenizer, table)
    device = torch.device(device or "cpu")
    model = FastModel(config).to(device)
    val = ValSet(val_pairs, args.val_items, args.val_texts, args.seed)

    def step_loss(step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        text = model.encode_text(step.ids, step.mask)
        loss = model.contrastive_loss(text, model.encode_visual(step.levels, step.frame_mask))
        return loss, {"temperature": float(1.0 / model.logit_scale.detach().exp())}

    validate = validator(model, tokenizer, table, val, device)
    return train_loop(model, tokenizer, batcher, train_pairs, args, step_loss, validate, callback, device)
