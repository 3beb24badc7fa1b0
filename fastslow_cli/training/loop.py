"""The one training loop, which `training.fast`, `training.slow` and `training.distill` configure.

Every run shares the recipe: an epoch is one pass over the training *items* (one of
each item's captions, drawn at random, so a batch never holds two captions of one item
as false negatives); batches hold items of one kind (single-frame images, or multi-frame
videos padded to the batch's longest) so images are not padded to video length;
AdamW with linear warm-up and cosine decay; after each epoch the model is measured on
(a fixed subset of) the validation split and the best state by val R@1 (then R@5) is
kept. Everything random draws from generators seeded by `seed`, so a run is repeatable.
A run supplies its step loss and its validation (`validator`: the score matrix
`fastslow eval` uses), and optionally a per-epoch hook and an epoch-0 record of the start.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.eval.calibration import Calibration, fit_platt
from fastslow_cli.eval.metrics import evaluate_scores, fast_score_matrix, find_twins, slow_score_matrix
from fastslow_cli.search.retrievers import NativeFast, NativeSlow
from fastslow_cli.store.batches import Batcher
from fastslow_cli.text.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from fastslow_cli.store.parquet import FeatureTable

Callback = Callable[[dict[str, Any]], None]
Pair = tuple[str, int]  # (caption text, row of the item in the feature table)
A = TypeVar("A", bound="TrainArgs")


@dataclass
class TrainArgs:
    """Optimisation settings shared by both models (recorded in `config.json`); the defaults
    are the Fast model's, measured on the demo data (see docs/ARCHITECTURE.md)."""

    epochs: int = 15
    batch_size: int = 128  # the largest batch; small training sets get smaller ones (`fit_batch`)
    min_steps: int = 400  # optimiser steps a run should take at least (0: always `batch_size`)
    min_batch: int = 64  # never shrink the batch below this
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.1  # fraction of all steps
    seed: int = 0
    val_items: int = 1000  # cap on validation items measured after each epoch
    val_texts: int = 1000  # cap on validation captions
    val_start: float = 0.0  # validate (and select) only after this fraction of the epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlowTrainArgs(TrainArgs):
    """Slow-model defaults: fit the 2-core budget of the demo (see docs/ARCHITECTURE.md)."""

    epochs: int = 12
    batch_size: int = 64
    min_steps: int = 600
    min_batch: int = 16
    lr: float = 1e-3
    warmup: float = 0.05
    val_items: int = 100
    val_texts: int = 100
    val_start: float = 0.4  # early epochs are never the best: skip their (costly) validation


@dataclass
class TrainResult:
    """The best model (by val R@1), its tokenizer, per-epoch history, the best epoch's record
    and the settings the run used (batch size fitted to the data)."""

    model: torch.nn.Module
    tokenizer: TextTokenizer
    args: TrainArgs
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None  # relevance = P(match) from the best model's val scores


def fit_batch(args: A, n_items: int) -> A:
    """`args` with the batch size for `n_items` training items: `batch_size`, lowered (not
    below `min_batch`) when a run would otherwise take fewer than `min_steps` steps.

    The losses leave their early plateau after a number of optimiser steps, not epochs:
    on a few hundred items full-size batches stop before that (on the 528-item quick demo
    the Slow model reached R@1 1.5 with batches of 64 and 18.2 with batches of 16).
    """
    if args.min_steps <= 0:
        return args
    fit = n_items * args.epochs // args.min_steps
    return replace(args, batch_size=int(min(args.batch_size, max(args.min_batch, fit, 2))))


def check_pairs(pairs: Sequence[Pair], n_items: int, split: str) -> None:
    """Refuse an empty split (one-line error) or pairs pointing outside the table."""
    if not pairs:
        raise FastslowError(f"no {split} captions matched a stored item: check the captions file's {split} split")
    bad = [i for _, i in pairs if not 0 <= i < n_items]
    if bad:
        raise ValueError(f"{split} pair item index {bad[0]} is outside the feature table (0..{n_items - 1})")


def _by_item(pairs: Sequence[Pair]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for text, item in pairs:
        out.setdefault(int(item), []).append(text)
    return out


def _schedule(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor: linear warm-up then cosine decay to zero."""
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


class Optimiser:
    """AdamW (no weight decay on biases, norms, position tables and the temperature) with
    linear warm-up and cosine decay over the run's steps, and gradient clipping.

    `items` and `batcher` give the run's length: an epoch is one pass over `items` in
    batches of `args.batch_size` (single-item batches are skipped).
    """

    def __init__(self, model: torch.nn.Module, args: TrainArgs, batcher: Batcher, items: np.ndarray) -> None:
        batches = batcher.shuffled(items, args.batch_size, np.random.default_rng(0))
        self.total = max(1, len([b for b in batches if len(b) > 1]) * args.epochs)
        self.model = model
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (decay if p.ndim >= 2 and "pos_emb" not in name and "spatial" not in name and "temporal" not in name else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _schedule(s, self.total, args.warmup))
        self.steps = 0

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.steps += 1

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])


class Selection:
    """Epoch records (emitted to `callback`) and the model state of the best epoch by val
    R@1, then R@5; `result` puts that state back into the model."""

    def __init__(self, model: torch.nn.Module, callback: Callback | None) -> None:
        self.model = model
        self.callback = callback
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.state = copy.deepcopy(model.state_dict())

    def add(self, record: dict[str, Any], measured: bool = True) -> None:
        key = (record.get("val_R@1", -1.0), record.get("val_R@5", -1.0))
        record["best"] = measured and (not self.best or key > (self.best["val_R@1"], self.best["val_R@5"]))
        if record["best"]:
            self.best = dict(record)
            self.state = copy.deepcopy(self.model.state_dict())
        self.history.append(record)
        _emit(self.callback, {"event": "epoch", **record})

    def result(self, tokenizer: TextTokenizer, args: TrainArgs) -> TrainResult:
        self.model.load_state_dict(self.state)
        self.model.eval()
        return TrainResult(model=self.model, tokenizer=tokenizer, args=args, history=self.history, best=self.best)


def _epoch_record(
    epoch: int, optimiser: Optimiser, losses: dict[str, list[float]], metrics: dict[str, Any], start: float
) -> dict[str, Any]:
    """One epoch's line of `train_log.jsonl`: mean losses, val metrics, lr, elapsed seconds."""
    return {
        "epoch": epoch,
        "step": optimiser.steps,
        **{k: float(np.mean(v)) if v else float("nan") for k, v in losses.items()},
        **{f"val_{k}": v for k, v in metrics.items()},
        "lr": optimiser.lr(),
        "seconds": round(time.perf_counter() - start, 2),
    }


class ValSet:
    """A fixed validation subset: items and their captions, with twins found once."""

    def __init__(self, pairs: Sequence[Pair], max_items: int, max_texts: int, seed: int) -> None:
        by_item = _by_item(pairs)
        items = np.array(sorted(by_item))
        self.total_items = len(items)  # the whole split's items (a calibration's reference)
        rng = np.random.default_rng(seed + 1)
        self.items = np.sort(rng.permutation(items)[:max_items])
        col = {int(it): j for j, it in enumerate(self.items)}
        texts, gt = [], []
        for it in self.items:
            for text in by_item[int(it)]:
                texts.append(text)
                gt.append(col[int(it)])
        keep = np.sort(rng.permutation(len(texts))[:max_texts])
        self.texts = [texts[i] for i in keep]
        self.gt = np.array([gt[i] for i in keep], dtype=np.int64)
        self.twins = find_twins(self.texts, self.gt)


def _emit(callback: Callback | None, event: dict[str, Any]) -> None:
    if callback is not None:
        callback(event)


@dataclass
class Step:
    """One training batch: the train pair drawn for each item, the items' features, the captions' tokens."""

    pairs: np.ndarray  # (B,) index into the run's train pairs of each row's caption this epoch
    levels: list[torch.Tensor]
    frame_mask: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor


StepLoss = Callable[[Step], "tuple[torch.Tensor, dict[str, float]]"]


class Validation:
    """Val metrics of a native Fast or Slow model by `eval.metrics.fast_score_matrix` /
    `slow_score_matrix` over a retriever of it: what `fastslow eval` would report on `val`.
    Calling it gives the metrics; `calibrate` fits relevance on the same scores."""

    def __init__(self, model: torch.nn.Module, tokenizer: TextTokenizer, table: FeatureTable, val: ValSet,
                 device: torch.device) -> None:
        self.model, self.tokenizer, self.val, self.device = model, tokenizer, val, device
        self.table = table.subset(val.items)  # once per run: the same items every epoch
        self.wrap, self.score_matrix = (NativeFast, fast_score_matrix) if model.kind == "fast" else (NativeSlow, slow_score_matrix)

    def scores(self) -> np.ndarray:
        scores, _ = self.score_matrix(self.wrap(self.model, self.tokenizer, {}, self.device), self.table, self.val.texts)
        return scores

    def __call__(self) -> dict[str, Any]:
        return evaluate_scores(self.scores(), self.val.texts, self.val.gt, self.val.twins)

    def calibrate(self) -> Calibration | None:
        """Platt scaling of the model's scores on val (None when val has fewer than two items)."""
        if len(self.val.items) < 2:
            return None
        kind = "fast_score" if self.model.kind == "fast" else "slow_score"
        return fit_platt(self.scores(), self.val.gt, kind, items=self.val.total_items)


def validator(
    model: torch.nn.Module, tokenizer: TextTokenizer, table: FeatureTable, val: ValSet, device: torch.device
) -> Validation:
    """The validation of a run (see `Validation`)."""
    return Validation(model, tokenizer, table, val, device)


def fit_config(config: Any, tokenizer: TextTokenizer, table: FeatureTable) -> None:
    """Size a model config's text and frame limits to the tokenizer and the table."""
    config.vocab_size = tokenizer.vocab_size
    config.max_len = tokenizer.max_len
    config.max_frames = max(config.max_frames, int(np.shape(table.frame_mask)[1]))


def train_loop(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    batcher: Batcher,
    train_pairs: Sequence[Pair],
    args: TrainArgs,
    step_loss: StepLoss,
    validate: Validation,
    callback: Callback | None = None,
    device: torch.device | None = None,
    *,
    parts: Sequence[str] = (),
    before_epoch: Callable[[int], None] | None = None,
    validate_start: dict[str, Any] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Epochs of batches, validation, best-state selection; the best state is returned.

    `step_loss` returns the batch loss and named parts to log (`parts` names them in log
    order); `before_epoch(epoch)` runs before each epoch's batches; `validate_start`, when
    given, validates the untrained model as epoch 0 with these extra fields in its record
    (so the run never returns a model worse on val than its start). `started` is the
    `perf_counter` time the run's "seconds" count from (default: now). The best state's
    relevance calibration (`Validation.calibrate`) is fitted at the end.
    """
    device = device or torch.device("cpu")
    start = time.perf_counter() if started is None else started
    by_item: dict[int, list[int]] = {}
    for q, (_, item) in enumerate(train_pairs):
        by_item.setdefault(int(item), []).append(q)
    items = np.array(sorted(by_item))
    args = fit_batch(args, len(items))
    rng = np.random.default_rng(args.seed)
    optimiser = Optimiser(model, args, batcher, items)
    selection = Selection(model, callback)
    if validate_start is not None:
        model.eval()
        metrics = {f"val_{k}": v for k, v in validate().items()}
        selection.add({"epoch": 0, "step": 0, **metrics, **validate_start, "seconds": round(time.perf_counter() - start, 2)})
    for epoch in range(1, args.epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        losses: dict[str, list[float]] = {"loss": [], **{k: [] for k in parts}}
        for pos in batcher.shuffled(items, args.batch_size, rng):
            if len(pos) < 2:
                continue
            rows = items[pos]
            levels, frame_mask = batcher.load(rows, device)
            qs = np.array([by_item[int(i)][rng.integers(len(by_item[int(i)]))] for i in rows])
            ids, mask = (t.to(device) for t in tokenizer.encode_batch([train_pairs[q][0] for q in qs]))
            loss, logged = step_loss(Step(qs, levels, frame_mask, ids, mask))
            optimiser.step(loss)
            losses["loss"].append(float(loss.detach()))
            for k, v in logged.items():
                losses.setdefault(k, []).append(v)
            _emit(callback, {"event": "step", "epoch": epoch, "step": optimiser.steps, "total_steps": optimiser.total,
                             "loss": losses["loss"][-1]})
        model.eval()
        measured = epoch == args.epochs or epoch > args.val_start * args.epochs
        metrics = validate() if measured else {}
        selection.add(_epoch_record(epoch, optimiser, losses, metrics, start), measured)
    result = selection.result(tokenizer, args)
    result.calibration = validate.calibrate()
    return result


def prepare(
    table: FeatureTable,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    tokenizer: TextTokenizer | None,
    seed: int,
) -> TextTokenizer:
    """Check both splits, seed torch, and train a tokenizer on the train captions when none is given."""
    n = len(table.frame_mask)
    check_pairs(train_pairs, n, "train")
    check_pairs(val_pairs, n, "val")
    torch.manual_seed(seed)
    if tokenizer is None:
        tokenizer = TextTokenizer.train(text for text, _ in train_pairs)
    return tokenizer
