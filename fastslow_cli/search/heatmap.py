"""Where the Slow model looked: per query token, its cross-attention over each frame's grid.

Native Slow model: the decoders' cross-attention probabilities over the memory (the fine
grid of every frame, frame-major: rows f*H*W .. (f+1)*H*W-1 are frame f), taken at the
position that *reads* each word (its own position, in either decoder), averaged over both
decoders, all heads and all layers. Measured on the demo's trained Slow model, these rows
localise better than the rows that predict the word (docs/ARCHITECTURE.md, decisions log).

`HeatMap.maps` is normalised to [0, 1] per (frame, token) for display; `query_map` is the
mean of the tokens' raw (unnormalised) maps, normalised the same way, so a word the model
barely attends for does not weigh as much as one it looks hard for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

OVERLAY_ALPHA = 0.65  # heat map opacity where the map is 1 (0 where it is 0)
COLORMAP = "inferno"


@dataclass
class HeatMap:
    """Attention maps of one (query, item) pair."""

    tokens: list[str]  # the query's words as the model reads them ([UNK] for unknown words)
    maps: np.ndarray  # float32 (frames, tokens, H, W), each (frame, token) map in [0, 1]
    query_map: np.ndarray  # float32 (frames, H, W): the whole query, in [0, 1] per frame
    timestamps: list[float]  # of the frames, seconds (0.0 for an image)

    def to_json(self) -> dict[str, Any]:
        """Plain lists, rounded to 3 decimals: a small JSON grid for a web page."""
        return {
            "tokens": self.tokens,
            "frames": int(self.maps.shape[0]),
            "grid": [int(self.maps.shape[2]), int(self.maps.shape[3])],
            "timestamps": [float(t) for t in self.timestamps],
            "maps": np.round(self.maps, 3).tolist(),
            "query_map": np.round(self.query_map, 3).tolist(),
        }


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map (last two axes) to [0, 1]: min 0, max 1; a flat map becomes all 0."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def word_rows(attention: np.ndarray, length: int) -> np.ndarray:
    """Per word (tokens 1 .. length-2 of `[BOS] words [EOS]`), the attention (M,) of the
    positions that read it, averaged over directions, layers and heads.

    `attention` is `SlowModel.cross_attention` for one caption: (2, layers, heads, L, M),
    both directions' rows in caption order (row i reads token i in either direction).
    """
    words = np.arange(1, length - 1)
    return attention[:, :, :, words].mean(axis=(0, 1, 2))  # (words, M)


def native_heatmap(slow: Any, query: str, memory: np.ndarray, grid: tuple[int, int], timestamps: list[float]) -> HeatMap:
    """The heat map of `query` over one item's cached memory (L, width), L = frames * H * W."""
    import torch

    h, w = grid
    frames = memory.shape[0] // (h * w)
    if frames * h * w != memory.shape[0]:
        raise ValueError(f"memory has {memory.shape[0]} rows, not a whole number of {h}x{w} grids")
    ids, mask = slow.tokenizer.encode_batch([query])
    model = slow.model
    mem = torch.from_numpy(np.asarray(memory, dtype=np.float32))[None].to(slow.device)
    mem_mask = torch.ones(1, mem.shape[1], dtype=torch.bool, device=slow.device)
    attention = model.cross_attention(ids.to(slow.device), mask.to(slow.device), mem.to(model.tok_emb.weight.dtype), mem_mask)
    length = min(int(mask.sum()), model.config.max_len)
    rows = word_rows(attention[:, :, 0].float().cpu().numpy(), length)  # (words, M)
    raw = rows.reshape(len(rows), frames, h, w).transpose(1, 0, 2, 3)  # (frames, words, H, W)
    vocab = slow.tokenizer.id_to_token
    tokens = [vocab(int(i)) for i in ids[0, 1 : length - 1]]
    return HeatMap(
        tokens=tokens,
        maps=normalise(raw),
        query_map=normalise(raw.mean(axis=1)),
        timestamps=[float(t) for t in timestamps[:frames]],
    )


def overlay_png(thumbnail: bytes, grid: np.ndarray) -> bytes:
    """A PNG of `thumbnail` (JPEG/WebP/PNG bytes) with `grid` (H, W), values in [0, 1],
    upsampled smoothly to its size and drawn over it with a matplotlib colormap, each pixel
    as opaque as its value: where the model did not look, the picture stays as it is."""
    from matplotlib import colormaps
    from PIL import Image

    with Image.open(io.BytesIO(thumbnail)) as img:
        base = img.convert("RGB")
    values = np.clip(np.nan_to_num(np.asarray(grid, dtype=np.float32)), 0.0, 1.0)
    small = Image.fromarray((values * 255).astype(np.uint8), "L")
    big = np.asarray(small.resize(base.size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    colours = colormaps[COLORMAP](big)[..., :3] * 255
    alpha = OVERLAY_ALPHA * big[..., None]
    blended = np.asarray(base, dtype=np.float32) * (1 - alpha) + colours * alpha
    out = io.BytesIO()
    Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()
