"""The Slow model: bidirectional captioning over fine-grained visual tokens.

Visual side (`encode_visual`, query-independent, cacheable): *progressive feature
upsampling*. The coarsest feature level is embedded and mixed by a transformer over
the tokens of all frames (spatial + temporal embeddings, padding frames masked); the
result is upsampled to the next finer level's grid, merged with a lateral projection
of that level and refined by a convolutional block, and so on down to `finest_level`.
The memory is the token grid of every frame, (B, T*H*W, width) with its mask.

Text side (`score`): a left-to-right and a right-to-left decoder cross-attend to the
memory and are trained with teacher-forced cross-entropy. The retrieval score of a
(text, item) pair is the caption's log-likelihood per token, averaged over the two
directions. Per token rather than summed: for one query every item sees the same
tokens, so text-to-visual ranking is identical either way, and the mean keeps scores of
queries of different lengths on one scale (about -0.1 for a caption the model finds
certain, -3 for a poor match) for blending with the Fast score. Subtracting the
caption's likelihood without the item would not change text-to-visual ranking either,
so it is not done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastslow_cli.models.layers import Block, VisualInput, check_levels
from fastslow_cli.text.tokenizer import PAD_ID, reverse_tokens

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SlowConfig:
    """Architecture of the Slow model; `level_shapes` are the feature set's (H, W, C), finest first.

    `finest_level` is the index (0 = finest) of the level whose grid the decoders attend
    to; levels between it and the coarsest are merged on the way up. Left as None, it is
    the finest level with at most `max_grid_tokens` tokens per frame (see
    `resolve_finest_level`).
    """

    level_shapes: list[list[int]] = field(default_factory=list)
    vocab_size: int = 0
    max_len: int = 32
    max_frames: int = 16
    width: int = 128
    heads: int = 4
    finest_level: int | None = None
    max_grid_tokens: int = 64
    coarse_layers: int = 2
    refine_layers: int = 1
    decoder_layers: int = 2
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve_finest_level(self) -> int:
        """`finest_level`, or the finest level whose grid has <= `max_grid_tokens` tokens
        (the coarsest if none has): the decoders' cost grows with the grid."""
        if self.finest_level is not None:
            return self.finest_level
        n = len(self.level_shapes)
        fits = [i for i, (h, w, _) in enumerate(self.level_shapes) if h * w <= self.max_grid_tokens]
        return min(fits) if fits else n - 1


class Refine(nn.Module):
    """ConvNeXt-style block on one frame's grid: local mixing after upsampling + lateral merge."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, H, W, width)."""
        y = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(y))


class PyramidEncoder(nn.Module):
    """Coarse-to-fine visual tokens: transformer on the coarsest level, then upsample + lateral + refine."""

    def __init__(self, config: SlowConfig) -> None:
        super().__init__()
        n = len(config.level_shapes)
        finest = config.resolve_finest_level()
        if not 0 <= finest < n:
            raise ValueError(f"finest_level {finest} is not one of the {n} feature levels")
        w = config.width
        self.used = list(range(n - 1, finest - 1, -1))  # coarsest first
        self.shapes = [tuple(config.level_shapes[i]) for i in self.used]
        self.inputs = nn.ModuleList(VisualInput(s, w, config.max_frames) for s in self.shapes)
        self.coarse = nn.ModuleList(Block(w, config.heads, config.dropout) for _ in range(config.coarse_layers))
        self.refine = nn.ModuleList(
            nn.Sequential(*(Refine(w) for _ in range(config.refine_layers))) for _ in self.used[1:]
        )
        self.norm = nn.LayerNorm(w)

    def forward(self, levels: Sequence[torch.Tensor], frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[0](levels[self.used[0]])  # (B, T, HW, w)
        b, t, n, w = x.shape
        mask = frame_mask.to(torch.bool)
        flat = x.reshape(b, t * n, w)
        token_mask = mask.repeat_interleave(n, dim=1)
        for block in self.coarse:
            flat = block(flat, token_mask)
        h, wd = self.shapes[0][:2]
        x = flat.reshape(b * t, h, wd, w)
        for step, level_index in enumerate(self.used[1:], start=1):
            h, wd = self.shapes[step][:2]
            up = F.interpolate(x.permute(0, 3, 1, 2), size=(h, wd), mode="bilinear", align_corners=False)
            lateral = self.inputs[step](levels[level_index]).reshape(b * t, h, wd, w)
            x = self.refine[step - 1](up.permute(0, 2, 3, 1) + lateral)
        memory = self.norm(x).reshape(b, t * h * wd, w)
        return memory, mask.repeat_interleave(h * wd, dim=1)


class SlowModel(nn.Module):
    """Cross-attention scorer: `encode_visual` once per item, then `score` any (text, item) pairs."""

    kind = "slow"

    def __init__(self, config: SlowConfig) -> None:
        super().__init__()
        if not config.level_shapes or config.vocab_size <= 0:
            raise ValueError("SlowConfig needs level_shapes and vocab_size")
        self.config = config
        w = config.width
        self.visual = PyramidEncoder(config)
        self.tok_emb = nn.Embedding(config.vocab_size, w, padding_idx=PAD_ID)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.pos_emb = nn.Parameter(torch.randn(2, config.max_len, w) * 0.02)  # one table per direction
        self.emb_norm = nn.LayerNorm(w)
        self.decoders = nn.ModuleList(
            nn.ModuleList(Block(w, config.heads, config.dropout, cross=True) for _ in range(config.decoder_layers))
            for _ in range(2)
        )
        self.dec_norms = nn.ModuleList(nn.LayerNorm(w) for _ in range(2))
        self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))

    # ----- visual side -------------------------------------------------------------------
    def encode_visual(
        self, levels: Sequence[torch.Tensor], frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels (B, T, H, W, C) finest first + frame mask (B, T) -> memory (B, L, width) and mask (B, L).

        L = T * H * W of `finest_level`, frame-major, so a padding frame only adds masked
        tokens at the end; memory rows can be stored per item and trimmed to their mask.
        """
        check_levels(levels, frame_mask, self.config.level_shapes, self.config.max_frames)
        return self.visual(levels, frame_mask)

    def memory_kv(self, memory: torch.Tensor) -> list[list[KV]]:
        """Cross-attention keys/values per direction and layer: computed once per item, reused per query."""
        return [[blk.cross.project_kv(memory) for blk in dec] for dec in self.decoders]

    # ----- text side ---------------------------------------------------------------------
    def _decode(
        self,
        direction: int,
        ids: torch.Tensor,
        mask: torch.Tensor,
        kvs: list[KV],
        memory_mask: torch.Tensor,
        group: int = 1,
    ) -> torch.Tensor:
        x = self.emb_norm(self.tok_emb(ids) + self.pos_emb[direction, : ids.shape[1]])
        for blk, kv in zip(self.decoders[direction], kvs):
            x = blk(x, mask, causal=True, memory_kv=kv, memory_mask=memory_mask, group=group)
        return self.dec_norms[direction](x)

    @torch.inference_mode()
    def cross_attention(
        self, token_ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cross-attention probabilities (2, layers, B, heads, L, M) of both decoders over the
        memory, for heat maps. Direction 1 (right-to-left) is given back in the caption's
        order: row i is the position that *reads* token i, in either direction (the
        right-to-left decoder reads the words reversed). Scores are not affected: this is
        a separate pass.
        """
        n = self.config.max_len
        ids, mask = token_ids[:, :n], mask[:, :n].to(torch.bool)
        kvs = self.memory_kv(memory)
        out = []
        for d, d_ids in enumerate((ids, reverse_tokens(ids, mask))):
            x = self.emb_norm(self.tok_emb(d_ids) + self.pos_emb[d, : d_ids.shape[1]])
            layers = []
            for blk, kv in zip(self.decoders[d], kvs[d]):
                x, probs = blk.forward_with_attention(x, mask, True, kv, memory_mask, weights=True)
                layers.append(probs)
            out.append(torch.stack(layers))
        l2r, r2l = out
        return torch.stack([l2r, _reverse_rows(r2l, mask)])

    def _token_logprobs(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(token t+1 | tokens <= t) at each position (B, L-1); 0 at padding."""
        logits = hidden[:, :-1] @ self.tok_emb.weight.T + self.lm_bias
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return lp * mask[:, 1:]

    def log_probs(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        kvs: list[list[KV]],
        memory_mask: torch.Tensor,
        group: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probabilities (B, L-1) of each caption token, left-to-right and
        right-to-left (0 at padding), for aligned (text i, item i).

        `group` > 1: `kvs`/`memory_mask` hold B / group items, item i paired with texts
        i*group .. (i+1)*group-1 (see `Attention.attend`).
        """
        n = self.config.max_len
        ids, mask = token_ids[:, :n], mask[:, :n].to(torch.bool)
        out = []
        for d, d_ids in enumerate((ids, reverse_tokens(ids, mask))):
            hidden = self._decode(d, d_ids, mask, kvs[d], memory_mask, group)
            out.append(self._token_logprobs(hidden, d_ids, mask))
        return out[0], out[1]

    def caption_loss(
        self, token_ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Bidirectional captioning loss: mean cross-entropy per token over both decoders."""
        l2r, r2l = self.log_probs(token_ids, mask, self.memory_kv(memory), memory_mask)
        n = mask[:, 1 : self.config.max_len].sum()
        return -(l2r.sum() + r2l.sum()) / (2 * n.clamp_min(1))

    def pair_scores(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        kvs: list[list[KV]],
        memory_mask: torch.Tensor,
        group: int = 1,
    ) -> torch.Tensor:
        """Scores (B,) of aligned pairs from precomputed `memory_kv` (mean log-likelihood per token)."""
        l2r, r2l = self.log_probs(token_ids, mask, kvs, memory_mask, group)
        n = mask[:, 1 : self.config.max_len].sum(1).clamp_min(1)
        return (l2r.sum(1) + r2l.sum(1)) / (2 * n)

    @torch.inference_mode()
    def score_matrix(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pair_batch: int = 2048,
        item_chunk: int = 64,
    ) -> torch.Tensor:
        """Scores (Q, K) of Q texts against K items' memories: Q*K decoder passes, no visual encoding.

        Items are taken `item_chunk` at a time: their keys/values are projected once and
        shared by all the queries scored against them (`group` in `pair_scores`).
        """
        q_count, k_count = token_ids.shape[0], memory.shape[0]
        out = torch.empty(q_count, k_count, device=token_ids.device)
        length = int(mask.sum(1).max()) if q_count else 0
        ids, mask = token_ids[:, :length], mask[:, :length]
        for k0 in range(0, k_count, item_chunk):
            mem, mem_mask = trim_memory(memory[k0 : k0 + item_chunk], memory_mask[k0 : k0 + item_chunk])
            kvs = self.memory_kv(mem.to(self.tok_emb.weight.dtype))
            kc = mem.shape[0]
            per = max(1, pair_batch // kc)  # queries per pass, each against the kc items
            for q0 in range(0, q_count, per):
                qs = torch.arange(q0, min(q0 + per, q_count), device=token_ids.device)
                qi = qs.repeat(kc)  # item-major: item j's texts are rows j*len(qs) ..
                s = self.pair_scores(ids[qi], mask[qi], kvs, mem_mask, group=len(qs))
                out[qs[0] : qs[-1] + 1, k0 : k0 + kc] = s.view(kc, len(qs)).T.float()
        return out


def _reverse_rows(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put the right-to-left decoder's rows (layers, B, heads, L, M) back in caption order:
    the word rows 1..n are reversed, `[BOS]`, `[EOS]` and padding rows stay where they are."""
    out = attn.clone()
    for b, n in enumerate(mask.sum(1).tolist()):
        words = torch.arange(1, n - 1, device=attn.device)
        out[:, b, :, words] = attn[:, b, :, words.flip(0)]
    return out


def trim_memory(memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing memory positions that are padding in every row (exact: they are masked anyway)."""
    valid = memory_mask.any(0).nonzero()
    end = int(valid.max()) + 1 if len(valid) else 1
    return memory[:, :end], memory_mask[:, :end]
