"""Pretrained Hugging Face models as Fast and Slow retrievers: zero-shot search with weights.

- `load_clip`: a `transformers` CLIPModel as the Fast model. Text: the EOS-token
  embedding through `text_projection`; items: each frame through the vision tower and
  `visual_projection`, unit-normalised, averaged over the item's frames and normalised
  again (mean pooling of frames, as CLIP4Clip does for video).
- `load_blip`: a `BlipForImageTextRetrieval` as the Slow model. Memory of an item: the
  vision tower's final hidden states (CLS + patch tokens, after its last layer norm), the
  frames' tokens concatenated into one sequence (how BLIP's paper scores video zero-shot).
  Score: the log-odds of "match" from the ITM head, `logit[match] - logit[no match]`,
  the text cross-attending to those tokens. The ITC similarity is not blended in: the Fast
  model already gives a global similarity, and `search --alpha` blends Fast with Slow.
  Memories of equal length are scored together, never padded: in transformers 5.x
  `BlipTextAttention` does not pass the cross-attention mask on, so padded image
  tokens would be attended to. As in BLIP's own ITM code (unlike transformers' forward,
  see transformers #25629), the first text token becomes `[ENC]` when the tokenizer has it.

Where the pixels come from (a decision): the adapters decode the media files again,
from the paths the feature store recorded, at the model's own input size (frames
squashed to a square with nothing cropped, as `extract` does; the image processor's
rescale/mean/std), and run their own vision tower. They do not read the stored
feature pyramid, because:
- CLIP's embedding needs the final CLS token and BLIP's ITM head every final token at
  the model's resolution; a pyramid (intermediate layers, CLS dropped, pooled) holds
  neither, and a non-grid token level in the store would be misread by the native
  models' pyramid code;
- one feature set holds one backbone, but CLIP (Fast) and BLIP (Slow) are two vision
  towers: re-decoding lets one index pair them, over any feature set.
So: any feature set will do (the default `pixels` one is the cheapest to extract), but
the media files must still be at their stored paths when the index is built (and for
`eval`); a missing or unreadable file is a one-line FastslowError. Videos: each file is
decoded once per call with PyAV in this process (it raises on bad data where decord can
crash the process), sampling as many frames as the item's stored timestamps, which
reproduces `extract`'s uniform sampling; each stored timestamp takes the nearest
decoded frame. The Slow memory is large (BLIP base at 384 px: 577 x 768 float16 per
frame, about 0.9 MB): budget the index's `slow_memory` file accordingly.

Identity: `content_hash` is a sha256 over every tensor of the model (names, shapes,
bytes), the same for any file format; `fingerprint` is None, since no feature set is
required.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastslow_cli.errors import FastslowError, one_line
from fastslow_cli.models.hf_common import preprocessing, quiet_transformers, weights_sha256
from fastslow_cli.media.discover import media_kind
from fastslow_cli.models.names import resolve_model
from fastslow_cli.media.decode import MediaError, decode_image, decode_video_av
from fastslow_cli.runtime import resolve_device
from fastslow_cli.store.parquet import FeatureTable

FRAME_BATCH = 16  # frames per vision-tower pass: bounds memory whatever batch_size says
PAIR_TOKENS = 16384  # memory tokens per ITM pass (pairs x memory length): bounds memory
FRAME_CACHE = 1 << 15  # video frame embeddings kept between calls (an index chunk's worth)
ENC_TOKEN = "[ENC]"


# ----------------------------------------------------------------------------- loading


def _fix(what: str) -> str:
    return f"pass a folder holding a transformers {what} (config.json, weights, tokenizer) or a hub id"


class _Loaded:
    """What both adapters share: model, tokenizer, preprocessing, device, identity."""

    def __init__(self, path: str | Path, device: str | None, model_type: str, class_name: str, kind: str) -> None:
        import transformers

        ref = resolve_model(str(path), what=class_name, fix=_fix(class_name))
        source, local = ref.path_or_id, ref.kind == "local"
        fix = _fix(class_name)
        self.device = resolve_device(device)
        with quiet_transformers(transformers):
            try:
                config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
            except Exception as exc:  # transformers raises many types for a bad folder or id
                raise FastslowError(f"cannot load {class_name} {path}: {one_line(exc)}; {fix}") from exc
            if config.model_type != model_type:
                raise FastslowError(
                    f"{path} holds a '{config.model_type}' model, not {class_name}: {fix}"
                )
            try:
                model = getattr(transformers, class_name).from_pretrained(
                    source, dtype=torch.float32, local_files_only=local
                )
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
            except Exception as exc:
                raise FastslowError(f"cannot load {class_name} {path}: {one_line(exc)}; {fix}") from exc
            try:
                processor = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=local)
            except Exception:  # no processor saved: the config and defaults decide
                processor = None
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # batches need padding; the mask hides it
        self.model = model.to(self.device).eval()
        prep = preprocessing(processor, config.vision_config, None)
        self.size: int = prep["input_size"]
        self._scale = prep["rescale"]
        self._mean = torch.tensor(prep["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(prep["std"], device=self.device).view(1, 3, 1, 1)
        limits = [config.text_config.max_position_embeddings, getattr(self.tokenizer, "model_max_length", None)]
        self.max_len = int(min(v for v in limits if isinstance(v, int) and v > 0))
        self.identity: dict[str, Any] = {
            "name": Path(source).name if local else source,
            "path": source,
            "kind": kind,
            "hf": True,
            "architecture": class_name,
            "content_hash": weights_sha256(self.model),
            "fingerprint": None,
            "input_size": self.size,
            "visual_input": "media files, decoded again at index time",
        }

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and attention mask (B, L), truncated to the model's length; any text encodes."""
        clean = [t if isinstance(t, str) else str(t) for t in texts]
        enc = self.tokenizer(clean, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S, 3) -> normalised float (N, 3, S, S) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float()
        return (x * self._scale - self._mean) / self._std


# ----------------------------------------------------------------------------- pixels


def _media_failure(path: str, reason: str) -> FastslowError:
    return FastslowError(
        f"cannot read {path} ({reason}): the Hugging Face adapters decode media files again, "
        "so keep them where `fastslow extract` found them, or re-extract and rebuild the index"
    )


def _nearest(decoded: Sequence[float], wanted: Sequence[float]) -> list[int]:
    """Index of the decoded timestamp nearest to each wanted one."""
    times = np.asarray(decoded, dtype=np.float64)
    return [int(np.abs(times - t).argmin()) for t in wanted]


def row_stamps(table: FeatureTable, i: int) -> list[float]:
    """The stored timestamps of row `i` (one per stored frame)."""
    return [float(t) for t in table.timestamps[i][: max(int(table.frames[i]), 1)]] or [0.0]


def row_frames(table: FeatureTable, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(row, uint8 frames (T, size, size, 3)), one frame per stored timestamp, grouped by file.

    Each distinct file is decoded once per call. For a video, the frame count asked for
    is the number of distinct stored timestamps over all its rows (so an item row and the
    per-frame rows an index makes both get `extract`'s uniform sampling); each stored
    timestamp then takes the nearest decoded frame.
    """
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(table.paths):
        groups.setdefault(path, []).append(i)
    for path, rows in groups.items():
        stamps = {i: row_stamps(table, i) for i in rows}
        try:
            if media_kind(path) == "image":
                decoded = decode_image(Path(path), size)
            elif media_kind(path) == "video":
                distinct = {round(t, 6) for ts in stamps.values() for t in ts}
                decoded = decode_video_av(Path(path), size, len(distinct))
            else:
                raise _media_failure(path, "not an image or video extension")
        except MediaError as exc:
            raise _media_failure(path, str(exc)) from exc
        for i in rows:
            yield i, decoded.frames[_nearest(decoded.timestamps, stamps[i])]


def _per_row(table: FeatureTable, size: int, batch_size: int,
             tower: Callable[[np.ndarray], torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    """(row, tower output for each of its frames), running the tower on batches of frames."""
    limit = max(1, min(batch_size, FRAME_BATCH))
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, torch.Tensor]]:
        out = tower(np.concatenate([f for _, f in pending]))
        start = 0
        for row, frames in pending:
            yield row, out[start:start + len(frames)]
            start += len(frames)
        pending.clear()

    for row, frames in row_frames(table, size):
        pending.append((row, frames))
        if sum(len(f) for _, f in pending) >= limit:
            yield from flush()
    if pending:
        yield from flush()


# ----------------------------------------------------------------------------- CLIP


class ClipFast:
    """A CLIPModel as a `FastRetriever`: projected, unit-normalised text and frame embeddings."""

    kind = "fast"

    def __init__(self, loaded: _Loaded) -> None:
        self._hf = loaded
        self.model = loaded.model
        self.identity = loaded.identity
        self.dim = int(self.model.config.projection_dim)
        self._cache: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()
        text = self.model.config.text_config
        self._eos = None if text.eos_token_id == 2 else text.eos_token_id  # 2: legacy argmax pooling
        if self._eos is not None:
            ids, _ = loaded.tokenize(["a"])
            if self._eos not in ids[0].tolist():
                raise FastslowError(
                    f"the tokenizer of {self.identity['path']} does not end texts with the model's EOS token "
                    f"(id {self._eos}): use the tokenizer the CLIP model was saved with"
                )

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self._hf.tokenize(texts)
        out = self.model.get_text_features(input_ids=ids, attention_mask=mask)
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(emb.float(), dim=-1).cpu().numpy()

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self._hf.pixels(frames))
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def encode_items(self, table: FeatureTable, batch_size: int = 256) -> np.ndarray:
        """Item vectors; video frame embeddings are remembered by (path, timestamp), so the
        per-frame rows an index asks for next cost no second decode or vision pass."""
        out = np.zeros((len(table.ids), self.dim), dtype=np.float32)
        todo = []
        for i, path in enumerate(table.paths):
            cached = [self._cache.get((path, t)) for t in row_stamps(table, i)]
            if all(c is not None for c in cached):
                out[i] = _unit_mean(np.stack(cached))
            else:
                todo.append(i)
        if todo:
            for row, frames in _per_row(table.subset(todo), self._hf.size, batch_size, self._frames):
                i, emb = todo[row], frames.cpu().numpy()
                out[i] = _unit_mean(emb)
                if media_kind(table.paths[i]) == "video":
                    for t, e in zip(row_stamps(table, i), emb):
                        self._cache[(table.paths[i], t)] = e
                        self._cache.move_to_end((table.paths[i], t))
        while len(self._cache) > FRAME_CACHE:
            self._cache.popitem(last=False)
        return out


def _unit_mean(frames: np.ndarray) -> np.ndarray:
    """Mean of unit frame embeddings, normalised again (CLIP4Clip-style mean pooling)."""
    mean = frames.astype(np.float64).mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def load_clip(path: str | Path, device: str | None = None) -> ClipFast:
    """A Hugging Face CLIPModel (local folder or hub id) as the Fast model."""
    return ClipFast(_Loaded(path, device, "clip", "CLIPModel", "fast"))


# ----------------------------------------------------------------------------- BLIP


class BlipSlow:
    """A BlipForImageTextRetrieval as a `SlowRetriever`: ITM log-odds over cached image tokens."""

    kind = "slow"

    def __init__(self, loaded: _Loaded) -> None:
        self._hf = loaded
        self.model = loaded.model
        self.identity = loaded.identity
        self.width = int(self.model.config.vision_config.hidden_size)
        enc = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
        unk = loaded.tokenizer.unk_token_id
        self._enc_id = enc if isinstance(enc, int) and enc != unk else None

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        return self.model.vision_model(pixel_values=self._hf.pixels(frames)).last_hidden_state

    @torch.inference_mode()
    def encode_items(self, table: FeatureTable, batch_size: int = 64) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.empty((0, self.width), np.float16)] * len(table.ids)
        for row, tokens in _per_row(table, self._hf.size, batch_size, self._frames):
            out[row] = tokens.reshape(-1, self.width).to(torch.float16).cpu().numpy()
        return out

    @torch.inference_mode()
    def score(self, texts: Sequence[str], memories: Sequence[np.ndarray]) -> np.ndarray:
        q, k = len(texts), len(memories)
        if not q or not k:
            return np.zeros((q, k), dtype=np.float32)
        ids, mask = self._hf.tokenize(texts)
        if self._enc_id is not None:
            ids[:, 0] = self._enc_id
        by_length: dict[int, list[int]] = {}
        for j, m in enumerate(memories):
            by_length.setdefault(int(m.shape[0]), []).append(j)
        scores = np.zeros((q, k), dtype=np.float32)
        for length, group in by_length.items():
            per_pass = max(1, PAIR_TOKENS // max(length, 1))  # (text, memory) pairs per ITM pass
            step_k = min(len(group), per_pass)
            step_q = max(1, per_pass // step_k)
            for ks in range(0, len(group), step_k):
                cols = group[ks:ks + step_k]
                memory = torch.from_numpy(np.stack([np.asarray(memories[j], np.float32) for j in cols]))
                memory = memory.to(self._hf.device)
                for qs in range(0, q, step_q):
                    m = len(ids[qs:qs + step_q])
                    hidden = self.model.text_encoder(
                        input_ids=ids[qs:qs + step_q].repeat_interleave(len(cols), dim=0),
                        attention_mask=mask[qs:qs + step_q].repeat_interleave(len(cols), dim=0),
                        encoder_hidden_states=memory.repeat(m, 1, 1),
                    ).last_hidden_state
                    logits = self.model.itm_head(hidden[:, 0, :]).float()
                    scores[qs:qs + m, cols] = (logits[:, 1] - logits[:, 0]).reshape(m, len(cols)).cpu().numpy()
        return scores

    @torch.inference_mode()
    def heatmap(self, text: str, memory: np.ndarray, timestamps: Sequence[float]) -> Any:
        """The ITM text encoder's cross-attention over the image patches (not Grad-CAM:
        no backward pass, and the same forward as `score`), per word piece, averaged over
        heads and layers; each frame's CLS token is left out of the grid."""
        from fastslow_cli.search.heatmap import HeatMap, normalise

        vision = self.model.config.vision_config
        g = int(vision.image_size) // int(vision.patch_size)  # patches per side
        frame_tokens = 1 + g * g  # CLS + patches
        frames = memory.shape[0] // frame_tokens
        if frames * frame_tokens != memory.shape[0]:
            raise ValueError(f"memory has {memory.shape[0]} rows, not a whole number of {frame_tokens}-token frames")
        ids, mask = self._hf.tokenize([text])
        if self._enc_id is not None:
            ids[:, 0] = self._enc_id
        out = self.model.text_encoder(
            input_ids=ids, attention_mask=mask,
            encoder_hidden_states=torch.from_numpy(np.asarray(memory, np.float32))[None].to(self._hf.device),
            output_attentions=True,
        )
        cross = getattr(out, "cross_attentions", None)
        if not cross or any(c is None for c in cross):
            raise FastslowError(f"{self.identity['path']}: this transformers version gives no BLIP cross-attention weights")
        attn = torch.stack(cross).float().mean(dim=(0, 2))[0]  # (text, memory): mean over layers and heads
        n = int(mask[0].sum())
        rows = attn[1 : n - 1].cpu().numpy()  # the word pieces: not [ENC]/[CLS] nor [SEP]
        raw = rows.reshape(len(rows), frames, frame_tokens)[:, :, 1:].reshape(len(rows), frames, g, g).transpose(1, 0, 2, 3)
        tokens = self._hf.tokenizer.convert_ids_to_tokens(ids[0, 1 : n - 1].tolist())
        return HeatMap(tokens=tokens, maps=normalise(raw), query_map=normalise(raw.mean(axis=1)),
                       timestamps=[float(t) for t in timestamps[:frames]])


def load_blip(path: str | Path, device: str | None = None) -> BlipSlow:
    """A Hugging Face BlipForImageTextRetrieval (local folder or hub id) as the Slow model."""
    return BlipSlow(_Loaded(path, device, "blip", "BlipForImageTextRetrieval", "slow"))
