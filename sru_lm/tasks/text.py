"""Word-level text handling for the task models: a tokenizer that keeps character offsets, and a vocabulary.

The task baselines (SRU/LSTM/CNN classifiers, the DrQA-style reader) read words, as in the SRU paper,
not the LM's subwords. Every token keeps its ``(start, end)`` character offsets into the original string,
so a predicted token span maps back to the exact substring of the context (unicode, repeated spaces and
all): ``text[offsets[i][0]:offsets[j][1]]`` (:func:`sru_lm.data.squad.span_text`).

Why not :func:`sru_lm.data.squad.word_tokenize`: it keeps ``France's`` and ``ice-free`` as one word, so
an answer inside such a word ("France") can only be predicted with its suffix. Splitting apostrophes
and hyphens, as CoreNLP does for DrQA, makes the first gold answer an exact token span for 99.7% of
SQuAD v1.1 dev questions (10,534 of 10,565) against 98.7% (10,425), and 99.8% against 98.2% on
SQuADShifts: about one EM point of ceiling.

Example:
    >>> toks, offs = tokenize("Café  au-lait, 1,000 €!")
    >>> toks, offs[:2]
    (['Café', 'au', '-', 'lait', ',', '1,000', '€', '!'], [(0, 4), (6, 8)])
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..data.tokenizer import WORD_PATTERN

# A number with inner separators ("1,000", "3.5"), a run of word characters, or one other non-space
# character. Hyphens and apostrophes split words ("France's" -> "France", "'", "s") so that an answer
# inside such a word ("France") is a whole-token span. \w is unicode-aware: "plaît" is one token.
_TOKEN = re.compile(WORD_PATTERN)

PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split ``text`` into tokens; return the tokens and their ``(start, end)`` character offsets."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokens, offsets = [], []
    for m in _TOKEN.finditer(text):
        tokens.append(m.group())
        offsets.append(m.span())
    return tokens, offsets


def normalize(token: str) -> str:
    """The form looked up in the vocabulary: lower case (GloVe 6B is uncased)."""
    return token.lower()


class Vocab:
    """A word list with ``<pad>`` = 0 and ``<unk>`` = 1; words are looked up after :func:`normalize`.

    Build with :meth:`build` from token lists; the order is the given ``first`` words (e.g. the most
    frequent question words, the ones a reader fine-tunes), then the rest by frequency.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self.itos = [PAD, UNK]
        seen = set(self.itos)
        for w in words:
            if w not in seen:
                seen.add(w)
                self.itos.append(w)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad_id, unk_id = 0, 1

    @classmethod
    def build(
        cls,
        token_lists: Iterable[list[str]],
        min_count: int = 1,
        max_size: int | None = None,
        first: Iterable[str] = (),
        extra: Iterable[str] = (),
    ) -> Vocab:
        """Words seen at least ``min_count`` times (at most ``max_size`` of them), plus ``extra`` words
        (e.g. evaluation words that have pretrained vectors), after the ``first`` words."""
        counts = Counter(normalize(t) for toks in token_lists for t in toks)
        kept = [w for w, n in counts.most_common(max_size) if n >= min_count]
        return cls([*first, *kept, *(normalize(w) for w in extra)])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return normalize(word) in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(normalize(t), self.unk_id) for t in tokens]

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> Vocab:
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"a saved vocabulary must start with {[PAD, UNK]}, got {itos[:2]}")
        return cls(itos[2:])
