"""The Fast model: a dual encoder whose text and visual vectors meet in one space.

Text and items are encoded independently, so item vectors can be computed once and
put in an HNSW index; a query then costs one text encoding and a nearest-neighbour
look-up. Trained with the symmetric InfoNCE loss and a learnable temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastslow_cli.models.layers import Block, VisualInput, check_levels
from fastslow_cli.text.tokenizer import PAD_ID


@dataclass
class FastConfig:
    """Architecture of the Fast model; `level_shapes` are the feature set's (H, W, C), finest first."""

    level_shapes: list[list[int]] = field(default_factory=list)
    vocab_size: int = 0
    max_len: int = 32
    max_frames: int = 16
    dim: int = 128
    width: int = 128
    heads: int = 4
    visual_layers: int = 2
    text_layers: int = 2
    dropout: float = 0.1
    init_temperature: float = 0.07

    def to_dict(self) -> dict:
        return asdict(self)


class FastModel(nn.Module):
    """Dual encoder: `encode_text` and `encode_visual` give L2-normalised (B, dim) vectors."""

    kind = "fast"

    def __init__(self, config: FastConfig) -> None:
        super().__init__()
        if not config.level_shapes or config.vocab_size <= 0:
            raise ValueError("FastConfig needs level_shapes and vocab_size")
        self.config = config
        w = config.width
        self.visual_in = VisualInput(config.level_shapes[-1], w, config.max_frames)
        self.visual_cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.text_cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.visual_blocks = nn.ModuleList(Block(w, config.heads, config.dropout) for _ in range(config.visual_layers))
        self.visual_norm = nn.LayerNorm(w)
        self.visual_proj = nn.Linear(w, config.dim, bias=False)
        self.tok_emb = nn.Embedding(config.vocab_size, w, padding_idx=PAD_ID)
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, w) * 0.02)
        self.text_in_norm = nn.LayerNorm(w)
        self.text_blocks = nn.ModuleList(Block(w, config.heads, config.dropout) for _ in range(config.text_layers))
        self.text_norm = nn.LayerNorm(w)
        self.text_proj = nn.Linear(w, config.dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def encode_text(self, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, dim) unit vectors."""
        ids, mask = token_ids[:, : self.config.max_len], mask[:, : self.config.max_len].to(torch.bool)
        x = self.text_in_norm(self.tok_emb(ids) + self.pos_emb[: ids.shape[1]])
        x, mask = _with_cls(self.text_cls, x, mask)
        for block in self.text_blocks:
            x = block(x, mask)
        return F.normalize(self.text_proj(self.text_norm(x[:, 0])), dim=-1)

    def encode_visual(self, levels: Sequence[torch.Tensor], frame_mask: torch.Tensor) -> torch.Tensor:
        """Feature levels (B, T, H, W, C), finest first, and frame mask (B, T) -> (B, dim) unit vectors.

        Only the coarsest level is read: every frame's tokens go through one transformer
        with a summary token, padding frames masked out.
        """
        check_levels(levels, frame_mask, self.config.level_shapes, self.config.max_frames)
        x = self.visual_in(levels[-1])  # (B, T, HW, w)
        b, t, n, w = x.shape
        x = x.reshape(b, t * n, w)
        mask = frame_mask.to(torch.bool).repeat_interleave(n, dim=1)
        x, mask = _with_cls(self.visual_cls, x, mask)
        for block in self.visual_blocks:
            x = block(x, mask)
        return F.normalize(self.visual_proj(self.visual_norm(x[:, 0])), dim=-1)

    def similarity(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (Q, N) of unit vectors: the retrieval score."""
        return text @ visual.T

    def contrastive_loss(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch; pair i is (text i, item i)."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * text @ visual.T
        labels = torch.arange(len(text), device=text.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _with_cls(cls: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend a learnt summary token; its final state is the sequence's embedding."""
    # shape[0], not len(): len() is a Python int, which would fix the batch size of an exported graph
    x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
    return x, torch.cat([torch.ones(mask.shape[0], 1, dtype=torch.bool, device=mask.device), mask], dim=1)
