"""The Slow model: progressive upsampling memory, batched vs one-by-one scores, padding, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.models.checkpoint import load_model, save_model
from fastslow_cli.models.slow import SlowConfig, SlowModel, trim_memory
from fastslow_cli.text.tokenizer import TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

SHAPES = [[4, 4, 12], [2, 2, 48], [1, 1, 192]]
TEXTS = ["a red circle left of a blue square", "a blue square", "red", "a square left of a circle left of"]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(TEXTS)


def _model(tok: TextTokenizer, **kw) -> SlowModel:
    torch.manual_seed(0)
    kw.setdefault("finest_level", 1)
    cfg = SlowConfig(level_shapes=SHAPES, vocab_size=tok.vocab_size, width=32, heads=2, coarse_layers=1, decoder_layers=1, **kw)
    return SlowModel(cfg).eval()


def _levels(b: int, t: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, *s, generator=g) for s in SHAPES]


@pytest.mark.parametrize("finest", [0, 1, 2])
def test_memory_is_the_grid_of_the_chosen_level_for_every_frame(tok, finest: int) -> None:
    model = _model(tok, finest_level=finest)
    h, w, _ = SHAPES[finest]
    mem, mask = model.encode_visual(_levels(2, 3), torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool))
    assert mem.shape == (2, 3 * h * w, 32)
    assert mask.sum(1).tolist() == [3 * h * w, h * w]
    assert mask[1, : h * w].all() and not mask[1, h * w :].any()  # padding frames only at the end


def test_batch_scores_equal_one_by_one(tok) -> None:
    model = _model(tok)
    mem, mmask = model.encode_visual(_levels(4, 2), torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool))
    ids, mask = tok.encode_batch(TEXTS)
    with torch.inference_mode():
        batch = model.pair_scores(ids, mask, model.memory_kv(mem), mmask)  # aligned pairs, as distillation's teacher
        single = torch.cat([model.pair_scores(*tok.encode_batch([t]), model.memory_kv(mem[i : i + 1]), mmask[i : i + 1])
                            for i, t in enumerate(TEXTS)])
        matrix = model.score_matrix(ids, mask, mem, mmask, pair_batch=3, item_chunk=3)
    assert torch.allclose(batch, single, atol=1e-5)
    assert torch.allclose(matrix.diagonal(), batch, atol=1e-5)
    # Row q of the matrix: text q against every item, as pairs.
    with torch.inference_mode():
        row = model.pair_scores(ids[1:2].expand(4, -1), mask[1:2].expand(4, -1), model.memory_kv(mem), mmask)
    assert torch.allclose(matrix[1], row, atol=1e-5)


def test_padding_frames_do_not_change_scores(tok) -> None:
    model = _model(tok)
    lv = _levels(1, 4)
    ids, mask = tok.encode_batch(TEXTS[:2])
    noisy = [x.clone() for x in lv]
    for x in noisy:
        x[:, 2:] = 50.0
    with torch.inference_mode():
        short = model.encode_visual([x[:, :2] for x in lv], torch.ones(1, 2, dtype=torch.bool))
        padded = model.encode_visual(noisy, torch.tensor([[1, 1, 0, 0]], dtype=torch.bool))
        a = model.score_matrix(ids, mask, *short)
        b = model.score_matrix(ids, mask, *padded)
    assert torch.allclose(a, b, atol=1e-5)


def test_images_and_videos_score_together(tok) -> None:
    model = _model(tok)
    img = model.encode_visual(_levels(2, 1), torch.ones(2, 1, dtype=torch.bool))
    vid = model.encode_visual(_levels(2, 8, seed=1), torch.ones(2, 8, dtype=torch.bool))
    length = vid[0].shape[1]
    memory = torch.zeros(4, length, 32)
    mmask = torch.zeros(4, length, dtype=torch.bool)
    memory[:2, : img[0].shape[1]], mmask[:2, : img[0].shape[1]] = img
    memory[2:], mmask[2:] = vid
    ids, mask = tok.encode_batch(TEXTS)
    with torch.inference_mode():
        both = model.score_matrix(ids, mask, memory, mmask)
        images = model.score_matrix(ids, mask, *img)
    assert both.shape == (4, 4) and torch.isfinite(both).all()
    assert torch.allclose(both[:, :2], images, atol=1e-5)


def test_score_is_the_mean_token_log_likelihood_of_both_directions(tok) -> None:
    model = _model(tok)
    mem, mmask = model.encode_visual(_levels(1, 1), torch.ones(1, 1, dtype=torch.bool))
    ids, mask = tok.encode_batch(["a red circle"])
    with torch.inference_mode():
        l2r, r2l = model.log_probs(ids, mask, model.memory_kv(mem), mmask)
        s = model.score_matrix(ids, mask, mem, mmask)[0]
        loss = model.caption_loss(ids, mask, mem, mmask)
    assert l2r.shape == (1, 4) and (l2r < 0).all() and (r2l < 0).all()  # "a red circle [EOS]"
    assert s.item() == pytest.approx((l2r.sum() + r2l.sum()).item() / 8, abs=1e-5)
    assert loss.item() == pytest.approx(-s.item(), abs=1e-5)


def test_finest_level_defaults_to_the_finest_grid_within_budget() -> None:
    shapes = [[16, 16, 48], [8, 8, 192], [4, 4, 768]]
    assert SlowConfig(level_shapes=shapes).resolve_finest_level() == 1
    assert SlowConfig(level_shapes=shapes, max_grid_tokens=256).resolve_finest_level() == 0
    assert SlowConfig(level_shapes=shapes, max_grid_tokens=4).resolve_finest_level() == 2
    assert SlowConfig(level_shapes=shapes, finest_level=2).resolve_finest_level() == 2


def test_trim_memory_drops_only_all_padding_columns() -> None:
    mem = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    m, k = trim_memory(mem, mask)
    assert m.shape == (2, 3, 4) and torch.equal(k, mask[:, :3])


def test_checkpoint_round_trip_gives_identical_scores(tok, tmp_path) -> None:
    model = _model(tok)
    save_model(tmp_path / "s", model, tok, {"fingerprint": "f1"})
    loaded = load_model(tmp_path / "s", kind="slow", fingerprint="f1", level_shapes=SHAPES)
    lv, fm = _levels(3, 2), torch.ones(3, 2, dtype=torch.bool)
    ids, mask = tok.encode_batch(TEXTS)
    with torch.inference_mode():
        a = model.score_matrix(ids, mask, *model.encode_visual(lv, fm))
        b = loaded.model.score_matrix(ids, mask, *loaded.model.encode_visual(lv, fm))
    assert torch.equal(a, b)
    with pytest.raises(FastslowError, match="not a fast"):
        load_model(tmp_path / "s", kind="fast")


def test_checkpoint_of_another_version_is_refused_in_one_line(tok, tmp_path) -> None:
    folder = save_model(tmp_path / "s", _model(tok), tok, {"fingerprint": "f1"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architecture"]["itm"] = True  # a setting of an earlier Slow model
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FastslowError, match=r"\['itm'\].*retrain"):
        load_model(folder, kind="slow")
