"""The Slow model: bidirectional captioning over fine-grained visual tokens.

Visual side (`encode_visual`, query-independent, cacheable): *progressive feature
upsampling*. The coarsest feature level is embedded and mixed by a transformer over
the tokens of all frames (spatial + temporal embeddings, padding frames masked); the
result is upsampled to the next finer level's grid, merged with a lateral projection
of that level and refined by a convolutional block, and so on down to `finest_level`.
The memory is the token grid of every frame, (B, T*H*W, width) with its mask.

Text side (`score`): a left-to-right and a right-to-left decoder cross-attend to the
memory and are trained with teacher-forced cross-entropy. The retrieval score of a
(text, item) pair is the caption's mean per-token log-likelihood, averaged over both
directions; with an image-text matching head (`itm=True`) the matching logit, read from
the left-to-right decoder's state at `[EOS]` (no extra pass), is added with weight
`itm_weight`. Mean rather than sum: for one query every item sees the same tokens, so
text-to-visual ranking is identical either way, and the mean keeps scores of queries of
different lengths on one scale for blending with the Fast score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastslow_cli.models.layers import Block, VisualInput, check_levels, masked_mean
from fastslow_cli.text import PAD_ID, reverse_tokens

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SlowConfig:
    """Architecture of the Slow model; `level_shapes` are the feature set's (H, W, C), finest first.

    `finest_level` is the index (0 = finest) of the level whose grid the decoders attend
    to; levels between it and the coarsest are merged on the way up.
    """

    level_shapes: list[list[int]] = field(default_factory=list)
    vocab_size: int = 0
    max_len: int = 32
    max_frames: int = 16
    width: int = 128
    heads: int = 4
    finest_level: int = 1
    coarse_layers: int = 2
    refine_layers: int = 1
    decoder_layers: int = 2
    dropout: float = 0.1
    itm: bool = True
    itc: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


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
        if not 0 <= config.finest_level < n:
            raise ValueError(f"finest_level {config.finest_level} is not one of the {n} feature levels")
        w = config.width
        self.used = list(range(n - 1, config.finest_level - 1, -1))  # coarsest first
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
        self.itm_head = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, 1)) if config.itm else None
        # Weight of the matching logit in the score; chosen on validation data by training,
        # kept in the state dict so a checkpoint scores exactly as the selected epoch did.
        self.register_buffer("itm_weight", torch.tensor(1.0 if config.itm else 0.0))
        if config.itc:  # training aid only: a bag-of-words contrastive view of memory and text
            self.itc_visual = nn.Linear(w, w)
            self.itc_text = nn.Linear(w, w)
            self.itc_scale = nn.Parameter(torch.tensor(2.66))

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

    def contrastive_loss(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE between mean-pooled memory and mean word embeddings of aligned (item i, text i).

        An auxiliary loss (ALBEF's ITC): it teaches the visual encoder, from the first steps,
        to expose what the words name, which shortens the plateau where the decoders only
        model the language. Not part of the retrieval score.
        """
        v = F.normalize(self.itc_visual(masked_mean(memory, memory_mask)), dim=-1)
        t = F.normalize(self.itc_text(masked_mean(self.tok_emb(token_ids), mask.to(torch.bool))), dim=-1)
        logits = self.itc_scale.clamp(max=4.6).exp() * t @ v.T
        labels = torch.arange(len(t), device=t.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

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

    def _token_logprobs(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(token t+1 | tokens <= t) at each position (B, L-1); 0 at padding."""
        logits = hidden[:, :-1] @ self.tok_emb.weight.T + self.lm_bias
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return lp * mask[:, 1:]

    def forward_pairs(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        kvs: list[list[KV]],
        memory_mask: torch.Tensor,
        directions: Sequence[int] = (0, 1),
        group: int = 1,
        input_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-pair outputs for aligned (text i, item i): token log-probs per direction and the ITM logit.

        `group` > 1: `kvs`/`memory_mask` hold B / group items, item i paired with texts
        i*group .. (i+1)*group-1 (see `Attention.attend`). `input_ids`: what the decoders
        read when it differs from the tokens they must predict (training with word dropout).
        """
        n = self.config.max_len
        ids, mask = token_ids[:, :n], mask[:, :n].to(torch.bool)
        seen = ids if input_ids is None else input_ids[:, :n]
        out: dict[str, torch.Tensor] = {}
        for d in directions:
            d_ids = ids if d == 0 else reverse_tokens(ids, mask)
            d_seen = seen if d == 0 else reverse_tokens(seen, mask)
            hidden = self._decode(d, d_seen, mask, kvs[d], memory_mask, group)
            out[f"logp{d}"] = self._token_logprobs(hidden, d_ids, mask)
            if d == 0 and self.itm_head is not None:
                last = mask.sum(1) - 1  # position of [EOS] (or the last kept token)
                state = hidden[torch.arange(len(ids), device=ids.device), last]
                out["itm"] = self.itm_head(state).squeeze(-1)
        return out

    def components(self, parts: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The score's terms from `forward_pairs` outputs: `ll` (mean log-likelihood over both
        directions) and, with a matching head, `itm` (its logit)."""
        n = mask[:, 1 : self.config.max_len].sum(1).clamp_min(1)
        out = {"ll": (parts["logp0"].sum(1) + parts["logp1"].sum(1)) / (2 * n)}
        if "itm" in parts:
            out["itm"] = parts["itm"]
        return out

    def blend(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retrieval score: `ll + itm_weight * itm` (see the module docstring)."""
        score = components["ll"]
        if "itm" in components:
            score = score + self.itm_weight * components["itm"]
        return score

    def score(
        self, token_ids: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B,) of B aligned (text, item) pairs: text i with memory row i."""
        kvs = self.memory_kv(memory)
        return self.blend(self.components(self.forward_pairs(token_ids, mask, kvs, memory_mask), mask))

    def score_matrix(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pair_batch: int = 2048,
        item_chunk: int = 64,
    ) -> torch.Tensor:
        """Scores (Q, K) of Q texts against K items' memories: Q*K decoder passes, no visual encoding."""
        return self.blend(self.component_matrices(token_ids, mask, memory, memory_mask, pair_batch, item_chunk))

    @torch.inference_mode()
    def component_matrices(
        self,
        token_ids: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pair_batch: int = 2048,
        item_chunk: int = 64,
    ) -> dict[str, torch.Tensor]:
        """`components` for every (text, item) pair, each (Q, K).

        Items are taken `item_chunk` at a time: their keys/values are projected once and
        shared by all the queries scored against them (`group` in `forward_pairs`).
        """
        q_count, k_count = token_ids.shape[0], memory.shape[0]
        names = ["ll", "itm"] if self.itm_head is not None else ["ll"]
        out = {k: torch.empty(q_count, k_count, device=token_ids.device) for k in names}
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
                parts = self.forward_pairs(ids[qi], mask[qi], kvs, mem_mask, group=len(qs))
                for name, value in self.components(parts, mask[qi]).items():
                    out[name][qs[0] : qs[-1] + 1, k0 : k0 + kc] = value.view(kc, len(qs)).T.float()
        return out


def trim_memory(memory: torch.Tensor, memory_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing memory positions that are padding in every row (exact: they are masked anyway)."""
    valid = memory_mask.any(0).nonzero()
    end = int(valid.max()) + 1 if len(valid) else 1
    return memory[:, :end], memory_mask[:, :end]
