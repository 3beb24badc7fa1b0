"""Visual backbones: uint8 frames in, a feature pyramid out (finest level first).

Two kinds, one protocol (`Backbone`), so `extract` never cares which it runs:

- `pixels` (default, no weights, pure numpy): the frame cut into non-overlapping
  patches of 4, 8 and 16 pixels, each patch flattened channels-last. The learnable
  part lives in the Fast/Slow models; this keeps the demo and tests fast.
- a Hugging Face vision model (hub id or local folder), loaded with `transformers`,
  which is imported only here and only when such a backbone is asked for.
  Convolutional models (and Swin-like models that expose reshaped stage outputs)
  give their last three stages of distinct resolution; ViT-like models give
  patch-token grids from three layers, pooled so that each level halves the grid
  of the previous one (a real pyramid for the Slow model's progressive upsampling).

`spec()` is what the feature store compares: equal spec <=> interchangeable features.
For Hugging Face models it includes a sha256 of the weights, so features from
different weights are never mixed in one feature set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fastslow_cli.errors import FastslowError, UsageError, one_line
from fastslow_cli.models.hf_common import preprocessing, quiet_transformers, weights_sha256
from fastslow_cli.models.names import resolve_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_SIZE = 64
PIXEL_PATCHES = (4, 8, 16)
FLOAT16_MAX = 65504.0
_FIX = "use --backbone pixels or a local model folder"


class Backbone(Protocol):
    """What `extract` needs from a backbone."""

    name: str
    input_size: int

    def spec(self) -> dict[str, Any]: ...

    def level_shapes(self) -> list[tuple[int, int, int]]: ...

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]: ...


def _check_frames(frames: np.ndarray, size: int) -> None:
    """Frames must already be decoded at the backbone's size: resizing is the decoder's job."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
        raise ValueError(
            f"backbone expects uint8 frames of shape (N, {size}, {size}, 3), "
            f"got {frames.dtype} {frames.shape}"
        )


class PixelBackbone:
    """Frames cut into patches of 4, 8 and 16 px: grids size/4, size/8, size/16.

    The patch sizes are fixed (so channels stay 48, 192, 768) and the grids grow
    with `size`, which must therefore be a multiple of 16. Values are
    `(x/255 - 0.5) / 0.25`, stored as float16 (exact enough for 256 grey levels).
    """

    name = "pixels"

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 16 or size % 16:
            raise UsageError(
                f"--size {size} does not suit the pixels backbone: use a multiple of 16 (default 64)"
            )
        self.input_size = size
        grey = np.arange(256, dtype=np.float32)
        self._lut = ((grey / 255.0 - 0.5) / 0.25).astype(np.float16)

    def spec(self) -> dict[str, Any]:
        return {
            "name": "pixels",
            "version": 1,
            "input_size": self.input_size,
            "patches": list(PIXEL_PATCHES),
            "normalise": "(x/255-0.5)/0.25",
        }

    def level_shapes(self) -> list[tuple[int, int, int]]:
        s = self.input_size
        return [(s // p, s // p, p * p * 3) for p in PIXEL_PATCHES]

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        _check_frames(frames, self.input_size)
        n, s = len(frames), self.input_size
        x = self._lut[frames]  # (N, S, S, 3) float16, one table look-up per byte
        levels = []
        for p in PIXEL_PATCHES:
            g = s // p
            patches = x.reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
            levels.append(patches.reshape(n, g, g, p * p * 3))
        return levels


class HFBackbone:
    """A Hugging Face vision model as a pyramid of float16 feature grids.

    Plans, decided once at load by a probe forward pass on a blank frame:
    - `conv`: hidden states are (B, C, H, W) (or the model gives `reshaped_hidden_states`,
      as Swin does); for each resolution keep the last hidden state, then keep the
      last three resolutions. For a ResNet that is stages 2, 3 and 4.
    - `tokens`: hidden states are (B, prefix + g*g, C); the prefix (CLS, registers) is
      dropped and the rest reshaped to g x g. Levels come from layers
      L//2, 3L//4 and L (L = number of layers), average-pooled to g, ceil(g/2) and
      ceil(g/4): a middle layer keeps the full grid, deeper layers give coarser grids.
    """

    def __init__(self, name: str, source: str, local: bool, size: int | None, device: str | None,
                 batch_size: int) -> None:
        import torch
        import transformers

        from fastslow_cli.runtime import resolve_device

        self.name = name
        self.batch_size = batch_size
        self.device = resolve_device(device)
        with quiet_transformers(transformers):
            try:
                model = transformers.AutoModel.from_pretrained(
                    source, dtype=torch.float32, local_files_only=local
                )
            except Exception as exc:  # transformers raises many types for a bad folder or id
                raise FastslowError(f"cannot load backbone {name}: {one_line(exc)}; {_FIX}") from exc
            processor = self._load_processor(transformers, source, local)
        # CLIP, SigLIP, BLIP...: the image tower is `vision_model`.
        self.model = getattr(model, "vision_model", model).to(self.device).eval()
        prep = preprocessing(processor, self.model.config, size)
        self.input_size: int = prep["input_size"]
        self._scale = prep["rescale"]
        self._mean = torch.tensor(prep["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(prep["std"], device=self.device).view(1, 3, 1, 1)
        self._plan = self._probe()
        self._spec = {
            "name": "hf",
            "model": source,
            "architecture": type(self.model).__name__,
            "weights_sha256": weights_sha256(self.model),
            **prep,
            **{k: v for k, v in self._plan.items() if k != "shapes"},
        }

    @staticmethod
    def _load_processor(transformers: Any, source: str, local: bool) -> Any:
        """The image processor if the model has one; None means config/defaults decide."""
        if local and not (Path(source) / "preprocessor_config.json").exists():
            return None
        try:
            return transformers.AutoImageProcessor.from_pretrained(source, local_files_only=local)
        except Exception:  # no processor on the hub, or offline: fall back to config/defaults
            return None

    def _hidden(self, pixels: torch.Tensor) -> tuple[str, tuple[torch.Tensor, ...]]:
        out = self.model(pixel_values=pixels, output_hidden_states=True, return_dict=True)
        reshaped = getattr(out, "reshaped_hidden_states", None)
        if reshaped is not None:
            return "conv", tuple(reshaped)
        hidden = getattr(out, "hidden_states", None)
        if not hidden:
            raise ValueError("the model returns no hidden states")
        dims = {h.dim() for h in hidden}
        if dims == {4}:
            return "conv", tuple(hidden)
        if dims == {3}:
            return "tokens", tuple(hidden)
        raise ValueError(f"unsupported hidden state ranks {sorted(dims)}")

    def _probe(self) -> dict[str, Any]:
        """Run one blank frame to decide which hidden states make the pyramid."""
        import torch

        s = self.input_size
        try:
            with torch.inference_mode():
                kind, hidden = self._hidden(torch.zeros(1, 3, s, s, device=self.device))
        except Exception as exc:
            raise FastslowError(
                f"cannot use backbone {self.name} on {s}x{s} frames: {one_line(exc)}; "
                f"omit --size to use the model's own input size, or {_FIX}"
            ) from exc
        if kind == "conv":
            last_of_res: dict[tuple[int, int], int] = {}
            for i, h in enumerate(hidden):
                last_of_res[tuple(h.shape[-2:])] = i
            picks = sorted(last_of_res.values())[-3:]
            shapes = [(int(hidden[i].shape[2]), int(hidden[i].shape[3]), int(hidden[i].shape[1])) for i in picks]
            return {"kind": "conv", "hidden_states": picks, "pool": [1] * len(picks), "grid": None,
                    "prefix_tokens": 0, "shapes": shapes}
        tokens = int(hidden[0].shape[1])
        patch = getattr(self.model.config, "patch_size", None)
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        g = s // patch if patch else math.isqrt(tokens)
        prefix = tokens - g * g
        if g < 1 or prefix < 0:
            raise FastslowError(
                f"cannot use backbone {self.name}: {tokens} tokens do not form a square patch grid; {_FIX}"
            )
        layers = len(hidden) - 1
        picks = [max(1, layers // 2), max(1, (3 * layers) // 4), max(1, layers)]
        pools = [1, 2, 4]
        width = int(hidden[0].shape[2])
        shapes = [(math.ceil(g / p), math.ceil(g / p), width) for p in pools]
        return {"kind": "tokens", "hidden_states": picks, "pool": pools, "grid": g,
                "prefix_tokens": prefix, "shapes": shapes}

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def level_shapes(self) -> list[tuple[int, int, int]]:
        return list(self._plan["shapes"])

    def _levels(self, hidden: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Pick and shape the planned hidden states as (B, H, W, C)."""
        import torch.nn.functional as F

        plan, levels = self._plan, []
        for i, pool in zip(plan["hidden_states"], plan["pool"]):
            h = hidden[i]
            if plan["kind"] == "tokens":
                g = plan["grid"]
                grid = h[:, plan["prefix_tokens"]:, :].reshape(h.shape[0], g, g, h.shape[2])
                h = grid.permute(0, 3, 1, 2)
                if pool > 1:
                    h = F.adaptive_avg_pool2d(h, math.ceil(g / pool))
            levels.append(h.permute(0, 2, 3, 1))
        return levels

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        import torch

        _check_frames(frames, self.input_size)
        outs: list[list[np.ndarray]] = [[] for _ in self.level_shapes()]
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.batch_size]))
                x = batch.to(self.device).permute(0, 3, 1, 2).float() * self._scale
                x = (x - self._mean) / self._std
                _, hidden = self._hidden(x)
                for out, level in zip(outs, self._levels(hidden)):
                    level = level.float().clamp(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16)
                    out.append(level.cpu().numpy())
        return [
            np.concatenate(out) if out else np.zeros((0, *shape), np.float16)
            for out, shape in zip(outs, self.level_shapes())
        ]


def load_backbone(name: str = "pixels", size: int | None = None, device: str | None = None,
                  batch_size: int = 32) -> Backbone:
    """`pixels`, else a Hugging Face vision model by local folder or hub id.

    `size` overrides the input size (default 64 for pixels, the model's own otherwise).
    Anything that cannot be loaded gives a one-line FastslowError, never a traceback.
    """
    if size is not None and size < 1:
        raise UsageError(f"--size {size} must be a positive number of pixels")
    if name == "pixels":
        return PixelBackbone(DEFAULT_SIZE if size is None else size)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    ref = resolve_model(name, what="backbone", fix=_FIX)
    return HFBackbone(name, ref.path_or_id, ref.kind == "local", size, device, batch_size)
