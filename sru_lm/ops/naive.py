"""The spec of the SRU recurrence, re-exported: it lives in :mod:`sru_lm.models.sru_backend`, the file that
travels with saved models."""

from __future__ import annotations

from ..models.sru_backend import sru_recurrence_ref, sru_step_ref, state_dtype

__all__ = ["sru_recurrence_ref", "sru_step_ref", "state_dtype"]
