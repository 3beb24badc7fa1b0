"""Pretrained adapters (`models/hf.py`) on tiny random-weight CLIP and BLIP saved to a temp
folder with real tokenizers (CLIP's byte-level BPE, BERT's WordPiece): no network."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is first imported

import numpy as np
import pytest
import torch
from PIL import Image

from fastslow_cli.errors import FastslowError
from fastslow_cli.media.decode import decode_video_av
from fastslow_cli.models.hf import load_blip, load_clip
from fastslow_cli.store.parquet import FeatureTable

TEXTS = ["a red cube left of the blue ball", "", "blue " * 300, "ünïcødé 🙂 <|endoftext|> [SEP]"]
SIZE = 32  # both tiny models' input size
TOKENS = 1 + (SIZE // 8) ** 2  # CLS + 4x4 patches per frame


def _spread(model: torch.nn.Module, seed: int) -> None:
    """Random weights with a larger spread than the default init, so that outputs depend
    visibly on their inputs (with std 0.02 a 1-layer BLIP scores every image the same)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tokenizers import pre_tokenizers
    from transformers import (
        BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessorPil,
        CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer,
    )

    root = tmp_path_factory.mktemp("hf_adapters")
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("r", "e"), ("re", "d</w>"), ("b", "l"), ("bl", "u"), ("blu", "e</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16,
                     "bos_token_id": ids["<|startoftext|>"], "eos_token_id": ids["<|endoftext|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"image_size": SIZE, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8,
    ))
    _spread(clip, 0)
    clip.save_pretrained(root / "clip")
    CLIPTokenizer(vocab=ids, merges=merges).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
                          ).save_pretrained(root / "clip")

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "cube", "ball", "left", "of",
             "the", "[ENC]"]
    blip = BlipForImageTextRetrieval(BlipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 24, "pad_token_id": 0,
                     "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3},
        vision_config={"image_size": SIZE, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        image_text_hidden_size=8,
    ))
    _spread(blip, 1)
    blip.save_pretrained(root / "blip")
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}, additional_special_tokens=["[ENC]"]
                  ).save_pretrained(root / "blip")
    BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}).save_pretrained(root / "blip")
    return {"clip": root / "clip", "blip": root / "blip"}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory, make_clip: Callable[..., Path]) -> FeatureTable:
    """Two images and a 4-frame video, as `FeatureStore.load` returns them (levels are unused)."""
    root = tmp_path_factory.mktemp("hf_media")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(SIZE, SIZE, 3), (40, 56, 3)]):
        paths.append(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    paths.append(make_clip(root / "clip.mp4"))
    stamps = decode_video_av(paths[-1], 64, 4).timestamps  # what `extract --frames 4` stores
    frames = np.array([1, 1, 4])
    return FeatureTable(
        ids=["img0.png", "img1.png", "clip.mp4"], paths=[str(p) for p in paths], kinds=["image", "image", "video"],
        frames=frames, timestamps=[[0.0], [0.0], stamps], levels=[np.zeros((3, 4, 1, 1, 2), np.float16)],
        frame_mask=np.arange(4)[None] < frames[:, None],
    )


def per_frame(table: FeatureTable, row: int) -> FeatureTable:
    """One single-frame row per frame of `row`, as the index builds for video frame vectors."""
    t = int(table.frames[row])
    return FeatureTable(
        ids=[table.ids[row]] * t, paths=[table.paths[row]] * t, kinds=["image"] * t, frames=np.ones(t, np.int64),
        timestamps=[[s] for s in table.timestamps[row]], levels=[lv[row, :t][:, None] for lv in table.levels],
        frame_mask=np.ones((t, 1), bool),
    )


def test_clip_texts_and_items_are_unit_deterministic_vectors(models: dict[str, Path], table: FeatureTable) -> None:
    fast = load_clip(models["clip"], "cpu")
    assert (fast.kind, fast.dim) == ("fast", 8)
    assert fast.identity["hf"] is True and fast.identity["path"] == str(models["clip"].resolve())
    q = fast.encode_texts(TEXTS)
    v = fast.encode_items(table, batch_size=2)
    assert q.shape == (4, 8) and v.shape == (3, 8) and q.dtype == v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert len({tuple(np.round(x, 4)) for x in v}) == 3 and len({tuple(np.round(x, 4)) for x in q}) == 4
    assert fast.encode_texts([]).shape == (0, 8)
    again = load_clip(str(models["clip"]), "cpu")
    assert again.identity["content_hash"] == fast.identity["content_hash"]
    np.testing.assert_array_equal(again.encode_texts(TEXTS), q)
    np.testing.assert_array_equal(again.encode_items(table, batch_size=2), v)
    np.testing.assert_allclose(again.encode_items(table, batch_size=1), v, atol=1e-6)  # batching changes nothing
    np.testing.assert_allclose(again.encode_texts(TEXTS[:1]), q[:1], atol=1e-6)  # padding changes nothing


def test_clip_matches_transformers_and_pools_video_frames(models: dict[str, Path], table: FeatureTable) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    fast = load_clip(models["clip"], "cpu")
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    tok = AutoTokenizer.from_pretrained(models["clip"])
    pixels = AutoImageProcessor.from_pretrained(models["clip"])(Image.open(table.paths[0]), return_tensors="pt")
    ids = tok(TEXTS[:1], truncation=True, max_length=16, return_tensors="pt")  # 16 = the model's length
    with torch.no_grad():
        text = model.get_text_features(**ids).pooler_output
        image = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
    np.testing.assert_allclose(fast.encode_texts(TEXTS[:1])[0], (text / text.norm())[0].numpy(), atol=1e-5)
    items = fast.encode_items(table)
    np.testing.assert_allclose(items[0], (image / image.norm())[0].numpy(), atol=1e-4)
    frames = load_clip(models["clip"], "cpu").encode_items(per_frame(table, 2))  # each stored moment alone
    assert len({tuple(np.round(f, 4)) for f in frames}) == 4  # four different moments
    pooled = frames.mean(axis=0)
    np.testing.assert_allclose(items[2], pooled / np.linalg.norm(pooled), atol=1e-5)


def test_clip_reuses_video_frames_for_per_frame_rows(
    models: dict[str, Path], table: FeatureTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastslow_cli.models.hf as hf

    fast, fresh = load_clip(models["clip"], "cpu"), load_clip(models["clip"], "cpu")
    calls: list[int] = []
    monkeypatch.setattr(hf, "decode_video_av", lambda path, size, n: calls.append(n) or decode_video_av(path, size, n))
    fast.encode_items(table)
    assert calls == [4]  # one decode of the video, at its 4 stored moments
    cached = fast.encode_items(per_frame(table, 2))
    assert calls == [4]  # the index's per-frame rows: no second decode
    np.testing.assert_allclose(cached, fresh.encode_items(per_frame(table, 2)), atol=1e-6)
    assert calls == [4, 4]  # a fresh adapter decodes the same 4 moments from the per-frame rows


def test_blip_memories_and_scores(models: dict[str, Path], table: FeatureTable) -> None:
    slow = load_blip(models["blip"], "cpu")
    assert (slow.kind, slow.width) == ("slow", 16)
    memories = slow.encode_items(table, batch_size=3)
    assert [m.shape for m in memories] == [(TOKENS, 16), (TOKENS, 16), (4 * TOKENS, 16)]
    assert all(m.dtype == np.float16 for m in memories)
    scores = slow.score(TEXTS, memories)
    assert scores.shape == (4, 3) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert np.ptp(scores[0]) > 1e-3 and np.ptp(scores[:, 0]) > 1e-3  # depends on the item and the text
    one_by_one = np.array([[slow.score([t], [m])[0, 0] for m in memories] for t in TEXTS])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-4)
    reordered = slow.score(TEXTS[::-1], memories[::-1])
    np.testing.assert_allclose(reordered, scores[::-1, ::-1], atol=1e-4)
    assert slow.score([], memories).shape == (0, 3) and slow.score(TEXTS, []).shape == (4, 0)
    again = load_blip(models["blip"], "cpu")
    np.testing.assert_array_equal(again.score(TEXTS, again.encode_items(table)), scores)


def test_blip_score_is_the_itm_log_odds(models: dict[str, Path], table: FeatureTable) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

    slow = load_blip(models["blip"], "cpu")
    model = BlipForImageTextRetrieval.from_pretrained(models["blip"]).eval()
    tok = AutoTokenizer.from_pretrained(models["blip"])
    enc = tok(TEXTS[:1], return_tensors="pt")
    enc["input_ids"][:, 0] = tok.convert_tokens_to_ids("[ENC]")  # BLIP's ITM input, not [CLS]
    pixels = AutoImageProcessor.from_pretrained(models["blip"])(Image.open(table.paths[0]), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc, pixel_values=pixels["pixel_values"]).itm_score[0]
    got = slow.score(TEXTS[:1], slow.encode_items(table.subset([0])))[0, 0]
    assert got == pytest.approx(float(logits[1] - logits[0]), abs=2e-2)  # memory is stored as float16


def test_bad_model_folders_and_missing_media_give_one_line_errors(
    models: dict[str, Path], table: FeatureTable, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    cases = [
        (load_clip, tmp_path / "missing"), (load_clip, tmp_path / "empty"), (load_clip, tmp_path / "weights.bin"),
        (load_clip, models["blip"]), (load_blip, models["clip"]), (load_blip, "./nowhere"),
    ]
    for loader, path in cases:
        with pytest.raises(FastslowError) as err:
            loader(path, "cpu")
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    gone = table.subset([0, 2])
    gone.paths[1] = str(tmp_path / "moved.mp4")
    for adapter in (load_clip(models["clip"], "cpu"), load_blip(models["blip"], "cpu")):
        with pytest.raises(FastslowError) as err:
            adapter.encode_items(gone)
        assert "\n" not in str(err.value) and "moved.mp4" in str(err.value)


def test_blip_heatmap_shapes_and_finite_values(models: dict[str, Path], table: FeatureTable) -> None:
    """A random tiny BLIP cannot attend meaningfully: only shapes, ranges and finiteness are checked."""
    slow = load_blip(models["blip"], "cpu")
    memories = slow.encode_items(table)
    for row in (0, 2):
        hm = slow.heatmap("a red cube left of the blue ball", memories[row], table.timestamps[row])
        frames = int(table.frames[row])
        assert hm.tokens == ["a", "red", "cube", "left", "of", "the", "blue", "ball"]
        assert hm.maps.shape == (frames, 8, SIZE // 8, SIZE // 8) and hm.query_map.shape == (frames, 4, 4)
        assert np.isfinite(hm.maps).all() and hm.maps.min() >= 0.0 and hm.maps.max() <= 1.0
        assert hm.maps.max() == 1.0  # not flat
        assert hm.timestamps == [float(t) for t in table.timestamps[row]]
    before = slow.score(TEXTS, memories)
    slow.heatmap("a red cube", memories[0], [0.0])
    np.testing.assert_array_equal(slow.score(TEXTS, memories), before)
