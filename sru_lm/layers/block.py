"""The SRU++ layer (:class:`SRULMLayer`): attention (on some layers) computes the SRU's input projection,
``U = W3 LN(alpha * attn(z) + z)`` with ``z = W1 x``, then the SRU runs with ``x`` as its highway input.

Defined in :mod:`sru_lm.models.modeling_sru_lm` (see :mod:`sru_lm.layers.attention` for why); the design
notes are in that module's docstring.
"""

from __future__ import annotations

from ..models.modeling_sru_lm import SRULMLayer

__all__ = ["SRULMLayer"]
