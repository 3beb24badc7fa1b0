"""The text tokenizer shared by the Fast and Slow models.

A word-level vocabulary learnt from the training captions with the Hugging Face
`tokenizers` library and saved as `tokenizer.json` in the model folder. Word level,
not sub-words: captions of a few thousand pairs give a small closed vocabulary, and a
compositional caption ("a red circle left of a blue square") is best read word by word.
Text is NFKC-normalised and lowercased, punctuation is split off, words rarer than
`min_frequency` in training become `[UNK]`, and every sequence is
`[BOS] w1 .. wn [EOS]`, truncated to `max_len` tokens. Any string encodes; nothing
a user types can make it crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordLevelTrainer

from fastslow_cli.atomic import atomic_write_text
from fastslow_cli.errors import FastslowError

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
DEFAULT_MAX_LEN = 32


class TextTokenizer:
    """Turns strings into padded id tensors `[BOS] words [EOS] [PAD]...` with a mask."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        for token, expected in zip(SPECIAL_TOKENS, range(4)):
            if tokenizer.token_to_id(token) != expected:
                raise FastslowError(
                    f"tokenizer has no {token} with id {expected}: retrain the model with fastslow"
                )
        trunc = tokenizer.truncation
        self.max_len = int(trunc["max_length"]) if trunc else DEFAULT_MAX_LEN
        if not trunc:
            self._tok.enable_truncation(self.max_len)
        self._tok.no_padding()  # padding is done per batch in `encode_batch`

    @classmethod
    def train(
        cls, texts: Iterable[str], min_frequency: int = 1, max_len: int = DEFAULT_MAX_LEN
    ) -> TextTokenizer:
        """Learn the vocabulary of `texts` (the training captions)."""
        if max_len < 3:
            raise ValueError("max_len must leave room for [BOS], one word and [EOS]")
        tok = Tokenizer(WordLevel(unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = WordLevelTrainer(min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS)
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = TemplateProcessing(
            single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
            special_tokens=[(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)],
        )
        tok.enable_truncation(max_len)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a `tokenizer.json` written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FastslowError(f"{path} is missing: the model folder is incomplete, retrain it")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise FastslowError(f"{path} is not a valid tokenizer file: retrain the model") from exc
        return cls(tok)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` atomically."""
        atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        """The tokenizer in the Hugging Face `tokenizers` JSON format."""
        return json.dumps(json.loads(self._tok.to_str()), indent=2, ensure_ascii=False)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of one text: `[BOS] w1 .. wn [EOS]`, at most `max_len` of them."""
        return self._tok.encode(_clean(text)).ids

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, L) padded with `PAD_ID` to the longest text, and the mask (B, L) of real tokens."""
        rows = [enc.ids for enc in self._tok.encode_batch([_clean(t) for t in texts])]
        return pad_ids(rows)

    def words(self, text: str) -> list[tuple[str, bool]]:
        """The words of `text` the model reads (up to `max_len` tokens; punctuation and symbols
        left out) and whether each is in the vocabulary: a word that is not reads as `[UNK]`."""
        text = _clean(text)
        enc = self._tok.encode(text)
        out = []
        for token, (start, end), special in zip(enc.ids, enc.offsets, enc.special_tokens_mask):
            word = text[start:end]
            if not special and any(ch.isalnum() for ch in word):
                out.append((word, token != UNK_ID))
        return out

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of one id (`[UNK]` for a word the model does not know)."""
        return self._tok.id_to_token(token_id) or UNK_TOKEN

    def decode(self, ids: Sequence[int]) -> str:
        """Words of `ids` without the special tokens (for messages and tests)."""
        return self._tok.decode(list(ids), skip_special_tokens=True)


def _clean(text: str) -> str:
    """`tokenizers` wants `str`; anything else (None, numbers) becomes its string form."""
    return text if isinstance(text, str) else str(text)


def pad_ids(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id lists into (B, L) ids and a boolean mask; L >= 2 so shapes stay valid."""
    length = max([2, *(len(r) for r in rows)])
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, ids != PAD_ID


def reverse_tokens(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the words of each row, keeping `[BOS]` first, `[EOS]` last and padding in place.

    `[BOS] a b c [EOS] [PAD]` -> `[BOS] c b a [EOS] [PAD]`: the input of the right-to-left
    decoder, which then reads and predicts the caption backwards.
    """
    lengths = mask.sum(dim=1, keepdim=True)  # includes BOS and EOS
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    inner = (pos >= 1) & (pos <= lengths - 2)
    src = torch.where(inner, lengths - 1 - pos, pos)
    return torch.gather(ids, 1, src)
