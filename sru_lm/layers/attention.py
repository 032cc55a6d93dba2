"""SRU++ attention (:class:`SRULMAttention`): the query is ``z = W1 x`` itself, keys and values come from one
projection ``W2 z``, scaled-dot-product attention over an optional key/value cache.

Defined in :mod:`sru_lm.models.modeling_sru_lm`, because a saved model ships its modeling file and that
file's sibling modules only (``trust_remote_code`` loading); this module gives it its place in ``layers/``.
"""

from __future__ import annotations

from ..models.modeling_sru_lm import SRULMAttention, apply_rotary, rotary_cos_sin

__all__ = ["SRULMAttention", "apply_rotary", "rotary_cos_sin"]
