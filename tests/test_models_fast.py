"""The Fast dual encoder: shapes, masking of padding frames, feature checks, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.models.checkpoint import CONFIG, load_model, save_model
from fastslow_cli.search.retrievers import native_identity
from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.text.tokenizer import TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

SHAPES = [[4, 4, 12], [2, 2, 48], [1, 1, 192]]


def _model(**kw) -> FastModel:
    torch.manual_seed(0)
    cfg = FastConfig(level_shapes=SHAPES, vocab_size=20, dim=16, width=32, heads=2, visual_layers=1, text_layers=1, **kw)
    return FastModel(cfg).eval()


def _levels(b: int, t: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, *s, generator=g) for s in SHAPES]


def test_vectors_are_unit_length_and_batched() -> None:
    model = _model()
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    mask = ids != 0
    text = model.encode_text(ids, mask)
    vis = model.encode_visual(_levels(3, 2), torch.ones(3, 2, dtype=torch.bool))
    assert text.shape == (2, 16) and vis.shape == (3, 16)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(vis.norm(dim=-1), torch.ones(3), atol=1e-5)
    # One row at a time gives the same vectors as the batch.
    assert torch.allclose(model.encode_text(ids[1:], mask[1:]), text[1:], atol=1e-5)


def test_padding_frames_and_padding_tokens_change_nothing() -> None:
    model = _model()
    lv = _levels(1, 3)
    full = model.encode_visual(lv, torch.tensor([[True, True, False]]))
    trimmed = model.encode_visual([x[:, :2] for x in lv], torch.ones(1, 2, dtype=torch.bool))
    garbage = [x.clone() for x in lv]
    for x in garbage:
        x[:, 2] = 1e3  # whatever sits in a padding frame is ignored
    assert torch.allclose(full, trimmed, atol=1e-5)
    assert torch.allclose(model.encode_visual(garbage, torch.tensor([[True, True, False]])), full, atol=1e-5)
    ids = torch.tensor([[1, 5, 6, 2]])
    padded = torch.tensor([[1, 5, 6, 2, 0, 0]])
    assert torch.allclose(model.encode_text(ids, ids != 0), model.encode_text(padded, padded != 0), atol=1e-5)


def test_images_and_videos_both_work() -> None:
    model = _model()
    img = model.encode_visual(_levels(2, 1), torch.ones(2, 1, dtype=torch.bool))
    vid = model.encode_visual(_levels(2, 8), torch.ones(2, 8, dtype=torch.bool))
    assert img.shape == vid.shape == (2, 16)


def test_wrong_features_are_refused_in_one_line() -> None:
    model = _model()
    bad = [torch.randn(1, 1, 4, 4, 12), torch.randn(1, 1, 2, 2, 48), torch.randn(1, 1, 1, 1, 99)]
    with pytest.raises(FastslowError, match="do not match"):
        model.encode_visual(bad, torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(FastslowError, match="frames"):
        model.encode_visual(_levels(1, 40), torch.ones(1, 40, dtype=torch.bool))


def test_contrastive_loss_prefers_matching_pairs() -> None:
    model = _model()
    x = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    assert model.contrastive_loss(x, x) < model.contrastive_loss(x, y)


def test_checkpoint_round_trip_gives_identical_scores(tmp_path) -> None:
    tok = TextTokenizer.train(["a red circle", "a blue square left of it"])
    torch.manual_seed(1)
    model = FastModel(FastConfig(level_shapes=SHAPES, vocab_size=tok.vocab_size, dim=16, width=32, heads=2)).eval()
    save_model(tmp_path / "m", model, tok, {"fingerprint": "abc", "set": "default"}, training={"epochs": 1})
    loaded = load_model(tmp_path / "m", kind="fast", fingerprint="abc", level_shapes=SHAPES)
    ids, mask = tok.encode_batch(["a red square", "blue circle"])
    lv, fm = _levels(2, 2), torch.ones(2, 2, dtype=torch.bool)
    with torch.inference_mode():
        before = model.encode_text(ids, mask) @ model.encode_visual(lv, fm).T
        after = loaded.model.encode_text(ids, mask) @ loaded.model.encode_visual(lv, fm).T
    assert torch.equal(before, after)
    assert loaded.config["training"] == {"epochs": 1} and loaded.kind == "fast"


def test_loading_refuses_other_features_kind_or_damaged_files(tmp_path) -> None:
    tok = TextTokenizer.train(["a red circle"])
    model = FastModel(FastConfig(level_shapes=SHAPES, vocab_size=tok.vocab_size, dim=16, width=32, heads=2))
    folder = save_model(tmp_path / "m", model, tok, {"fingerprint": "abc"})
    with pytest.raises(FastslowError, match="trained on features abc"):
        load_model(folder, fingerprint="xyz")
    with pytest.raises(FastslowError, match="levels"):
        load_model(folder, level_shapes=[[8, 8, 12], [2, 2, 48], [1, 1, 192]])
    with pytest.raises(FastslowError, match="not a slow"):
        load_model(folder, kind="slow")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FastslowError, match="does not match"):
        load_model(folder)
    (folder / CONFIG).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(FastslowError, match="not a fastslow model"):
        load_model(folder)
    with pytest.raises(FastslowError, match="not found"):
        load_model(tmp_path / "none")


def test_native_identity_hashes_exactly_the_weights_and_tokenizer(tmp_path) -> None:
    """What an index records to refuse another model: the same weights give the same hash
    wherever the folder is; changed weights give another."""
    tok = TextTokenizer.train(["a red circle"])
    torch.manual_seed(0)
    model = FastModel(FastConfig(level_shapes=SHAPES, vocab_size=tok.vocab_size, dim=16, width=32, heads=2))
    a = save_model(tmp_path / "a", model, tok, {"fingerprint": "abc"})
    b = save_model(tmp_path / "b", model, tok, {"fingerprint": "abc"}, training={"epochs": 3})
    ida, idb = (native_identity(d, load_model(d).config) for d in (a, b))
    assert len(ida["content_hash"]) == 64 and ida["content_hash"] == idb["content_hash"]
    assert (ida["name"], ida["path"], ida["kind"], ida["fingerprint"]) == ("a", str(a.resolve()), "fast", "abc")
    with torch.no_grad():
        model.text_proj.weight[0, 0] += 1.0
    c = save_model(tmp_path / "c", model, tok, {"fingerprint": "abc"})
    assert native_identity(c, load_model(c).config)["content_hash"] != ida["content_hash"]
