"""Distillation on a tiny synthetic feature table with tiny random-init teacher and student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastslow_cli.training.distill import DistillArgs, build_candidates, distill, kl_loss, teacher_scores
from fastslow_cli.models.checkpoint import load_model, save_model
from fastslow_cli.models.encode import fast_batcher, slow_batcher
from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.models.slow import SlowConfig, SlowModel
from fastslow_cli.text.tokenizer import TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
SHAPES = ["circle", "square", "star", "cross"]


def _data(feature_table, n: int = 48, seed: int = 0):
    """Items whose features encode (colour, shape); a few are 3-frame videos. Splits 32/16."""
    rng = np.random.default_rng(seed)
    fine = np.zeros((n, 3, 4, 4, 8), np.float32)
    coarse = np.zeros((n, 3, 2, 2, 8), np.float32)
    mask = np.zeros((n, 3), bool)
    pairs: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for i in range(n):
        c, s = i % len(COLOURS), (i // len(COLOURS)) % len(SHAPES)
        frames = 3 if i % 7 == 0 else 1
        vec = np.zeros(8, np.float32)
        vec[c % 8] += 1.0
        vec[(s + 4) % 8] += 1.0
        for t in range(frames):
            coarse[i, t] = vec + 0.3 * rng.standard_normal((2, 2, 8))
            fine[i, t] = np.repeat(np.repeat(coarse[i, t], 2, 0), 2, 1) + 0.1 * rng.standard_normal((4, 4, 8))
        mask[i, :frames] = True
        split = "train" if i < 32 else "val"
        pairs[split].append((f"a {COLOURS[c]} {SHAPES[s]}", i))
        if split == "train":
            pairs[split].append((f"{SHAPES[s]} in {COLOURS[c]}", i))
    return feature_table([fine, coarse], mask), pairs


def _models(table, pairs, seed: int = 0):
    tok = TextTokenizer.train(t for t, _ in pairs["train"] + pairs["val"])
    shapes = [list(lv.shape[2:]) for lv in table.levels]
    torch.manual_seed(seed)
    student = FastModel(FastConfig(level_shapes=shapes, vocab_size=tok.vocab_size, dim=16, width=16, heads=2,
                                   visual_layers=1, text_layers=1, max_frames=3))
    teacher = SlowModel(SlowConfig(level_shapes=shapes, vocab_size=tok.vocab_size, width=16, heads=2, finest_level=0,
                                   coarse_layers=1, decoder_layers=1, max_frames=3)).eval()
    return teacher, tok, student, tok


def _args(**kw) -> DistillArgs:
    base = dict(epochs=3, batch_size=8, lr=3e-3, hard=3, random=4, val_items=16, val_texts=16, warmup=0.0)
    return DistillArgs(**{**base, **kw})


@pytest.fixture(scope="module")
def setup(feature_table):
    table, pairs = _data(feature_table)
    return table, pairs, *_models(table, pairs)


def test_candidates_own_first_no_duplicates_right_sizes(setup):
    table, pairs, _, _, student, tok = setup
    features = fast_batcher(table)
    c = build_candidates(student, tok, features, pairs["train"], hard=3, random=4, seed=0)
    train_items = {i for _, i in pairs["train"]}
    assert c.sets.shape == (len(pairs["train"]), 8)
    assert (c.sets[:, 0] == [i for _, i in pairs["train"]]).all()
    assert all(len(set(row)) == len(row) for row in c.sets)
    assert set(c.sets.ravel()) <= train_items
    # the hard columns are the student's nearest other items
    pool = np.array(sorted(train_items))
    with torch.inference_mode():
        ids, mask = tok.encode_batch(c.texts[:1])
        levels, fm = features.load(pool)
        sims = (student.encode_text(ids, mask) @ student.encode_visual(levels, fm).T)[0]
        sims[np.searchsorted(pool, c.sets[0, 0])] = -torch.inf
        assert set(pool[sims.topk(3).indices.numpy()]) == set(c.sets[0, 1:4])
    # asking for more than the pool holds shrinks the set, still without duplicates
    big = build_candidates(student, tok, features, pairs["train"], hard=20, random=50, seed=0)
    assert big.sets.shape[1] == len(train_items)
    assert all(len(set(row)) == len(row) for row in big.sets)


def test_teacher_scores_match_score_matrix_and_memory_is_encoded_once(setup):
    table, pairs, teacher, tok, student, _ = setup
    features = slow_batcher(table, 0)
    c = build_candidates(student, tok, features, pairs["train"][:10], hard=2, random=3, seed=1)
    calls = {"visual": 0}
    real = teacher.encode_visual

    def counting(levels, frame_mask):
        calls["visual"] += len(frame_mask)
        return real(levels, frame_mask)

    teacher.encode_visual = counting
    try:
        got = teacher_scores(teacher, tok, features, c, token_budget=40)  # small passes: many chunks
    finally:
        del teacher.encode_visual
    assert calls["visual"] == len(np.unique(c.sets))
    for q in (0, 7):
        ids, mask = tok.encode_batch([c.texts[q]])
        levels, fm = features.load(c.sets[q])
        with torch.inference_mode():
            memory, memory_mask = teacher.encode_visual(levels, fm)
        want = teacher.score_matrix(ids, mask, memory, memory_mask)[0]
        assert torch.allclose(got[q], want, atol=1e-4)


def test_kl_loss_zero_when_equal_and_positive_otherwise():
    t = torch.tensor([[3.0, 1.0, 0.0]])
    assert float(kl_loss(t, t + 5.0, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(t, -t, 2.0)) > 0.1


def test_distill_lowers_kl_scores_teacher_once_and_keeps_best(setup):
    table, pairs, teacher, ttok, student, stok = setup
    calls = {"pairs": 0}
    real = teacher.pair_scores

    def counting(ids, *a, **kw):
        calls["pairs"] += len(ids)
        return real(ids, *a, **kw)

    teacher.pair_scores = counting
    events = []
    try:
        result = distill(table, pairs["train"], pairs["val"], teacher, ttok, student, stok,
                         _args(epochs=3, contrastive_weight=0.0), callback=events.append)
    finally:
        del teacher.pair_scores
    n_pairs = len(pairs["train"]) * 8
    assert calls["pairs"] == n_pairs  # every pair scored exactly once, never again in training
    hist = result.history
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[0]["teacher_pairs"] == n_pairs
    assert hist[-1]["kl"] < hist[1]["kl"]
    assert result.best["val_R@1"] == max(h["val_R@1"] for h in hist)
    steps = [e for e in events if e["event"] == "step"]
    assert steps and {"epoch", "step", "total_steps", "loss"} <= set(steps[0])
    assert steps[-1]["step"] == steps[-1]["total_steps"]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1, 2, 3]
    # the caller's student is not modified
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), _models(table, pairs)[2].state_dict().values()))


def test_never_worse_than_the_initial_student(setup, monkeypatch):
    """When every epoch validates worse than the start, the start is returned, weights and all."""
    import fastslow_cli.training.loop as D

    table, pairs, teacher, ttok, student, stok = setup
    real = D.evaluate_scores
    r1 = iter([50.0, 40.0, 30.0])

    def falling(*a, **kw):
        return {**real(*a, **kw), "R@1": next(r1)}

    monkeypatch.setattr(D, "evaluate_scores", falling)
    result = distill(table, pairs["train"], pairs["val"], teacher, ttok, student, stok, _args(epochs=2, lr=3e-2))
    assert [h["val_R@1"] for h in result.history] == [50.0, 40.0, 30.0]
    assert result.best["epoch"] == 0 and not result.history[1]["best"]
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), student.state_dict().values()))


def test_deterministic_for_a_seed_and_round_trips_through_a_model_folder(setup, tmp_path):
    table, pairs, teacher, ttok, student, stok = setup
    a = distill(table, pairs["train"], pairs["val"], teacher, ttok, student, stok, _args(epochs=2))
    b = distill(table, pairs["train"], pairs["val"], teacher, ttok, student, stok, _args(epochs=2))
    drop = {"seconds", "teacher_seconds", "mining_seconds"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in a.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in b.history]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    save_model(tmp_path / "d", a.model, a.tokenizer, {"fingerprint": "f"}, training=_args(epochs=2).to_dict())
    loaded = load_model(tmp_path / "d", kind="fast")
    ids, mask = stok.encode_batch(["a red circle"])
    with torch.inference_mode():
        assert torch.allclose(loaded.model.encode_text(ids, mask), a.model.encode_text(ids, mask))
    assert loaded.config["training"]["hard"] == 3


def test_seeded_run_reproduces_pinned_losses_and_val_metrics(setup):
    """Numbers written down from a run of the code before distillation used the shared
    training loop: a change to sampling, the cache, the losses or validation shows up here."""
    table, pairs, teacher, ttok, student, stok = setup
    result = distill(table, pairs["train"], pairs["val"], teacher, ttok, student, stok, _args(epochs=2))
    h = result.history
    assert h[0]["teacher_pairs"] == 512 and [r["val_mean_rank"] for r in h] == [8.8125, 8.1875, 8.0625]
    assert [r["loss"] for r in h[1:]] == pytest.approx([2.7337745666503905, 2.241876316070557], abs=1e-6)
    assert [r["kl"] for r in h[1:]] == pytest.approx([0.4298549950122833, 0.2437886953353882], abs=1e-6)
    assert [r["contrastive"] for r in h[1:]] == pytest.approx([2.3039196014404295, 1.9980876445770264], abs=1e-6)
    assert (result.best["epoch"], result.best["val_R@5"]) == (2, 37.5)
