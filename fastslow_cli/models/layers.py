"""Small transformer building blocks shared by the Fast and Slow models.

Written out (rather than `nn.TransformerDecoderLayer`) so the Slow decoder can project
the visual memory to keys and values once per item and reuse them for every query that
scores that item: re-ranking and evaluation then pay only the text side per pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastslow_cli.errors import FastslowError


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value projections."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, L, head_dim) of `x` (B, L, width)."""
        b, n, w = x.shape
        k, v = self.kv(x).view(b, n, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
        group: int = 1,
        weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Queries from `x` (B, L, width) over precomputed keys/values; `key_mask` True = real key.

        `group` > 1: `k`, `v`, `key_mask` have B / group rows and row i serves rows
        i*group .. (i+1)*group-1 of `x`. Those rows are folded into one long query sequence
        (exact for cross-attention, where query positions do not interact), so many texts
        attend to one item without copying its keys and values.

        `weights=True` (no grouping) also returns the attention probabilities
        (B, heads, L, keys), for heat maps: the softmax is then written out instead of
        the fused kernel, which gives the same output up to float rounding.
        """
        b, n, w = x.shape
        q = self.q(x).view(b, n, self.heads, w // self.heads).transpose(1, 2)
        if group > 1:
            if causal:
                raise ValueError("grouped attention is for cross-attention only")
            q = q.view(b // group, group, self.heads, n, -1).transpose(1, 2).reshape(b // group, self.heads, group * n, -1)
        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]
            if causal:
                mask = mask & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        elif causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        if weights:
            if group > 1:
                raise ValueError("attention weights are for ungrouped attention")
            logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            probs = logits.softmax(-1)
            return self.out((probs @ v).transpose(1, 2).reshape(b, n, w)), probs
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        if group > 1:
            y = y.view(b // group, self.heads, group, n, -1).transpose(1, 2).reshape(b, self.heads, n, -1)
        return self.out(y.transpose(1, 2).reshape(b, n, w))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, key_mask, causal)


class Block(nn.Module):
    """Pre-norm transformer layer: self-attention, optional cross-attention, MLP."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.cross = Attention(width, heads, dropout) if cross else None
        self.norm_x = nn.LayerNorm(width) if cross else None
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
        group: int = 1,
    ) -> torch.Tensor:
        return self.forward_with_attention(x, mask, causal, memory_kv, memory_mask, group)[0]

    def forward_with_attention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
        group: int = 1,
        weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output and, with `weights`, its cross-attention probabilities
        (B, heads, L, memory) (None otherwise, or without cross-attention)."""
        x = x + self.drop(self.attn(self.norm1(x), mask, causal))
        probs = None
        if self.cross is not None:
            if memory_kv is None:
                raise ValueError("a cross-attention block needs memory keys and values")
            y = self.cross.attend(self.norm_x(x), *memory_kv, memory_mask, group=group, weights=weights)
            y, probs = y if weights else (y, None)
            x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x))), probs


def sincos(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Fixed sinusoidal embeddings (N, width) of real-valued positions (N,)."""
    freqs = torch.exp(-math.log(100.0) * torch.arange(width // 2) / max(1, width // 2))
    angles = positions[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def grid_embedding(h: int, w: int, width: int) -> torch.Tensor:
    """Fixed 2-D embeddings (h*w, width): half the channels encode x, half y, in [-1, 1].

    Fixed rather than learnt so that where a token is (left/right, up/down) is readable
    from the first step: spatial relations then need no positional table learnt from scratch.
    """
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    ex = sincos(xs, width // 2)  # (w, width/2)
    ey = sincos(ys, width - width // 2)  # (h, width/2)
    return torch.cat([ex[None, :, :].expand(h, -1, -1), ey[:, None, :].expand(-1, w, -1)], dim=-1).reshape(h * w, width)


class VisualInput(nn.Module):
    """Projects one feature level (B, T, H, W, C) to tokens with spatial and temporal embeddings.

    Embeddings are fixed sinusoids (2-D grid position, frame index) plus learnt corrections.
    """

    def __init__(self, shape: Sequence[int], width: int, max_frames: int) -> None:
        super().__init__()
        h, w, c = (int(s) for s in shape)
        self.shape = (h, w, c)
        self.proj = nn.Linear(c, width)
        self.norm = nn.LayerNorm(width)
        self.spatial = nn.Parameter(torch.zeros(h * w, width))
        self.temporal = nn.Parameter(torch.zeros(max_frames, width))
        self.register_buffer("fixed_spatial", grid_embedding(h, w, width), persistent=False)
        frames = torch.arange(max_frames, dtype=torch.float32) / 8.0
        self.register_buffer("fixed_temporal", sincos(frames, width), persistent=False)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, H*W, width)."""
        b, t, h, w, c = level.shape
        x = self.norm(self.proj(level.reshape(b, t, h * w, c).to(self.proj.weight.dtype)))
        spatial = self.spatial + self.fixed_spatial
        temporal = self.temporal[:t] + self.fixed_temporal[:t]
        return x + spatial + temporal[:, None, :]


def check_levels(
    levels: Sequence[torch.Tensor], frame_mask: torch.Tensor, expected: Sequence[Sequence[int]], max_frames: int
) -> None:
    """Features must match the (H, W, C) per level the model was built for."""
    got = [tuple(int(s) for s in lv.shape[2:]) for lv in levels]
    want = [tuple(int(s) for s in e) for e in expected]
    if got != want:
        raise FastslowError(
            f"feature levels {got} do not match the model's {want}: "
            "use the feature set the model was trained on, or retrain it"
        )
    t = frame_mask.shape[1]
    if t > max_frames:
        raise FastslowError(
            f"items have {t} frames but the model handles at most {max_frames}: "
            "re-extract with fewer --frames or retrain"
        )
    for lv in levels:
        if lv.shape[:2] != frame_mask.shape:
            raise ValueError(f"level batch/frames {tuple(lv.shape[:2])} != frame_mask {tuple(frame_mask.shape)}")
