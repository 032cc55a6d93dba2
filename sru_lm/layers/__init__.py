"""``nn.Module``s built on the recurrence: :class:`SRU` (a stack, a drop-in for ``nn.GRU``) and :class:`SRUCell`.

The SRU++ layer and its attention are the model family's (:mod:`sru_lm.models.modeling_sru_lm`): a saved model
ships the ``models/`` folder for ``trust_remote_code=True`` loading, so they live there. What the two kinds of
layer share (initialisation, dropout mask, highway scale) is defined once in :mod:`sru_lm.models.sru_init`.
"""

from __future__ import annotations

from .sru import SRU, SRUCell

__all__ = ["SRU", "SRUCell"]
