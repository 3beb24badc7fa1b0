"""Heat maps: the attention weights path, the HeatMap over an index, the overlay, and a
tiny Slow model trained on the demo's synthetic scenes whose colour words look at the
right object (and follow it when it moves)."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from fastslow_cli.errors import UsageError
from fastslow_cli.index.folder import SearchIndex, build_index
from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.media.decode import encode_thumbnail
from fastslow_cli.models.layers import Attention
from fastslow_cli.search.heatmap import (
    native_heatmap,
    normalise,
    overlay_png,
    word_rows,
)
from fastslow_cli.search.searcher import Searcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_attention_weights_path_gives_the_same_output() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 4, 0.0).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, 5:] = False
    k, v = attn.project_kv(mem)
    fused = attn.attend(x, k, v, key_mask)
    out, probs = attn.attend(x, k, v, key_mask, weights=True)
    assert torch.allclose(fused, out, atol=1e-5)
    assert probs.shape == (2, 4, 5, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5))
    assert float(probs[1, :, :, 5:].abs().max().detach()) == 0.0  # masked keys get no attention


def test_word_rows_average_the_rows_reading_each_word() -> None:
    # [BOS] w1 w2 w3 [EOS]: 5 rows over a memory of 2, two directions, one layer and head.
    att = np.zeros((2, 1, 1, 5, 2), dtype=np.float32)
    att[0, 0, 0] = [[1, 0], [1, 0], [0, 1], [1, 0], [0, 1]]
    att[1, 0, 0] = [[0, 1], [0, 1], [0, 1], [1, 0], [0, 1]]
    rows = word_rows(att, 5)  # [BOS] and [EOS] rows are not words
    assert rows.tolist() == [[0.5, 0.5], [0, 1], [1, 0]]


def test_normalise_is_per_map_and_flat_maps_are_zero() -> None:
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = normalise(maps)
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert np.all(out[1] == 0.0)


@pytest.fixture(scope="module")
def searcher(index_kit, tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    root = tmp_path_factory.mktemp("heatmap")
    store = index_kit.make_store(root, count=9)
    fast, slow = index_kit.make_models(store)
    build_index(store, root / "index" / "main", fast, slow, AnnParams(M=8, ef_construction=32, ef_search=32))
    return Searcher(SearchIndex.open(root / "index" / "main"), fast, slow)


def test_searcher_heatmap_shapes_for_images_and_videos(searcher: Searcher) -> None:
    items = searcher.index.items
    video = next(i for i, k in enumerate(items["kind"]) if k == "video")
    for label in (0, video):
        hm = searcher.heatmap("a red circle left of a blue square", items["id"][label])
        frames = int(items["frames"][label])
        assert hm.tokens == ["a", "red", "circle", "left", "of", "a", "blue", "square"]
        assert hm.maps.dtype == np.float32 and hm.maps.shape == (frames, 8, 4, 4)  # finest_level 1: 4x4 grid
        assert hm.query_map.shape == (frames, 4, 4)
        assert hm.maps.min() >= 0.0 and hm.maps.max() <= 1.0 and np.isfinite(hm.maps).all()
        assert hm.timestamps == list(items["timestamps"][label])
        js = json.loads(json.dumps(hm.to_json()))
        assert js["frames"] == frames and js["grid"] == [4, 4] and len(js["maps"][0]) == 8


def test_heatmap_errors_are_usage_errors(searcher: Searcher) -> None:
    with pytest.raises(UsageError, match="not in index"):
        searcher.heatmap("a red circle", "no-such-item")
    without_slow = Searcher(searcher.index, searcher.fast, None)
    with pytest.raises(UsageError, match="need a Slow model"):
        without_slow.heatmap("a red circle", searcher.index.items["id"][0])


def test_scores_are_unchanged_by_the_attention_path(searcher: Searcher) -> None:
    before = [r.slow_score for r in searcher.search("a red circle", k=5, rerank=5)]
    searcher.heatmap("a red circle", searcher.index.items["id"][0])
    assert [r.slow_score for r in searcher.search("a red circle", k=5, rerank=5)] == before


def test_overlay_png_draws_the_map_over_the_thumbnail() -> None:
    thumb = encode_thumbnail(np.full((48, 64, 3), 128, dtype=np.uint8))
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[0, 3] = 1.0  # hot at the top right
    with Image.open(io.BytesIO(overlay_png(thumb, grid))) as img:
        assert img.format == "PNG" and img.size == (64, 48)
        px = np.asarray(img.convert("RGB"), dtype=np.int32)
    assert px[46, 2].tolist() == [128, 128, 128]  # cold: the thumbnail as it was
    assert px[2, 62].sum() > px[46, 2].sum() + 100  # hot: inferno's bright end drawn over it


# --------------------------------------------------------------------- trained on synth

GRID = 8  # the pixel backbone's 8x8 level, which the Slow model reads by default


@pytest.fixture(scope="module")
def trained_slow():
    """A tiny Slow model trained for 200 steps on 400 one-object synthetic images ("a single
    red circle"; about 10-15 s on one shared core here). Measured: with two-object scenes
    ("a red circle left of a blue square") a model this small and short-trained does not
    bind a colour to the right one of the two objects (peak nearer the right object in
    30/60 cases, chance 30/60; the demo's Slow model, trained 15 minutes: 41/60), so the
    test asks what it does learn in seconds: where the object is."""
    from fastslow_cli.demo.synth import caption, render_image, sample_scene
    from fastslow_cli.features.backbones import load_backbone
    from fastslow_cli.models.slow import SlowConfig, SlowModel
    from fastslow_cli.search.retrievers import NativeSlow
    from fastslow_cli.text.tokenizer import TextTokenizer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "image", 1) for _ in range(400)]
    backbone = load_backbone("pixels")
    levels = [torch.from_numpy(lv.astype(np.float32))[:, None]
              for lv in backbone(np.stack([render_image(s, 64) for s in scenes]))]
    captions = [caption(s) for s in scenes]
    tok = TextTokenizer.train(captions)
    model = SlowModel(SlowConfig(level_shapes=[list(s) for s in backbone.level_shapes()], vocab_size=tok.vocab_size,
                                 width=32, heads=4, coarse_layers=1, decoder_layers=1))
    ids, mask = tok.encode_batch(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(200):
        idx = torch.from_numpy(rng.choice(len(scenes), 32, replace=False))
        memory, memory_mask = model.encode_visual([lv[idx] for lv in levels], torch.ones(32, 1, dtype=torch.bool))
        loss = model.caption_loss(ids[idx], mask[idx], memory, memory_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    slow = NativeSlow(model, tok, {}, torch.device("cpu"))

    def heat(scene):
        level = [torch.from_numpy(lv.astype(np.float32))[:, None] for lv in backbone(render_image(scene, 64)[None])]
        with torch.inference_mode():
            memory, _ = model.encode_visual(level, torch.ones(1, 1, dtype=torch.bool))
        return native_heatmap(slow, caption(scene), memory[0].numpy(), (GRID, GRID), [0.0])

    return heat


def _peak_on(hm, word: str, thing) -> bool:
    """Is the peak cell of `word`'s map inside the object's box (grown by half a cell)?"""
    m = hm.maps[0, hm.tokens.index(word)]
    yy, xx = np.unravel_index(int(np.argmax(m)), m.shape)
    half = 0.5 / GRID
    return abs((xx + 0.5) / GRID - thing.x) <= thing.radius + half and abs((yy + 0.5) / GRID - thing.y) <= thing.radius + half


def test_colour_and_shape_words_peak_on_the_object_and_follow_it(trained_slow) -> None:
    from fastslow_cli.demo.synth import sample_scene

    rng = np.random.default_rng(123)
    here = moved = total = 0
    chance = []
    for _ in range(40):
        scene = sample_scene(rng, "image", 1)
        thing = scene.things[0]
        mirrored = replace(thing, x=1 - thing.x, y=1 - thing.y)  # the same object, moved to the opposite corner
        hm, hm_moved = trained_slow(scene), trained_slow(replace(scene, things=(mirrored,)))
        assert hm.maps[0, hm.tokens.index(thing.colour)].std() > 0.1  # not uniform
        for word in (thing.colour, thing.shape):
            here += _peak_on(hm, word, thing)
            moved += _peak_on(hm_moved, word, mirrored)
            total += 1
        chance.append(min(1.0, 2 * (thing.radius + 0.5 / GRID)) ** 2)
    # Measured: 79/80 and 78/80 (69/80 and 61/80 with the rows that predict each word
    # instead); a peak at a random cell lands in the box about 14% of the time.
    print(f"peak on the object: {here}/{total}, after moving it {moved}/{total}, chance {np.mean(chance):.2f}")
    assert here / total >= 0.8 and moved / total >= 0.8


def test_searcher_thumbnails_read_the_index_feature_set(searcher: Searcher) -> None:
    from fastslow_cli.store.thumbs import ThumbnailFiles

    item = searcher.index.items["id"][0]
    assert searcher.thumbnails.get(item) is None and searcher.thumbnails.count(item) == 0  # none stored yet
    ThumbnailFiles(searcher.index.feature_set_dir).put(f"hash-{item}", [b"jpeg-0", b"jpeg-1"])  # its content hash
    assert searcher.thumbnails is searcher.thumbnails  # opened once
    assert (searcher.thumbnails.get(item), searcher.thumbnails.get(item, 1)) == (b"jpeg-0", b"jpeg-1")
    assert searcher.thumbnails.count(item) == 2 and searcher.thumbnails.mime == "image/jpeg"
