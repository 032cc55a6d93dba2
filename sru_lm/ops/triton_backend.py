"""Triton GPU kernels for the SRU recurrence (placeholder until the kernel lands)."""

from __future__ import annotations


def available() -> bool:
    return False


def why_unavailable() -> str:
    return "not built yet"
