"""Answer spans: from character offsets to token positions (training targets) and back (predictions).

A span is inclusive token positions ``(start, end)``. The predicted answer is always the exact context
substring ``context[offsets[start][0]:offsets[end][1]]``, so unicode, repeated spaces and line breaks
inside the answer come back as they are in the context.
"""

from __future__ import annotations

import bisect

import torch


def char_span_to_tokens(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """The smallest token span covering the characters ``[char_start, char_end)``: the tokens that overlap
    it. None if no token does (an answer of whitespace only, or outside the text)."""
    if char_end <= char_start:
        return None
    ends = [e for _, e in offsets]
    start = bisect.bisect_right(ends, char_start)  # first token ending after char_start
    if start == len(offsets) or offsets[start][0] >= char_end:
        return None
    end = bisect.bisect_left([s for s, _ in offsets], char_end) - 1  # last token starting before char_end
    return start, end


def tokens_to_text(context: str, offsets: list[tuple[int, int]], start: int, end: int) -> str:
    """The exact context text of the inclusive token span ``(start, end)``."""
    if not 0 <= start <= end < len(offsets):
        raise ValueError(f"need 0 <= start <= end < {len(offsets)}, got start={start}, end={end}")
    return context[offsets[start][0]:offsets[end][1]]


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
