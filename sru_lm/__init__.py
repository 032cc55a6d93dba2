"""sru_lm: hybrid SRU-Transformer language models."""

from __future__ import annotations

from .ops import sru_recurrence, sru_step

__version__ = "0.1.0"
__all__ = ["sru_recurrence", "sru_step"]
