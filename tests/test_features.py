"""Backbones: the `pixels` pyramid, and tiny Hugging Face models built from configs
(ResNet, ViT, Swin, CLIP) saved to a temp folder and loaded by path. Never downloads."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.features.backbones import PixelBackbone, load_backbone

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is first imported


def random_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# ---- pixels -------------------------------------------------------------------------

def test_pixels_pyramid_shapes_and_values() -> None:
    backbone = load_backbone()
    assert isinstance(backbone, PixelBackbone) and backbone.input_size == 64
    assert backbone.level_shapes() == [(16, 16, 48), (8, 8, 192), (4, 4, 768)]
    frames = random_frames(3, 64)
    levels = backbone(frames)
    assert [lv.shape for lv in levels] == [(3, *s) for s in backbone.level_shapes()]
    assert all(lv.dtype == np.float16 for lv in levels)
    norm = (frames.astype(np.float32) / 255 - 0.5) / 0.25
    for level, p in zip(levels, (4, 8, 16)):
        # patch (row 1, col 2) of frame 2, flattened channels-last
        expected = norm[2, p : 2 * p, 2 * p : 3 * p].reshape(-1).astype(np.float16)
        assert np.array_equal(level[2, 1, 2], expected)


def test_pixels_other_sizes_and_bad_input() -> None:
    assert load_backbone("pixels", size=32).level_shapes() == [(8, 8, 48), (4, 4, 192), (2, 2, 768)]
    assert load_backbone("pixels", size=32).spec() != load_backbone("pixels").spec()
    json.dumps(load_backbone().spec())
    with pytest.raises(UsageError, match="multiple of 16"):
        load_backbone("pixels", size=40)
    with pytest.raises(ValueError, match=r"\(N, 64, 64, 3\)"):
        load_backbone()(random_frames(1, 32))
    with pytest.raises(ValueError, match="uint8"):
        load_backbone()(random_frames(1, 64).astype(np.float32))


# ---- tiny Hugging Face models -------------------------------------------------------

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight models from configs, saved like downloaded checkpoints."""
    import torch
    from transformers import (
        CLIPConfig, CLIPModel, ResNetConfig, ResNetModel, SwinConfig, SwinModel,
        ViTConfig, ViTImageProcessorPil, ViTModel,
    )

    root = tmp_path_factory.mktemp("hf")
    paths = {name: root / name for name in ("resnet", "resnet_b", "vit", "swin", "clip")}
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 12, 16, 24], depths=[1, 1, 1, 1], layer_type="basic")
    torch.manual_seed(0)
    ResNetModel(resnet).save_pretrained(paths["resnet"])
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
                         ).save_pretrained(paths["resnet"])
    torch.manual_seed(1)
    ResNetModel(resnet).save_pretrained(paths["resnet_b"])  # same architecture, other weights
    ViTModel(ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)).save_pretrained(paths["vit"])
    SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1],
                         num_heads=[1, 1, 1], window_size=2)).save_pretrained(paths["swin"])
    CLIPModel(CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8,
    )).save_pretrained(paths["clip"])
    return paths


def test_resnet_gives_last_three_stages(hf_models: dict[str, Path]) -> None:
    backbone = load_backbone(str(hf_models["resnet"]), batch_size=2)
    assert backbone.input_size == 32  # from the saved image processor
    # 32 px: stem /4 -> 8, stage 1 8, stage 2 4, stage 3 2, stage 4 1
    assert backbone.level_shapes() == [(4, 4, 12), (2, 2, 16), (1, 1, 24)]
    frames = random_frames(5, 32)
    levels = backbone(frames)
    assert [lv.shape for lv in levels] == [(5, *s) for s in backbone.level_shapes()]
    assert all(lv.dtype == np.float16 and np.isfinite(lv).all() for lv in levels)
    again = backbone(frames)
    assert all(np.array_equal(a, b) for a, b in zip(levels, again))  # deterministic
    one_batch = load_backbone(str(hf_models["resnet"]), batch_size=8)(frames)
    assert all(np.allclose(a, b, atol=1e-2) for a, b in zip(levels, one_batch))  # batching is invisible
    spec = backbone.spec()
    assert spec["model"] == str(hf_models["resnet"].resolve()) and spec["kind"] == "conv"
    assert spec["mean"] == [0.5] * 3 and spec["input_size"] == 32
    assert len(spec["weights_sha256"]) == 64
    json.dumps(spec)


def test_resnet_size_override(hf_models: dict[str, Path]) -> None:
    backbone = load_backbone(str(hf_models["resnet"]), size=64)
    assert backbone.input_size == 64
    assert backbone.level_shapes() == [(8, 8, 12), (4, 4, 16), (2, 2, 24)]


def test_vit_gives_pooled_patch_grids_without_cls(hf_models: dict[str, Path]) -> None:
    import torch
    from transformers import ViTModel

    backbone = load_backbone(str(hf_models["vit"]))
    assert backbone.input_size == 32  # config.image_size: no processor saved
    assert backbone.level_shapes() == [(8, 8, 32), (4, 4, 32), (2, 2, 32)]
    frames = random_frames(3, 32, seed=4)
    levels = backbone(frames)
    assert [lv.shape for lv in levels] == [(3, *s) for s in backbone.level_shapes()]
    spec = backbone.spec()
    assert spec["kind"] == "tokens" and spec["hidden_states"] == [1, 1, 2] and spec["prefix_tokens"] == 1

    # Reference: ImageNet normalisation, CLS dropped, tokens in row-major grid order.
    model = ViTModel.from_pretrained(hf_models["vit"]).eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (torch.from_numpy(frames).float() / 255 - mean) / std
    with torch.inference_mode():
        hidden = model(pixel_values=x.permute(0, 3, 1, 2), output_hidden_states=True).hidden_states
    grid = hidden[1][:, 1:].reshape(3, 8, 8, 32).numpy()
    assert np.allclose(levels[0].astype(np.float32), grid, atol=2e-3, rtol=2e-3)
    last = hidden[2][:, 1:].reshape(3, 8, 8, 32).numpy()
    pooled = last.reshape(3, 2, 4, 2, 4, 32).mean(axis=(2, 4))
    assert np.allclose(levels[2].astype(np.float32), pooled, atol=2e-3, rtol=2e-3)


def test_swin_and_clip_vision_tower(hf_models: dict[str, Path]) -> None:
    swin = load_backbone(str(hf_models["swin"]))
    assert swin.spec()["kind"] == "conv"
    assert swin.level_shapes() == [(8, 8, 8), (4, 4, 16), (2, 2, 32)]
    assert [lv.shape[1:] for lv in swin(random_frames(2, 32))] == swin.level_shapes()
    clip = load_backbone(str(hf_models["clip"]))
    assert clip.spec()["architecture"] == "CLIPVisionModel"
    assert clip.level_shapes() == [(4, 4, 16), (2, 2, 16), (1, 1, 16)]
    assert [lv.shape[1:] for lv in clip(random_frames(2, 32))] == clip.level_shapes()


def test_specs_separate_models_and_weights(hf_models: dict[str, Path]) -> None:
    resnet = load_backbone(str(hf_models["resnet"])).spec()
    assert load_backbone(str(hf_models["resnet"])).spec() == resnet  # stable across loads
    vit = load_backbone(str(hf_models["vit"])).spec()
    other = load_backbone(str(hf_models["resnet_b"])).spec()
    assert vit != resnet
    assert other["weights_sha256"] != resnet["weights_sha256"]


def test_vit_refuses_a_foreign_size(hf_models: dict[str, Path]) -> None:
    with pytest.raises(FastslowError, match="omit --size") as info:
        load_backbone(str(hf_models["vit"]), size=48)
    assert "\n" not in str(info.value)


def test_unloadable_names_give_one_line_errors_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts: list[object] = []

    def no_network(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    for name in ["no-such-org/no-such-model", "./missing/folder", str(tmp_path / "empty"),
                 str(tmp_path / "weights.bin")]:
        with pytest.raises(FastslowError) as info:
            load_backbone(name)
        message = str(info.value)
        assert message.startswith(f"cannot load backbone {name}:")
        assert "use --backbone pixels or a local model folder" in message and "\n" not in message
    assert attempts == []
