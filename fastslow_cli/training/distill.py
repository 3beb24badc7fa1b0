"""Distillation: the Slow model teaches a trained Fast model to rank like it.

For every training caption a fixed *candidate set* is drawn once: its own item, the
`hard` items the initial student ranks highest (the confusions worth fixing) and
`random` other items (which keep the student's global ranking calibrated; groups of
hard negatives alone pull it away from what it already ranks well). The frozen teacher
scores every (caption, candidate) pair once before training, from its visual memory
computed once per item. The student is then fine-tuned on
`kl_weight * T^2 * KL(softmax(z(teacher) / T) || softmax(student / T))` over each
caption's candidates (z: each caption's teacher scores standardised; student: the Fast
logits, learnt scale x cosine) plus `contrastive_weight` * the usual in-batch InfoNCE,
with the Fast training recipe (one caption per item per epoch, kind-grouped batches,
AdamW, warm-up + cosine). Only the batch's own items are encoded with gradients; the
other candidates' vectors come from a cache refreshed at each epoch, so a step costs
about what a Fast training step costs instead of (1 + hard + random) times more. The
initial student is validated as epoch 0 and the best state by val R@1 is kept, so
distillation never returns a model worse on val than its start.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastslow_cli.models.encode import fast_batcher, fast_item_vectors, fast_text_vectors, slow_batcher, slow_item_memories
from fastslow_cli.models.fast import FastModel
from fastslow_cli.models.slow import SlowModel
from fastslow_cli.store.batches import Batcher
from fastslow_cli.store.parquet import FeatureTable
from fastslow_cli.text.tokenizer import TextTokenizer
from fastslow_cli.training.loop import Callback, Pair, Step, TrainArgs, TrainResult, ValSet
from fastslow_cli.training.loop import check_pairs, train_loop, validator


@dataclass
class DistillArgs(TrainArgs):
    """Distillation settings (recorded in `config.json`).

    Defaults measured on the demo data (docs/ARCHITECTURE.md): with 10 epochs at lr 5e-4
    and KL weight 1, the distilled model beat both its start and a contrastive-only
    control trained the same way; 3 epochs at lr 2e-4 were within noise of the control.
    """

    epochs: int = 10
    batch_size: int = 64
    min_steps: int = 300
    min_batch: int = 32
    lr: float = 5e-4
    hard: int = 8  # nearest items by the initial student, per caption
    random: int = 8  # random other items, per caption
    temperature: float = 0.5  # divides the standardised teacher scores and the student logits
    kl_weight: float = 1.0
    contrastive_weight: float = 1.0
    teacher_token_budget: int = 65536  # memory tokens per teacher pass (bounds its RAM)


@dataclass
class Candidates:
    """Per training caption: its text, its own item first, then hard, then random items."""

    texts: list[str]
    items: np.ndarray  # (Q,) own item of each caption
    sets: np.ndarray  # (Q, 1 + hard + random) table rows, column 0 = own item


def build_candidates(
    student: FastModel,
    tokenizer: TextTokenizer,
    batcher: Batcher,
    pairs: Sequence[Pair],
    hard: int,
    random: int,
    seed: int,
    device: torch.device | None = None,
) -> Candidates:
    """Own item + `hard` student nearest neighbours + `random` others, per caption, among the pairs' items.

    Sizes shrink only when there are fewer other items than asked; never a duplicate.
    """
    device = device or torch.device("cpu")
    pool = np.array(sorted({int(i) for _, i in pairs}))
    texts = [t for t, _ in pairs]
    own = np.array([int(i) for _, i in pairs], dtype=np.int64)
    col = {int(it): j for j, it in enumerate(pool)}
    own_col = np.array([col[int(i)] for i in own])
    others = len(pool) - 1
    hard = min(hard, others)
    random = min(random, others - hard)
    rng = np.random.default_rng(seed + 2)
    sets = np.empty((len(pairs), 1 + hard + random), dtype=np.int64)
    sets[:, 0] = own
    student.eval()
    with torch.inference_mode():
        visual = fast_item_vectors(student, batcher, pool, device) if hard else None
        for q0 in range(0, len(texts), 1024):
            q1 = min(q0 + 1024, len(texts))
            block = np.empty((q1 - q0, 0), dtype=np.int64)
            if hard:
                sims = fast_text_vectors(student, tokenizer, texts[q0:q1], device) @ visual.T
                sims[torch.arange(q1 - q0), torch.as_tensor(own_col[q0:q1])] = -torch.inf
                block = sims.topk(hard, dim=1).indices.cpu().numpy()
            for r in range(q1 - q0):
                taken = np.concatenate([[own_col[q0 + r]], block[r]])
                rand = _sample_excluding(rng, len(pool), taken, random)
                sets[q0 + r, 1:] = pool[np.concatenate([block[r], rand])]
    return Candidates(texts=texts, items=own, sets=sets)


def _sample_excluding(rng: np.random.Generator, n: int, taken: np.ndarray, k: int) -> np.ndarray:
    """`k` distinct values of range(n) not in `taken` (rejection sampling; k << n in practice)."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if 2 * k > n - len(taken):  # dense: sample from the explicit complement
        free = np.setdiff1d(np.arange(n), taken)
        return rng.choice(free, size=k, replace=False)
    banned = set(int(t) for t in taken)
    out: list[int] = []
    while len(out) < k:
        for v in rng.integers(n, size=2 * k):
            if int(v) not in banned:
                banned.add(int(v))
                out.append(int(v))
                if len(out) == k:
                    break
    return np.array(out, dtype=np.int64)


@torch.inference_mode()
def teacher_scores(
    teacher: SlowModel,
    tokenizer: TextTokenizer,
    batcher: Batcher,
    candidates: Candidates,
    device: torch.device | None = None,
    token_budget: int = 65536,
) -> torch.Tensor:
    """Teacher scores (Q, C) of every caption against its candidates, each item's memory computed once.

    Pairs are sorted by item (so one pass shares each item's keys/values among the
    captions that have it as a candidate) and cut into passes of at most `token_budget`
    memory tokens, so images and videos are not padded to each other.
    """
    device = device or torch.device("cpu")
    teacher.eval()
    items = np.unique(candidates.sets)
    memories = dict(zip(items.tolist(), slow_item_memories(teacher, batcher, items, device)))
    ids, mask = tokenizer.encode_batch(candidates.texts)
    ids, mask = ids.to(device), mask.to(device).to(torch.bool)
    flat_items = candidates.sets.reshape(-1)
    flat_q = np.repeat(np.arange(len(candidates.texts)), candidates.sets.shape[1])
    length = np.array([len(memories[int(i)]) for i in flat_items])
    order = np.lexsort((flat_q, flat_items, length))
    out = torch.empty(len(flat_items))
    start = 0
    while start < len(order):
        per = max(1, token_budget // int(length[order[start]]))
        chunk = order[start : start + per]
        start += len(chunk)
        uniq, inverse = np.unique(flat_items[chunk], return_inverse=True)
        longest = max(len(memories[int(i)]) for i in uniq)
        memory = torch.zeros(len(uniq), longest, teacher.config.width, device=device)
        memory_mask = torch.zeros(len(uniq), longest, dtype=torch.bool, device=device)
        for j, it in enumerate(uniq):
            m = memories[int(it)]
            memory[j, : len(m)] = m
            memory_mask[j, : len(m)] = True
        inv = torch.as_tensor(inverse, device=device)
        kvs = [[(k[inv], v[inv]) for k, v in layer] for layer in teacher.memory_kv(memory)]
        q = torch.as_tensor(flat_q[chunk], device=device)
        q_ids, q_mask = ids[q], mask[q]
        width = int(q_mask.sum(1).max())
        scores = teacher.pair_scores(q_ids[:, :width], q_mask[:, :width], kvs, memory_mask[inv])
        out[torch.as_tensor(chunk)] = scores.float().cpu()
    return out.view(candidates.sets.shape)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Each row to mean 0, std 1: Slow scores (mean log-likelihoods, or a pretrained
    matching model's logits) have no fixed scale, so one temperature fits any teacher."""
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp_min(1e-6)


def kl_loss(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over rows."""
    t = temperature
    log_p = F.log_softmax(teacher / t, dim=1)
    log_q = F.log_softmax(student / t, dim=1)
    return (t * t) * F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def distill(
    table: FeatureTable,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    teacher: SlowModel,
    teacher_tokenizer: TextTokenizer,
    student: FastModel,
    student_tokenizer: TextTokenizer,
    args: DistillArgs | None = None,
    callback: Callback | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Fine-tune a copy of `student` on the teacher's scores; the best state by val R@1 (epoch 0 = start).

    The epoch-0 record also holds the cost of mining (`mining_seconds`) and of the
    teacher (`teacher_pairs`, `teacher_seconds`).
    """
    args = args or DistillArgs()
    device = device or torch.device("cpu")
    n = len(table.frame_mask)
    check_pairs(train_pairs, n, "train")
    check_pairs(val_pairs, n, "val")
    torch.manual_seed(args.seed)
    model = copy.deepcopy(student).to(device)
    teacher = teacher.to(device).eval()
    s_batcher = fast_batcher(table)
    t_batcher = slow_batcher(table, teacher.config.resolve_finest_level())
    val = ValSet(val_pairs, args.val_items, args.val_texts, args.seed)
    validate = validator(model, student_tokenizer, table, val, device)

    start = time.perf_counter()
    cands = build_candidates(model, student_tokenizer, s_batcher, train_pairs, args.hard, args.random, args.seed, device)
    mining = time.perf_counter() - start
    t0 = time.perf_counter()
    targets = standardise(teacher_scores(teacher, teacher_tokenizer, t_batcher, cands, device, args.teacher_token_budget))
    teaching = time.perf_counter() - t0

    pool = np.unique(cands.sets)
    col_of = np.full(n, -1, dtype=np.int64)
    col_of[pool] = np.arange(len(pool))
    cache = torch.empty(0)

    def refresh(_epoch: int) -> None:
        """Candidates' vectors, refreshed once per epoch (only the batch's own items get gradients)."""
        nonlocal cache
        model.eval()
        cache = fast_item_vectors(model, s_batcher, pool, device).clone()

    def step_loss(step: Step) -> tuple[torch.Tensor, dict[str, float]]:
        own = model.encode_visual(step.levels, step.frame_mask)
        others = cache[torch.as_tensor(col_of[cands.sets[step.pairs, 1:]], device=device)]
        visual = torch.cat([own[:, None], others], dim=1)
        text = model.encode_text(step.ids, step.mask)
        scale = model.logit_scale.clamp(max=float(np.log(100.0))).exp()
        logits = scale * torch.einsum("bd,bcd->bc", text, visual)
        kl = kl_loss(targets[torch.as_tensor(step.pairs)].to(device), logits, args.temperature)
        contrastive = model.contrastive_loss(text, own)
        loss = args.kl_weight * kl + args.contrastive_weight * contrastive
        return loss, {"kl": float(kl.detach()), "contrastive": float(contrastive.detach())}

    cost = {"teacher_pairs": int(cands.sets.size), "teacher_seconds": round(teaching, 2), "mining_seconds": round(mining, 2)}
    return train_loop(model, student_tokenizer, s_batcher, train_pairs, args, step_loss, validate, callback, device,
                      parts=("kl", "contrastive"), before_epoch=refresh, validate_start=cost, started=start)
