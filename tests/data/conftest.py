from __future__ import annotations

import pytest

from sru_lm.data.tokenizer import train_tokenizer

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Naïve café owners in São Paulo serve crème brûlée — “quoted” text, 東京 and 🤗 too.\n\n"
    "  Indented line\twith a tab, and   several   spaces.\r\n"
    "Numbers: 1,000 and 2.5 km; emails a@b.c; the end.\n"
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with a 300-token vocabulary, trained in well under a second."""
    return train_tokenizer([TRAIN_TEXT] * 20, vocab_size=300, min_frequency=2, show_progress=False)
