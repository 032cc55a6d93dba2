"""Byte-level BPE: train, save, reload with AutoTokenizer, exact round trips on any unicode."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from sru_lm.data.tokenizer import ENDOFTEXT, save_tokenizer, train_tokenizer

TRICKY = [
    "",
    "plain ascii",
    "  leading and trailing  \n",
    "Zoë Ødegaard\u00a0in São Paulo — “naïve” café's 2.5 km",
    "東京 🤗 👩‍👩‍👧 \u200b zero-width, e\u0301 combining",
    "tabs\tand\r\nwindows\rline ends\n\n\n",
    ENDOFTEXT + " inside text",
]


def test_train_save_autotokenizer_round_trip(tiny_tokenizer, tmp_path):
    save_tokenizer(tiny_tokenizer, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == len(tiny_tokenizer) <= 300
    assert tok.eos_token == tok.bos_token == tok.pad_token == ENDOFTEXT
    assert tok.eos_token_id == tok.convert_tokens_to_ids(ENDOFTEXT) == 0
    for s in TRICKY:
        ids = tok.encode(s)
        assert ids == tiny_tokenizer.encode(s)
        assert tok.decode(ids) == s
        assert tok.unk_token_id is None or tok.unk_token_id not in ids  # byte level: nothing is unknown
    # No special tokens are added implicitly (tokenize_documents places bos/eos itself).
    assert tok("word")["input_ids"] == tok.encode("word", add_special_tokens=False)


def test_merges_are_learned_and_arguments_checked(tiny_tokenizer):
    assert len(tiny_tokenizer.encode("The quick brown fox")) < len(b"The quick brown fox")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)
