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


# --------------------------------------------------------------------------------------------------
# word level


def test_word_tokenizer_splits_like_the_task_tokenizer_and_keeps_offsets(tmp_path):
    from sru_lm.data.tokenizer import UNK, train_word_tokenizer
    from sru_lm.tasks.text import tokenize

    text = "Zoë's  café\u00a0— 1,000 ice-free days! Zoë"
    tok = train_word_tokenizer([text, "ice days ice"], 100, min_frequency=1)
    save_tokenizer(tok, tmp_path / "w")
    tok = AutoTokenizer.from_pretrained(tmp_path / "w")
    words, offsets = tokenize(text)
    enc = tok(text, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [w.lower() for w in words]
    assert [tuple(o) for o in enc["offset_mapping"]] == offsets
    assert tok.decode(enc["input_ids"]) == " ".join(w.lower() for w in words)
    assert tok.convert_tokens_to_ids([ENDOFTEXT, UNK]) == [0, 1]
    assert tok.pad_token_id == tok.eos_token_id == 0 and tok.unk_token == UNK
    assert tok("an unseen word")["input_ids"] == [1, 1, 1]


def test_word_tokenizer_orders_by_frequency_then_extra_words():
    from sru_lm.data.tokenizer import train_word_tokenizer

    tok = train_word_tokenizer(["b a b c b a"], 2, min_frequency=1, extra_words=["Z", "a", "y"])
    vocab = tok.get_vocab()
    assert sorted(vocab, key=vocab.get) == [ENDOFTEXT, "<unk>", "b", "a", "z", "y"]  # max_words cuts c
    assert tok("c")["input_ids"] == [1]
    # min_frequency drops a word seen once
    assert "c" not in train_word_tokenizer(["b a b c b a"], 10, min_frequency=2).get_vocab()
    with pytest.raises(ValueError, match="max_words"):
        train_word_tokenizer(["a"], 0)
