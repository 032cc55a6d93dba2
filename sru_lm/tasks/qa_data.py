"""SQuAD examples -> reader inputs: word ids, exact-match and term-frequency features, answer token spans,
length-bucketed batches.

An example is a mapping with ``id``, ``context``, ``question`` and ``answers = {"text": [...],
"answer_start": [...]}``, the flat form of :mod:`sru_lm.data.squad`. Training uses the first answer
that aligns to tokens; evaluation keeps every gold answer text for EM/F1.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..data.squad import char_to_token_span
from .reader import NUM_FEATURES
from .text import Vocab, tokenize


@dataclass
class QAFeature:
    """One question with its paragraph, ready to batch. ``start``/``end`` are inclusive token positions of
    the training answer (None when no answer aligns or the answer lies past ``max_context_len``)."""

    id: str
    context: str
    offsets: list[tuple[int, int]]
    context_tokens: list[str]
    question_tokens: list[str]
    answers: list[str] = field(default_factory=list)
    start: int | None = None
    end: int | None = None


def exact_match_features(context_tokens: Sequence[str], question_tokens: Sequence[str]) -> torch.Tensor:
    """``(Lc, 3)``: the word occurs in the question as written; lower-cased; its term frequency in the
    paragraph divided by the paragraph length."""
    q_orig, q_lower = set(question_tokens), {t.lower() for t in question_tokens}
    lower = [t.lower() for t in context_tokens]
    tf = Counter(lower)
    n = max(len(context_tokens), 1)
    rows = [(t in q_orig, lw in q_lower, tf[lw] / n) for t, lw in zip(context_tokens, lower, strict=True)]
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), NUM_FEATURES)


def featurize(
    examples: Iterable[Mapping], max_context_len: int | None = None
) -> tuple[list[QAFeature], int]:
    """Tokenize every example (each paragraph once). Returns the features and how many examples had no
    answer that aligns to tokens within ``max_context_len`` (their ``start``/``end`` are None)."""
    cache: dict[str, tuple[list[str], list[tuple[int, int]]]] = {}
    feats, unaligned = [], 0
    for ex in examples:
        ctx = ex["context"]
        if ctx not in cache:
            cache[ctx] = tokenize(ctx)
        toks, offs = cache[ctx]
        q_toks, _ = tokenize(ex["question"])
        answers = ex.get("answers") or {"text": [], "answer_start": []}
        f = QAFeature(str(ex["id"]), ctx, offs, toks, q_toks, answers=list(answers["text"]))
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            span = char_to_token_span(offs, start, start + len(text)) if start >= 0 and text else None
            if span is not None and (max_context_len is None or span[1] < max_context_len):
                f.start, f.end = span
                break
        unaligned += bool(f.answers) and f.start is None
        feats.append(f)
    return feats, unaligned


def build_vocab(
    train: Sequence[QAFeature], tune_top_k: int = 1000, extra_words: Iterable[str] = ()
) -> Vocab:
    """Training words, with the ``tune_top_k`` most frequent question words first (the rows the reader
    fine-tunes), then ``extra_words`` (e.g. evaluation words that have pretrained vectors)."""
    q_counts = Counter(t.lower() for f in train for t in f.question_tokens)
    first = [w for w, _ in q_counts.most_common(tune_top_k)]
    seen: dict[int, list[str]] = {}
    token_lists = [f.question_tokens for f in train]
    for f in train:  # each paragraph once
        seen.setdefault(id(f.context_tokens), f.context_tokens)
    return Vocab.build([*token_lists, *seen.values()], first=first, extra=extra_words)


class QACollator:
    """Pads a list of features into the reader's keyword arguments (and keeps the features for decoding)."""

    def __init__(self, vocab: Vocab, max_context_len: int | None = None, with_answers: bool = True) -> None:
        self.vocab = vocab
        self.max_context_len = max_context_len
        self.with_answers = with_answers

    def __call__(self, batch: Sequence[QAFeature]) -> dict:
        cut = self.max_context_len
        ctx = [f.context_tokens[:cut] if cut else f.context_tokens for f in batch]
        Lc, Lq = max(len(c) for c in ctx), max(len(f.question_tokens) for f in batch)
        B = len(batch)
        context_ids = torch.zeros(B, max(Lc, 1), dtype=torch.long)
        question_ids = torch.zeros(B, max(Lq, 1), dtype=torch.long)
        features = torch.zeros(B, max(Lc, 1), NUM_FEATURES)
        for i, (f, c) in enumerate(zip(batch, ctx, strict=True)):
            context_ids[i, : len(c)] = torch.tensor(self.vocab.encode(c), dtype=torch.long)
            question_ids[i, : len(f.question_tokens)] = torch.tensor(self.vocab.encode(f.question_tokens))
            if c:
                features[i, : len(c)] = exact_match_features(c, f.question_tokens)
        c_len = torch.tensor([len(c) for c in ctx]).unsqueeze(1)  # (B, 1)
        q_len = torch.tensor([len(f.question_tokens) for f in batch]).unsqueeze(1)
        out = {
            "context_ids": context_ids,
            "context_mask": torch.arange(context_ids.shape[1]) < c_len,  # (B, Lc)
            "context_features": features,
            "question_ids": question_ids,
            "question_mask": torch.arange(question_ids.shape[1]) < q_len,  # (B, Lq)
        }
        if self.with_answers:
            out["start_positions"] = torch.tensor([f.start for f in batch], dtype=torch.long)
            out["end_positions"] = torch.tensor([f.end for f in batch], dtype=torch.long)
        return out


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, bucket_factor: int = 50
) -> Iterator[list[int]]:
    """Index batches of similar length (less padding): shuffle, sort within chunks of
    ``batch_size * bucket_factor``, cut into batches, shuffle the batches. Deterministic in ``seed``."""
    idx = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(idx)
    chunk = batch_size * bucket_factor
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s : s + chunk], key=lambda i: lengths[i])
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    yield from batches
