"""Evaluation metrics: accuracy, the official SQuAD v1.1 EM/F1 (and where the non-exact answers go:
:func:`span_errors`), perplexity and bits per byte.

SQuAD follows the official v1.1 evaluation script: answers are normalized (lower case, punctuation
removed, the articles a/an/the removed, whitespace collapsed), a prediction scores the maximum over
its gold answers, and the corpus score is the mean over all questions times 100; a question with no
prediction scores 0.

Language modelling: from the summed negative log-likelihood in nats over the predicted tokens,

    loss = nll / n_tokens,   perplexity = exp(loss),   bits per byte = nll / (ln 2 * n_bytes),

where n_bytes counts the UTF-8 bytes of the text those tokens encode, so bits per byte compares
models with different tokenizers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of ``predictions`` equal to ``references`` (in [0, 1]).

    >>> accuracy([1, 0, 1, 1], [1, 1, 1, 0])
    0.5
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have one length, got {len(predictions)} and {len(references)}"
        )
    if not references:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(int(p == r) for p, r in zip(predictions, references, strict=True)) / len(references)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalization: lower case, drop punctuation, then articles, collapse whitespace.

    >>> normalize_answer("  The  Broncos' (Denver)!")
    'broncos denver'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-level F1 between normalized answers (0 when they share no token, as in v1.1)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Corpus EM and F1 (x100), as the official v1.1 script computes them.

    Args:
        predictions: question id -> predicted answer text.
        references: question id -> gold answer texts (e.g. ``{ex["id"]: ex["answers"]["text"]}``);
            every id here counts, predicted or not.

    >>> squad_scores({"q1": "the Denver Broncos", "q2": "Panthers"},
    ...              {"q1": ["Denver Broncos"], "q2": ["Carolina Panthers"]})
    {'exact_match': 50.0, 'f1': 83.33333333333333}
    """
    if not references:
        raise ValueError("references must hold at least one question")
    em = f = 0.0
    for qid, golds in references.items():
        if not golds:
            raise ValueError(f"question {qid!r} has no gold answer")
        if qid not in predictions:
            continue
        pred = predictions[qid]
        em += max(exact_match(pred, g) for g in golds)
        f += max(f1(pred, g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f / n}


def span_errors(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Where the non-exact answers go (x100 of all questions): ``exact``; ``longer`` / ``shorter`` /
    ``same_length``: not exact but sharing a token with a gold answer, and longer, shorter or as long (in
    normalized words) as the gold answer it has the best F1 with; ``no_overlap``; and the mean normalized
    word counts ``pred_words`` and ``gold_words`` (of that best-F1 gold). A reader that finds the right
    place but cuts the span badly scores F1 without EM: this tells which way it errs.

    >>> golds = {"a": ["Eiffel Tower"], "b": ["Eiffel Tower"]}
    >>> span_errors({"a": "the Eiffel Tower in Paris", "b": "Tower"}, golds)["longer"]
    50.0
    """
    if not references:
        raise ValueError("references must hold at least one question")
    counts = dict.fromkeys(("exact", "longer", "shorter", "same_length", "no_overlap"), 0)
    pred_words = gold_words = 0
    for qid, golds in references.items():
        if not golds:
            raise ValueError(f"question {qid!r} has no gold answer")
        pred = predictions.get(qid, "")
        gold = max(golds, key=lambda g: (exact_match(pred, g), f1(pred, g)))
        n_pred, n_gold = len(normalize_answer(pred).split()), len(normalize_answer(gold).split())
        pred_words, gold_words = pred_words + n_pred, gold_words + n_gold
        if exact_match(pred, gold):
            counts["exact"] += 1
        elif f1(pred, gold) == 0:
            counts["no_overlap"] += 1
        else:
            counts["longer" if n_pred > n_gold else "shorter" if n_pred < n_gold else "same_length"] += 1
    n = len(references)
    out = {k: 100.0 * v / n for k, v in counts.items()}
    out.update(pred_words=pred_words / n, gold_words=gold_words / n)
    return out


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens); ``total_nll`` is summed over tokens, in nats."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    return math.exp(total_nll / n_tokens)


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """total_nll / (ln 2 * n_bytes): the code length in bits per UTF-8 byte of the evaluated text."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return total_nll / (math.log(2) * n_bytes)


def utf8_bytes(texts: str | Sequence[str]) -> int:
    """Number of UTF-8 bytes of a text or a list of texts (the ``n_bytes`` of ``bits_per_byte``)."""
    return len(texts.encode("utf-8")) if isinstance(texts, str) else sum(len(t.encode("utf-8")) for t in texts)


def lm_scores(total_nll: float, n_tokens: int, n_bytes: int) -> dict[str, float]:
    """Loss (nats/token), perplexity, bits per token and bits per byte from one evaluation's sums.

    >>> lm_scores(total_nll=4 * math.log(2), n_tokens=2, n_bytes=8)
    {'loss': 1.3862943611198906, 'perplexity': 4.0, 'bits_per_token': 2.0, 'bits_per_byte': 0.5}
    """
    return {
        "loss": total_nll / n_tokens,
        "perplexity": perplexity(total_nll, n_tokens),
        "bits_per_token": total_nll / (math.log(2) * n_tokens),
        "bits_per_byte": bits_per_byte(total_nll, n_bytes),
    }
