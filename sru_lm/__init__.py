"""sru_lm: hybrid SRU-Transformer language models."""

from __future__ import annotations

from .layers import SRU, SRUCell
from .ops import sru_recurrence, sru_step

__version__ = "0.1.0"
__all__ = ["SRU", "SRUCell", "sru_recurrence", "sru_step"]
