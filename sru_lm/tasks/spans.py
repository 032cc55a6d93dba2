"""Span decoding for extractive QA.

A span is inclusive token positions ``(start, end)``. Character spans map to token spans and back with
:func:`sru_lm.data.squad.char_to_token_span` and :func:`sru_lm.data.squad.span_text`, so the predicted
answer is always the exact context substring ``context[offsets[start][0]:offsets[end][1]]``.
"""

from __future__ import annotations

import torch


def decode_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    max_len: int = 15,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best valid span per example: ``argmax P(start=i) P(end=j)`` over ``i <= j < i + max_len`` with
    both ends on real tokens.

    Args:
        start_logits, end_logits: ``(B, L)`` unnormalized scores.
        mask: ``(B, L)``, 1/True at real context tokens (all real when None).
        max_len: the longest answer in tokens.

    Returns:
        ``start (B,)``, ``end (B,)`` (inclusive token positions) and the span's ``log P`` ``(B,)``.

    Example:
        >>> s = torch.tensor([[0.0, 5.0, 0.0, 0.0]]); e = torch.tensor([[9.0, 0.0, 0.0, 4.0]])
        >>> [t.item() for t in decode_spans(s, e, max_len=3)[:2]]  # end 0 is before start 1: not valid
        [1, 3]
    """
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ValueError(f"start/end logits must both be (B, L), got {tuple(start_logits.shape)} "
                         f"and {tuple(end_logits.shape)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    B, L = start_logits.shape
    neg = torch.finfo(torch.float32).min
    s, e = start_logits.float(), end_logits.float()
    if mask is not None:
        m = mask.bool()
        s, e = s.masked_fill(~m, neg), e.masked_fill(~m, neg)
    s, e = s.log_softmax(-1), e.log_softmax(-1)
    scores = s.unsqueeze(2) + e.unsqueeze(1)  # (B, L_start, L_end)
    i = torch.arange(L, device=s.device)
    width = i.unsqueeze(0) - i.unsqueeze(1)  # end - start
    valid = (width >= 0) & (width < max_len)  # (L, L)
    scores = scores.masked_fill(~valid, float("-inf"))
    best, flat = scores.view(B, -1).max(-1)
    return flat // L, flat % L, best
