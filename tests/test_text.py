"""The word-level tokenizer: vocabulary, special tokens, unknown words, truncation, round trip."""

from __future__ import annotations

import pytest
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.text.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    TextTokenizer,
    pad_ids,
    reverse_tokens,
)

CAPTIONS = ["A red circle, left of a blue square.", "a green cross above a red circle", "a single white diamond"]


@pytest.fixture()
def tok() -> TextTokenizer:
    return TextTokenizer.train(CAPTIONS, max_len=8)


def test_words_are_lowercased_and_punctuation_split(tok: TextTokenizer) -> None:
    ids = tok.encode("A RED circle, left")
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tok.decode(ids) == "a red circle , left"
    assert UNK_ID not in ids


def test_unknown_words_become_unk(tok: TextTokenizer) -> None:
    ids = tok.encode("a zebra on a skateboard")
    assert ids.count(UNK_ID) == 3
    assert tok.encode("élan 🦓")[1:-1] == [UNK_ID, UNK_ID]


def test_words_says_which_words_are_known(tok: TextTokenizer) -> None:
    assert tok.words("A RED zebra!") == [("A", True), ("RED", True), ("zebra", False)]  # punctuation is no word
    # As typed (NFKC reads Ｒｅｄ as red); an emoji is no word; a typed [UNK] is no known word.
    assert tok.words("Ｒｅｄ 狗 🦓 [UNK]") == [("Ｒｅｄ", True), ("狗", False), ("[UNK]", False)]
    assert tok.words("a " * 20) == [("a", True)] * 6  # what the model reads: max_len 8 with [BOS] and [EOS]
    assert tok.words("") == []


def test_empty_and_odd_inputs_never_crash(tok: TextTokenizer) -> None:
    assert tok.encode("") == [BOS_ID, EOS_ID]
    assert tok.encode("   \n\t ") == [BOS_ID, EOS_ID]
    assert tok.encode("!!!")[0] == BOS_ID
    ids, mask = tok.encode_batch(["", "a red circle"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() == 2 and ids[0, 2:].eq(PAD_ID).all()


def test_long_text_is_truncated_to_max_len(tok: TextTokenizer) -> None:
    ids = tok.encode("a red circle " * 100)
    assert len(ids) == 8 and ids[0] == BOS_ID and ids[-1] == EOS_ID
    batch, mask = tok.encode_batch(["a " * 500, "red"])
    assert batch.shape == (2, 8) and mask[1].sum() == 3


def test_min_frequency_sends_rare_words_to_unk() -> None:
    tok = TextTokenizer.train(CAPTIONS, min_frequency=2)
    assert tok.encode("red")[1] != UNK_ID  # seen twice
    assert tok.encode("white")[1] == UNK_ID  # seen once


def test_save_load_round_trip(tok: TextTokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = TextTokenizer.load(path)
    assert again.vocab_size == tok.vocab_size and again.max_len == tok.max_len
    text = ["a red circle left of a purple thing", ""]
    assert torch.equal(again.encode_batch(text)[0], tok.encode_batch(text)[0])


def test_bad_tokenizer_file_is_a_one_line_error(tmp_path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(FastslowError, match="tokenizer.json"):
        TextTokenizer.load(bad)
    with pytest.raises(FastslowError, match="missing"):
        TextTokenizer.load(tmp_path / "nope.json")


def test_reverse_tokens_keeps_bos_eos_and_padding() -> None:
    ids, mask = pad_ids([[BOS_ID, 5, 6, 7, EOS_ID], [BOS_ID, 9, EOS_ID], [BOS_ID, EOS_ID]])
    rev = reverse_tokens(ids, mask)
    assert rev.tolist() == [
        [BOS_ID, 7, 6, 5, EOS_ID],
        [BOS_ID, 9, EOS_ID, PAD_ID, PAD_ID],
        [BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert torch.equal(reverse_tokens(rev, mask), ids)


def test_numpy_batch_is_the_torch_batch_without_torch(tok: TextTokenizer) -> None:
    """The ONNX query path tokenises with `encode_batch_np`: the same ids and mask as `encode_batch`."""
    import numpy as np

    texts = ["", "a red circle", "a zebra left of a blue square " * 5]
    ids, mask = tok.encode_batch_np(texts)
    assert ids.dtype == np.int64 and mask.dtype == np.bool_ and ids.shape == (3, 8)
    t_ids, t_mask = tok.encode_batch(texts)
    assert t_ids.dtype == torch.long and t_mask.dtype == torch.bool
    assert np.array_equal(t_ids.numpy(), ids) and np.array_equal(t_mask.numpy(), mask)
    assert ids[1].tolist()[:6] == tok.encode("a red circle") + [PAD_ID]


def test_the_tokenizer_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; import fastslow_cli.text.tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
