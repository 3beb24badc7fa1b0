"""Helpers both Hugging Face users share: `--backbone` (features/backbones.py) and the
CLIP/BLIP retrievers (models/hf.py). Imports neither torch nor transformers itself."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextmanager
def quiet_transformers(transformers: Any) -> Iterator[None]:
    """Silence transformers' warnings and weight-loading bars: stderr is ours."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _size_from(value: Any) -> int | None:
    """An int from a processor `size`/`crop_size` (int, dict or SizeDict)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    for key in ("height", "shortest_edge"):
        got = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if got:
            return int(got)
    return None


def preprocessing(processor: Any, config: Any, size: int | None) -> dict[str, Any]:
    """Input size, rescale factor, mean and std: processor first, then config, then defaults.

    Frames are squashed to a square (no crop), so the input size is the processor's
    crop size when it crops, else its resize size.
    """
    native = None
    scale, mean, std = 1 / 255, IMAGENET_MEAN, IMAGENET_STD
    if processor is not None:
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        native = _size_from(crop) or _size_from(getattr(processor, "size", None))
        if getattr(processor, "do_rescale", True) is False:
            scale = 1.0
        else:
            scale = float(getattr(processor, "rescale_factor", None) or 1 / 255)
        if getattr(processor, "do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean = getattr(processor, "image_mean", None) or mean
            std = getattr(processor, "image_std", None) or std
    image_size = getattr(config, "image_size", None)
    native = native or (_size_from(image_size) if image_size else None) or 224
    return {
        "input_size": int(size or native),
        "rescale": scale,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor in the state dict."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()
