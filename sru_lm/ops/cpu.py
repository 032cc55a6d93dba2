"""CPU fast path for the SRU recurrence (placeholder until the fast path lands)."""

from __future__ import annotations


def available() -> bool:
    return False


def why_unavailable() -> str:
    return "not built yet"


def step_available() -> bool:
    return False
