"""Evaluation metrics: accuracy, SQuAD v1.1 EM/F1 and a breakdown of span errors, perplexity, bits per byte."""

from __future__ import annotations

from .metrics import (
    accuracy,
    bits_per_byte,
    exact_match,
    f1,
    lm_scores,
    normalize_answer,
    perplexity,
    span_errors,
    squad_scores,
    utf8_bytes,
)

__all__ = [
    "accuracy", "bits_per_byte", "exact_match", "f1", "lm_scores", "normalize_answer", "perplexity",
    "span_errors", "squad_scores", "utf8_bytes",
]
