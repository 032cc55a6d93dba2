"""nn.Modules built on the recurrence."""

from __future__ import annotations

from .sru import SRU, SRUCell

__all__ = ["SRU", "SRUCell"]
